#include "drdm/diffusion/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <sys/stat.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "core/seeds.h"
#include "diffusion/drdm_checkpoint.h"
#include "drdm/core/log.h"
#include "drdm/core/module_state.h"
#include "drdm/core/spatial.h"
#include "drdm/diffusion/losses.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/optim.h"
#include "drdm/io/dataset.h"
#include "drdm/io/image_io.h"
#include "drdm/io/models.h"
#include "drdm/io/preview.h"
#include "engine/progress.h"
#include "engine/run_kind.h"
#include "io/files.h"
#include "io/run_lock.h"

namespace drdm {

namespace {

constexpr const char* kKind = detail::kDrdmCheckpointKind;

/// Picture of a training batch: per row, original | deformed | deformed grid | |phi|,
/// then deformed | recovered one step | recovery grid | |psi_hat|.
void write_training_preview(const std::string& path, const at::Tensor& x0, const at::Tensor& xt,
                            const at::Tensor& phi, const at::Tensor& psi_hat) {
  at::NoGradGuard no_grad;
  const auto recovered = warp(xt, psi_hat);
  std::vector<at::Tensor> rows;
  const int64_t n = std::min<int64_t>(x0.size(0), 4);
  for (int64_t i = 0; i < n; ++i) {
    auto s = [&](const at::Tensor& t) {
      return t.narrow(0, i, 1).detach().to(at::kCPU, at::kFloat);
    };
    auto left = render_warp_preview(s(x0), s(xt), s(phi));
    auto right = render_warp_preview(s(xt), s(recovered), s(psi_hat));
    auto gap = at::full({3, left.size(1), 6}, 255, left.options());
    rows.push_back(at::cat({left, gap, right}, 2));
    rows.push_back(at::full({3, 6, rows.back().size(2)}, 255, left.options()));
  }
  write_rgb_png(path, at::cat(rows, 1));
}

/// train.init_from: the weights of another run (fresh optimiser, step 0).
/// The network must have the same shape; the image size may differ (the
/// network is fully convolutional), so a model can be fine-tuned at another size.
void init_weights_from(const std::string& name_or_path, const TrainConfig& config,
                       RecoveryNet& net) {
  const auto path = resolve_model_path(name_or_path);
  auto ck = detail::read_drdm_checkpoint(path);
  const auto want = network_options(config), have = network_options(ck.config);
  const auto describe = [](const NetworkOptions& o) {
    return std::to_string(o.dims) + "D, " + std::to_string(o.in_channels) + " channel(s), " +
           "time embedding " + std::to_string(o.time_embedding) + " (" +
           to_string(o.time_frequencies) + " frequencies, MLP slope " +
           std::to_string(o.time_mlp_slope) + "), T = " + std::to_string(o.timesteps) +
           ", K = " + std::to_string(o.recursion) + ", decoder norm " +
           (o.decoder_norm ? "on" : "off") + ", output in " + to_string(o.output_units) +
           (o.output_clamp ? " (clamped)" : "");
  };
  if (describe(want) != describe(have))
    throw std::runtime_error("train.init_from: '" + path + "' holds a network of " +
                             describe(have) + ", but this config builds " + describe(want));
  try {
    load_module_state(*net, ck.file.model);
  } catch (const c10::Error& e) {
    throw std::runtime_error("train.init_from: '" + path + "' does not fit this network: " +
                             std::string(e.what_without_backtrace()));
  }
  log::info("initialised from " + path + " (trained " + std::to_string(ck.file.step) +
            " steps); fresh optimiser and schedule");
}

torch::Device training_device(const TrainConfig& config) {
  const auto device = resolve_device(config.train.device);
  if (config.train.mixed_precision == "bf16" && device.is_cpu() && !cpu_has_native_bf16())
    log::warn(
        "train.mixed_precision = bf16 on a CPU without native bf16 (AVX512-BF16/AMX): "
        "oneDNN emulates it, usually slower than float32");
  if (config.data.folders.empty())
    throw std::invalid_argument(
        "config key 'data.folders' is empty: give at least one folder of training images");
  if (config.train.threads > 0) at::set_num_threads(static_cast<int>(config.train.threads));
  return device;
}

/// Without --resume a run starts from step 0 and would overwrite the run
/// already in the folder: refused.
void refuse_existing_run(const std::string& output_dir) {
  for (const char* name : {"checkpoint.pt", "model.pt", "config.json", "metrics.jsonl"}) {
    if (!detail::file_exists(detail::join(output_dir, name))) continue;
    throw std::runtime_error(
        "output folder '" + output_dir + "' already holds a training run (" + name +
        "); continue it with --resume, or give a new --output folder (delete the "
        "folder first to start that run over)");
  }
}

RunSpec drdm_run_spec(const TrainConfig& config, const std::string& output_dir, bool resume,
                      bool progress) {
  // Only the step count may change on resume (to train longer).
  const auto identity = [](const std::string& text) {
    auto c = parse_train_config(text, "checkpoint config");
    c.train.steps = 0;
    c.train.dist_timeout = 300;  // how a run is launched may change on resume
    c.train.dist_master.clear();
    return to_json(c);
  };
  return run_spec(config.train, output_dir, kKind, to_json(config), identity, resume, progress);
}

/// Alg. 1, one step at a time; keeps the last batch for previews.
class RecoveryStep {
 public:
  RecoveryStep(const TrainConfig& config, const ImageDataset& dataset, RecoveryNet& net, Adam& adam,
               const torch::Device& device, int64_t first_step)
      : config_(config),
        net_(net),
        adam_(adam),
        device_(device),
        dataset_(dataset),
        sampler_(config.sampler, config.data.size, device) {
    if (config.train.prefetch > 0)
      prefetcher_ =
          std::make_unique<BatchPrefetcher>(dataset_, config.train.batch_size, config.train.seed,
                                            first_step, config.augment, config.train.prefetch, 1);
  }

