#include "drdm/train_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace drdm {

using nlohmann::json;

namespace {

json defaults_json(const TrainConfig& c) {
  json j;
  j["name"] = c.name;
  const auto& d = c.data;
  j["data"] = {{"folders", d.folders},
               {"include", d.include},
               {"exclude", d.exclude},
               {"subset", d.subset},
               {"dims", d.dims},
               {"slice_axis", d.slice_axis},
               {"size", d.size},
               {"clip_low_pct", d.clip_low_pct},
               {"clip_high_pct", d.clip_high_pct},
               {"min_foreground", d.min_foreground}};
  const auto& a = c.augment;
  j["augment"] = {{"enabled", a.enabled},         {"rotation_deg", a.rotation_deg},
                  {"translation", a.translation}, {"flip_prob", a.flip_prob},
                  {"crop_min", a.crop_min},       {"crop_max", a.crop_max}};
  const auto& s = c.sampler;
  j["sampler"] = {{"process", to_string(s.process)},
                  {"timesteps", s.timesteps},
                  {"control", s.control},
                  {"levels", s.levels},
                  {"sigma", s.sigma},
                  {"alpha", s.alpha},
                  {"beta", s.beta},
                  {"integrated_alpha", s.integrated_alpha},
                  {"integrated_beta", s.integrated_beta},
                  {"integrated_max", s.integrated_max},
                  {"perturbation", s.perturbation}};
  j["model"] = {{"in_channels", c.model.in_channels},
                {"time_embedding", c.model.time_embedding},
                {"recursion", c.model.recursion}};
  j["loss"] = {{"distance", c.loss.distance},
               {"angle", c.loss.angle},
               {"regularisation", c.loss.regularisation},
               {"eps", c.loss.eps}};
  const auto& t = c.train;
  j["train"] = {{"batch_size", t.batch_size},
                {"steps", t.steps},
                {"lr", t.lr},
                {"lr_decay", t.lr_decay},
                {"lr_schedule", t.lr_schedule},
                {"warmup_steps", t.warmup_steps},
                {"lr_min", t.lr_min},
                {"init_from", t.init_from},
                {"seed", t.seed},
                {"checkpoint_every", t.checkpoint_every},
                {"preview_every", t.preview_every},
                {"log_every", t.log_every},
                {"mixed_precision", t.mixed_precision},
                {"device", t.device},
                {"threads", t.threads},
                {"prefetch", t.prefetch}};
  return j;
}

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

template <typename T>
T get(const json& j, const std::string& section, const std::string& key,
      const std::string& source) {
  try {
    return j.at(section).at(key).get<T>();
  } catch (const json::exception& e) {
    throw std::invalid_argument(source + ": config key '" + section + "." + key +
                                "' has the wrong type: " + j.at(section).at(key).dump());
  }
}

void require(bool ok, const std::string& source, const std::string& key, const std::string& why) {
  if (!ok) throw std::invalid_argument(source + ": config key '" + key + "' " + why);
}

bool finite(double v) { return std::isfinite(v); }

TrainConfig from_json(const json& j, const std::string& src) {
  TrainConfig c;
  c.name = j.at("name").get<std::string>();
  auto& d = c.data;
  d.folders = get<std::vector<std::string>>(j, "data", "folders", src);
  d.include = get<std::vector<std::string>>(j, "data", "include", src);
  d.exclude = get<std::vector<std::string>>(j, "data", "exclude", src);
  d.subset = get<std::vector<double>>(j, "data", "subset", src);
  require(d.subset.size() == 2 && d.subset[0] >= 0 && d.subset[0] < d.subset[1] && d.subset[1] <= 1, src,
          "data.subset", "must be [from, to] with 0 <= from < to <= 1 (fractions of each folder's sorted files)");
  d.dims = get<int64_t>(j, "data", "dims", src);
  d.slice_axis = get<int64_t>(j, "data", "slice_axis", src);
  d.size = get<std::vector<int64_t>>(j, "data", "size", src);
  d.clip_low_pct = get<double>(j, "data", "clip_low_pct", src);
  d.clip_high_pct = get<double>(j, "data", "clip_high_pct", src);
  d.min_foreground = get<double>(j, "data", "min_foreground", src);
  require(d.dims == 2 || d.dims == 3, src, "data.dims", "must be 2 or 3");
  require(static_cast<int64_t>(d.size.size()) == d.dims, src, "data.size",
          "must have data.dims = " + std::to_string(d.dims) + " entries");
  for (auto s : d.size)
    require(s >= 8 && s % 8 == 0 && s <= 4096, src, "data.size",
            "entries must be multiples of 8 in [8, 4096] (the network halves the size three "
            "times), got " +
                std::to_string(s));
  require(d.slice_axis >= 0 && d.slice_axis <= 2, src, "data.slice_axis", "must be 0, 1 or 2");
  require(d.clip_low_pct >= 0 && d.clip_low_pct < d.clip_high_pct && d.clip_high_pct <= 100, src,
          "data.clip_low_pct", "and data.clip_high_pct must satisfy 0 <= low < high <= 100");
  require(d.min_foreground >= 0 && d.min_foreground < 1, src, "data.min_foreground",
          "must be in [0, 1)");
  require(!d.include.empty(), src, "data.include", "must list at least one pattern");

  auto& a = c.augment;
  a.enabled = get<bool>(j, "augment", "enabled", src);
  a.rotation_deg = get<double>(j, "augment", "rotation_deg", src);
  a.translation = get<double>(j, "augment", "translation", src);
  a.flip_prob = get<double>(j, "augment", "flip_prob", src);
  a.crop_min = get<double>(j, "augment", "crop_min", src);
  a.crop_max = get<double>(j, "augment", "crop_max", src);
  require(a.rotation_deg >= 0 && a.rotation_deg <= 180, src, "augment.rotation_deg",
          "must be in [0, 180]");
  require(a.translation >= 0 && a.translation <= 0.5, src, "augment.translation",
          "must be in [0, 0.5]");
  require(a.flip_prob >= 0 && a.flip_prob <= 1, src, "augment.flip_prob", "must be in [0, 1]");
  require(a.crop_min > 0 && a.crop_min <= a.crop_max && a.crop_max <= 1, src, "augment.crop_min",
          "and augment.crop_max must satisfy 0 < crop_min <= crop_max <= 1");

  auto& s = c.sampler;
  try {
    s.process = parse_diffusion_process(get<std::string>(j, "sampler", "process", src));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(src + ": config key 'sampler.process': " + e.what());
  }
  s.timesteps = get<int64_t>(j, "sampler", "timesteps", src);
  s.control = get<int64_t>(j, "sampler", "control", src);
  s.levels = get<int64_t>(j, "sampler", "levels", src);
  s.sigma = get<double>(j, "sampler", "sigma", src);
  s.alpha = get<double>(j, "sampler", "alpha", src);
  s.beta = get<double>(j, "sampler", "beta", src);
  s.integrated_alpha = get<double>(j, "sampler", "integrated_alpha", src);
  s.integrated_beta = get<double>(j, "sampler", "integrated_beta", src);
  s.integrated_max = get<int64_t>(j, "sampler", "integrated_max", src);
  s.perturbation = get<double>(j, "sampler", "perturbation", src);
  try {
    validate(s);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(src + ": config key " + e.what());
  }

  c.model.in_channels = get<int64_t>(j, "model", "in_channels", src);
  c.model.time_embedding = get<int64_t>(j, "model", "time_embedding", src);
  c.model.recursion = get<int64_t>(j, "model", "recursion", src);
  require(c.model.in_channels == 1, src, "model.in_channels", "must be 1 (grey images)");
  require(c.model.time_embedding >= 2 && c.model.time_embedding % 2 == 0 &&
              c.model.time_embedding <= 4096,
          src, "model.time_embedding", "must be an even number in [2, 4096]");
  require(c.model.recursion >= 1 && c.model.recursion <= 8, src, "model.recursion",
          "must be in [1, 8]");
  c.model.dims = d.dims;
  c.model.timesteps = s.timesteps;

  c.loss.distance = get<double>(j, "loss", "distance", src);
  c.loss.angle = get<double>(j, "loss", "angle", src);
  c.loss.regularisation = get<double>(j, "loss", "regularisation", src);
  c.loss.eps = get<double>(j, "loss", "eps", src);
  for (auto [key, v] : {std::pair<const char*, double>{"loss.distance", c.loss.distance},
                        {"loss.angle", c.loss.angle},
                        {"loss.regularisation", c.loss.regularisation}})
    require(finite(v) && v >= 0, src, key, "must be a finite number >= 0");
  require(finite(c.loss.eps) && c.loss.eps > 0, src, "loss.eps", "must be > 0");

  auto& t = c.train;
  t.batch_size = get<int64_t>(j, "train", "batch_size", src);
  t.steps = get<int64_t>(j, "train", "steps", src);
  t.lr = get<double>(j, "train", "lr", src);
  t.lr_decay = get<double>(j, "train", "lr_decay", src);
  t.lr_schedule = get<std::string>(j, "train", "lr_schedule", src);
  t.warmup_steps = get<int64_t>(j, "train", "warmup_steps", src);
  t.lr_min = get<double>(j, "train", "lr_min", src);
  t.init_from = get<std::string>(j, "train", "init_from", src);
  const auto seed = get<int64_t>(j, "train", "seed", src);
  require(seed >= 0, src, "train.seed", "must be >= 0");
  t.seed = static_cast<uint64_t>(seed);
  t.checkpoint_every = get<int64_t>(j, "train", "checkpoint_every", src);
  t.preview_every = get<int64_t>(j, "train", "preview_every", src);
  t.log_every = get<int64_t>(j, "train", "log_every", src);
  t.mixed_precision = get<std::string>(j, "train", "mixed_precision", src);
  t.device = get<std::string>(j, "train", "device", src);
  t.threads = get<int64_t>(j, "train", "threads", src);
  t.prefetch = get<int64_t>(j, "train", "prefetch", src);
  require(t.batch_size >= 1 && t.batch_size <= 4096, src, "train.batch_size",
          "must be in [1, 4096]");
  require(t.steps >= 1, src, "train.steps", "must be >= 1");
  require(finite(t.lr) && t.lr > 0, src, "train.lr", "must be > 0");
  require(finite(t.lr_decay) && t.lr_decay > 0 && t.lr_decay <= 1, src, "train.lr_decay",
          "must be in (0, 1]");
  require(t.lr_schedule == "exponential" || t.lr_schedule == "cosine" ||
              t.lr_schedule == "constant",
          src, "train.lr_schedule",
          "must be \"exponential\", \"cosine\" or \"constant\", got \"" + t.lr_schedule + "\"");
  require(t.warmup_steps >= 0 && t.warmup_steps < t.steps, src, "train.warmup_steps",
          "must be in [0, train.steps)");
  require(t.lr_schedule != "exponential" || t.warmup_steps == 0, src, "train.warmup_steps",
          "is only used by the \"cosine\" and \"constant\" schedules");
  require(finite(t.lr_min) && t.lr_min >= 0 && t.lr_min <= t.lr, src, "train.lr_min",
          "must be in [0, train.lr]");
  require(t.checkpoint_every >= 1, src, "train.checkpoint_every", "must be >= 1");
  require(t.preview_every >= 0, src, "train.preview_every", "must be >= 0 (0 = no previews)");
  require(t.log_every >= 1, src, "train.log_every", "must be >= 1");
  require(t.mixed_precision == "none" || t.mixed_precision == "bf16", src, "train.mixed_precision",
          "must be \"none\" or \"bf16\", got \"" + t.mixed_precision + "\"");
  require(t.device == "auto" || t.device == "cpu" || t.device.rfind("cuda", 0) == 0, src,
          "train.device",
          "must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"" + t.device + "\"");
  require(t.threads >= 0 && t.threads <= 1024, src, "train.threads", "must be in [0, 1024]");
  require(t.prefetch >= 0 && t.prefetch <= 64, src, "train.prefetch", "must be in [0, 64]");
  return c;
}

void apply_override(json& user, const std::string& text) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::invalid_argument("--set '" + text + "': expected section.key=value");
  const std::string key = text.substr(0, eq), value = text.substr(eq + 1);
  json parsed;
  try {
    parsed = json::parse(value);
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
}

}  // namespace

