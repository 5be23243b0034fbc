// Private: the key tables of the library's configs. Each config key is
// declared once (section, name, the struct field it binds, its checks, unit
// and one-line doc); the defaults JSON (what unknown keys are checked
// against, and to_json), the checked parse and the key reference of
// docs/configs.md all derive from the one table. Checks across keys stay
// explicit after the table's parse.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/config_json.h"

namespace drdm::detail {

/// One check of a key's value: `why` completes "<file>: config key 'k' ..."
/// ("must be in [1, 4096]"); with show_value the error ends ", got <value>".
template <typename T>
struct Check {
  std::string why;
  std::function<bool(const T&)> ok;
  bool show_value = false;
};

/// A number as the messages write it: 4096, 0.5, 1e-06.
template <typename T>
std::string number_text(T v) {
  if constexpr (std::is_integral_v<T>) {
    return std::to_string(v);
  } else {
    char text[32];
    std::snprintf(text, sizeof text, "%g", static_cast<double>(v));
    return text;
  }
}

template <typename T>
bool finite_number(T v) {
  if constexpr (std::is_floating_point_v<T>) return std::isfinite(v);
  return true;
}

/// Any value that `pred` accepts; `why` says which.
template <typename T, typename P>
Check<T> check(std::string why, P pred, bool show_value = false) {
  return {std::move(why), std::function<bool(const T&)>(std::move(pred)), show_value};
}
/// [lo, hi]
template <typename T>
Check<T> in_range(T lo, T hi) {
  return check<T>("must be in [" + number_text(lo) + ", " + number_text(hi) + "]",
                  [=](const T& v) { return finite_number(v) && v >= lo && v <= hi; });
}
/// (lo, hi]
template <typename T>
Check<T> above_up_to(T lo, T hi) {
  return check<T>("must be in (" + number_text(lo) + ", " + number_text(hi) + "]",
                  [=](const T& v) { return finite_number(v) && v > lo && v <= hi; });
}
/// >= lo, with `note` after the bound (" (0 = all)").
template <typename T>
Check<T> at_least(T lo, const std::string& note = "") {
  return check<T>("must be >= " + number_text(lo) + note,
                  [=](const T& v) { return finite_number(v) && v >= lo; });
}
/// One of the names (the error quotes the value given).
inline Check<std::string> one_of(const std::vector<std::string>& names) {
  std::string why = "must be ";
  for (size_t i = 0; i < names.size(); ++i)
    why += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + ("\"" + names[i] + "\"");
  return check<std::string>(
      why,
      [names](const std::string& v) {
        for (const auto& n : names)
          if (v == n) return true;
        return false;
      },
      true);
}
/// A list that is not empty.
template <typename V>
Check<V> non_empty(const std::string& why = "must not be empty") {
  return check<V>(why, [](const V& v) { return !v.empty(); });
}
/// Every entry passes `each` ("entries must be >= 1").
template <typename E>
Check<std::vector<E>> entries(const Check<E>& each) {
  return check<std::vector<E>>("entries " + each.why, [ok = each.ok](const std::vector<E>& v) {
    for (const auto& e : v)
      if (!ok(e)) return false;
    return true;
  });
}

template <typename J>
void apply_checks(const std::vector<Check<J>>& checks, const J& v, const std::string& src,
                  const std::string& key) {
  for (const auto& c : checks)
    if (c.ok && !c.ok(v))
      throw std::invalid_argument(src + ": config key '" + key + "' " + c.why +
                                  (c.show_value ? ", got " + nlohmann::json(v).dump() : ""));
}

/// One key of a config struct S.
template <typename S>
struct ConfigKey {
  std::string section;  ///< "" for a top-level key
  std::string name;
  std::string unit;    ///< the reference's unit column ("" = none)
  std::string doc;     ///< one line; "" shares the reference row of the key before
  std::string checks;  ///< the checks' words, "; "-joined
  std::function<nlohmann::json(const S&)> write;
  /// Reads, checks and stores the value; errors name `src` and `key`.
  std::function<void(const nlohmann::json& value, const std::string& src, const std::string& key,
                     S&)>
      read;
  std::string dotted() const { return section.empty() ? name : section + "." + name; }
};

template <typename S>
using Keys = std::vector<ConfigKey<S>>;

template <typename J>
std::string checks_text(const std::vector<Check<J>>& checks) {
  std::string out;
  for (const auto& c : checks) out += (out.empty() ? "" : "; ") + c.why;
  return out;
}

/// A key read as J and stored by `set(s, value)`, written as json(get(s)):
/// the form for options with accessors (TORCH_ARG). An std::invalid_argument
/// from `set` names the key: "...'k' must be ..." or "...'k': unknown ...".
template <typename J, typename S, typename Get, typename Set>
ConfigKey<S> key_with(const char* name, Get get, Set set, std::vector<Check<J>> checks,
                      const char* unit, const char* doc) {
  ConfigKey<S> k{"", name, unit, doc, checks_text(checks), {}, {}};
  k.write = [get](const S& s) { return nlohmann::json(get(s)); };
  k.read = [set, checks](const nlohmann::json& v, const std::string& src, const std::string& key,
                         S& s) {
    J value = read_value<J>(v, src, key);
    apply_checks(checks, value, src, key);
    try {
      set(s, std::move(value));
    } catch (const std::invalid_argument& e) {
      const std::string why = e.what();
      throw std::invalid_argument(src + ": config key '" + key + "'" +
                                  (why.rfind("must", 0) == 0 ? " " : ": ") + why);
    }
  };
  return k;
}

/// A key stored in `field` as read (type T).
template <typename S, typename T>
ConfigKey<S> key(const char* name, T S::*field, std::vector<Check<T>> checks, const char* unit,
                 const char* doc) {
  return key_with<T, S>(
      name, [field](const S& s) -> const T& { return s.*field; },
      [field](S& s, T v) { s.*field = std::move(v); }, std::move(checks), unit, doc);
}

/// A key read as J and stored in `field` (type T) through `in` (an enum from
/// its name, a seed from an integer >= 0); written back through `out`.
template <typename J, typename S, typename T, typename In, typename Out>
ConfigKey<S> key_as(const char* name, T S::*field, In in, Out out, std::vector<Check<J>> checks,
                    const char* unit, const char* doc) {
  return key_with<J, S>(
      name, [field, out](const S& s) { return out(s.*field); },
      [field, in](S& s, const J& v) { s.*field = in(v); }, std::move(checks), unit, doc);
}

/// Appends `keys` of the struct S held in `member` of C, as section `section`.
template <typename C, typename S>
void mount(Keys<C>& into, const std::string& section, S C::*member, const Keys<S>& keys) {
  for (const auto& k : keys) {
    ConfigKey<C> m{section, k.name, k.unit, k.doc, k.checks, {}, {}};
    m.write = [member, w = k.write](const C& c) { return w(c.*member); };
    m.read = [member, r = k.read](const nlohmann::json& v, const std::string& src,
                                  const std::string& key, C& c) { r(v, src, key, c.*member); };
    into.push_back(std::move(m));
  }
}

/// Appends `keys` of C itself as section `section` ("" = top level).
template <typename C>
void mount(Keys<C>& into, const std::string& section, Keys<C> keys) {
  for (auto& k : keys) {
    k.section = section;
    into.push_back(std::move(k));
  }
}

/// The config as JSON: every key of the table (the defaults, for C{}).
template <typename C>
nlohmann::json keys_json(const Keys<C>& keys, const C& c) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& k : keys) (k.section.empty() ? j[k.name] : j[k.section][k.name]) = k.write(c);
  return j;
}

