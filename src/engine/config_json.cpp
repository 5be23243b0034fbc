#include "engine/config_json.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "io/files.h"

namespace drdm::detail {

using nlohmann::json;

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t prev = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cur = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1)});
      prev = cur;
    }
  }
  return row[b.size()];
}

std::string type_name(const json& v) {
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  return "null";
}

bool same_kind(const json& expected, const json& given) {
  if (expected.is_number_integer()) return given.is_number_integer();
  if (expected.is_number()) return given.is_number();
  if (expected.is_array()) {
    if (!given.is_array()) return false;
    // Element kind from the default's first element, or from the key's meaning when empty.
    return true;
  }
  return expected.type() == given.type();
}

// Checks `given` against the defaults' structure: unknown keys (with a
// suggestion) and wrong types are errors naming the dotted key.
}  // namespace

void check_against(const json& expected, const json& given, const std::string& prefix,
                   const std::string& source) {
  if (!given.is_object())
    throw std::invalid_argument(source + ": " +
                                (prefix.empty() ? "the config" : "'" + prefix + "'") +
                                " must be a JSON object, got " + type_name(given));
  for (auto it = given.begin(); it != given.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (!expected.contains(it.key())) {
      std::string best;
      size_t best_d = 4;
      for (auto e = expected.begin(); e != expected.end(); ++e) {
        const auto dist = edit_distance(it.key(), e.key());
        if (dist < best_d) best_d = dist, best = e.key();
      }
      throw std::invalid_argument(
          source + ": unknown config key '" + key + "'" +
          (best.empty()
               ? ""
               : " (did you mean '" + (prefix.empty() ? best : prefix + "." + best) + "'?)"));
    }
    const auto& exp = expected.at(it.key());
    if (exp.is_object()) {
      check_against(exp, it.value(), key, source);
    } else if (!same_kind(exp, it.value())) {
      throw std::invalid_argument(source + ": config key '" + key + "' must be " + type_name(exp) +
                                  ", got " + type_name(it.value()) + " (" + it.value().dump() +
                                  ")");
    }
  }
}

json parse_json_strict(const std::string& text, const std::string& source) {
  struct Frame {
    bool object;
    std::string path, last_key;
    std::set<std::string> keys;
  };
  std::vector<Frame> frames;
  const auto dotted = [](const std::string& a, const std::string& b) {
    return a.empty() ? b : a + "." + b;
  };
  const json::parser_callback_t check = [&](int, json::parse_event_t event, json& parsed) {
    using E = json::parse_event_t;
    if (event == E::object_start || event == E::array_start) {
      std::string path;
      if (!frames.empty())
        path = frames.back().object ? dotted(frames.back().path, frames.back().last_key)
                                    : frames.back().path;
      frames.push_back({event == E::object_start, path, "", {}});
    } else if (event == E::object_end || event == E::array_end) {
      frames.pop_back();
    } else if (event == E::key && !frames.empty()) {
      auto& f = frames.back();
      f.last_key = parsed.get<std::string>();
      if (!f.keys.insert(f.last_key).second)
        throw std::invalid_argument(source + ": duplicate key '" + dotted(f.path, f.last_key) +
                                    "' (JSON would silently keep only one of its values)");
    }
    return true;
  };
  return json::parse(text, check, /*allow_exceptions=*/true, /*ignore_comments=*/true);
}

namespace {

/// True when `text` names the dotted config key `key` as a whole (not a
/// part of a longer key such as "train.steps_x" or "x.train.steps").
bool names_key(const std::string& text, const std::string& key) {
  const auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (auto at = text.find(key); at != std::string::npos; at = text.find(key, at + 1)) {
    const size_t after = at + key.size();
    const bool starts = at == 0 || !(word(text[at - 1]) || text[at - 1] == '.');
    const bool deeper = after + 1 < text.size() && text[after] == '.' && word(text[after + 1]);
    if (starts && (after == text.size() || !(word(text[after]) || deeper))) return true;
  }
  return false;
}

}  // namespace

