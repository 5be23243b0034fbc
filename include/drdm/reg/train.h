/// @file Registration training (src/reg/train.cpp): the banks of synthetic
/// pairs, VoxelMorph's pretraining (Eq. 20) and fine-tuning, and loading a
/// trained model.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>

#include "drdm/engine/training_engine.h"
#include "drdm/reg/config.h"
#include "drdm/reg/voxelmorph.h"

namespace drdm::reg {

/// A bank of synthetic pairs of `kind` ("mrbs" or "drdm") for the training
/// images (float [M, 1, ...size]): pairs_per_image pairs per image, images
/// float16, targets float32. Cached in dir/bank.pt (+ manifest.json); a cache
/// made for other images or settings is rebuilt.
struct PairBank {
  torch::Tensor moving, fixed, target;
  double seconds = 0;  ///< time it took to generate (0 when read from the cache)
};
PairBank synthetic_bank(const std::string& kind, const torch::Tensor& images,
                        const RegConfig& config, const std::string& dir, bool progress = true);

/// A trained registration model; identity = true registers nothing (the zero field).
struct RegModel {
  VoxelMorph net;
  RegConfig config;
  int64_t step = 0;
  bool identity = false;
};

/// Scores the network being trained (higher is better), e.g. validation_dice.
using RegValidate = std::function<double(RegModel&)>;

/// Trains VoxelMorph into output_dir with the shared training engine (resumes
/// when a checkpoint is there). phase "pretrain": on `bank` with Eq. 20;
/// phase "finetune": on random ordered pairs of `images` (no labels), starting
/// from init_weights (a model.pt; empty = from scratch). With the phase's
/// validate_every > 0, `validate` scores the run and its best step is the
/// result (RunSummary::model is best.pt); otherwise model.pt.
RunSummary train_registration(const RegConfig& config, const std::string& phase,
                              const PairBank& bank, const torch::Tensor& images,
                              const std::string& init_weights, const std::string& output_dir,
                              bool progress = true, const RegValidate& validate = {});
/// Loads a model.pt of train_registration (or a shipped name under models/).
RegModel load_reg_model(const std::string& name_or_path, const torch::Device& device = torch::kCPU);

}  // namespace drdm::reg
