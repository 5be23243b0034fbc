// Throughput and memory peak of DRDM generation (paper Alg. 2) for one image,
// on CPU and (when present) CUDA.
//
//   generate   drdm::generate_fields on the model grid at T' = --level (45)
//              for a batch of N samples of ONE image (N seeds), followed by
//              the warp of the image with each generated field: the augmented
//              images, what an elastic-augmentation transform returns. One
//              timed call = one batch; samples/s = N / median seconds.
//              Warm-up calls run the same batch at level 1 (sampler + one
//              recovery step: allocator and oneDNN primitives primed).
//   sampler    VelocitySampler::sample_field at t = --level alone (the start
//              field phi_{T':1}); per_step_ms = (generate - sampler) / T', the
//              cost of one recovery step (K = 2 network passes, warp, compose).
//
// The network is a freshly initialised RecoveryNet (untrained weights): the
// work per step (convolutions, warps, compositions) does not depend on the
// weights' values, so the timing is that of a trained model of the same
// architecture. The image is a smooth deterministic pattern in [0, 1]
// (bench/peer_generate.py builds the same).
//
// Cases: 0 = 2D 128x128 batch 8, 1 = 2D 256x256 batch 4 (sampler defaults:
// control 64, levels 4), 2 = 3D 64^3 batch 1 (sampler control 32, levels 3 as
// configs/hippocampus3d-cpu.json).
//
// Memory: on the CPU the peak resident set (VmHWM) is reset through
// /proc/self/clear_refs just before the first generation call, so
// "peak_rss_mb" is the process's peak over the generation calls and
// "peak_growth_mb" that peak minus the resident set at the reset (network,
// image and LibTorch already loaded). Run one case per process (--case I, as
// bench/run.py generate does) for figures that belong to one case only. On
// CUDA, "cuda_peak_mb" is the caching allocator's peak of allocated bytes over
// the generation calls (when the program was built against c10_cuda).
//
// Prints one JSON object per (op, case, device) on stdout or to --out FILE;
// bench/peer_generate.py prints the same schema for MONAI and TorchIO and
// bench/run.py generate joins them.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/types.h>

#ifdef DRDM_BENCH_CUDA_MEMORY
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "bench_common.h"
#include "drdm/diffusion/generate.h"
#include "drdm/diffusion/network.h"
#include "drdm/core/runtime.h"
#include "drdm/core/spatial.h"
#include "drdm/diffusion/velocity_sampler.h"

