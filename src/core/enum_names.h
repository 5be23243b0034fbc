// Private: the one way an enum's values are tied to their names in configs
// and options: a table of {value, name} pairs, read both ways.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace drdm::detail {

template <typename E, size_t N>
using EnumNames = std::pair<E, const char*>[N];

/// The name of `value` in `table` ("?" when absent).
template <typename E, size_t N>
const char* enum_name(const EnumNames<E, N>& table, E value) {
  for (const auto& [e, name] : table)
    if (e == value) return name;
  return "?";
}

/// The value named `name`, or nothing.
template <typename E, size_t N>
std::optional<E> enum_value(const EnumNames<E, N>& table, const std::string& name) {
  for (const auto& [e, n] : table)
    if (name == n) return e;
  return std::nullopt;
}

/// The names, in table order.
template <typename E, size_t N>
std::vector<std::string> enum_names(const EnumNames<E, N>& table) {
  std::vector<std::string> out;
  for (const auto& entry : table) out.emplace_back(entry.second);
  return out;
}

/// "'a', 'b' or 'c'": the names for an error message.
template <typename E, size_t N>
std::string enum_choices(const EnumNames<E, N>& table) {
  std::string text;
  for (size_t i = 0; i < N; ++i)
    text += (i == 0 ? "'" : i + 1 == N ? " or '" : ", '") + std::string(table[i].second) + "'";
  return text;
}

}  // namespace drdm::detail
