// Test-only tool: statistics of the forward process's fields (drdm::VelocitySampler), or of
// fields given as raw float32, as JSON, with libdrdm's field_stats. Used by
// scripts/forward_parity.py to compare our forward process with the authors' code.
//
// usage: forward_stats_tool sample SIZE T DRAWS SEED [KEY=VALUE ...]
//          SIZE "256,256" (tensor order); keys: process, sigma, perturbation, control, levels,
//          raw (write phi then psi, float32 [DRAWS, d, ...SIZE] each, to this file)
//        forward_stats_tool stats FILE N d S1 S2 [S3]
//          statistics of the fields in FILE (raw float32 [N, d, S1, S2(, S3)], voxels)
// Prints {"phi": STATS, "psi": STATS} or STATS, where STATS is
// {"mean_magnitude_pct": [...], "max_magnitude_pct": [...], "folding_ratio": [...],
//  "min_jacobian": [...], "max_jacobian": [...]}, one value per field.
#include <ATen/ATen.h>

#include <cstdio>
#include <exception>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "drdm/core/spatial.h"
#include "drdm/diffusion/velocity_sampler.h"

namespace {

std::vector<int64_t> parse_size(const std::string& text) {
  std::vector<int64_t> size;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, ',');) size.push_back(std::stoll(part));
  return size;
}

void print_list(const char* key, const std::vector<double>& values, bool last = false) {
  std::printf("\"%s\": [", key);
  for (size_t i = 0; i < values.size(); ++i) std::printf("%s%.9g", i ? ", " : "", values[i]);
  std::printf("]%s", last ? "" : ", ");
}

void print_stats(const at::Tensor& field) {
  const auto s = drdm::field_stats(field);
  std::printf("{");
  print_list("mean_magnitude_pct", s.mean_magnitude_pct);
  print_list("max_magnitude_pct", s.max_magnitude_pct);
  print_list("folding_ratio", s.folding_ratio);
  print_list("min_jacobian", s.min_jacobian);
  print_list("max_jacobian", s.max_jacobian, true);
  std::printf("}");
}

void write_raw(std::ofstream& out, const at::Tensor& field) {
  const auto c = field.to(at::kFloat).contiguous();
  out.write(reinterpret_cast<const char*>(c.data_ptr<float>()),
            static_cast<std::streamsize>(c.numel() * sizeof(float)));
}

int sample(int argc, char** argv) {
  if (argc < 6) throw std::invalid_argument("sample needs SIZE T DRAWS SEED");
  const auto size = parse_size(argv[2]);
  const int64_t t = std::stoll(argv[3]), draws = std::stoll(argv[4]);
  const auto seed = static_cast<uint64_t>(std::stoull(argv[5]));
  drdm::SamplerOptions o;
  std::string raw;
  for (int i = 6; i < argc; ++i) {
    const std::string kv = argv[i];
    const auto eq = kv.find('=');
    if (eq == std::string::npos) throw std::invalid_argument("expected KEY=VALUE, got " + kv);
    const auto key = kv.substr(0, eq), value = kv.substr(eq + 1);
    if (key == "process")
      o.process = drdm::parse_diffusion_process(value);
    else if (key == "sigma")
      o.sigma = std::stod(value);
    else if (key == "perturbation")
      o.perturbation = std::stod(value);
    else if (key == "control")
      o.control = std::stoll(value);
    else if (key == "levels")
      o.levels = std::stoll(value);
    else if (key == "raw")
      raw = value;
    else
      throw std::invalid_argument("unknown key " + key);
  }
  drdm::VelocitySampler sampler(o, size);
  auto gen = drdm::make_generator(seed);
  const auto f = sampler.sample(at::full({draws}, t, at::kLong), gen);
  if (!raw.empty()) {
    std::ofstream out(raw, std::ios::binary);
    write_raw(out, f.phi);
    write_raw(out, f.psi);
    if (!out) throw std::runtime_error("cannot write " + raw);
  }
  std::printf("{\"phi\": ");
  print_stats(f.phi);
  std::printf(", \"psi\": ");
  print_stats(f.psi);
  std::printf("}\n");
  return 0;
}

int stats(int argc, char** argv) {
  if (argc < 7) throw std::invalid_argument("stats needs FILE N d S1 S2 [S3]");
  std::vector<int64_t> shape;
  for (int i = 3; i < argc; ++i) shape.push_back(std::stoll(argv[i]));
  auto field = at::empty(shape, at::kFloat);
  std::ifstream in(argv[2], std::ios::binary);
  in.read(reinterpret_cast<char*>(field.data_ptr<float>()),
          static_cast<std::streamsize>(field.numel() * sizeof(float)));
  if (!in) throw std::runtime_error(std::string("cannot read ") + argv[2] + " as the given shape");
  print_stats(field);
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "sample") return sample(argc, argv);
    if (mode == "stats") return stats(argc, argv);
    std::fprintf(stderr,
                 "usage: %s sample SIZE T DRAWS SEED [KEY=VALUE ...]\n"
                 "       %s stats FILE N d S1 S2 [S3]\n",
                 argv[0], argv[0]);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "forward_stats_tool: %s\n", e.what());
    return 1;
  }
}