  /// The global batch's step; a data-parallel rank trains on its rows
  /// [first, first + count) of it, with the draws one process would make.
  StepResult operator()(int64_t step) {
    const auto& tr = config_.train;
    const auto [first, last] = dist::world().share(tr.batch_size, "train.batch_size");
    const int64_t count = last - first;
    x0_ = (prefetcher_ ? prefetcher_->next()
                       : dataset_.training_batch(tr.batch_size, tr.seed, step, config_.augment))
              .narrow(0, first, count)
              .to(device_);
    auto t_gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed(tr.seed, step, 1));
    const auto all_t =
        at::randint(1, config_.sampler.timesteps + 1, {tr.batch_size}, t_gen, at::kLong);
    const auto t = all_t.narrow(0, first, count);
    auto field_gen = make_generator(stream_seed(tr.seed, step, 2));
    {
      at::NoGradGuard no_grad;
      fwd_ = count == tr.batch_size ? sampler_.sample(all_t, field_gen)
                                    : sampler_.sample_rows(all_t, field_gen, first, count);
      xt_ = warp(x0_, fwd_.phi);
    }
    psi_hat_ = forward_mixed(net_, xt_, t,
                             tr.mixed_precision == "bf16");  // t on the CPU: checked without a sync
    const auto terms = recovery_loss(fwd_.psi, psi_hat_, config_.loss);
    auto result = descend(adam_, terms.total, tr, step);
    if (result.metrics.empty()) return result;  // not finite: no step taken
    result.metrics.insert(result.metrics.begin(),
                          {{"distance", terms.distance.item<double>()},
                           {"angle", terms.angle.item<double>()},
                           {"smoothness", terms.smoothness.item<double>()},
                           {"folding", terms.folding.item<double>()},
                           {"t_mean", t.to(at::kDouble).mean().item<double>()}});
    return result;
  }

  void preview(const std::string& path) const {
    write_training_preview(path, x0_, xt_, fwd_.phi, psi_hat_.detach());
  }

 private:
  const TrainConfig& config_;
  RecoveryNet& net_;
  Adam& adam_;
  torch::Device device_;
  const ImageDataset& dataset_;
  VelocitySampler sampler_;
  std::unique_ptr<BatchPrefetcher> prefetcher_;
  at::Tensor x0_, xt_, psi_hat_;
  ForwardSample fwd_;
};

}  // namespace

TrainSummary train(const TrainConfig& config, const std::string& output_dir, bool resume,
                   bool progress, double max_seconds) {
  const auto device =
      dist::join_world(training_device(config), dist::dist_timeout(config.train.dist_timeout),
                       config.train.dist_master);
  const auto& world = dist::world();
  world.share(config.train.batch_size, "train.batch_size");  // a clear error before any work
  std::optional<detail::RunLock> lock;  // held until training ends; rank 0 writes
  if (world.writer()) lock.emplace(output_dir, "drdm_train");
  if (!resume) refuse_existing_run(output_dir);
  detail::require_run_kind(output_dir, "drdm_train", {});  // not a seg_fewshot / reg_synth folder
  // The data is read and checked before anything is written.
  const ImageDataset dataset(config.data);
  if (dataset.size() == 0) throw std::runtime_error("no training samples found in data.folders");
  at::manual_seed(config.train.seed);  // parameter initialisation
  RecoveryNet net(network_options(config));
  net->to(device);
  net->train(true);
  Adam adam(net->parameters());
  if (!resume && !config.train.init_from.empty())
    init_weights_from(config.train.init_from, config, net);
  auto spec = drdm_run_spec(config, output_dir, resume, progress);
  spec.max_seconds = max_seconds;
  TrainingRun run(
      std::move(spec), [&] { return module_state(*net); },
      [&](const TensorMap& m) { load_module_state(*net, m); }, adam);
  const int64_t first_step = run.start();
  log::info("recovery network: " + std::to_string(parameter_count(*net)) +
            " trainable parameters (" + std::to_string(config.data.dims) +
            "D, K = " + std::to_string(config.model.recursion) + ")");
  std::unique_ptr<RecoveryStep> step;
  if (first_step < config.train.steps) {
    if (config.train.preview_every > 0 && world.writer())
      detail::make_dirs(output_dir + "/previews");
    step = std::make_unique<RecoveryStep>(config, dataset, net, adam, device, first_step);
  }
  const auto preview = [&](int64_t done) {
    if (config.train.preview_every <= 0 ||
        (done % config.train.preview_every != 0 && done != config.train.steps))
      return;
    char name[64];
    std::snprintf(name, sizeof name, "/previews/step_%06lld.png", static_cast<long long>(done));
    step->preview(output_dir + name);
  };
  const auto r = run.run([&](int64_t s) { return (*step)(s); }, preview);
  return {r.first_step, r.steps, r.seconds, r.last_loss, r.checkpoint};
}

}  // namespace drdm