namespace {

using drdm::bench::size_string;
using drdm::bench::sync;
using drdm::bench::time_op;
using drdm::bench::Timing;
using drdm::bench::wanted;

struct Case {
  std::vector<int64_t> size;  // spatial size, 2 or 3 entries
  int64_t batch;              // samples per timed call (of one image)
  int64_t control;            // sampler control grid
  int64_t levels;             // sampler levels
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c{
      {{128, 128}, 8, 64, 4}, {{256, 256}, 4, 64, 4}, {{64, 64, 64}, 1, 32, 3}};
  return c;
}

struct Options : drdm::bench::CommonOptions {
  int64_t level = 45;  // T'
  bool cuda_graphs = false;
  Options() {
    min_time_s = 0;  // one generation call is seconds long: --rounds / --min-reps decide
    min_reps = 1;
    max_reps = 1;
    warmup = 1;
  }
};

[[noreturn]] void usage(int rc) {
  std::fprintf(
      rc ? stderr : stdout,
      "usage: drdm_bench_generate [--device cpu|cuda|all] [--threads N] [--case I]\n"
      "                           [--ops generate,sampler] [--level T']\n"
      "                           [--rounds N | --min-reps N --max-reps N --min-time S]\n"
      "                           [--warmup N] [--seed N] [--out FILE] [--default-malloc]\n"
      "                           [--cuda-graphs 0|1]\n"
      "  cases: 0 = 2D 128x128 batch 8, 1 = 2D 256x256 batch 4, 2 = 3D 64^3 batch 1\n"
      "  (default: all; run one per process for memory figures of one case).\n"
      "  --level: T' of every sample (default 45).\n"
      "  --cuda-graphs 1: GenerationOptions::cuda_graphs (CUDA rows; impl libdrdm-graphs).\n"
      "  --rounds N: exactly N timed calls per row. Default: 1 timed generation call after\n"
      "  1 warm-up call at level 1; the sampler row takes at least 5 calls.\n");
  std::exit(rc);
}

Options parse(int argc, char** argv) {
  Options o;
  drdm::bench::parse_flags(
      argc, argv, o,
      {{"--level", [&](const std::string& v) { o.level = std::stoll(v); }},
       {"--cuda-graphs", [&](const std::string& v) { o.cuda_graphs = v == "1"; }}},
      usage);
  if (o.case_index >= static_cast<int>(cases().size()) || o.level < 1 || o.level > 80) usage(2);
  return o;
}

/// The benchmark image [1, 1, ...S] in [0, 1]: a product of cosines along the
/// axes (about 3 periods across the image), as bench/peer_generate.py.
at::Tensor make_image(const std::vector<int64_t>& size) {
  at::Tensor img = at::ones({1}, at::kFloat);
  for (size_t i = 0; i < size.size(); ++i) {
    const auto n = size[i];
    const auto x = at::arange(n, at::kFloat).mul(2.0 * M_PI * 3.0 / static_cast<double>(n));
    std::vector<int64_t> shape(size.size(), 1);
    shape[i] = n;
    img = img * (x.cos().add(1.0).mul(0.5)).reshape(shape);
  }
  std::vector<int64_t> shape{1, 1};
  shape.insert(shape.end(), size.begin(), size.end());
  return img.reshape(shape).contiguous();
}

/// Mean displacement norm (voxels) over the central box (10%..90% of each
/// axis), per batch: the measure bench/peer_generate.py reports for the peers.
double central_mean_norm(const at::Tensor& field) {
  at::Tensor f = field.to(at::kCPU, at::kDouble);
  for (int64_t i = 2; i < f.dim(); ++i) {
    const int64_t n = f.size(i);
    const int64_t lo = n / 10, hi = n - n / 10;
    f = f.narrow(i, lo, hi - lo);
  }
  return at::linalg_vector_norm(f, 2, at::IntArrayRef{1}).mean().item<double>();
}

// ---- resident memory (Linux /proc); -1 where unavailable
double status_mb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string k = std::string(key) + ":";
  while (std::getline(f, line))
    if (line.compare(0, k.size(), k) == 0) return std::stod(line.substr(k.size())) / 1024.0;  // kB
  return -1.0;
}

/// Resets VmHWM to the current VmRSS (Linux >= 4.0); false if it cannot.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

void reset_cuda_peak(const at::Device& device) {
#ifdef DRDM_BENCH_CUDA_MEMORY
  if (device.is_cuda())
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
#else
  (void)device;
#endif
}

double cuda_peak_mb(const at::Device& device) {
#ifdef DRDM_BENCH_CUDA_MEMORY
  if (device.is_cuda()) {
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    return static_cast<double>(
               stats
                   .allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
                   .peak) /
           (1024.0 * 1024.0);
  }
#else
  (void)device;
#endif
  return -1.0;
}

