// Segmentation benchmarks (the few-shot experiment's parts, Sec. 4.1):
//
//   unet_step   one training step of drdm::seg::UNet (widths {16, 32, 64, 128},
//               1 input channel, 4 classes): forward, drdm::seg::bce_loss
//               (Eq. 17, BCE of sigmoid(logits) against one-hot labels), loss
//               read on the host, backward, drdm::Adam step; on a FIXED batch
//               (images and labels drawn once), as src/seg/fewshot.cpp steps
//               without data loading and augmentation.
//   bigaug      drdm::seg::bigaug on a batch of images with labels: all nine
//               transforms at p = 0.5 (BigAugOptions defaults), a new draw per
//               call from one seeded generator; samples/s = batch / median s.
//
// Cases: 0 = 2D 128x128 batch 16 (the CPU config), 1 = 2D 256x256 batch 8.
//
// Prints one JSON object per (op, case, device) on stdout or to --out FILE;
// bench/peer_seg.py prints the same schema (PyTorch-in-Python U-Net, MONAI and
// TorchIO pipelines) and bench/run.py seg joins them. The unet_step row holds
// the parameter count, the closed-form count (drdm::seg::unet_parameter_count)
// and every parameter's shape by name, which run.py compares with the peer's.

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
#include "drdm/engine/optim.h"
#include "drdm/seg/bigaug.h"
#include "drdm/seg/unet.h"

namespace {

using drdm::bench::time_op;
using drdm::bench::Timing;
using drdm::bench::wanted;

using drdm::bench::Case;

const std::vector<Case>& cases() {
  static const std::vector<Case> c{{{128, 128}, 16}, {{256, 256}, 8}};
  return c;
}

constexpr int64_t kClasses = 4;

struct Options : drdm::bench::CommonOptions {
  int step_reps = 5;        // timed U-Net steps per row
  int step_warmup = 2;      // untimed steps first
  double aug_min_time = 2;  // bigaug: time at least this long (s) ...
  int aug_min_reps = 5;     // ... and this many calls
  int aug_warmup = 3;
  double lr = 1e-3;
};

constexpr char kUsage[] = R"(usage: drdm_bench_seg [--device cpu|cuda|all] [--threads N] [--case I]
                      [--ops unet_step,bigaug] [--step-reps N] [--step-warmup N]
                      [--aug-min-time S] [--aug-min-reps N] [--aug-warmup N]
                      [--lr X] [--seed N] [--out FILE] [--default-malloc]
  cases: 0 = 2D 128x128 batch 16, 1 = 2D 256x256 batch 8 (default: both).
  unet_step: exactly --step-reps timed steps after --step-warmup (default 5, 2).
  bigaug: >= --aug-min-reps calls and >= --aug-min-time s after --aug-warmup
  calls (default 5, 2 s, 3).
)";

// A batch of synthetic images in [0, 1] with their labels, as bench/peer_seg.py
// makes it: labels are 4 nested discs about the centre (3 innermost, 0
// outside), the image is 0.1 + 0.25 label plus U(0, 0.1) noise per voxel.
std::pair<at::Tensor, at::Tensor> make_batch(const Case& c, uint64_t seed) {
  const int64_t h = c.size[0], w = c.size[1];
  const auto y = (at::arange(h, at::kFloat) - 0.5 * (h - 1)) / (0.5 * h);
  const auto x = (at::arange(w, at::kFloat) - 0.5 * (w - 1)) / (0.5 * w);
  const auto r = at::sqrt(y.view({h, 1}).pow(2) + x.view({1, w}).pow(2));
  const auto label = (r < 0.2).to(at::kLong) + (r < 0.4).to(at::kLong) + (r < 0.6).to(at::kLong);
  const auto labels = label.view({1, 1, h, w}).expand({c.batch, 1, h, w}).contiguous();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto images = labels.to(at::kFloat) * 0.25 + 0.1 + at::rand({c.batch, 1, h, w}, gen) * 0.1;
  return {images, labels};
}

/// Writes the row of `op` for case c: the timing, samples/s, then `extra`.
void emit(const drdm::bench::CaseRun& r, const Case& c, const std::string& op, const Timing& t,
          const std::string& extra) {
  char sps[64];
  std::snprintf(sps, sizeof sps, ", \"samples_per_s\": %.5f",
                1000.0 * static_cast<double>(c.batch) / t.median_ms);
  r.emit(drdm::bench::result_row(op, c.size, c.batch, r.device, t, sps + extra));
}

