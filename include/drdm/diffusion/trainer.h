/// @file Training the recovery network (paper Alg. 1) and its checkpoints; loading a trained model
/// is drdm/diffusion/inference.h.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/diffusion/network.h"
#include "drdm/diffusion/train_config.h"
#include "drdm/diffusion/velocity_sampler.h"
#include "drdm/engine/training_engine.h"

namespace drdm {

/// What a training run ended with.
struct TrainSummary {
  int64_t first_step = 0;  ///< the step training started from (0, or the resumed step)
  int64_t steps = 0;       ///< the step count reached (== config.train.steps)
  double seconds = 0;      ///< wall time of this run
  double last_loss = 0;    ///< mean total loss over the last logging window
  std::string checkpoint;  ///< path of the final checkpoint
};

/// Trains per Alg. 1: for each step, a batch (dataset.training_batch with the
/// config's seed and the step), per-sample t ~ U{1..T}, psi_t and phi_{t:1}
/// from the sampler, I_t = warp(I_0, phi), psi_hat = net(I_t, t), loss
/// (Eq. 14), Adam. Everything random derives from (seed, step), so a resumed
/// run continues bit-exactly on the CPU.
///
/// Writes to output_dir: config.json (resolved), checkpoint.pt (model,
/// optimiser, step, config; atomic, every train.checkpoint_every steps and at
/// the end), model.pt (weights and config only, for drdm_deform),
/// metrics.jsonl (one JSON object per logged step), previews/step_NNNNNN.png.
/// resume = true continues from output_dir/checkpoint.pt (error if absent or
/// made with a different config). A non-finite loss stops training with an
/// error; the last good checkpoint is kept.
/// progress: draw a progress bar on stderr. max_seconds > 0: stop after that
/// much wall time, checkpointed at the step reached (TrainSummary::steps).
TrainSummary train(const TrainConfig& config, const std::string& output_dir, bool resume,
                   bool progress = true, double max_seconds = 0);

}  // namespace drdm
