// Private: a checkpoint or model file of a recovery network, with its
// config parsed (shared by training, which resumes and fine-tunes from
// them, and inference, which loads them).
#pragma once

#include <string>

#include "drdm/diffusion/train_config.h"
#include "drdm/engine/training_engine.h"

namespace drdm::detail {

inline constexpr const char* kDrdmCheckpointKind = "drdm";

struct LoadedCheckpoint {
  TrainConfig config;
  Checkpoint file;
};

/// Reads `path` (a checkpoint.pt or model.pt of kind "drdm") and parses the
/// config embedded in it; errors name the file.
LoadedCheckpoint read_drdm_checkpoint(const std::string& path);

}  // namespace drdm::detail
