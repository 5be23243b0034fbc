// Private: JSON configs checked against their defaults (unknown keys with a
// suggestion, wrong types and bad values name the file and the dotted key),
// with section.key=value overrides. Every config of the library uses this.
#pragma once

#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>
#include <vector>

#include "drdm/train_config.h"

namespace drdm::detail {

/// Checks `given` against the structure of `expected` (the defaults).
void check_against(const nlohmann::json& expected, const nlohmann::json& given,
                   const std::string& prefix, const std::string& source);

/// Applies one "section.key=value" override (value: JSON, or a bare string).
void apply_override(nlohmann::json& user, const std::string& text);

/// Parses json_text (comments allowed), checks it and the overrides against
/// `defaults`, and returns the defaults with both merged in.
nlohmann::json merge_config(const nlohmann::json& defaults, const std::string& json_text,
                            const std::string& source, const std::vector<std::string>& overrides);

/// Reads a config file into text; an error names the file.
std::string read_config_text(const std::string& path);

/// Throws std::invalid_argument "<source>: config key '<key>' <why>" unless ok.
void require(bool ok, const std::string& source, const std::string& key, const std::string& why);

template <typename T>
T get(const nlohmann::json& j, const std::string& section, const std::string& key,
      const std::string& source) {
  try {
    return j.at(section).at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(source + ": config key '" + section + "." + key +
                                "' has the wrong type: " + j.at(section).at(key).dump());
  }
}


/// The "train" section (optimiser, schedule, steps, checkpoints, device) that
/// every trainer's config shares: its defaults as JSON, and its checked parse.
nlohmann::json train_section_json(const TrainConfig::Train& train);
/// `section` names the JSON section that holds these keys (error messages name it too).
TrainConfig::Train parse_train_section(const nlohmann::json& j, const std::string& source,
                                       const std::string& section = "train");

}  // namespace drdm::detail
