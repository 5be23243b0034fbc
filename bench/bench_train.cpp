// Throughput of one DRDM training step and of the forward-process sampler,
// on CPU and (when present) CUDA.
//
//   train_step     RecoveryNet (K = 2) forward + recovery_loss + backward + Adam
//                  update, on a FIXED pre-sampled (x_t, psi, t): only the
//                  network step is timed (what src/diffusion/trainer.cpp does per step,
//                  without data loading and sampling).
//   sample_t40     VelocitySampler::sample with t = 40 for every sample.
//   sample_mixed   VelocitySampler::sample with t ~ U{1..80}: a fixed table of
//                  8 rows of t (one row per call, cycled), drawn with the CPU
//                  generator seeded as in bench/peer_train.py; its "ms" is the
//                  mean over whole cycles of the table (the work depends on t).
//
// Cases: 0 = 2D 128x128 batch 8 (sampler defaults: control 64, levels 4),
//        1 = 3D 64^3 batch 1 (sampler control 32, levels 3).
//
// Prints one JSON object per (op, case, device) on stdout or to --out FILE;
// bench/peer_train.py prints the same schema for the PyTorch-in-Python peer and
// bench/run.py train joins the two. --dump DIR writes what the cross-check
// needs (initial state, inputs, outputs, gradients, sampler draws) as
// torch.save-compatible files; --dump-state PATH writes only the initial
// network state of the selected case.

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"
#include "drdm/core/module_state.h"
#include "drdm/core/runtime.h"
#include "drdm/core/spatial.h"
#include "drdm/diffusion/losses.h"
#include "drdm/diffusion/network.h"
#include "drdm/diffusion/velocity_sampler.h"
#include "drdm/engine/optim.h"

namespace {

using drdm::bench::time_op;
using drdm::bench::Timing;
using drdm::bench::wanted;

struct Case : drdm::bench::Case {
  int64_t control;  // sampler control grid
  int64_t levels;   // sampler levels
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c{{{{128, 128}, 8}, 64, 4}, {{{64, 64, 64}, 1}, 32, 3}};
  return c;
}

struct Options : drdm::bench::CommonOptions {
  std::string dump_state;  // file: write the initial network state of --case, then exit
  double lr = 1e-4;
  Options() { min_time_s = 2.0; }
};

constexpr char kUsage[] =
    R"(usage: drdm_bench_train [--device cpu|cuda|all] [--threads N] [--case I]
                        [--ops train_step,sample_t40,sample_mixed]
                        [--rounds N | --min-reps N --max-reps N --min-time S]
                        [--warmup N] [--lr X] [--seed N] [--out FILE]
                        [--dump DIR] [--dump-state PATH] [--default-malloc]
  cases: 0 = 2D 128x128 batch 8, 1 = 3D 64^3 batch 1 (default: both).
  --rounds N: exactly N timed calls per row (sets --min-reps, --max-reps, and
  --min-time 0). Default: >= 5 calls and >= 2 s after 2 warm-up calls.
  --dump DIR: cross-check data (bench/run.py train reads it), then exit.
  --dump-state PATH: the initial RecoveryNet state of --case (default 0) as a
  dict name -> tensor readable by torch.load, then exit.
)";

drdm::SamplerOptions sampler_options(const Case& c) {
  drdm::SamplerOptions s;
  s.control = c.control;
  s.levels = c.levels;
  return s;
}

// A fixed training input: uniform-noise image warped by a sampled phi, with
// its psi and t. Drawn on the CPU generator (same on every device).
struct TrainInput {
  at::Tensor xt, psi, t;
};

TrainInput make_input(const Case& c, const at::Device& device, uint64_t seed) {
  at::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto t = at::randint(1, 81, {c.batch}, gen, at::kLong);
  std::vector<int64_t> shape{c.batch, 1};
  shape.insert(shape.end(), c.size.begin(), c.size.end());
  const auto x0 = at::rand(shape, gen, at::kFloat);
  drdm::VelocitySampler sampler(sampler_options(c), c.size, at::kCPU);
  const auto fwd = sampler.sample(t, gen);
  TrainInput in;
  in.xt = drdm::warp(x0, fwd.phi).to(device);
  in.psi = fwd.psi.to(device);
  in.t = t.to(device);
  return in;
}

std::string int_list(const at::Tensor& t) {
  const auto c = t.to(at::kCPU, at::kLong).contiguous().reshape(-1);
  std::string s = "[";
  for (int64_t i = 0; i < c.numel(); ++i)
    s += (i ? ", " : "") + std::to_string(c[i].item<int64_t>());
  return s + "]";
}

void save(const std::string& path, const c10::Dict<std::string, at::Tensor>& d) {
  const auto bytes = torch::jit::pickle_save(c10::IValue(d));
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

void dump_state(const Options& o) {
  const auto& c = cases()[std::max(0, o.case_index)];
  at::manual_seed(o.seed);
  drdm::RecoveryNet net(drdm::NetworkOptions{static_cast<int64_t>(c.size.size())});
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& [k, v] : drdm::module_state(*net)) d.insert(k, v.detach().contiguous().cpu());
  save(o.dump_state, d);
  std::fprintf(stderr, "drdm_bench_train: wrote %s (%lld trainable scalars)\n",
               o.dump_state.c_str(), static_cast<long long>(drdm::parameter_count(*net)));
}

