// drdm_test_make_field: writes a smooth random displacement field on the grid
// of a reference image, for the script-driven tests (SimpleITK oracle, CLI).
//
//   drdm_test_make_field --reference IMG --output FIELD
//                        [--amplitude VOXELS=2.0] [--seed 1] [--control 6]
//
// Gaussian noise on a coarse control grid (`control` points per axis) is
// upsampled linearly (align_corners) to the image grid and scaled so that the
// largest displacement is `amplitude` voxels. The field is written with
// drdm::write_field (physical mm, LPS), the form ITK and SimpleITK apply.
#include "drdm/image_io.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdint>
#include <exception>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr const char* kUsage =
    "usage: drdm_test_make_field --reference IMG --output FIELD "
    "[--amplitude VOXELS=2.0] [--seed 1] [--control 6]\n";

struct Args {
  std::string reference, output;
  double amplitude = 2.0;
  uint64_t seed = 1;
  int64_t control = 6;
};

double to_double(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size() && std::isfinite(v)) return v;
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(flag + ": expected a number, got '" + text + "'");
}

int64_t to_int(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(flag + ": expected an integer, got '" + text + "'");
}

Args parse(int argc, char** argv) {
  std::map<std::string, std::string> values;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag != "--reference" && flag != "--output" && flag != "--amplitude" && flag != "--seed" &&
        flag != "--control")
      throw std::invalid_argument("unknown argument '" + flag + "'");
    if (i + 1 >= argc) throw std::invalid_argument(flag + ": missing value");
    values[flag] = argv[++i];
  }
  Args a;
  if (!values.count("--reference") || !values.count("--output"))
    throw std::invalid_argument("--reference and --output are required");
  a.reference = values["--reference"];
  a.output = values["--output"];
  if (values.count("--amplitude")) a.amplitude = to_double("--amplitude", values["--amplitude"]);
  if (values.count("--seed")) {
    const auto s = to_int("--seed", values["--seed"]);
    if (s < 0) throw std::invalid_argument("--seed: expected a non-negative integer");
    a.seed = static_cast<uint64_t>(s);
  }
  if (values.count("--control")) a.control = to_int("--control", values["--control"]);
  if (a.amplitude < 0) throw std::invalid_argument("--amplitude: expected a value >= 0");
  if (a.control < 2) throw std::invalid_argument("--control: expected at least 2 points per axis");
  return a;
}

// Smooth random field [1, d, ...S] in voxels with max_x |u(x)| = amplitude.
at::Tensor make_field(const std::vector<int64_t>& size, const Args& a) {
  const auto d = static_cast<int64_t>(size.size());
  // A single-slice axis gets one control point and no displacement along it.
  std::vector<int64_t> coarse{1, d};
  for (auto s : size) coarse.push_back(s > 1 ? std::min<int64_t>(a.control, s) : 1);
  auto gen = at::detail::createCPUGenerator(a.seed);
  auto noise = at::randn(coarse, gen, at::TensorOptions().dtype(at::kFloat));
  const at::IntArrayRef out_size(size);
  auto u = d == 2 ? at::upsample_bilinear2d(noise, out_size, /*align_corners=*/true)
                  : at::upsample_trilinear3d(noise, out_size, /*align_corners=*/true);
  for (int64_t i = 0; i < d; ++i)
    if (size[i] == 1) u.select(1, i).zero_();
  const double peak = u.pow(2).sum(1).sqrt().max().item<double>();
  if (peak > 0) u = u * (a.amplitude / peak);
  return u.contiguous();
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::cout << kUsage;
      return 0;
    }
  }
  try {
    const Args a = parse(argc, argv);
    const auto info = drdm::read_image_info(a.reference);
    const auto field = make_field(info.geometry.tensor_size(), a);
    drdm::write_field(a.output, field, info.geometry);
    std::cout << "wrote " << a.output << ": field " << field.sizes() << ", max |u| "
              << a.amplitude << " voxels\n";
  } catch (const std::exception& e) {
    std::cerr << "drdm_test_make_field: error: " << e.what() << "\n" << kUsage;
    return 1;
  }
  return 0;
}
