/// @file The training machinery every libdrdm trainer shares (the DRDM
/// recovery network, the segmentation U-Net, VoxelMorph): checkpoint files,
/// exact resume, config.json, metrics.jsonl, progress, NaN stop, device
/// choice and per-step random streams.
///
/// A trainer describes its run (RunSpec), hands the engine its weights and
/// its Adam, and supplies one function that performs a training step and
/// returns that step's metrics. Everything random in a step must derive from
/// (seed, step) (see stream_seed), so that a resumed run repeats exactly what
/// an uninterrupted one would have done.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "drdm/engine/optim.h"
#include "drdm/engine/train_section.h"

namespace drdm {

/// Named tensors (a network's parameters and buffers).
using TensorMap = std::map<std::string, torch::Tensor>;

/// "auto" -> CUDA when available, else CPU; "cpu", "cuda", "cuda:N". In a
/// multi-rank job (drdm/engine/distributed.h), "auto" and "cuda" mean cuda:LOCAL_RANK.
/// Throws std::invalid_argument for an unknown name or CUDA without a GPU.

/// An independent 64-bit seed for (seed, step, purpose): the random streams
/// of a step need no saved state.
uint64_t stream_seed(uint64_t seed, int64_t step, uint64_t purpose);

/// What a checkpoint or model file holds. `kind` names the trainer ("drdm",
/// "seg-unet", "reg-voxelmorph"); `config` is that trainer's resolved config
/// as JSON text. Adam's state is present in checkpoints (adam_step >= 0) and
/// absent in model files (adam_step = -1).
struct Checkpoint {
  std::string kind = "drdm";
  std::string config;
  int64_t step = 0;
  TensorMap model;
  int64_t adam_step = -1;
  std::vector<torch::Tensor> exp_avg, exp_avg_sq;
};

/// Writes atomically (a temporary file, then rename): a reader never sees
/// half a file. With adam = nullptr the optimiser state is left out.
void save_checkpoint(const std::string& path, const std::string& kind, const std::string& config,
                     int64_t step, const TensorMap& model, const Adam* adam = nullptr);

/// Reads a file written by save_checkpoint. `expected_kind` (when not empty)
/// must match. Throws std::runtime_error naming the file when it is missing,
/// not a libdrdm checkpoint, of another kind, or damaged.
Checkpoint read_checkpoint(const std::string& path, const std::string& expected_kind = {});

/// One value a step reports. The engine logs the mean over each logging
/// window, or the last value when `average` is false (e.g. the learning rate).
struct StepMetric {
  std::string name;
  double value = 0;
  bool average = true;
};

/// What a training step returns: its loss (checked for NaN / inf) and other metrics.
struct StepResult {
  double loss = 0;
  std::vector<StepMetric> metrics;
};

/// Scales the parameters' gradients down so that their global L2 norm is at
/// most max_norm (as torch.nn.utils.clip_grad_norm_); returns the norm before.
double clip_gradients(Adam& adam, double max_norm);

/// One optimiser step on `loss` under train's learning-rate schedule at
/// `step`: reads the loss's value; when it is finite, backward and an Adam
/// step. Returns {value, {"lr"}} (and "grad_norm" when train.grad_clip > 0:
/// gradients are then clipped first); a non-finite value returns {value, {}}
/// without a step (TrainingRun::run then stops with its NaN message).
StepResult descend(Adam& adam, const torch::Tensor& loss, const TrainSection& train, int64_t step);

/// The run a trainer asks the engine for.
struct RunSpec {
  std::string output_dir;
  std::string kind;    ///< checkpoint kind, see Checkpoint
  std::string config;  ///< the resolved config (JSON), written to config.json and checkpoints
  /// --resume requires identity(checkpoint's config) == identity(config):
  /// identity neutralises the keys that may change on resume (the step
  /// count). Unset: the configs must be equal.
  std::function<std::string(const std::string& config)> resume_identity;
  int64_t steps = 0;
  int64_t checkpoint_every = 500;
  int64_t log_every = 10;
  int64_t samples_per_step = 1;  ///< for images_per_second in metrics.jsonl
  /// > 0: stop after this much wall time, at the first logging step past it
  /// (all ranks agree), writing the checkpoint of that step; --resume goes on.
  double max_seconds = 0;
  bool resume = false;
  bool progress = true;
  std::string label = "train";            ///< progress bar label
  std::string lr_key = "train.lr";        ///< named in the NaN-stop advice
  std::string steps_key = "train.steps";  ///< named when the steps fall below a checkpoint's
  /// Held-out validation: when set and validate_every > 0, validate() scores
  /// the current weights (higher is better, the same on every rank) every
  /// validate_every steps, at the end, and before the first step (so a
  /// fine-tuning that never beats its start keeps it). The best weights go to best.pt, the
  /// history to validation.json; after `patience` checks without improvement
  /// (0 = never) the run stops early, checkpointed. Every check also writes
  /// the checkpoint, so --resume repeats the same choices.
  std::function<double()> validate;
  int64_t validate_every = 0;
  int64_t patience = 0;
  std::string validation_name = "validation";  ///< what validate() measures, for logs
};

/// A RunSpec from a config's shared "train" section (steps, checkpoint_every,
/// log_every, batch_size); `config` is the whole resolved config, `identity`
/// its resume identity (see RunSpec::resume_identity).
RunSpec run_spec(const TrainSection& train, const std::string& output_dir, const std::string& kind,
                 const std::string& config, std::function<std::string(const std::string&)> identity,
                 bool resume, bool progress);

/// How a run ended.
struct RunSummary {
  int64_t first_step = 0;      ///< where this run started (0 or the resumed step)
  int64_t steps = 0;           ///< the step count reached
  double seconds = 0;          ///< wall time of this run
  double last_loss = 0;        ///< mean loss over the last logging window
  std::string checkpoint;      ///< output_dir/checkpoint.pt
  std::string model;           ///< output_dir/model.pt, or best.pt when validated
  int64_t chosen_step = -1;    ///< the step of best.pt (-1 without validation)
  double best_validation = 0;  ///< its validation score
  bool stopped_early = false;  ///< stopped by `patience`
};

/// Output files of a run: config.json, checkpoint.pt (weights + Adam, every
/// checkpoint_every steps and at the end), model.pt (weights only),
/// metrics.jsonl (one JSON object per logged step: step, the step's metrics,
/// seconds_per_step, images_per_second, elapsed_seconds).
class TrainingRun {
 public:
  /// `weights()` gives the network's current named tensors; `load(w)` copies
  /// weights in. Both must stay valid for the run's lifetime, as must `adam`.
  TrainingRun(RunSpec spec, std::function<TensorMap()> weights,
              std::function<void(const TensorMap&)> load, Adam& adam);