void require_data_folder(const std::string& path, const std::string& key) {
  if (dir_exists(path)) return;
  std::string where;
  if (!path.empty() && path[0] != '/') {
    char cwd[4096];
    where = " (a relative path is taken from the working folder '" +
            std::string(::getcwd(cwd, sizeof cwd) ? cwd : "?") + "'; give --set " + key +
            "=FOLDER)";
  }
  throw std::runtime_error("config key '" + key + "': the folder '" + path + "' does not exist" +
                           where);
}

void rethrow_blaming_overrides(const std::invalid_argument& error, const std::string& source,
                               const std::vector<std::string>& overrides) {
  const std::string message = error.what(), prefix = source + ": config key '";
  const auto end = message.find('\'', prefix.size());
  if (message.rfind(prefix, 0) != 0 || end == std::string::npos) throw error;
  const std::string key = message.substr(prefix.size(), end - prefix.size());
  for (auto o = overrides.rbegin(); o != overrides.rend(); ++o) {  // the last one wins
    const std::string set = o->substr(0, o->find('='));
    if (key == set || key.rfind(set + ".", 0) == 0)
      throw std::invalid_argument("--set " + *o + ": config key '" + key + message.substr(end));
  }
  // A check across keys ("must be in [0, train.steps)"): when a --set gave
  // the other key that the message names, that --set made the conflict.
  for (auto o = overrides.rbegin(); o != overrides.rend(); ++o) {
    const std::string set = o->substr(0, o->find('='));
    if (names_key(message.substr(end), set))
      throw std::invalid_argument("--set " + *o + " conflicts with '" + key + "' of " + source +
                                  ": config key '" + key + message.substr(end) + " (override '" +
                                  key + "' too)");
  }
  throw error;
}

void apply_override(json& user, const std::string& text) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::invalid_argument("--set '" + text + "': expected section.key=value");
  const std::string key = text.substr(0, eq), value = text.substr(eq + 1);
  json parsed;
  try {
    parsed = parse_json_strict(value, "--set '" + text + "'");
  } catch (const json::exception&) {
    parsed = value;  // a bare string such as cpu or stationary
  }
  json* node = &user;
  std::stringstream parts(key);
  std::string part;
  std::vector<std::string> path;
  while (std::getline(parts, part, '.')) path.push_back(part);
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    if (!node->contains(path[i])) (*node)[path[i]] = json::object();
    node = &(*node)[path[i]];
    if (!node->is_object())
      throw std::invalid_argument("--set '" + text + "': '" + path[i] + "' is not a section");
  }
  (*node)[path.back()] = parsed;
  // JSON text must be UTF-8; a key or bare-string value that is not would make
  // every later dump() (error messages, config.json) throw (found by fuzzing).
  try {
    (void)user.dump();
  } catch (const json::exception&) {
    throw std::invalid_argument("--set '" + text + "': the key or value is not valid UTF-8 text");
  }
}

json merge_config(const json& defaults, const std::string& json_text, const std::string& source,
                  const std::vector<std::string>& overrides) {
  json user;
  try {
    user = parse_json_strict(json_text, source);
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(source + ": not valid JSON: " + e.what());
  }
  if (!user.is_object()) throw std::invalid_argument(source + ": the config must be a JSON object");
  check_against(defaults, user, "", source);
  for (const auto& o : overrides) {
    json one = json::object();
    apply_override(one, o);
    check_against(defaults, one, "", "--set " + o);
    user.merge_patch(one);
  }
  json merged = defaults;
  merged.merge_patch(user);
  return merged;
}

std::string read_config_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("cannot read config file '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void require(bool ok, const std::string& source, const std::string& key, const std::string& why) {
  if (!ok) throw std::invalid_argument(source + ": config key '" + key + "' " + why);
}

std::string reference_value(const json& v) {
  if (!v.is_array()) return v.dump();
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i == 0 ? "" : ", ") + reference_value(v[i]);
  return out + "]";
}

}  // namespace drdm::detail