// Mean L2 norm per voxel and root mean square of a batch of fields, per sample: [N, 2].
at::Tensor field_stats(const at::Tensor& f) {
  const auto norm = at::linalg_vector_norm(f, 2, at::IntArrayRef{1}).flatten(1).mean(1);
  const auto rms = f.pow(2).flatten(1).mean(1).sqrt();
  return at::stack({norm, rms}, 1).to(at::kDouble);
}

// Cross-check data, on the CPU, for both dimensions:
//   train_<d>d.pt: "state.<key>" (the initial state, except that the output
//     conv's weight is re-drawn with std 0.1 so that the output is of the
//     order of a voxel and the second recursion pass sees a warped image),
//     "xt", "t", "psi", "psi_hat", "loss.<term>", "grad.<key>", and after one
//     Adam step at lr = 1e-3 the parameters "after.<key>" and
//     "loss_after_step"; plus "params" (count).
//   sampler_<d>d.pt: for t = 40 and for the mixed table, "<tag>.t" [R, N],
//     the first draw "<tag>.psi0" / "<tag>.phi0", and per-draw statistics
//     "<tag>.stats" [R * N, 4] (mean |psi|, rms psi, mean |phi|, rms phi).
void dump_train(const Options& o, const Case& c) {
  const int64_t d = static_cast<int64_t>(c.size.size());
  at::manual_seed(o.seed);
  drdm::RecoveryNet net(drdm::NetworkOptions{d});
  auto state = drdm::module_state(*net);
  {
    at::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed + 7);
    state.at("out.weight").normal_(0.0, 0.1, gen);
  }
  c10::Dict<std::string, at::Tensor> out;
  for (const auto& [k, v] : state) out.insert("state." + k, v.detach().contiguous().clone());
  const auto in = make_input(c, at::kCPU, o.seed + 11);
  out.insert("xt", in.xt);
  out.insert("t", in.t);
  out.insert("psi", in.psi);
  out.insert("params",
             at::scalar_tensor(static_cast<int64_t>(drdm::parameter_count(*net)), at::kLong));
  drdm::Adam adam(net->parameters());
  auto psi_hat = net->forward(in.xt, in.t);
  auto terms = drdm::recovery_loss(in.psi, psi_hat);
  out.insert("psi_hat", psi_hat.detach().contiguous());
  out.insert("loss.total", terms.total.detach());
  out.insert("loss.distance", terms.distance.detach());
  out.insert("loss.angle", terms.angle.detach());
  out.insert("loss.smoothness", terms.smoothness.detach());
  out.insert("loss.folding", terms.folding.detach());
  adam.zero_grad();
  terms.total.backward();
  for (const auto& [k, v] : state)
    if (v.requires_grad() && v.grad().defined())
      out.insert("grad." + k, v.grad().contiguous().clone());
  adam.step(1e-3);
  for (const auto& [k, v] : state)
    if (v.requires_grad()) out.insert("after." + k, v.detach().contiguous().clone());
  {
    at::NoGradGuard no_grad;
    out.insert("loss_after_step", drdm::recovery_loss(in.psi, net->forward(in.xt, in.t)).total);
  }
  save(o.dump + "/train_" + std::to_string(d) + "d.pt", out);
}

void dump_sampler(const Options& o, const Case& c) {
  const int64_t draws = 8;
  drdm::VelocitySampler sampler(sampler_options(c), c.size, at::kCPU);
  c10::Dict<std::string, at::Tensor> out;
  for (const std::string kind : {"t40", "mixed"}) {
    auto tgen = at::make_generator<at::CPUGeneratorImpl>(o.seed + 3);
    const auto table = kind == "t40" ? at::full({draws, c.batch}, 40, at::kLong)
                                     : at::randint(1, 81, {draws, c.batch}, tgen, at::kLong);
    auto gen = drdm::make_generator(at::kCPU, o.seed + 5);
    std::vector<at::Tensor> stats;
    for (int64_t r = 0; r < draws; ++r) {
      const auto s = sampler.sample(table[r], gen);
      if (r == 0) {
        out.insert(kind + ".psi0", s.psi);
        out.insert(kind + ".phi0", s.phi);
      }
      stats.push_back(at::cat({field_stats(s.psi), field_stats(s.phi)}, 1));
    }
    out.insert(kind + ".t", table);
    out.insert(kind + ".stats", at::cat(stats, 0));
  }
  save(o.dump + "/sampler_" + std::to_string(c.size.size()) + "d.pt", out);
}

