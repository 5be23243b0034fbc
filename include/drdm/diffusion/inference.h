// Using a trained recovery network: load a model file (or a shipped model
// by name) and measure how well it recovers known deformations. Generation
// (drdm/diffusion/generate.h) and drdm_check_recovery stand on this, never on
// the trainer.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/diffusion/network.h"
#include "drdm/diffusion/train_config.h"
#include "drdm/diffusion/velocity_sampler.h"

namespace drdm {

/// A trained network with the config it was trained with.
struct TrainedModel {
  RecoveryNet net;
  TrainConfig config;
  int64_t step = 0;
};

/// Loads model.pt or checkpoint.pt written by train(), or a shipped model by
/// name ("cardiac2d", see drdm/io/models.h); the network is put on `device` in
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
