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
#include <string>
#include <vector>

#include "bench_common.h"
#include "drdm/core/module_state.h"
#include "drdm/core/spatial.h"
#include "drdm/diffusion/generate.h"
#include "drdm/diffusion/network.h"
#include "drdm/diffusion/velocity_sampler.h"

namespace {

using drdm::bench::sync;
using drdm::bench::time_op;
using drdm::bench::Timing;
using drdm::bench::wanted;

struct Case : drdm::bench::Case {  // batch: samples per timed call (of one image)
  int64_t control;                 // sampler control grid
  int64_t levels;                  // sampler levels
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c{
      {{{128, 128}, 8}, 64, 4}, {{{256, 256}, 4}, 64, 4}, {{{64, 64, 64}, 1}, 32, 3}};
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

constexpr char kUsage[] =
    R"(usage: drdm_bench_generate [--device cpu|cuda|all] [--threads N] [--case I]
                           [--ops generate,sampler] [--level T']
                           [--rounds N | --min-reps N --max-reps N --min-time S]
                           [--warmup N] [--seed N] [--out FILE] [--default-malloc]
                           [--cuda-graphs 0|1]
  cases: 0 = 2D 128x128 batch 8, 1 = 2D 256x256 batch 4, 2 = 3D 64^3 batch 1
  (default: all; run one per process for memory figures of one case).
  --level: T' of every sample (default 45).
  --cuda-graphs 1: GenerationOptions::cuda_graphs (CUDA rows; impl libdrdm-graphs).
  --rounds N: exactly N timed calls per row. Default: 1 timed generation call after
  1 warm-up call at level 1; the sampler row takes at least 5 calls.
)";

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

/// The row of `op` for case r.index: impl libdrdm (libdrdm-graphs with
/// --cuda-graphs 1), the level before the timing, the sampler after it, then `extra`.
void emit(const Options& o, const drdm::bench::CaseRun& r, const std::string& op, const Timing& t,
          const std::string& extra) {
  const Case& c = cases()[r.index];
  drdm::bench::Row row;
  row.impl = o.cuda_graphs ? "libdrdm-graphs" : "libdrdm";
  row.op = op;
  row.size = c.size;
  row.batch = c.batch;
  row.before_timing = ", \"level\": " + std::to_string(o.level);
  row.extra = ", \"control\": " + std::to_string(c.control) +
              ", \"levels\": " + std::to_string(c.levels) + extra;
  r.emit(row, t);
}

/// What both ops of a case work on: the network, the sampler's options, the
/// batch of the image and the generation options.
struct Setup {
  drdm::RecoveryNet net;
  drdm::SamplerOptions sampler;
  at::Tensor images;
  drdm::GenerationOptions options;
};

Setup make_setup(const Options& o, const Case& c, const at::Device& device) {
  at::manual_seed(o.seed);
  Setup s{drdm::RecoveryNet(drdm::NetworkOptions{static_cast<int64_t>(c.size.size())}), {}, {}, {}};
  s.net->to(device);
  s.net->train(false);
  s.sampler.control = c.control;
  s.sampler.levels = c.levels;
  const at::Tensor image = make_image(c.size).to(device);
  std::vector<int64_t> shape(image.sizes().begin(), image.sizes().end());
  shape[0] = c.batch;
  s.images = image.expand(shape).contiguous();
  s.options.batch = c.batch;
  s.options.cuda_graphs = o.cuda_graphs;
  return s;
}

/// The generate row; returns its median ms. Warm-up calls run at level 1.
double generate_row(const Options& o, const drdm::bench::CaseRun& r, Setup& s) {
  const Case& c = cases()[r.index];
  const at::Device device = r.at_device();
  sync(s.images);
  const double rss_before = status_mb("VmRSS");
  const bool reset = device.is_cpu() && reset_peak_rss();
  reset_cuda_peak(device);
  drdm::GeneratedFields last;
  at::Tensor last_images;  // alive until the next call, as a transform's result would be
  int warm = 0;
  Timing t = time_op(
      [&](int call) {
        const bool warmup = warm++ < o.warmup;
        std::vector<int64_t> levels(static_cast<size_t>(c.batch), warmup ? 1 : o.level);
        std::vector<uint64_t> seeds;
        for (int64_t i = 0; i < c.batch; ++i)
          seeds.push_back(
              drdm::derive_seed(o.seed, static_cast<uint64_t>(call), static_cast<uint64_t>(i)));
        last = drdm::generate_fields(s.net, s.sampler, s.images, levels, seeds, s.options);
        last_images = drdm::warp(s.images, last.field);  // the augmented images
        return last_images;
      },
      o);
  const double hwm = status_mb("VmHWM");
  const double cuda_mb = cuda_peak_mb(device);
  const double sps = 1000.0 * static_cast<double>(c.batch) / t.median_ms;
  emit(o, r, "generate", t,
       ", \"samples_per_s\": " + num(sps, "%.5f") + ", \"params\": " +
           std::to_string(drdm::parameter_count(*s.net)) + ", \"weights\": \"untrained\"" +
           ", \"start_mean_disp\": " + num(central_mean_norm(last.initial)) +
           ", \"final_mean_disp\": " + num(central_mean_norm(last.field)) +
           ", \"peak_rss_mb\": " + num(device.is_cpu() && reset ? hwm : -1, "%.1f") +
           ", \"rss_before_mb\": " + num(rss_before, "%.1f") + ", \"peak_growth_mb\": " +
           num(device.is_cpu() && reset ? hwm - rss_before : -1, "%.1f") +
           ", \"cuda_peak_mb\": " + num(cuda_mb, "%.1f"));
  return t.median_ms;
}

/// The sampler row (at least 5 calls after at least 1 warm-up call);
/// per_step_ms from `generate_ms` when the generate row ran (> 0).
void sampler_row(const Options& o, const drdm::bench::CaseRun& r, const Setup& s,
                 double generate_ms) {
  const Case& c = cases()[r.index];
  drdm::VelocitySampler vs(s.sampler, c.size, r.at_device());
  const auto tt = at::full({c.batch}, o.level, at::kLong);
  auto gen = drdm::make_generator(o.seed + 100 + r.index);
  drdm::bench::CommonOptions so = o;
  so.min_reps = std::max(o.min_reps, 5);
  so.max_reps = std::max(so.max_reps, so.min_reps);
  so.warmup = std::max(o.warmup, 1);
  const Timing t = time_op([&](int) { return vs.sample_field(tt, gen); }, so);
  std::string extra;
  if (generate_ms > 0)
    extra = ", \"per_step_ms\": " + num((generate_ms - t.median_ms) / static_cast<double>(o.level));
  emit(o, r, "sampler", t, extra);
}

void run_case(const Options& o, const drdm::bench::CaseRun& r) {
  Setup s = make_setup(o, cases()[r.index], r.at_device());
  double generate_ms = -1;
  if (wanted(o.ops, "generate")) generate_ms = generate_row(o, r, s);
  if (wanted(o.ops, "sampler")) sampler_row(o, r, s, generate_ms);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  drdm::bench::Benchmark b(
      "drdm_bench_generate", kUsage, [] { return cases().size(); },
      [&](const drdm::bench::CaseRun& r) { run_case(o, r); });
  b.flags = {{"--level", [&](const std::string& v) { o.level = std::stoll(v); }},
             {"--cuda-graphs", [&](const std::string& v) { o.cuda_graphs = v == "1"; }}};
  b.valid = [&] { return o.level >= 1 && o.level <= 80; };
  return drdm::bench::run_benchmark(argc, argv, o, b);
}