std::string num(double x, const char* fmt = "%.4f") {
  if (x < 0 || !std::isfinite(x)) return "null";
  char b[64];
  std::snprintf(b, sizeof b, fmt, x);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (!o.default_malloc) drdm::keep_freed_memory_for_reuse();  // as the programs ship
  if (o.threads > 0) at::set_num_threads(o.threads);

  std::vector<std::string> devices;
  if (!drdm::bench::requested_devices(o, "drdm_bench_generate", devices)) return 1;

  std::ofstream file;
  if (!drdm::bench::open_output(o, "drdm_bench_generate", file)) return 1;
  std::ostream& out = o.out.empty() ? std::cout : file;

  const int threads = at::get_num_threads();
  for (const auto& dev : devices) {
    const at::Device device(dev == "cuda" ? at::kCUDA : at::kCPU);
    for (size_t ci = 0; ci < cases().size(); ++ci) {
      if (o.case_index >= 0 && static_cast<size_t>(o.case_index) != ci) continue;
      const auto& c = cases()[ci];
      const int64_t d = static_cast<int64_t>(c.size.size());
      auto emit = [&](const std::string& op, const Timing& t, const std::string& extra) {
        char line[1536];
        std::snprintf(
            line, sizeof line,
            "{\"impl\": \"%s\", \"op\": \"%s\", \"dims\": %lld, \"size\": \"%s\", "
            "\"batch\": %lld, \"device\": \"%s\", \"threads\": %d, \"level\": %lld, "
            "\"ms\": %.4f, \"median_ms\": %.4f, \"mean_ms\": %.4f, \"min_ms\": %.4f, "
            "\"reps\": %d, \"control\": %lld, \"levels\": %lld%s}",
            o.cuda_graphs ? "libdrdm-graphs" : "libdrdm", op.c_str(), static_cast<long long>(d),
            size_string(c.size).c_str(), static_cast<long long>(c.batch), dev.c_str(), threads,
            static_cast<long long>(o.level), t.median_ms, t.median_ms, t.mean_ms, t.min_ms, t.reps,
            static_cast<long long>(c.control), static_cast<long long>(c.levels), extra.c_str());
        out << line << std::endl;
        if (!o.out.empty()) std::fprintf(stderr, "%s\n", line);
      };

      at::manual_seed(o.seed);
      drdm::RecoveryNet net(drdm::NetworkOptions{d});
      net.to(device);
      net.train(false);
      drdm::SamplerOptions sampler;
      sampler.control = c.control;
      sampler.levels = c.levels;
      const at::Tensor image = make_image(c.size).to(device);
      const at::Tensor images =
          image
              .expand([&] {
                std::vector<int64_t> s(image.sizes().begin(), image.sizes().end());
                s[0] = c.batch;
                return s;
              }())
              .contiguous();
      drdm::GenerationOptions gen_options;
      gen_options.batch = c.batch;
      gen_options.cuda_graphs = o.cuda_graphs;

      double generate_ms = -1;
      if (wanted(o.ops, "generate")) {
        sync(images);
        const double rss_before = status_mb("VmRSS");
        const bool reset = device.is_cpu() && reset_peak_rss();
        reset_cuda_peak(device);
        drdm::GeneratedFields last;
        at::Tensor last_images;
        int warm = 0;
        Timing t = time_op(
            [&](int call) {
              const bool warmup = warm++ < o.warmup;
              std::vector<int64_t> levels(static_cast<size_t>(c.batch), warmup ? 1 : o.level);
              std::vector<uint64_t> seeds;
              for (int64_t i = 0; i < c.batch; ++i)
                seeds.push_back(drdm::derive_seed(o.seed, static_cast<uint64_t>(call),
                                                  static_cast<uint64_t>(i)));
              last = drdm::generate_fields(net, sampler, images, levels, seeds, gen_options);
              last_images = drdm::warp(images, last.field);  // the augmented images
              return last_images;
            },
            o);
        const double hwm = status_mb("VmHWM");
        const double cuda_mb = cuda_peak_mb(device);
        generate_ms = t.median_ms;
        const double sps = 1000.0 * static_cast<double>(c.batch) / t.median_ms;
        std::string extra =
            ", \"samples_per_s\": " + num(sps, "%.5f") +
            ", \"params\": " + std::to_string(net.parameter_count()) +
            ", \"weights\": \"untrained\"" +
            ", \"start_mean_disp\": " + num(central_mean_norm(last.initial)) +
            ", \"final_mean_disp\": " + num(central_mean_norm(last.field)) +
            ", \"peak_rss_mb\": " + num(device.is_cpu() && reset ? hwm : -1, "%.1f") +
            ", \"rss_before_mb\": " + num(rss_before, "%.1f") + ", \"peak_growth_mb\": " +
            num(device.is_cpu() && reset ? hwm - rss_before : -1, "%.1f") +
            ", \"cuda_peak_mb\": " + num(cuda_mb, "%.1f");
        emit("generate", t, extra);
      }

      if (wanted(o.ops, "sampler")) {
        drdm::VelocitySampler vs(sampler, c.size, device);
        const auto tt = at::full({c.batch}, o.level, at::kLong);
        auto gen = drdm::make_generator(o.seed + 100 + ci);
        drdm::bench::CommonOptions so = o;
        so.min_reps = std::max(o.min_reps, 5);
        so.max_reps = std::max(so.max_reps, so.min_reps);
        so.warmup = std::max(o.warmup, 1);
        const Timing t = time_op([&](int) { return vs.sample_field(tt, gen); }, so);
        std::string extra;
        if (generate_ms > 0)
          extra = ", \"per_step_ms\": " +
                  num((generate_ms - t.median_ms) / static_cast<double>(o.level));
        emit("sampler", t, extra);
      }
    }
  }
  return 0;
}
