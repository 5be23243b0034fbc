#include "drdm/core/sampling.h"

#include <stdexcept>
#include <utility>

namespace drdm {
namespace {

constexpr std::pair<Interpolation, const char*> kInterpolation[] = {
    {Interpolation::kLinear, "linear"}, {Interpolation::kNearest, "nearest"}};
constexpr std::pair<Padding, const char*> kPadding[] = {{Padding::kZeros, "zeros"},
                                                        {Padding::kBorder, "border"}};
constexpr std::pair<LabelInterpolation, const char*> kLabel[] = {
    {LabelInterpolation::kNearest, "nearest"}, {LabelInterpolation::kSoft, "soft"}};

template <typename E, size_t N>
const char* name_of(const std::pair<E, const char*> (&table)[N], E value) {
  for (const auto& [e, name] : table)
    if (e == value) return name;
  return "?";
}

template <typename E, size_t N>
std::vector<std::string> names_of(const std::pair<E, const char*> (&table)[N]) {
  std::vector<std::string> out;
  for (const auto& entry : table) out.emplace_back(entry.second);
  return out;
}

template <typename E, size_t N>
E parse(const std::pair<E, const char*> (&table)[N], const std::string& name) {
  std::string expected;
  for (size_t i = 0; i < N; ++i) {
    if (name == table[i].second) return table[i].first;
    expected += (i == 0 ? "'" : i + 1 == N ? " or '" : ", '") + std::string(table[i].second) + "'";
  }
  throw std::invalid_argument("expected " + expected + ", got '" + name + "'");
}

}  // namespace

const char* to_string(Interpolation mode) { return name_of(kInterpolation, mode); }
const char* to_string(Padding padding) { return name_of(kPadding, padding); }
const char* to_string(LabelInterpolation mode) { return name_of(kLabel, mode); }

std::vector<std::string> interpolation_names() { return names_of(kInterpolation); }
std::vector<std::string> padding_names() { return names_of(kPadding); }
std::vector<std::string> label_interpolation_names() { return names_of(kLabel); }

Interpolation parse_interpolation(const std::string& name) { return parse(kInterpolation, name); }
Padding parse_padding(const std::string& name) { return parse(kPadding, name); }
LabelInterpolation parse_label_interpolation(const std::string& name) {
  return parse(kLabel, name);
}

}  // namespace drdm
