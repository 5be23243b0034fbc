/// @file Training the recovery network (paper Alg. 1), checkpoints, and loading trained models.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/network.h"
#include "drdm/train_config.h"
#include "drdm/training_engine.h"
#include "drdm/velocity_sampler.h"

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

/// A trained network with the config it was trained with.
struct TrainedModel {
  RecoveryNet net;
  TrainConfig config;
  int64_t step = 0;
};

/// Loads model.pt or checkpoint.pt written by train(), or a shipped model by
/// name ("cardiac2d", see drdm/models.h); the network is put on `device` in
/// eval mode. Throws std::runtime_error naming the file.
TrainedModel load_model(const std::string& name_or_path, const torch::Device& device = torch::kCPU);

/// Recovery error of one predicted step at level t, on held-out images.
struct RecoveryCheck {
  int64_t t = 0;
  double no_step_error =
      0;  ///< mean_x ||psi_t(x)|| in voxels (error if the network predicted nothing)
  double one_step_error = 0;  ///< mean_x ||compose(psi_t, psi_hat)(x)|| in voxels
  double ratio = 0;           ///< one_step_error / no_step_error (< 1: the network recovers)
  double cosine = 0;  ///< mean_x cos(psi_t(x), -psi_hat(x + psi_t(x))) (1: points exactly back)
  int64_t samples = 0;
};

/// For each t in levels: `repeats` forward draws per image of `images`
/// [N, 1, ...S] (already preprocessed to the model's size), the network's
/// prediction, and the errors above. Deterministic for a seed.
std::vector<RecoveryCheck> check_recovery(RecoveryNet& net, const VelocitySampler& sampler,
                                          const torch::Tensor& images,
                                          const std::vector<int64_t>& levels, int64_t repeats,
                                          uint64_t seed, int64_t batch = 16);

}  // namespace drdm
