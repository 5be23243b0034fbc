// Where the memory of DRDM training goes: the steps of src/diffusion/trainer.cpp for one
// config (CPU), phase by phase.
//
// A counting CPU allocator is installed before the first tensor (every ATen
// and oneDNN buffer goes through it), so for each phase the program reports
//   live_mb   tensor bytes alive when the phase ends
//   peak_mb   the most tensor bytes alive at once during the phase
// beside the process's resident set when the phase ends (rss_mb) and its peak
// so far (hwm_mb, /proc/self/status), and glibc's view at the end (bytes held
// in arenas, in use, free; the number of arenas). The gap between the tensor
// peak and the resident peak is what the allocator keeps (freed memory held
// for reuse, fragmentation, one heap per thread) plus LibTorch's own baseline.
//
// Phases: start (LibTorch loaded), dataset (ImageDataset: every sample
// cached), network (RecoveryNet + Adam), then per step: batch
// (training_batch), sampler (VelocitySampler::sample, no grad), warp,
// forward (RecoveryNet K passes: its live bytes are the saved activations),
// loss, backward, adam, end (the step's tensors released).
//
//   drdm_bench_memory --config configs/hippocampus3d-cpu.json [--set key=value ...]
//                     [--steps N] [--t T] [--threads N] [--default-malloc] [--out FILE]
//
// --t T: every step at level T (the sampler's work grows with t; T = 80 is the
// worst case); default: t ~ U{1..T} as the trainer draws it. Prints one JSON
// object per phase (and one "summary" object) on stdout or to --out FILE.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <malloc.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.h"
#include "drdm/core/module_state.h"
#include "drdm/core/runtime.h"
#include "drdm/core/spatial.h"
#include "drdm/diffusion/losses.h"
#include "drdm/diffusion/network.h"
#include "drdm/diffusion/train_config.h"
#include "drdm/diffusion/velocity_sampler.h"
#include "drdm/engine/optim.h"
#include "drdm/io/dataset.h"

namespace {

// ---------------------------------------------------------------- counting allocator
std::atomic<int64_t> g_live{0}, g_peak{0};

void count_free(void* p) {
  if (p) g_live -= static_cast<int64_t>(malloc_usable_size(p));
  c10::free_cpu(p);
}

/// The CPU allocator with a count of the bytes alive (malloc_usable_size of
/// each buffer) and their peak.
struct CountingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    void* p = n ? c10::alloc_cpu(n) : nullptr;
    if (p) {
      const int64_t now = g_live += static_cast<int64_t>(malloc_usable_size(p));
      int64_t peak = g_peak.load();
      while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
      }
    }
    return {p, p, &count_free, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &count_free; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

CountingAllocator g_allocator;

// ---------------------------------------------------------------- process memory
double status_mb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string k = std::string(key) + ":";
  while (std::getline(f, line))
    if (line.rfind(k, 0) == 0) return std::stod(line.substr(k.size())) / 1024.0;
  return -1;
}

int arena_count() {
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  if (!f) return -1;
  malloc_info(0, f);
  std::fclose(f);
  int n = 0;
  for (const char* p = buf; (p = std::strstr(p, "<heap nr=")) != nullptr; ++p) ++n;
  std::free(buf);
  return n;
}

constexpr double kMB = 1024.0 * 1024.0;

struct Options : drdm::bench::CommonOptions {
  std::string config;             // --config FILE
  std::vector<std::string> sets;  // --set key=value ...
  int64_t steps = 2;
  int64_t fixed_t = 0;  // --t T; 0: t ~ U{1..T}
};

struct Reporter {
  const drdm::bench::CaseRun& run;
  int64_t step = -1;

  /// Starts a phase: the allocator's peak restarts from what is alive now.
  void begin() { g_peak = g_live.load(); }

  void end(const std::string& phase, const std::string& extra = "") {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "{\"phase\": \"%s\", \"step\": %lld, \"live_mb\": %.1f, \"peak_mb\": %.1f, "
                  "\"rss_mb\": %.1f, \"hwm_mb\": %.1f%s}",
                  phase.c_str(), static_cast<long long>(step), g_live / kMB, g_peak / kMB,
                  status_mb("VmRSS"), status_mb("VmHWM"), extra.c_str());
    run.emit(buf);
  }
};

constexpr char kUsage[] =
    R"(usage: drdm_bench_memory --config FILE [--set key=value ...] [--steps N] [--t T]
                         [--threads N] [--default-malloc] [--out FILE]
  Per phase of training (CPU): tensor bytes alive and their peak (a counting
  allocator), resident set and its peak. --t T: every step at level T
  (default: t ~ U{1..T}). --default-malloc: glibc's defaults instead of
  drdm::keep_freed_memory_for_reuse(), which drdm_train calls.
)";

/// What the steps work with, built phase by phase in measure().
struct Training {
  const drdm::TrainConfig& config;
  const drdm::ImageDataset& dataset;
  drdm::RecoveryNet& net;
  drdm::Adam& adam;
  drdm::VelocitySampler& sampler;
  at::Generator& t_gen;
};

