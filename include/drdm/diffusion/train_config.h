/// @file Training configuration: JSON files in configs/, validated, with dotted-key overrides.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/diffusion/losses.h"
#include "drdm/diffusion/network.h"
#include "drdm/diffusion/velocity_sampler.h"
#include "drdm/engine/train_section.h"
#include "drdm/io/dataset.h"

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
  NetworkOptions model;    ///< "model": time_embedding, recursion and the authors'-variant keys
                           ///< (docs/configs.md); dims and timesteps follow data and sampler
  LossWeights loss;        ///< "loss": distance, angle, regularisation, eps
  using Train = TrainSection;
  TrainSection train;  ///< "train": the engine's section (drdm/engine/train_section.h)
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

/// The key reference of one section of the config ("" = the top-level keys):
/// the Markdown table that docs/configs.md shows, made from the key table
/// that the parser and to_json use (key, default, unit, meaning).
std::string train_config_reference(const std::string& section);

/// The network options a config implies (dims from data, timesteps from sampler).
NetworkOptions network_options(const TrainConfig& config);

}  // namespace drdm
