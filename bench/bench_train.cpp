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
#include <ATen/Parallel.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"
#include "drdm/diffusion/losses.h"
#include "drdm/diffusion/network.h"
#include "drdm/engine/optim.h"
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
  int64_t batch;
  int64_t control;  // sampler control grid
  int64_t levels;   // sampler levels
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c{{{128, 128}, 8, 64, 4}, {{64, 64, 64}, 1, 32, 3}};
  return c;
}

struct Options : drdm::bench::CommonOptions {
  std::string dump_state;  // file: write the initial network state of --case, then exit
  double lr = 1e-4;
  Options() { min_time_s = 2.0; }
};

[[noreturn]] void usage(int rc) {
  std::fprintf(rc ? stderr : stdout,
               "usage: drdm_bench_train [--device cpu|cuda|all] [--threads N] [--case I]\n"
               "                        [--ops train_step,sample_t40,sample_mixed]\n"
               "                        [--rounds N | --min-reps N --max-reps N --min-time S]\n"
               "                        [--warmup N] [--lr X] [--seed N] [--out FILE]\n"
               "                        [--dump DIR] [--dump-state PATH] [--default-malloc]\n"
               "  cases: 0 = 2D 128x128 batch 8, 1 = 3D 64^3 batch 1 (default: both).\n"
               "  --rounds N: exactly N timed calls per row (sets --min-reps, --max-reps, and\n"
               "  --min-time 0). Default: >= 5 calls and >= 2 s after 2 warm-up calls.\n"
               "  --dump DIR: cross-check data (bench/run.py train reads it), then exit.\n"
               "  --dump-state PATH: the initial RecoveryNet state of --case (default 0) as a\n"
               "  dict name -> tensor readable by torch.load, then exit.\n");
  std::exit(rc);
}

Options parse(int argc, char** argv) {
  Options o;
  drdm::bench::parse_flags(argc, argv, o,
                           {{"--dump-state", [&](const std::string& v) { o.dump_state = v; }},
                            {"--lr", [&](const std::string& v) { o.lr = std::stod(v); }}},
                           usage);
  if (o.case_index >= static_cast<int>(cases().size())) usage(2);
  return o;
}

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
  for (const auto& [k, v] : net.state()) d.insert(k, v.detach().contiguous().cpu());
  save(o.dump_state, d);
  std::fprintf(stderr, "drdm_bench_train: wrote %s (%lld trainable scalars)\n",
               o.dump_state.c_str(), static_cast<long long>(net.parameter_count()));
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
void dump(const Options& o) {
  const std::vector<Case> small{{{64, 48}, 2, 64, 4}, {{24, 16, 32}, 1, 32, 3}};
  for (const auto& c : small) {
    const int64_t d = static_cast<int64_t>(c.size.size());
    const std::string tag = std::to_string(d) + "d";
    at::manual_seed(o.seed);
    drdm::RecoveryNet net(drdm::NetworkOptions{d});
    auto state = net.state();
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
    out.insert("params", at::scalar_tensor(static_cast<int64_t>(net.parameter_count()), at::kLong));
    drdm::Adam adam(net.parameters());
    auto psi_hat = net.forward(in.xt, in.t);
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
      out.insert("loss_after_step", drdm::recovery_loss(in.psi, net.forward(in.xt, in.t)).total);
    }
    save(o.dump + "/train_" + tag + ".pt", out);
  }
  // Sampler: the benchmark's own cases.
  for (const auto& c : cases()) {
    const int64_t d = static_cast<int64_t>(c.size.size());
    const std::string tag = std::to_string(d) + "d";
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
    save(o.dump + "/sampler_" + tag + ".pt", out);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (!o.default_malloc) drdm::keep_freed_memory_for_reuse();  // as the programs ship
  if (o.threads > 0) at::set_num_threads(o.threads);

  if (!o.dump_state.empty()) {
    dump_state(o);
    return 0;
  }
  if (!o.dump.empty()) {
    dump(o);
    return 0;
  }

  std::vector<std::string> devices;
  if (!drdm::bench::requested_devices(o, "drdm_bench_train", devices)) return 1;

  std::ofstream file;
  if (!drdm::bench::open_output(o, "drdm_bench_train", file)) return 1;
  std::ostream& out = o.out.empty() ? std::cout : file;

  const int threads = at::get_num_threads();
  for (const auto& dev : devices) {
    const at::Device device(dev == "cuda" ? at::kCUDA : at::kCPU);
    for (size_t ci = 0; ci < cases().size(); ++ci) {
      if (o.case_index >= 0 && static_cast<size_t>(o.case_index) != ci) continue;
      const auto& c = cases()[ci];
      const int64_t d = static_cast<int64_t>(c.size.size());
      auto emit = [&](const std::string& op, const Timing& t, double ms, const std::string& extra) {
        char line[768];
        std::snprintf(line, sizeof line,
                      "{\"impl\": \"libdrdm\", \"op\": \"%s\", \"dims\": %lld, \"size\": \"%s\", "
                      "\"batch\": %lld, \"device\": \"%s\", \"threads\": %d, \"ms\": %.4f, "
                      "\"median_ms\": %.4f, \"mean_ms\": %.4f, \"min_ms\": %.4f, \"reps\": %d%s}",
                      op.c_str(), static_cast<long long>(d), size_string(c.size).c_str(),
                      static_cast<long long>(c.batch), dev.c_str(), threads, ms, t.median_ms,
                      t.mean_ms, t.min_ms, t.reps, extra.c_str());
        out << line << std::endl;
        if (!o.out.empty()) std::fprintf(stderr, "%s\n", line);
      };

      if (wanted(o.ops, "train_step")) {
        at::manual_seed(o.seed);
        drdm::RecoveryNet net(drdm::NetworkOptions{d});
        net.to(device);
        net.train(true);
        drdm::Adam adam(net.parameters());
        const auto in = make_input(c, device, o.seed + ci);
        const Timing t = time_op(
            [&](int) {
              auto psi_hat = net.forward(in.xt, in.t);
              auto terms = drdm::recovery_loss(in.psi, psi_hat);
              (void)terms.total.item<double>();  // the trainer reads the loss each step
              adam.zero_grad();
              terms.total.backward();
              adam.step(o.lr);
              return net.parameters().front();
            },
            o);
        const auto w = net.state().at(
            "enc1.1.conv_in.weight");  // 10 -> 10 (a 1-channel weight is both layouts)
        const std::string fmt =
            w.is_contiguous() ? "contiguous" : (d == 2 ? "channels_last" : "channels_last_3d");
        emit("train_step", t, t.median_ms,
             ", \"params\": " + std::to_string(net.parameter_count()) + ", \"memory_format\": \"" +
                 fmt + " weights\", \"t\": " + int_list(in.t));
      }

      drdm::VelocitySampler sampler(sampler_options(c), c.size, device);
      const std::string sampler_extra = ", \"control\": " + std::to_string(c.control) +
                                        ", \"levels\": " + std::to_string(c.levels);
      if (wanted(o.ops, "sample_t40")) {
        auto gen = drdm::make_generator(o.seed + 100 + ci);
        const auto t40 = at::full({c.batch}, 40, at::kLong);
        const Timing t = time_op([&](int) { return sampler.sample(t40, gen).phi; }, o);
        emit("sample_t40", t, t.median_ms, sampler_extra);
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
        emit("sample_mixed", t, t.mean_ms, sampler_extra + ", \"t\": " + int_list(table));
      }
    }
  }
  return 0;
}
