/// @file Whole-string integer parsing for options, environment variables
/// and names: one rule everywhere.
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string_view>

namespace drdm::detail {

/// `text` when it is a whole decimal integer that fits int64_t ("7", "-12";
/// no spaces, no '+', nothing after the digits), else nullopt.
inline std::optional<int64_t> parse_integer(std::string_view text) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  const auto r = std::from_chars(text.data(), end, v);
  if (text.empty() || r.ec != std::errc() || r.ptr != end) return std::nullopt;
  return v;
}

}  // namespace drdm::detail
