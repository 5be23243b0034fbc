#include "drdm/core/sampling.h"

#include <stdexcept>

#include "core/enum_names.h"

namespace drdm {
namespace {

using detail::EnumNames;

constexpr EnumNames<Interpolation, 2> kInterpolation = {{Interpolation::kLinear, "linear"},
                                                        {Interpolation::kNearest, "nearest"}};
constexpr EnumNames<Padding, 2> kPadding = {{Padding::kZeros, "zeros"},
                                            {Padding::kBorder, "border"}};
constexpr EnumNames<LabelInterpolation, 2> kLabel = {{LabelInterpolation::kNearest, "nearest"},
                                                     {LabelInterpolation::kSoft, "soft"}};

template <typename E, size_t N>
E parse(const EnumNames<E, N>& table, const std::string& name) {
  if (const auto value = detail::enum_value(table, name)) return *value;
  throw std::invalid_argument("expected " + detail::enum_choices(table) + ", got '" + name + "'");
}

}  // namespace

const char* to_string(Interpolation mode) { return detail::enum_name(kInterpolation, mode); }
const char* to_string(Padding padding) { return detail::enum_name(kPadding, padding); }
const char* to_string(LabelInterpolation mode) { return detail::enum_name(kLabel, mode); }

std::vector<std::string> interpolation_names() { return detail::enum_names(kInterpolation); }
std::vector<std::string> padding_names() { return detail::enum_names(kPadding); }
std::vector<std::string> label_interpolation_names() { return detail::enum_names(kLabel); }

Interpolation parse_interpolation(const std::string& name) { return parse(kInterpolation, name); }
Padding parse_padding(const std::string& name) { return parse(kPadding, name); }
LabelInterpolation parse_label_interpolation(const std::string& name) {
  return parse(kLabel, name);
}

}  // namespace drdm
