// Throughput of libdrdm's spatial core: warp, compose, compose_power and
// scaling-and-squaring integration, on CPU and (when present) CUDA.
//
// Prints one JSON object per (op, size, batch, device) on stdout or to
// --out FILE. bench/peer_spatial.py measures the same operations written with
// PyTorch ops in Python and prints the same schema; bench/run.py joins the two.
//
// Inputs are drawn with the global ATen CPU generator seeded per case, in the
// same order as the Python peer, so both programs time the same tensors.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"
#include "drdm/core/runtime.h"
#include "drdm/core/spatial.h"
#include "core/spatial_kernels.h"  // private: switches between the direct kernels and ATen

namespace {

using drdm::bench::size_string;
using drdm::bench::sync;
using drdm::bench::time_op;
using drdm::bench::Timing;
using drdm::bench::wanted;

struct Case {
  std::vector<int64_t> size;  // spatial size, 2 or 3 entries
  int64_t batch;
};

struct Options : drdm::bench::CommonOptions {
  std::string sizes = "quick";  // quick | full | kernels
  std::string impl;             // "" (as DRDM_SPATIAL_KERNELS says) | ours | aten | both
  int64_t channels = 1;         // channels of the warped image
  int64_t power = 8;            // n of compose_power
};

[[noreturn]] void usage(int rc) {
  std::fprintf(
      rc ? stderr : stdout,
      "usage: drdm_bench_spatial [--device cpu|cuda|all] [--sizes quick|full|kernels]\n"
      "                          [--threads N] [--ops warp,compose,compose_power,integrate_ss]\n"
      "                          [--impl ours|aten|both] [--channels C] [--power N]\n"
      "                          [--min-time S] [--min-reps N] [--max-reps N] [--warmup N]\n"
      "                          [--rounds N] [--case I] [--seed N] [--out FILE] [--dump DIR]\n"
      "                          [--default-malloc]\n"
      "  Like the libdrdm programs, calls drdm::keep_freed_memory_for_reuse() at start-up\n"
      "  unless --default-malloc is given.\n"
      "  quick: 2D 256x256 (batch 1, 8), 3D 64^3 (batch 1); full adds 3D 128^3 (batch 1);\n"
      "  kernels: 2D 512x512, 3D 64^3 and 128^3 (batch 1).\n"
      "  --impl: which CPU sampler the library uses: its direct kernels (ours, impl\n"
      "  \"libdrdm\"), the ATen grid_sampler path (aten, impl \"libdrdm-aten\"), or both\n"
      "  one after the other per op; without it, as DRDM_SPATIAL_KERNELS says (impl \"libdrdm\").\n"
      "  --channels: channels of the warped image (default 1); --power: n of compose_power\n"
      "  (default 8).\n"
      "  --case I runs only the I-th (0-based) of those cases.\n"
      "  --dump DIR writes the results of all four ops on small deterministic inputs as raw\n"
      "  float32 files (for bench/run.py's cross-check) and exits.\n");
  std::exit(rc);
}

Options parse(int argc, char** argv) {
  Options o;
  drdm::bench::parse_flags(
      argc, argv, o,
      {{"--sizes", [&](const std::string& v) { o.sizes = v; }},
       {"--impl", [&](const std::string& v) { o.impl = v; }},
       {"--channels", [&](const std::string& v) { o.channels = std::stoll(v); }},
       {"--power", [&](const std::string& v) { o.power = std::stoll(v); }}},
      usage);
  if (o.sizes != "quick" && o.sizes != "full" && o.sizes != "kernels") usage(2);
  if (!o.impl.empty() && o.impl != "ours" && o.impl != "aten" && o.impl != "both") usage(2);
  if (o.channels < 1 || o.power < 0) usage(2);
  return o;
}

// Smooth random displacement field [N, d, ...S] in voxels: standard normal
// noise on a grid 8 times coarser than S, scaled to `amplitude` voxels and
// upsampled linearly (align_corners). Drawn on the CPU generator.
at::Tensor smooth_field(int64_t batch, const std::vector<int64_t>& size, double amplitude) {
  const int64_t d = static_cast<int64_t>(size.size());
  std::vector<int64_t> coarse{batch, d};
  for (auto s : size) coarse.push_back(std::max<int64_t>(2, s / 8));
  auto noise = at::randn(coarse, at::kFloat) * amplitude;
  return d == 2 ? at::upsample_bilinear2d(noise, size, /*align_corners=*/true)
                : at::upsample_trilinear3d(noise, size, /*align_corners=*/true);
}

// Image [N, C, ...S]: uniform noise in [0, 1).
at::Tensor random_image(int64_t batch, const std::vector<int64_t>& size, int64_t channels = 1) {
  std::vector<int64_t> shape{batch, channels};
  shape.insert(shape.end(), size.begin(), size.end());
  return at::rand(shape, at::kFloat);
}

// Writes results of small deterministic cases as raw little-endian float32
// (C-order) files: <dir>/<op>_<d>d.f32. The Python peer writes the same files.
void dump(const Options& o) {
  const std::vector<Case> cases{{{64, 48}, 2}, {{24, 32, 20}, 1}};
  for (const auto& c : cases) {
    at::manual_seed(o.seed);
    auto image = random_image(c.batch, c.size);
    auto a = smooth_field(c.batch, c.size, 3.0);
    auto b = smooth_field(c.batch, c.size, 3.0);
    const std::string tag = std::to_string(c.size.size()) + "d";
    const std::vector<std::pair<std::string, at::Tensor>> outs{
        {"warp", drdm::warp(image, a)},
        {"compose", drdm::compose(a, b)},
        {"compose_power", drdm::compose_power(a, 8)},
        {"integrate_ss", drdm::integrate_scaling_squaring(a, 7)}};
    for (const auto& [name, t] : outs) {
      const auto path = o.dump + "/" + name + "_" + tag + ".f32";
      auto x = t.contiguous().to(at::kFloat).cpu();
      std::ofstream f(path, std::ios::binary);
      f.write(reinterpret_cast<const char*>(x.data_ptr<float>()),
              static_cast<std::streamsize>(x.numel() * sizeof(float)));
      if (!f) throw std::runtime_error("cannot write " + path);
    }
  }
}

// Times the ops of case c (index ci) on `dev`, once per implementation in
// `impls` ("" = as configured), one JSON line per (op, implementation).
void time_case(const Options& o, const Case& c, size_t ci, const std::string& dev,
               const std::vector<std::string>& impls, std::ostream& out) {
  const at::Device device(dev == "cuda" ? at::kCUDA : at::kCPU);
  // Same seed and drawing order as bench/peer_spatial.py.
  at::manual_seed(o.seed + ci);
  const auto image = random_image(c.batch, c.size, o.channels).to(device);
  const auto a = smooth_field(c.batch, c.size, 3.0).to(device);
  const auto b = smooth_field(c.batch, c.size, 3.0).to(device);
  const std::vector<std::pair<std::string, std::function<at::Tensor()>>> ops{
      {"warp",
       [&] { return drdm::warp(image, a, drdm::Interpolation::kLinear, drdm::Padding::kZeros); }},
      {"compose", [&] { return drdm::compose(a, b); }},
      {"compose_power", [&] { return drdm::compose_power(a, o.power); }},
      {"integrate_ss", [&] { return drdm::integrate_scaling_squaring(a, 7); }},
  };
  // Non-default image channels and compose_power count are part of the row.
  std::string extra;
  if (o.channels != 1) extra += ", \"channels\": " + std::to_string(o.channels);
  if (o.power != 8) extra += ", \"power\": " + std::to_string(o.power);
  const bool configured = drdm::detail::spatial_kernels_enabled();
  for (const auto& [name, fn] : ops) {
    if (!wanted(o.ops, name)) continue;
    const auto& op = fn;  // (structured bindings cannot be captured in C++17)
    for (const auto& impl : impls) {
      if (!impl.empty()) drdm::detail::set_spatial_kernels_enabled(impl == "ours");
      const Timing t = time_op([&](int) { return op(); }, o);
      char line[640];
      std::snprintf(line, sizeof line,
                    "{\"impl\": \"%s\", \"op\": \"%s\", \"dims\": %zu, \"size\": \"%s\", "
                    "\"batch\": %lld, \"device\": \"%s\", \"threads\": %d, "
                    "\"median_ms\": %.4f, \"min_ms\": %.4f, \"reps\": %d%s}",
                    impl == "aten" ? "libdrdm-aten" : "libdrdm", name.c_str(), c.size.size(),
                    size_string(c.size).c_str(), static_cast<long long>(c.batch), dev.c_str(),
                    at::get_num_threads(), t.median_ms, t.min_ms, t.reps, extra.c_str());
      out << line << std::endl;
      if (!o.out.empty()) std::fprintf(stderr, "%s\n", line);
    }
    drdm::detail::set_spatial_kernels_enabled(configured);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (!o.default_malloc) drdm::keep_freed_memory_for_reuse();  // as the programs ship
  if (o.threads > 0) at::set_num_threads(o.threads);

  if (!o.dump.empty()) {
    dump(o);
    return 0;
  }

  std::vector<std::string> devices;
  if (!drdm::bench::requested_devices(o, "drdm_bench_spatial", devices)) return 1;

  std::vector<Case> cases{{{256, 256}, 1}, {{256, 256}, 8}, {{64, 64, 64}, 1}};
  if (o.sizes == "full") cases.push_back({{128, 128, 128}, 1});
  if (o.sizes == "kernels") cases = {{{512, 512}, 1}, {{64, 64, 64}, 1}, {{128, 128, 128}, 1}};
  if (o.case_index >= static_cast<int>(cases.size())) {
    std::fprintf(stderr, "drdm_bench_spatial: --case %d but --sizes %s has %zu cases\n",
                 o.case_index, o.sizes.c_str(), cases.size());
    return 2;
  }

  std::ofstream file;
  if (!drdm::bench::open_output(o, "drdm_bench_spatial", file)) return 1;
  std::ostream& out = o.out.empty() ? std::cout : file;

  // Sampler implementations to time, one after the other per op ("" = as configured).
  const std::vector<std::string> impls = o.impl == "both" ? std::vector<std::string>{"aten", "ours"}
                                                          : std::vector<std::string>{o.impl};
  for (const auto& dev : devices) {
    for (size_t ci = 0; ci < cases.size(); ++ci) {
      if (o.case_index >= 0 && static_cast<size_t>(o.case_index) != ci) continue;
      time_case(o, cases[ci], ci, dev, impls, out);
    }
  }
  return 0;
}
