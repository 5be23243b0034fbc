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
#include "drdm/runtime.h"
#include "drdm/spatial.h"

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
  std::string sizes = "quick";  // quick | full
};

[[noreturn]] void usage(int rc) {
  std::fprintf(
      rc ? stderr : stdout,
      "usage: drdm_bench_spatial [--device cpu|cuda|all] [--sizes quick|full]\n"
      "                          [--threads N] [--ops warp,compose,compose_power,integrate_ss]\n"
      "                          [--min-time S] [--min-reps N] [--max-reps N] [--warmup N]\n"
      "                          [--rounds N] [--case I] [--seed N] [--out FILE] [--dump DIR]\n"
      "                          [--default-malloc]\n"
      "  Like the libdrdm programs, calls drdm::keep_freed_memory_for_reuse() at start-up\n"
      "  unless --default-malloc is given.\n"
      "  quick: 2D 256x256 (batch 1, 8), 3D 64^3 (batch 1); full adds 3D 128^3 (batch 1).\n"
      "  --case I runs only the I-th (0-based) of those cases.\n"
      "  --dump DIR writes the results of all four ops on small deterministic inputs as raw\n"
      "  float32 files (for bench/run.py's cross-check) and exits.\n");
  std::exit(rc);
}

Options parse(int argc, char** argv) {
  Options o;
  drdm::bench::parse_flags(argc, argv, o, {{"--sizes", [&](const std::string& v) { o.sizes = v; }}}, usage);
  if (o.sizes != "quick" && o.sizes != "full") usage(2);
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

// Image [N, 1, ...S]: uniform noise in [0, 1).
at::Tensor random_image(int64_t batch, const std::vector<int64_t>& size) {
  std::vector<int64_t> shape{batch, 1};
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
  if (o.case_index >= static_cast<int>(cases.size())) {
    std::fprintf(stderr, "drdm_bench_spatial: --case %d but --sizes %s has %zu cases\n",
                 o.case_index, o.sizes.c_str(), cases.size());
    return 2;
  }

  std::ofstream file;
  if (!drdm::bench::open_output(o, "drdm_bench_spatial", file)) return 1;
  std::ostream& out = o.out.empty() ? std::cout : file;

  const int threads = at::get_num_threads();
  for (const auto& dev : devices) {
    const at::Device device(dev == "cuda" ? at::kCUDA : at::kCPU);
    for (size_t ci = 0; ci < cases.size(); ++ci) {
      if (o.case_index >= 0 && static_cast<size_t>(o.case_index) != ci) continue;
      const auto& c = cases[ci];
      // Same seed and drawing order as bench/peer_spatial.py.
      at::manual_seed(o.seed + ci);
      const auto image = random_image(c.batch, c.size).to(device);
      const auto a = smooth_field(c.batch, c.size, 3.0).to(device);
      const auto b = smooth_field(c.batch, c.size, 3.0).to(device);

      const std::vector<std::pair<std::string, std::function<at::Tensor()>>> ops{
          {"warp",
           [&] {
             return drdm::warp(image, a, drdm::Interpolation::kLinear, drdm::Padding::kZeros);
           }},
          {"compose", [&] { return drdm::compose(a, b); }},
          {"compose_power", [&] { return drdm::compose_power(a, 8); }},
          {"integrate_ss", [&] { return drdm::integrate_scaling_squaring(a, 7); }},
      };
      for (const auto& [name, fn] : ops) {
        if (!wanted(o.ops, name)) continue;
        const auto& op = fn;  // (structured bindings cannot be captured in C++17)
        const Timing t = time_op([&](int) { return op(); }, o);
        char line[512];
        std::snprintf(line, sizeof line,
                      "{\"impl\": \"libdrdm\", \"op\": \"%s\", \"dims\": %zu, \"size\": \"%s\", "
                      "\"batch\": %lld, \"device\": \"%s\", \"threads\": %d, "
                      "\"median_ms\": %.4f, \"min_ms\": %.4f, \"reps\": %d}",
                      name.c_str(), c.size.size(), size_string(c.size).c_str(),
                      static_cast<long long>(c.batch), dev.c_str(), threads, t.median_ms, t.min_ms,
                      t.reps);
        out << line << std::endl;
        if (!o.out.empty()) std::fprintf(stderr, "%s\n", line);
      }
    }
  }
  return 0;
}
