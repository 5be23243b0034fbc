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
#include <ATen/Parallel.h>
#include <torch/types.h>

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
#include "drdm/engine/optim.h"
#include "drdm/core/runtime.h"
#include "drdm/seg/bigaug.h"
#include "drdm/seg/unet.h"

namespace {

using drdm::bench::size_string;
using drdm::bench::time_op;
using drdm::bench::Timing;
using drdm::bench::wanted;

struct Case {
  std::vector<int64_t> size;  // 2D spatial size
  int64_t batch;
};

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

[[noreturn]] void usage(int rc) {
  std::fprintf(rc ? stderr : stdout,
               "usage: drdm_bench_seg [--device cpu|cuda|all] [--threads N] [--case I]\n"
               "                      [--ops unet_step,bigaug] [--step-reps N] [--step-warmup N]\n"
               "                      [--aug-min-time S] [--aug-min-reps N] [--aug-warmup N]\n"
               "                      [--lr X] [--seed N] [--out FILE] [--default-malloc]\n"
               "  cases: 0 = 2D 128x128 batch 16, 1 = 2D 256x256 batch 8 (default: both).\n"
               "  unet_step: exactly --step-reps timed steps after --step-warmup (default 5, 2).\n"
               "  bigaug: >= --aug-min-reps calls and >= --aug-min-time s after --aug-warmup\n"
               "  calls (default 5, 2 s, 3).\n");
  std::exit(rc);
}

Options parse(int argc, char** argv) {
  Options o;
  drdm::bench::parse_flags(argc, argv, o,
                           {{"--step-reps", [&](const std::string& v) { o.step_reps = std::stoi(v); }},
                            {"--step-warmup", [&](const std::string& v) { o.step_warmup = std::stoi(v); }},
                            {"--aug-min-time", [&](const std::string& v) { o.aug_min_time = std::stod(v); }},
                            {"--aug-min-reps", [&](const std::string& v) { o.aug_min_reps = std::stoi(v); }},
                            {"--aug-warmup", [&](const std::string& v) { o.aug_warmup = std::stoi(v); }},
                            {"--lr", [&](const std::string& v) { o.lr = std::stod(v); }}},
                           usage);
  if (o.step_reps < 1 || o.step_warmup < 0 || o.aug_min_reps < 1 || o.aug_warmup < 0 || !(o.aug_min_time >= 0))
    usage(2);
  if (o.case_index >= static_cast<int>(cases().size())) usage(2);
  return o;
}

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

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (!o.default_malloc) drdm::keep_freed_memory_for_reuse();  // as the programs ship
  if (o.threads > 0) at::set_num_threads(o.threads);

  std::vector<std::string> devices;
  if (!drdm::bench::requested_devices(o, "drdm_bench_seg", devices)) return 1;
  std::ofstream file;
  if (!drdm::bench::open_output(o, "drdm_bench_seg", file)) return 1;
  std::ostream& out = o.out.empty() ? std::cout : file;

  const int threads = at::get_num_threads();
  for (const auto& dev : devices) {
    const at::Device device(dev == "cuda" ? at::kCUDA : at::kCPU);
    for (size_t ci = 0; ci < cases().size(); ++ci) {
      if (o.case_index >= 0 && static_cast<size_t>(o.case_index) != ci) continue;
      const auto& c = cases()[ci];
      auto emit = [&](const std::string& op, const Timing& t, const std::string& extra) {
        std::string line = "{\"impl\": \"libdrdm\", \"op\": \"" + op + "\", \"dims\": 2, \"size\": \"" +
                           size_string(c.size) + "\", \"batch\": " + std::to_string(c.batch) +
                           ", \"device\": \"" + dev + "\", \"threads\": " + std::to_string(threads);
        char nums[256];
        std::snprintf(nums, sizeof nums,
                      ", \"ms\": %.4f, \"median_ms\": %.4f, \"mean_ms\": %.4f, \"min_ms\": %.4f, "
                      "\"reps\": %d, \"samples_per_s\": %.5f",
                      t.median_ms, t.median_ms, t.mean_ms, t.min_ms, t.reps,
                      1000.0 * static_cast<double>(c.batch) / t.median_ms);
        line += nums + extra + "}";
        out << line << std::endl;
        if (!o.out.empty()) std::fprintf(stderr, "%s\n", line.c_str());
      };
      const auto [images_cpu, labels_cpu] = make_batch(c, o.seed + ci);
      const auto images = images_cpu.to(device), labels = labels_cpu.to(device);

      if (wanted(o.ops, "unet_step")) {
        at::manual_seed(o.seed);
        drdm::seg::UNetOptions uo;  // 2D, 1 channel, 4 classes, widths {16, 32, 64, 128}
        uo.classes = kClasses;
        drdm::seg::UNet net(uo);
        net.to(device);
        net.train(true);
        drdm::Adam adam(net.parameters());
        drdm::bench::CommonOptions to = o;
        to.warmup = o.step_warmup;
        to.min_reps = to.max_reps = o.step_reps;
        to.min_time_s = 0;
        const Timing t = time_op(
            [&](int) {
              auto logits = net.forward(images);
              auto loss = drdm::seg::bce_loss(logits, labels);
              (void)loss.item<double>();  // the trainer reads the loss each step
              adam.zero_grad();
              loss.backward();
              adam.step(o.lr);
              return net.parameters().front();
            },
            to);
        std::string widths;
        for (auto w : uo.widths) widths += (widths.empty() ? "" : ", ") + std::to_string(w);
        emit("unet_step", t,
             ", \"params\": " + std::to_string(net.parameter_count()) +
                 ", \"params_closed_form\": " + std::to_string(drdm::seg::unet_parameter_count(uo)) +
                 ", \"widths\": [" + widths + "], \"classes\": " + std::to_string(kClasses) +
                 ", \"memory_format\": \"contiguous\", \"param_shapes\": " +
                 drdm::bench::shapes_json(net.state()));
      }

      if (wanted(o.ops, "bigaug")) {
        const drdm::seg::BigAugOptions options;  // p = 0.5, the defaults of docs/bigaug.md
        auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed + 100 + ci);
        drdm::bench::CommonOptions to = o;
        to.warmup = o.aug_warmup;
        to.min_reps = o.aug_min_reps;
        to.max_reps = 100000;
        to.min_time_s = o.aug_min_time;
        int64_t applied = 0, drawn = 0;
        const Timing t = time_op(
            [&](int) {
              auto [im, lab] = drdm::seg::bigaug(images, labels, options, gen);
              return im;
            },
            to);
        {  // how many transforms a sample gets on average (p = 0.5: 4.5 of 9)
          auto g2 = at::make_generator<at::CPUGeneratorImpl>(o.seed);
          for (int r = 0; r < 64; ++r)
            for (const auto& s : drdm::seg::draw_samples(c.batch, 2, options, g2))
              for (bool a : s.applied) {
                applied += a;
                ++drawn;
              }
        }
        char extra[256];
        std::snprintf(extra, sizeof extra,
                      ", \"transform\": \"drdm::seg::bigaug (9 transforms, p = %.2g)\", "
                      "\"transforms\": 9, \"mean_applied_per_sample\": %.3f",
                      options.p, 9.0 * static_cast<double>(applied) / static_cast<double>(drawn));
        emit("bigaug", t, extra);
      }
    }
  }
  return 0;
}
