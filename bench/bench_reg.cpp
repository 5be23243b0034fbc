// Registration benchmark: one VoxelMorph training step.
//
//   voxelmorph_step   drdm::reg::VoxelMorph in its default configuration
//                     (encoder {16, 32, 32, 32}, decoder {32, 32, 32, 32, 32, 16, 16},
//                     velocity integrated by 7 squarings at half resolution)
//                     forward_full on a FIXED random (moving, fixed) pair, loss =
//                     MSE(drdm::warp(moving, displacement), fixed) + 0.01 * the
//                     mean squared forward difference of the preintegration field
//                     (VoxelMorph's "grad l2"), loss read on the host, backward,
//                     drdm::Adam step.
//
// Cases: 0 = 2D 128x128 batch 8, 1 = 3D 64^3 batch 1.
//
// Prints one JSON object per (case, device) on stdout or to --out FILE;
// bench/peer_reg.py prints the same schema (the network in torch.nn) and
// bench/run.py reg joins them. A row holds the parameter count, the closed form
// (drdm::reg::voxelmorph_parameter_count), every parameter's shape by name and
// the loss of the first step (the inputs are drawn as the peer draws them).

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/types.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.h"
#include "drdm/core/module_state.h"
#include "drdm/core/spatial.h"
#include "drdm/engine/optim.h"
#include "drdm/reg/voxelmorph.h"

namespace {

using drdm::bench::CommonOptions;
using drdm::bench::Timing;

using drdm::bench::Case;

const std::vector<Case>& cases() {
  static const std::vector<Case> c{{{128, 128}, 8}, {{64, 64, 64}, 1}};
  return c;
}

constexpr double kSmoothWeight = 0.01;
constexpr double kLearningRate = 1e-4;  // VoxelMorph's default

constexpr char kUsage[] = R"(usage: drdm_bench_reg [--device cpu|cuda|all] [--threads N] [--case I]
                      [--rounds N | --min-reps N --max-reps N --min-time S]
                      [--warmup N] [--seed N] [--out FILE] [--default-malloc]
  op voxelmorph_step (Adam, lr 1e-4); cases: 0 = 2D 128x128 batch 8,
  1 = 3D 64^3 batch 1 (default: both).
  --rounds N: exactly N timed steps per row (sets --min-reps, --max-reps, and
  --min-time 0). Default: >= 5 steps and >= 0.5 s after 2 warm-up steps.
)";

// moving, fixed: U(0, 1) [batch, 1, ...size], in this order from one CPU
// generator seeded with `seed` (bench/peer_reg.py draws the same values).
std::pair<at::Tensor, at::Tensor> make_pair(const Case& c, uint64_t seed) {
  std::vector<int64_t> shape{c.batch, 1};
  shape.insert(shape.end(), c.size.begin(), c.size.end());
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto moving = at::rand(shape, gen);
  return {moving, at::rand(shape, gen)};
}

// Mean over the spatial axes of the mean squared forward difference along each.
at::Tensor grad_l2(const at::Tensor& field) {
  at::Tensor sum;
  for (int64_t a = 2; a < field.dim(); ++a) {
    const int64_t n = field.size(a);
    const auto term = (field.narrow(a, 1, n - 1) - field.narrow(a, 0, n - 1)).pow(2).mean();
    sum = sum.defined() ? sum + term : term;
  }
  return sum / static_cast<double>(field.dim() - 2);
}

struct StepResult {
  Timing timing;
  double first_loss;
};

StepResult time_steps(drdm::reg::VoxelMorph& net, const at::Tensor& moving, const at::Tensor& fixed,
                      const CommonOptions& o) {
  drdm::Adam adam(net->parameters());
  double first_loss = 0;
  const Timing t = drdm::bench::time_op(
      [&](int call) {
        const auto out = net->forward_full(moving, fixed);
        const auto loss = (drdm::warp(moving, out.displacement) - fixed).pow(2).mean() +
                          kSmoothWeight * grad_l2(out.preintegration);
        const double value = loss.item<double>();  // a trainer reads the loss each step
        if (call == 0) first_loss = value;
        adam.zero_grad();
        loss.backward();
        adam.step(kLearningRate);
        return net->parameters().front();
      },
      o);
  return {t, first_loss};
}

void run_case(const CommonOptions& o, const drdm::bench::CaseRun& r) {
  const Case& c = cases()[r.index];
  const auto [moving_cpu, fixed_cpu] = make_pair(c, o.seed + r.index);
  const at::Device device = r.at_device();
  at::manual_seed(o.seed);
  drdm::reg::VoxelMorphOptions vo;  // the public default configuration
  vo.dims(static_cast<int64_t>(c.size.size()));
  drdm::reg::VoxelMorph net(vo);
  net->to(device);
  net->train(true);
  const auto s = time_steps(net, moving_cpu.to(device), fixed_cpu.to(device), o);
  char nums[128];
  std::snprintf(nums, sizeof nums, ", \"samples_per_s\": %.5f, \"first_loss\": %.8g",
                1000.0 * static_cast<double>(c.batch) / s.timing.median_ms, s.first_loss);
  r.emit(drdm::bench::result_row(
      "voxelmorph_step", c.size, c.batch, r.device, s.timing,
      nums + (", \"params\": " + std::to_string(drdm::parameter_count(*net))) +
          ", \"params_closed_form\": " + std::to_string(drdm::reg::voxelmorph_parameter_count(vo)) +
          ", \"param_shapes\": " + drdm::bench::shapes_json(drdm::module_state(*net))));
}

}  // namespace

int main(int argc, char** argv) {
  CommonOptions o;
  drdm::bench::Benchmark b(
      "drdm_bench_reg", kUsage, [] { return cases().size(); },
      [&](const drdm::bench::CaseRun& r) { run_case(o, r); });
  return drdm::bench::run_benchmark(argc, argv, o, b);
}