/// Reads the keys of the table from `j` (a merged config: all keys there), in
/// table order: all of them, or those of one section (`section`; "" = top level).
template <typename C>
void read_keys(const Keys<C>& keys, const nlohmann::json& j, const std::string& src, C& c,
               const char* section = nullptr) {
  for (const auto& k : keys)
    if (section == nullptr || k.section == section)
      k.read(k.section.empty() ? j.at(k.name) : j.at(k.section).at(k.name), src, k.dotted(), c);
}

/// The Markdown table of `section`'s keys ("" = the top-level ones): key,
/// default, unit (when any key of the section has one) and meaning; a key
/// with an empty doc shares the row before it.
template <typename C>
std::string keys_reference(const Keys<C>& keys, const C& defaults, const std::string& section) {
  bool units = false;
  for (const auto& k : keys) units |= k.section == section && !k.unit.empty();
  std::vector<std::vector<std::string>> rows;  // key, default, unit, doc
  for (const auto& k : keys) {
    if (k.section != section) continue;
    const std::string name = "`" + k.name + "`",
                      value = "`" + reference_value(k.write(defaults)) + "`";
    if (k.doc.empty() && !rows.empty()) {
      rows.back()[0] += ", " + name;
      rows.back()[1] += ", " + value;
    } else {
      rows.push_back({name, value, k.unit, k.doc});
    }
  }
  std::string out = units ? "| key | default | unit | meaning |\n|---|---|---|---|\n"
                          : "| key | default | meaning |\n|---|---|---|\n";
  for (const auto& r : rows)
    out += "| " + r[0] + " | " + r[1] + (units ? " | " + r[2] : "") + " | " + r[3] + " |\n";
  return out;
}

}  // namespace drdm::detail