/// One step of the trainer, phase by phase: batch, sampler, warp, forward,
/// loss, backward, adam, end.
void train_step(const Options& o, Reporter& r, const Training& tr, int64_t step) {
  const auto& config = tr.config;
  const int64_t batch = config.train.batch_size, T = config.sampler.timesteps;
  r.step = step;
  r.begin();
  auto x0 = tr.dataset.training_batch(batch, config.train.seed, step, config.augment);
  r.end("batch");

  const auto t = o.fixed_t > 0 ? at::full({batch}, o.fixed_t, at::kLong)
                               : at::randint(1, T + 1, {batch}, tr.t_gen, at::kLong);
  std::ostringstream ts;
  for (int64_t b = 0; b < batch; ++b) ts << (b ? ", " : "") << t[b].item<int64_t>();
  auto field_gen = drdm::make_generator(torch::kCPU, config.train.seed + 100 + step);
  r.begin();
  drdm::ForwardSample fwd;
  {
    at::NoGradGuard no_grad;
    fwd = tr.sampler.sample(t, field_gen);
  }
  r.end("sampler", ", \"t\": [" + ts.str() + "]");

  r.begin();
  at::Tensor xt;
  {
    at::NoGradGuard no_grad;
    xt = drdm::warp(x0, fwd.phi);
  }
  r.end("warp");

  r.begin();
  auto psi_hat = tr.net->forward(xt, t);
  r.end("forward");

  r.begin();
  auto terms = drdm::recovery_loss(fwd.psi, psi_hat, config.loss);
  (void)terms.total.item<double>();
  r.end("loss");

  r.begin();
  tr.adam.zero_grad();
  terms.total.backward();
  r.end("backward");

  r.begin();
  tr.adam.step(config.train.lr);
  r.end("adam");

  r.begin();
  terms = {};
  psi_hat = at::Tensor();
  xt = at::Tensor();
  fwd = {};
  x0 = at::Tensor();
  r.end("end");
}

/// glibc's view at the end, as the "summary" row.
std::string summary() {
  const auto mi = mallinfo2();
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "{\"phase\": \"summary\", \"malloc_arena_mb\": %.1f, \"malloc_mmap_mb\": %.1f, "
                "\"malloc_in_use_mb\": %.1f, \"malloc_free_held_mb\": %.1f, \"arenas\": %d, "
                "\"threads\": %d, \"hwm_mb\": %.1f}",
                mi.arena / kMB, mi.hblkhd / kMB, mi.uordblks / kMB, mi.fordblks / kMB,
                arena_count(), at::get_num_threads(), status_mb("VmHWM"));
  return buf;
}

/// The phases of --config's training: start, dataset, network, --steps steps, summary.
void measure(const Options& o, const drdm::bench::CaseRun& run) {
  const auto config = drdm::load_train_config(o.config, o.sets);
  if (o.threads <= 0 && config.train.threads > 0)
    at::set_num_threads(static_cast<int>(config.train.threads));
  Reporter r{run};
  r.begin();
  r.end("start");

  r.begin();
  drdm::ImageDataset dataset(config.data);
  r.end("dataset", ", \"samples\": " + std::to_string(dataset.size()));

  r.begin();
  at::manual_seed(config.train.seed);
  drdm::RecoveryNet net(drdm::network_options(config));
  net->train(true);
  drdm::Adam adam(net->parameters());
  drdm::VelocitySampler sampler(config.sampler, config.data.size, torch::kCPU);
  r.end("network", ", \"parameters\": " + std::to_string(drdm::parameter_count(*net)));

  at::Generator t_gen = at::make_generator<at::CPUGeneratorImpl>(config.train.seed + 1);
  const Training tr{config, dataset, net, adam, sampler, t_gen};
  for (int64_t s = 0; s < o.steps; ++s) train_step(o, r, tr, s);
  run.emit(summary());
}

}  // namespace

int main(int argc, char** argv) {
  // Before the first tensor: every CPU buffer from here on is counted.
  c10::SetCPUAllocator(&g_allocator, /*priority=*/100);
  Options o;
  drdm::bench::Benchmark b(
      "drdm_bench_memory", kUsage, [] { return size_t{1}; },
      [&](const drdm::bench::CaseRun& r) { measure(o, r); });
  b.flags = {{"--config", [&](const std::string& v) { o.config = v; }},
             {"--set", [&](const std::string& v) { o.sets.push_back(v); }},
             {"--steps", [&](const std::string& v) { o.steps = std::stoll(v); }},
             {"--t", [&](const std::string& v) { o.fixed_t = std::stoll(v); }}};
  b.many = {"--set"};
  b.valid = [&] { return !o.config.empty(); };
  b.per_device = false;  // the counting allocator is the CPU's
  return drdm::bench::run_benchmark(argc, argv, o, b);
}
