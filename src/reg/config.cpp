// reg_synth configs: JSON checked against the defaults (shared machinery in config_json.h).
#include <cmath>

#include "../config_json.h"
#include "drdm/reg/synth.h"

namespace drdm::reg {

using detail::get;
using detail::require;
using nlohmann::json;

namespace {

json mrbs_json(const std::vector<MrbsLevel>& levels) {
  json out = json::array();
  for (const auto& l : levels) out.push_back({l.control_points, l.max_displacement});
  return out;
}

json phase_json(const TrainSection& t,
                const std::vector<std::pair<std::string, json>>& extra) {
  auto j = detail::train_section_json(t);
  for (const auto& [k, v] : extra) j[k] = v;
  return j;
}

json defaults_json(const RegConfig& c) {
  const auto& d = c.data;
  const auto& s = c.synthetic;
  const auto& v = c.voxelmorph;
  return {{"name", c.name},
          {"data",
           {{"images", d.images},
            {"labels", d.labels},
            {"include", d.include},
            {"size", d.size},
            {"clip_low_pct", d.clip_low_pct},
            {"clip_high_pct", d.clip_high_pct},
            {"classes", d.classes},
            {"train_fraction", d.train_fraction},
            {"test_pairs", d.test_pairs},
            {"seed", d.seed}}},
          {"voxelmorph",
           {{"encoder", v.encoder},
            {"decoder", v.decoder},
            {"integration_steps", v.integration_steps},
            {"integration_downsize", v.integration_downsize}}},
          {"synthetic",
           {{"pairs_per_image", s.pairs_per_image},
            {"mrbs", mrbs_json(s.mrbs)},
            {"mrbs_max_tries", s.mrbs_max_tries},
            {"drdm_model", s.drdm_model},
            {"drdm_levels", s.drdm_levels},
            {"drdm_batch", s.drdm_batch},
            {"seed", s.seed}}},
          {"pretrain", phase_json(c.pretrain, {{"lambda", c.pretrain_lambda}})},
          {"finetune", phase_json(c.finetune, {{"lambda", c.finetune_lambda},
                                               {"similarity", c.similarity},
                                               {"ncc_window", c.ncc_window}})},
          {"grid", {{"pretrain", c.grid.pretrain}, {"finetune", c.grid.finetune}}}};
}

void parse_data(const json& j, const std::string& src, RegConfig::Data& d) {
  d.images = get<std::string>(j, "data", "images", src);
  d.labels = get<std::string>(j, "data", "labels", src);
  d.include = get<std::vector<std::string>>(j, "data", "include", src);
  d.size = get<std::vector<int64_t>>(j, "data", "size", src);
  d.clip_low_pct = get<double>(j, "data", "clip_low_pct", src);
  d.clip_high_pct = get<double>(j, "data", "clip_high_pct", src);
  d.classes = get<std::vector<std::string>>(j, "data", "classes", src);
  d.train_fraction = get<double>(j, "data", "train_fraction", src);
  d.test_pairs = get<int64_t>(j, "data", "test_pairs", src);
  const auto seed = get<int64_t>(j, "data", "seed", src);
  require(!d.images.empty() && !d.labels.empty(), src, "data.images",
          "and data.labels must name the folders of images and label maps");
  require(d.size.size() == 2 || d.size.size() == 3, src, "data.size",
          "must be [H, W] or [D, H, W]");
  for (auto s : d.size)
    require(s >= 16 && s <= 1024, src, "data.size", "entries must be in [16, 1024]");
  require(0 <= d.clip_low_pct && d.clip_low_pct < d.clip_high_pct && d.clip_high_pct <= 100, src,
          "data.clip_low_pct", "and data.clip_high_pct must satisfy 0 <= low < high <= 100");
  require(!d.classes.empty(), src, "data.classes", "must name at least one foreground class");
  require(d.train_fraction > 0 && d.train_fraction < 1, src, "data.train_fraction",
          "must be in (0, 1)");
  require(d.test_pairs >= 0, src, "data.test_pairs", "must be >= 0 (0 = all ordered pairs)");
  require(seed >= 0, src, "data.seed", "must be >= 0");
  d.seed = static_cast<uint64_t>(seed);
}

void parse_voxelmorph(const json& j, const std::string& src, RegConfig& c) {
  auto& v = c.voxelmorph;
  v.dims = static_cast<int64_t>(c.data.size.size());
  v.encoder = get<std::vector<int64_t>>(j, "voxelmorph", "encoder", src);
  v.decoder = get<std::vector<int64_t>>(j, "voxelmorph", "decoder", src);
  v.integration_steps = get<int64_t>(j, "voxelmorph", "integration_steps", src);
  v.integration_downsize = get<int64_t>(j, "voxelmorph", "integration_downsize", src);
  try {
    validate(v);
  } catch (const std::invalid_argument& e) {
    // validate() says "voxelmorph.<key> <why>": in require's form, a --set can take the blame.
    const std::string what = e.what();
    const auto space = what.find(' ');
    require(false, src, what.substr(0, space),
            space == std::string::npos ? "is invalid" : what.substr(space + 1));
  }
  const int64_t divisor = std::max<int64_t>(int64_t{1} << v.encoder.size(), v.integration_downsize);
  for (auto s : c.data.size)
    require(s % divisor == 0, src, "data.size",
            "entries must be divisible by " + std::to_string(divisor) +
                " (2^levels of voxelmorph.encoder and voxelmorph.integration_downsize)");
}

void parse_synthetic(const json& j, const std::string& src, RegConfig::Synthetic& s) {
  s.pairs_per_image = get<int64_t>(j, "synthetic", "pairs_per_image", src);
  const auto mrbs = get<std::vector<std::vector<double>>>(j, "synthetic", "mrbs", src);
  s.mrbs.clear();
  for (const auto& l : mrbs) {
    // The upper bounds keep the conversion to int64 defined and the fields finite: a
    // displacement beyond the largest grid (data.size <= 1024) means nothing.
    require(l.size() == 2 && l[0] >= 2 && l[0] <= 4096 && l[0] == std::floor(l[0]) && l[1] >= 0 &&
                l[1] <= 1024,
            src, "synthetic.mrbs",
            "entries must be [control_points in [2, 4096] (integer), max_displacement in [0, 1024] "
            "voxels]");
    s.mrbs.push_back({static_cast<int64_t>(l[0]), l[1]});
  }
  require(!s.mrbs.empty(), src, "synthetic.mrbs", "must have at least one level");
  s.mrbs_max_tries = get<int64_t>(j, "synthetic", "mrbs_max_tries", src);
  s.drdm_model = get<std::string>(j, "synthetic", "drdm_model", src);
  s.drdm_levels = get<std::vector<std::vector<int64_t>>>(j, "synthetic", "drdm_levels", src);
  s.drdm_batch = get<int64_t>(j, "synthetic", "drdm_batch", src);
  const auto seed = get<int64_t>(j, "synthetic", "seed", src);
  require(s.pairs_per_image >= 1 && s.pairs_per_image <= 100000, src, "synthetic.pairs_per_image",
          "must be in [1, 100000]");
  require(s.mrbs_max_tries >= 1, src, "synthetic.mrbs_max_tries", "must be >= 1");
  require(!s.drdm_levels.empty(), src, "synthetic.drdm_levels", "must not be empty");
  for (const auto& l : s.drdm_levels)
    require(l.size() == 2 && l[0] >= 0 && l[1] >= 1, src, "synthetic.drdm_levels",
            "entries must be [T'_aug >= 0, T'_syn >= 1]");
  require(s.drdm_batch >= 1, src, "synthetic.drdm_batch", "must be >= 1");
  require(seed >= 0, src, "synthetic.seed", "must be >= 0");
  s.seed = static_cast<uint64_t>(seed);
}

void parse_phases(const json& j, const std::string& src, RegConfig& c) {
  // The shared train-section parser sees each phase's section without its own keys.
  const auto section = [&](const char* name, std::vector<std::string> own) {
    json copy = j;
    for (const auto& k : own) copy[name].erase(k);
    return detail::parse_train_section(copy, src, name);
  };
  c.pretrain = section("pretrain", {"lambda"});
  c.finetune = section("finetune", {"lambda", "similarity", "ncc_window"});
  c.pretrain_lambda = get<double>(j, "pretrain", "lambda", src);
  c.finetune_lambda = get<double>(j, "finetune", "lambda", src);
  c.similarity = get<std::string>(j, "finetune", "similarity", src);
  c.ncc_window = get<int64_t>(j, "finetune", "ncc_window", src);
  require(std::isfinite(c.pretrain_lambda) && c.pretrain_lambda >= 0, src, "pretrain.lambda",
          "must be >= 0");
  require(std::isfinite(c.finetune_lambda) && c.finetune_lambda >= 0, src, "finetune.lambda",
          "must be >= 0");
  require(c.similarity == "mse" || c.similarity == "ncc", src, "finetune.similarity",
          "must be \"mse\" or \"ncc\"");
  require(c.ncc_window >= 1 && c.ncc_window % 2 == 1, src, "finetune.ncc_window",
          "must be odd and >= 1");
}

void parse_grid(const json& j, const std::string& src, RegConfig::Grid& g) {
  g.pretrain = get<std::vector<std::string>>(j, "grid", "pretrain", src);
  g.finetune = get<std::vector<bool>>(j, "grid", "finetune", src);
  require(!g.pretrain.empty(), src, "grid.pretrain", "must not be empty");
  for (const auto& p : g.pretrain)
    require(p == "none" || p == "mrbs" || p == "drdm", src, "grid.pretrain",
            "has an unknown pretraining '" + p + "' (expected none, mrbs or drdm)");
  require(!g.finetune.empty(), src, "grid.finetune", "must not be empty");
}

RegConfig from_json(const json& j, const std::string& src) {
  RegConfig c;
  c.name = j.at("name").get<std::string>();
  parse_data(j, src, c.data);
  parse_voxelmorph(j, src, c);
  parse_synthetic(j, src, c.synthetic);
  parse_phases(j, src, c);
  parse_grid(j, src, c.grid);
  return c;
}

}  // namespace

RegConfig parse_reg_config(const std::string& text, const std::string& src,
                           const std::vector<std::string>& overrides) {
  const json j = detail::merge_config(defaults_json(RegConfig{}), text, src, overrides);
  return detail::blaming_overrides(src, overrides, [&] { return from_json(j, src); });
}

RegConfig load_reg_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_reg_config(detail::read_config_text(path), path, overrides);
}

std::string to_json(const RegConfig& c) { return defaults_json(c).dump(2); }

}  // namespace drdm::reg
