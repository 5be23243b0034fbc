// Private: JSON configs checked against their defaults (unknown keys with a
// suggestion, wrong types and bad values name the file and the dotted key),
// with section.key=value overrides. Every config of the library uses this.
#pragma once

#include <climits>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

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

/// Throws std::runtime_error naming the config key `key` when `path`, a
/// config's data folder, is not a folder; the message says which working
/// folder a relative path was taken from (shipped configs name
/// ../shared/data/..., from the repository root).
void require_data_folder(const std::string& path, const std::string& key);

/// Throws std::invalid_argument "<source>: config key '<key>' <why>" unless ok.
void require(bool ok, const std::string& source, const std::string& key, const std::string& why);

/// Parses JSON text (comments allowed) and refuses an object that repeats a
/// key: "<source>: duplicate key '<dotted.key>'" (std::invalid_argument).
/// Syntax errors throw nlohmann::json::parse_error.
nlohmann::json parse_json_strict(const std::string& text, const std::string& source);

/// True when `v` can be read as T without losing anything: integer types take
/// integers only (1.7 is not 1; 2^64 - 1 is not -1), unsigned ones no negative
/// numbers; lists are checked element by element.
template <typename T>
struct ExactJson {
  static bool holds(const nlohmann::json& v) {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      if (!v.is_number_integer()) return false;
      if constexpr (std::is_unsigned_v<T>) return v.is_number_unsigned();
      return !v.is_number_unsigned() || v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX);
    }
    return true;
  }
  static std::string what() {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
      return std::is_unsigned_v<T> ? "an integer >= 0" : "an integer";
    return "of the default's type";
  }
};
template <typename E>
struct ExactJson<std::vector<E>> {
  static bool holds(const nlohmann::json& v) {
    if (!v.is_array()) return true;  // get<> reports the wrong type
    for (const auto& e : v)
      if (!ExactJson<E>::holds(e)) return false;
    return true;
  }
  static std::string what() { return "a list whose entries are each " + ExactJson<E>::what(); }
};

/// A config value read as J, with errors naming `key` (the dotted key):
/// integers exactly (ExactJson), everything else as nlohmann's get<J>.
template <typename J>
J read_value(const nlohmann::json& v, const std::string& source, const std::string& key) {
  if (!ExactJson<J>::holds(v))
    throw std::invalid_argument(source + ": config key '" + key + "' must be " +
                                ExactJson<J>::what() + ", got " + v.dump());
  try {
    return v.get<J>();
  } catch (const nlohmann::json::exception&) {
    throw std::invalid_argument(source + ": config key '" + key +
                                "' has the wrong type: " + v.dump());
  }
}

template <typename T>
T get(const nlohmann::json& j, const std::string& section, const std::string& key,
      const std::string& source) {
  return read_value<T>(j.at(section).at(key), source, section + "." + key);
}

/// A value as the key reference (docs/configs.md) shows it: JSON, with ", "
/// between list entries.
std::string reference_value(const nlohmann::json& v);

/// When `error` (from checking a merged config read from `source`) is about a
/// key that one of `overrides` set, rethrows it naming that --set instead of
/// the file; otherwise rethrows it unchanged.
[[noreturn]] void rethrow_blaming_overrides(const std::invalid_argument& error,
                                            const std::string& source,
                                            const std::vector<std::string>& overrides);

/// Runs parse() (a config's checks after merge_config) with errors about
/// overridden keys blamed on the --set that gave them.
template <typename F>
auto blaming_overrides(const std::string& source, const std::vector<std::string>& overrides,
                       F&& parse) {
  try {
    return parse();
  } catch (const std::invalid_argument& e) {
    rethrow_blaming_overrides(e, source, overrides);
  }
}

/// The body of every parse_*_config: `text` merged over `defaults` (unknown
/// keys refused, `overrides` applied), then from_json(merged, source), with
/// errors about overridden keys blamed on their --set.
template <typename FromJson>
auto parse_config(const nlohmann::json& defaults, const std::string& text,
                  const std::string& source, const std::vector<std::string>& overrides,
                  FromJson&& from_json) {
  const nlohmann::json merged = merge_config(defaults, text, source, overrides);
  return blaming_overrides(source, overrides, [&] { return from_json(merged, source); });
}

}  // namespace drdm::detail
