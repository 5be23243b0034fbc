#include "drdm/diffusion/train_config.h"

#include "engine/config_json.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace drdm {

using nlohmann::json;
using detail::get;
using detail::require;

namespace {

bool finite(double v) { return std::isfinite(v); }

// The model keys that select the authors' variant of the network (drdm/import.h).
void parse_model_variant(const json& j, const std::string& src, NetworkOptions& m) {
  const auto parse = [&](const char* key, auto parser) {
    const auto name = get<std::string>(j, "model", key, src);
    try {
      return parser(name);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(src + ": config key 'model." + key + "' " + e.what());
    }
  };
  m.time_frequencies = parse("time_frequencies", parse_time_frequencies);
  m.output_units = parse("output_units", parse_output_units);
  m.time_mlp_slope = get<double>(j, "model", "time_mlp_slope", src);
  m.decoder_norm = get<bool>(j, "model", "decoder_norm", src);
  m.output_clamp = get<bool>(j, "model", "output_clamp", src);
  require(finite(m.time_mlp_slope) && m.time_mlp_slope >= 0 && m.time_mlp_slope < 1, src,
          "model.time_mlp_slope", "must be in [0, 1)");
}

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
               {"fit", d.fit},
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
  const auto& m = c.model;
  j["model"] = {{"in_channels", m.in_channels},
                {"time_embedding", m.time_embedding},
                {"recursion", m.recursion},
                {"time_frequencies", to_string(m.time_frequencies)},
                {"time_mlp_slope", m.time_mlp_slope},
                {"decoder_norm", m.decoder_norm},
                {"output_units", to_string(m.output_units)},
                {"output_clamp", m.output_clamp}};
  j["loss"] = {{"distance", c.loss.distance},
               {"angle", c.loss.angle},
               {"regularisation", c.loss.regularisation},
               {"eps", c.loss.eps}};
  j["train"] = detail::train_section_json(c.train);
  return j;
}

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
  d.fit = get<std::string>(j, "data", "fit", src);
  require(
      d.fit == "aspect" || d.fit == "stretch", src, "data.fit",
      "must be \"aspect\" (keep the aspect ratio, zero padding) or \"stretch\" (fill the grid)");
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
  } catch (const std::invalid_argument& e) {  // "sampler.key: why"
    const std::string m = e.what();
    const auto colon = m.find(": ");
    if (colon == std::string::npos) throw std::invalid_argument(src + ": config key " + m);
    throw std::invalid_argument(src + ": config key '" + m.substr(0, colon) + "'" + m.substr(colon + 1));
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
  parse_model_variant(j, src, c.model);
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

  c.train = detail::parse_train_section(j, src);
  return c;
}

}  // namespace


TrainConfig parse_train_config(const std::string& json_text, const std::string& source,
                               const std::vector<std::string>& overrides) {
  const json merged = detail::merge_config(defaults_json(TrainConfig{}), json_text, source, overrides);
  return detail::blaming_overrides(source, overrides, [&] { return from_json(merged, source); });
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_train_config(detail::read_config_text(path), path, overrides);
}

std::string to_json(const TrainConfig& config) { return defaults_json(config).dump(2); }

NetworkOptions network_options(const TrainConfig& config) {
  NetworkOptions o = config.model;
  o.dims = config.data.dims;
  o.timesteps = config.sampler.timesteps;
  return o;
}

}  // namespace drdm