  /// With spec.resume: reads checkpoint.pt (an error when absent, of another
  /// kind, trained with another config, or further than spec.steps: nothing is
  /// written then) and restores weights and
  /// Adam. Writes config.json and keeps only the metrics lines up to the
  /// resumed step. Returns the first step to run.
  int64_t start();

  /// Runs steps [first, spec.steps): step(s) trains one step and returns its
  /// metrics; after(done) runs after each step (previews, ...) before the
  /// checkpoint of that step. A non-finite loss stops with an error that
  /// names the step and keeps the last good checkpoint. With spec.max_seconds
  /// the run may stop earlier, checkpointed (RunSummary::steps says where).
  /// In a data-parallel job every rank returns once rank 0 has written the model.
  RunSummary run(const std::function<StepResult(int64_t step)>& step,
                 const std::function<void(int64_t done)>& after = {});

  const RunSpec& spec() const { return spec_; }
  int64_t first_step() const { return first_step_; }

 private:
  void start_here();
  void average_window(int64_t done);
  void check_steps(int64_t checkpoint_step, const std::string& checkpoint) const;
  void accumulate(const std::vector<StepMetric>& metrics);
  void log_window(int64_t done, double seconds);
  void save(int64_t done);
  bool out_of_time(int64_t done, double seconds) const;
  bool validating() const { return spec_.validate && spec_.validate_every > 0; }
  bool validate_now(int64_t done);
  void load_validation_history();
  void finish_validation(RunSummary& summary) const;

  RunSpec spec_;
  std::function<TensorMap()> weights_;
  std::function<void(const TensorMap&)> load_;
  Adam& adam_;
  int64_t first_step_ = 0;
  bool started_ = false;
  std::vector<StepMetric> window_;
  double window_loss_ = 0;
  int64_t window_n_ = 0;
  double last_loss_ = 0;
  std::string metrics_path_;
  double elapsed_at_start_ = 0;
  std::vector<std::pair<int64_t, double>> history_;  ///< validation checks: (step, score)
  int64_t best_step_ = -1;
  double best_score_ = 0;
};

}  // namespace drdm
