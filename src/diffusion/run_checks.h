// Private: checks that seg_fewshot run and reg_synth run make before their first write.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace drdm::detail {

/// Refuses a level above the DRDM model's T: throws std::invalid_argument
/// naming `key`, the model and its T. `model` is a shipped name or a path.
void require_levels_in_model(const std::string& model, const std::vector<int64_t>& levels,
                             const std::string& key);

/// Refuses an output folder that is, or lies inside, one of the data
/// folders ({key, folder}), after following links: a rerun would read its
/// own outputs as data. Throws std::invalid_argument naming both.
void require_output_outside(const std::string& output,
                            const std::vector<std::pair<std::string, std::string>>& folders);

}  // namespace drdm::detail