TrainConfig parse_train_config(const std::string& json_text, const std::string& source,
                               const std::vector<std::string>& overrides) {
  json user;
  try {
    user = json::parse(json_text, nullptr, true, /*ignore_comments=*/true);
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(source + ": not valid JSON: " + e.what());
  }
  if (!user.is_object()) throw std::invalid_argument(source + ": the config must be a JSON object");
  const json defaults = defaults_json(TrainConfig{});
  check_against(defaults, user, "", source);
  for (const auto& o : overrides) {
    json one = json::object();
    apply_override(one, o);
    check_against(defaults, one, "", "--set " + o);
    user.merge_patch(one);
  }
  json merged = defaults;
  merged.merge_patch(user);
  return from_json(merged, source);
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("cannot read config file '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  return parse_train_config(text.str(), path, overrides);
}

std::string to_json(const TrainConfig& config) { return defaults_json(config).dump(2); }

double learning_rate(const TrainConfig::Train& t, int64_t step) {
  const double s = static_cast<double>(step);
  if (t.lr_schedule == "exponential") return t.lr * std::pow(t.lr_decay, s);
  if (step < t.warmup_steps) return t.lr * (s + 1) / static_cast<double>(t.warmup_steps);
  if (t.lr_schedule == "constant") return t.lr;
  const double span = static_cast<double>(std::max<int64_t>(1, t.steps - t.warmup_steps));
  const double p = std::min(1.0, (s - static_cast<double>(t.warmup_steps)) / span);
  return t.lr_min + (t.lr - t.lr_min) * 0.5 * (1.0 + std::cos(M_PI * p));
}

NetworkOptions network_options(const TrainConfig& config) {
  NetworkOptions o = config.model;
  o.dims = config.data.dims;
  o.timesteps = config.sampler.timesteps;
  return o;
}

}  // namespace drdm