/// unet_step: exactly --step-reps timed steps after --step-warmup.
void unet_step(const Options& o, const drdm::bench::CaseRun& r, const at::Tensor& images,
               const at::Tensor& labels) {
  at::manual_seed(o.seed);
  drdm::seg::UNetOptions uo;  // 2D, 1 channel, 4 classes, widths {16, 32, 64, 128}
  uo.classes(kClasses);
  drdm::seg::UNet net(uo);
  net->to(r.at_device());
  net->train(true);
  drdm::Adam adam(net->parameters());
  drdm::bench::CommonOptions to = o;
  to.warmup = o.step_warmup;
  to.min_reps = to.max_reps = o.step_reps;
  to.min_time_s = 0;
  const Timing t = time_op(
      [&](int) {
        auto logits = net->forward(images);
        auto loss = drdm::seg::bce_loss(logits, labels);
        (void)loss.item<double>();  // the trainer reads the loss each step
        adam.zero_grad();
        loss.backward();
        adam.step(o.lr);
        return net->parameters().front();
      },
      to);
  std::string widths;
  for (auto w : uo.widths()) widths += (widths.empty() ? "" : ", ") + std::to_string(w);
  emit(r, cases()[r.index], "unet_step", t,
       ", \"params\": " + std::to_string(drdm::parameter_count(*net)) +
           ", \"params_closed_form\": " + std::to_string(drdm::seg::unet_parameter_count(uo)) +
           ", \"widths\": [" + widths + "], \"classes\": " + std::to_string(kClasses) +
           ", \"memory_format\": \"contiguous\", \"param_shapes\": " +
           drdm::bench::shapes_json(drdm::module_state(*net)));
}

/// How many of the 9 transforms a sample gets on average (p = 0.5: 4.5 of 9),
/// over 64 draws of a batch from a generator seeded with `seed`.
double mean_applied(const drdm::seg::BigAugOptions& options, int64_t batch, uint64_t seed) {
  int64_t applied = 0, drawn = 0;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (int r = 0; r < 64; ++r)
    for (const auto& s : drdm::seg::draw_samples(batch, 2, options, gen))
      for (bool a : s.applied) {
        applied += a;
        ++drawn;
      }
  return 9.0 * static_cast<double>(applied) / static_cast<double>(drawn);
}

/// bigaug: >= --aug-min-reps calls and >= --aug-min-time s after --aug-warmup calls.
void bigaug(const Options& o, const drdm::bench::CaseRun& r, const at::Tensor& images,
            const at::Tensor& labels) {
  const Case& c = cases()[r.index];
  const drdm::seg::BigAugOptions options;  // p = 0.5, the defaults of docs/bigaug.md
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed + 100 + r.index);
  drdm::bench::CommonOptions to = o;
  to.warmup = o.aug_warmup;
  to.min_reps = o.aug_min_reps;
  to.max_reps = 100000;
  to.min_time_s = o.aug_min_time;
  const Timing t = time_op(
      [&](int) {
        auto [im, lab] = drdm::seg::bigaug(images, labels, options, gen);
        return im;
      },
      to);
  char extra[256];
  std::snprintf(extra, sizeof extra,
                ", \"transform\": \"drdm::seg::bigaug (9 transforms, p = %.2g)\", "
                "\"transforms\": 9, \"mean_applied_per_sample\": %.3f",
                options.p, mean_applied(options, c.batch, o.seed));
  emit(r, c, "bigaug", t, extra);
}

void run_case(const Options& o, const drdm::bench::CaseRun& r) {
  const auto [images_cpu, labels_cpu] = make_batch(cases()[r.index], o.seed + r.index);
  const auto images = images_cpu.to(r.at_device()), labels = labels_cpu.to(r.at_device());
  if (wanted(o.ops, "unet_step")) unet_step(o, r, images, labels);
  if (wanted(o.ops, "bigaug")) bigaug(o, r, images, labels);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  drdm::bench::Benchmark b(
      "drdm_bench_seg", kUsage, [] { return cases().size(); },
      [&](const drdm::bench::CaseRun& r) { run_case(o, r); });
  b.flags = {{"--step-reps", [&](const std::string& v) { o.step_reps = std::stoi(v); }},
             {"--step-warmup", [&](const std::string& v) { o.step_warmup = std::stoi(v); }},
             {"--aug-min-time", [&](const std::string& v) { o.aug_min_time = std::stod(v); }},
             {"--aug-min-reps", [&](const std::string& v) { o.aug_min_reps = std::stoi(v); }},
             {"--aug-warmup", [&](const std::string& v) { o.aug_warmup = std::stoi(v); }},
             {"--lr", [&](const std::string& v) { o.lr = std::stod(v); }}};
  b.valid = [&] {
    return o.step_reps >= 1 && o.step_warmup >= 0 && o.aug_min_reps >= 1 && o.aug_warmup >= 0 &&
           o.aug_min_time >= 0;
  };
  return drdm::bench::run_benchmark(argc, argv, o, b);
}
