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
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.h"
#include "core/spatial_kernels.h"  // private: switches between the direct kernels and ATen
#include "drdm/core/spatial.h"

namespace {

using drdm::bench::time_op;
using drdm::bench::Timing;
using drdm::bench::wanted;

using drdm::bench::Case;

struct Options : drdm::bench::CommonOptions {
  std::string sizes = "quick";  // quick | full | kernels
  std::string impl;             // "" (as DRDM_SPATIAL_KERNELS says) | ours | aten | both
  int64_t channels = 1;         // channels of the warped image
  int64_t power = 8;            // n of compose_power
};

constexpr char kUsage[] =
    R"(usage: drdm_bench_spatial [--device cpu|cuda|all] [--sizes quick|full|kernels]
                          [--threads N] [--ops warp,compose,compose_power,integrate_ss]
                          [--impl ours|aten|both] [--channels C] [--power N]
                          [--min-time S] [--min-reps N] [--max-reps N] [--warmup N]
                          [--rounds N] [--case I] [--seed N] [--out FILE] [--dump DIR]
                          [--default-malloc]
  Like the libdrdm programs, calls drdm::keep_freed_memory_for_reuse() at start-up
  unless --default-malloc is given.
  quick: 2D 256x256 (batch 1, 8), 3D 64^3 (batch 1); full adds 3D 128^3 (batch 1);
  kernels: 2D 512x512, 3D 64^3 and 128^3 (batch 1).
  --impl: which CPU sampler the library uses: its direct kernels (ours, impl
  "libdrdm"), the ATen grid_sampler path (aten, impl "libdrdm-aten"), or both
  one after the other per op; without it, as DRDM_SPATIAL_KERNELS says (impl "libdrdm").
  --channels: channels of the warped image (default 1); --power: n of compose_power
  (default 8).
  --case I runs only the I-th (0-based) of those cases.
  --dump DIR writes the results of all four ops on small deterministic inputs as raw
  float32 files (for bench/run.py's cross-check) and exits.
)";

/// The program's own checks after parsing.
bool valid(const Options& o) {
  return (o.sizes == "quick" || o.sizes == "full" || o.sizes == "kernels") &&
         (o.impl.empty() || o.impl == "ours" || o.impl == "aten" || o.impl == "both") &&
         o.channels >= 1 && o.power >= 0;
}

/// The cases --sizes asks for.
std::vector<Case> cases(const Options& o) {
  if (o.sizes == "kernels") return {{{512, 512}, 1}, {{64, 64, 64}, 1}, {{128, 128, 128}, 1}};
  std::vector<Case> c{{{256, 256}, 1}, {{256, 256}, 8}, {{64, 64, 64}, 1}};
  if (o.sizes == "full") c.push_back({{128, 128, 128}, 1});
  return c;
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
  const std::vector<Case> small{{{64, 48}, 2}, {{24, 32, 20}, 1}};
  for (const auto& c : small) {
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

// Times the ops of case r.index on r.device, once per implementation --impl
// asks for ("" = as configured), one JSON line per (op, implementation).
void time_case(const Options& o, const drdm::bench::CaseRun& r) {
  const Case c = cases(o)[r.index];
  const at::Device device = r.at_device();
  // Same seed and drawing order as bench/peer_spatial.py.
  at::manual_seed(o.seed + r.index);
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
  // Sampler implementations to time, one after the other per op ("" = as configured).
  const std::vector<std::string> impls = o.impl == "both" ? std::vector<std::string>{"aten", "ours"}
                                                          : std::vector<std::string>{o.impl};
  drdm::bench::Row row;
  row.size = c.size;
  row.batch = c.batch;
  row.brief = true;
  // Non-default image channels and compose_power count are part of the row.
  if (o.channels != 1) row.extra += ", \"channels\": " + std::to_string(o.channels);
  if (o.power != 8) row.extra += ", \"power\": " + std::to_string(o.power);
  const bool configured = drdm::detail::spatial_kernels_enabled();
  for (const auto& [name, fn] : ops) {
    if (!wanted(o.ops, name)) continue;
    const auto& op = fn;  // (structured bindings cannot be captured in C++17)
    row.op = name;
    for (const auto& impl : impls) {
      if (!impl.empty()) drdm::detail::set_spatial_kernels_enabled(impl == "ours");
      const Timing t = time_op([&](int) { return op(); }, o);
      row.impl = impl == "aten" ? "libdrdm-aten" : "libdrdm";
      r.emit(row, t);
    }
    drdm::detail::set_spatial_kernels_enabled(configured);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  drdm::bench::Benchmark b(
      "drdm_bench_spatial", kUsage, [&] { return cases(o).size(); },
      [&](const drdm::bench::CaseRun& r) { time_case(o, r); });
  b.flags = {{"--sizes", [&](const std::string& v) { o.sizes = v; }},
             {"--impl", [&](const std::string& v) { o.impl = v; }},
             {"--channels", [&](const std::string& v) { o.channels = std::stoll(v); }},
             {"--power", [&](const std::string& v) { o.power = std::stoll(v); }}};
  b.valid = [&] { return valid(o); };
  b.before = [&] {  // --dump DIR: the cross-check data instead of timings
    if (o.dump.empty()) return false;
    dump(o);
    return true;
  };
  return drdm::bench::run_benchmark(argc, argv, o, b);
}