// Cross-check data, on the CPU, for both dimensions:
//   train_<d>d.pt (dump_train): "state.<key>" (the initial state, except that
//     the output conv's weight is re-drawn with std 0.1 so that the output is
//     of the order of a voxel and the second recursion pass sees a warped
//     image), "xt", "t", "psi", "psi_hat", "loss.<term>", "grad.<key>", and
//     after one Adam step at lr = 1e-3 the parameters "after.<key>" and
//     "loss_after_step"; plus "params" (count). Small cases.
//   sampler_<d>d.pt (dump_sampler), the benchmark's own cases: for t = 40 and
//     for the mixed table, "<tag>.t" [R, N], the first draw "<tag>.psi0" /
//     "<tag>.phi0", and per-draw statistics "<tag>.stats" [R * N, 4] (mean
//     |psi|, rms psi, mean |phi|, rms phi).
void dump(const Options& o) {
  for (const Case& c : std::vector<Case>{{{{64, 48}, 2}, 64, 4}, {{{24, 16, 32}, 1}, 32, 3}})
    dump_train(o, c);
  for (const auto& c : cases()) dump_sampler(o, c);
}

/// The row of `op` for case r.index: ms (the median, or for sample_mixed the mean), then `extra`.
void emit(const drdm::bench::CaseRun& r, const std::string& op, const Timing& t, double ms,
          const std::string& extra) {
  drdm::bench::Row row;
  row.op = op;
  row.size = cases()[r.index].size;
  row.batch = cases()[r.index].batch;
  row.ms = ms;
  row.extra = extra;
  r.emit(row, t);
}

void train_step(const Options& o, const drdm::bench::CaseRun& r) {
  const Case& c = cases()[r.index];
  const int64_t d = static_cast<int64_t>(c.size.size());
  const at::Device device = r.at_device();
  at::manual_seed(o.seed);
  drdm::RecoveryNet net(drdm::NetworkOptions{d});
  net->to(device);
  net->train(true);
  drdm::Adam adam(net->parameters());
  const auto in = make_input(c, device, o.seed + r.index);
  const Timing t = time_op(
      [&](int) {
        auto psi_hat = net->forward(in.xt, in.t);
        auto terms = drdm::recovery_loss(in.psi, psi_hat);
        (void)terms.total.item<double>();  // the trainer reads the loss each step
        adam.zero_grad();
        terms.total.backward();
        adam.step(o.lr);
        return net->parameters().front();
      },
      o);
  const auto w = drdm::module_state(*net).at(
      "enc1.1.conv_in.weight");  // 10 -> 10 (a 1-channel weight is both layouts)
  const std::string fmt =
      w.is_contiguous() ? "contiguous" : (d == 2 ? "channels_last" : "channels_last_3d");
  emit(r, "train_step", t, t.median_ms,
       ", \"params\": " + std::to_string(drdm::parameter_count(*net)) + ", \"memory_format\": \"" +
           fmt + " weights\", \"t\": " + int_list(in.t));
}

void sampler_rows(const Options& o, const drdm::bench::CaseRun& r) {
  const Case& c = cases()[r.index];
  const size_t ci = r.index;
  drdm::VelocitySampler sampler(sampler_options(c), c.size, r.at_device());
  const std::string sampler_extra =
      ", \"control\": " + std::to_string(c.control) + ", \"levels\": " + std::to_string(c.levels);
  if (wanted(o.ops, "sample_t40")) {
    auto gen = drdm::make_generator(o.seed + 100 + ci);
    const auto t40 = at::full({c.batch}, 40, at::kLong);
    const Timing t = time_op([&](int) { return sampler.sample(t40, gen).phi; }, o);
    emit(r, "sample_t40", t, t.median_ms, sampler_extra);
  }
  if (wanted(o.ops, "sample_mixed")) {
    auto gen = drdm::make_generator(o.seed + 200 + ci);
    auto tgen = at::make_generator<at::CPUGeneratorImpl>(o.seed + 300 + ci);
    const int64_t rows = 8;
    const auto table = at::randint(1, 81, {rows, c.batch}, tgen, at::kLong);
    // Warm-up calls use the table too; timed calls start at row `warmup % rows`,
    // and cover whole cycles of the table.
    const Timing t = time_op([&](int i) { return sampler.sample(table[i % rows], gen).phi; }, o,
                             static_cast<int>(rows));
    emit(r, "sample_mixed", t, t.mean_ms, sampler_extra + ", \"t\": " + int_list(table));
  }
}

// The rows of case r.index on r.device.
void run_case(const Options& o, const drdm::bench::CaseRun& r) {
  if (wanted(o.ops, "train_step")) train_step(o, r);
  sampler_rows(o, r);
}

// --dump-state PATH or --dump DIR instead of timings: true when one was given.
bool dump_only(const Options& o) {
  if (!o.dump_state.empty())
    dump_state(o);
  else if (!o.dump.empty())
    dump(o);
  return !o.dump_state.empty() || !o.dump.empty();
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  drdm::bench::Benchmark b(
      "drdm_bench_train", kUsage, [] { return cases().size(); },
      [&](const drdm::bench::CaseRun& r) { run_case(o, r); });
  b.flags = {{"--dump-state", [&](const std::string& v) { o.dump_state = v; }},
             {"--lr", [&](const std::string& v) { o.lr = std::stod(v); }}};
  b.before = [&] { return dump_only(o); };
  return drdm::bench::run_benchmark(argc, argv, o, b);
}
