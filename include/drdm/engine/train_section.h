// The "train" section that every trainer of the library shares (DRDM,
// seg_fewshot, reg_synth): batch, steps, learning-rate schedule, checkpoints,
// device, threads and data-parallel settings. It belongs to the training
// engine (drdm/engine/training_engine.h), not to any one model.
#pragma once

#include <cstdint>
#include <string>

namespace drdm {

struct TrainSection {
  int64_t batch_size = 64;
  int64_t steps = 10000;
  double lr = 1e-4;
  double lr_decay = 1.0;  ///< "exponential" schedule: lr multiplied by this every step
  /// "exponential" (lr * lr_decay^step), "cosine" (linear warm-up to lr, then
  /// cosine decay to lr_min at `steps`) or "constant" (warm-up, then lr).
  std::string lr_schedule = "exponential";
  int64_t warmup_steps = 0;  ///< linear warm-up from lr/warmup_steps to lr ("cosine", "constant")
  double lr_min = 0.0;       ///< the learning rate that "cosine" ends at
  /// Largest global L2 norm of the gradients: a larger one is scaled down to
  /// it before the step (0 = never clip).
  double grad_clip = 0.0;
  /// Start from these weights (a model.pt or checkpoint.pt) with a fresh
  /// optimiser and schedule (fine-tuning, continuing across sessions).
  std::string init_from;
  uint64_t seed = 0;
  int64_t checkpoint_every = 500;  ///< steps between checkpoints (one is always written at the end)
  int64_t preview_every = 500;     ///< steps between preview PNGs (0 = never)
  int64_t log_every = 10;          ///< steps between metrics lines
  /// Held-out validation (seg_fewshot, reg_synth): steps between checks (0 =
  /// none); the best-scoring weights become the run's model (best.pt).
  int64_t validate_every = 0;
  /// Checks without improvement before the run stops early (0 = never).
  int64_t patience = 0;
  std::string mixed_precision =
      "none";                   ///< "none" or "bf16" (autocast of the network, CPU or CUDA)
  std::string device = "auto";  ///< "auto" (CUDA when present), "cpu", "cuda", "cuda:N"
  int64_t threads = 0;          ///< CPU intra-op threads, 0 = LibTorch's default
  int64_t prefetch = 2;         ///< batches prepared ahead by the loader thread
  /// Data-parallel runs (docs/distributed.md): rendezvous and collective
  /// timeout in seconds (DRDM_DIST_TIMEOUT overrides), and the master as
  /// "host:port" when neither torchrun nor MASTER_ADDR / MASTER_PORT give it.
  double dist_timeout = 300;
  std::string dist_master;
};

/// The learning rate of `step` under train.lr_schedule.
double learning_rate(const TrainSection& train, int64_t step);

}  // namespace drdm
