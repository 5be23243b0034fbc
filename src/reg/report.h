// Private: the JSON form of a scored registration pair (reg_synth register and run).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace drdm::reg {
// Declared in drdm/reg/evaluate.h, not included here: evaluate.cpp, which
// implements pair_json, includes this header (no include cycle).
struct PairResult;
}  // namespace drdm::reg

namespace drdm::reg::report {

/// {"moving", "fixed", "classes": {name: {"dice", "asd", "hd95"}}, "folding"}; NaN -> null.
nlohmann::json pair_json(const PairResult& result, const std::vector<std::string>& class_names);

}  // namespace drdm::reg::report
