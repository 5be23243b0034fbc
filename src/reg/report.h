// Private: the JSON form of a scored registration pair (reg_synth register and run).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "drdm/reg/synth.h"

namespace drdm::reg::report {

/// {"moving", "fixed", "classes": {name: {"dice", "asd", "hd95"}}, "folding"}; NaN -> null.
nlohmann::json pair_json(const PairResult& result, const std::vector<std::string>& class_names);

}  // namespace drdm::reg::report
