/// @file Training configuration: JSON files in configs/, validated, with dotted-key overrides.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/dataset.h"
#include "drdm/losses.h"
#include "drdm/network.h"
#include "drdm/velocity_sampler.h"

namespace drdm {

/// Everything a training run needs. Every field has a JSON key
/// (section.key, documented in docs/configs.md); defaults are the paper's
/// where the paper gives one.
struct TrainConfig {
  std::string name = "drdm";
  DatasetOptions
      data;  ///< "data": folders, include, exclude, dims, slice_axis, size, clip_*, min_foreground
  AugmentOptions augment;  ///< "augment"
  SamplerOptions sampler;  ///< "sampler" (process as "stationary" | "markov")
  NetworkOptions
      model;  ///< "model": time_embedding, recursion and the authors'-variant keys
              ///< (docs/configs.md); dims and timesteps follow data and sampler
  LossWeights loss;  ///< "loss": distance, angle, regularisation, eps
  struct Train {
    int64_t batch_size = 64;
    int64_t steps = 10000;
    double lr = 1e-4;
    double lr_decay = 1.0;  ///< "exponential" schedule: lr multiplied by this every step
    /// "exponential" (lr * lr_decay^step), "cosine" (linear warm-up to lr, then
    /// cosine decay to lr_min at `steps`) or "constant" (warm-up, then lr).
    std::string lr_schedule = "exponential";
    int64_t warmup_steps = 0;  ///< linear warm-up from lr/warmup_steps to lr ("cosine", "constant")
    double lr_min = 0.0;       ///< the learning rate that "cosine" ends at
    /// Start from these weights (a model.pt or checkpoint.pt) with a fresh
    /// optimiser and schedule (fine-tuning, continuing across sessions).
    std::string init_from;
    uint64_t seed = 0;
    int64_t checkpoint_every =
        500;                      ///< steps between checkpoints (one is always written at the end)
    int64_t preview_every = 500;  ///< steps between preview PNGs (0 = never)
    int64_t log_every = 10;       ///< steps between metrics lines
    std::string mixed_precision = "none";  ///< "none" or "bf16" (autocast of the network, CPU or CUDA)
    std::string device = "auto";           ///< "auto" (CUDA when present), "cpu", "cuda", "cuda:N"
    int64_t threads = 0;                   ///< CPU intra-op threads, 0 = LibTorch's default
    int64_t prefetch = 2;                  ///< batches prepared ahead by the loader thread
    /// Data-parallel runs (docs/distributed.md): rendezvous and collective
    /// timeout in seconds (DRDM_DIST_TIMEOUT overrides), and the master as
    /// "host:port" when neither torchrun nor MASTER_ADDR / MASTER_PORT give it.
    double dist_timeout = 300;
    std::string dist_master;
  } train;
};

/// Reads a JSON config. Keys missing from the file take their defaults;
/// unknown keys, wrong types and out-of-range values are errors naming the
/// file and the dotted key. `overrides` are "section.key=value" strings
/// (value: JSON, or a bare string), applied after the file.
/// Throws std::invalid_argument.
TrainConfig load_train_config(const std::string& path,
                              const std::vector<std::string>& overrides = {});

/// The same from JSON text; `source` names it in error messages.
TrainConfig parse_train_config(const std::string& json_text, const std::string& source,
                               const std::vector<std::string>& overrides = {});

/// The full resolved config as pretty JSON (every key), which parses back to the same config.
std::string to_json(const TrainConfig& config);

/// The learning rate of optimiser step `step` (0-based) under train's schedule.
double learning_rate(const TrainConfig::Train& train, int64_t step);

/// The network options a config implies (dims from data, timesteps from sampler).
NetworkOptions network_options(const TrainConfig& config);

}  // namespace drdm
