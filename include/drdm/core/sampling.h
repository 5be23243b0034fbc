/// @file How images, labels and fields are sampled off the grid, and the one
/// mapping between those choices and their names in configs and options.
#pragma once

#include <string>
#include <vector>

namespace drdm {

enum class Interpolation { kLinear, kNearest };
enum class Padding { kZeros, kBorder };
/// How class maps are warped: nearest neighbour, or one-hot linear then argmax.
enum class LabelInterpolation { kNearest, kSoft };

/// "linear" | "nearest", "zeros" | "border", "nearest" | "soft".
const char* to_string(Interpolation mode);
const char* to_string(Padding padding);
const char* to_string(LabelInterpolation mode);

/// The accepted names, in the order above (CLI choices, config checks).
std::vector<std::string> interpolation_names();
std::vector<std::string> padding_names();
std::vector<std::string> label_interpolation_names();

/// Parses a name; std::invalid_argument "expected 'zeros' or 'border', got 'x'"
/// for anything else (the caller adds the file and key).
Interpolation parse_interpolation(const std::string& name);
Padding parse_padding(const std::string& name);
LabelInterpolation parse_label_interpolation(const std::string& name);

}  // namespace drdm
