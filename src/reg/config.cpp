// reg_synth configs: one key table (engine/config_keys.h) gives the defaults, the checked parse and
// to_json.
#include "drdm/reg/config.h"

#include <algorithm>
#include <cmath>

#include "engine/config_keys.h"
#include "engine/train_section_keys.h"

namespace drdm::reg {

using detail::require;
using nlohmann::json;

namespace {

using detail::at_least;
using detail::check;
using detail::entries;
using detail::in_range;
using detail::key;
using detail::key_as;
using detail::key_with;
using detail::Keys;
using detail::non_empty;
using Ints = std::vector<int64_t>;
using Names = std::vector<std::string>;
using Levels = std::vector<std::vector<double>>;

// A seed: an integer >= 0, stored unsigned.
template <typename S>
detail::ConfigKey<S> seed_key(uint64_t S::*field, const char* doc) {
  const auto in = [](int64_t v) { return static_cast<uint64_t>(v); };
  const auto out = [](uint64_t v) { return v; };
  return key_as<int64_t>("seed", field, in, out, {at_least<int64_t>(0)}, "-", doc);
}

Keys<RegConfig::Data> data_keys() {
  using D = RegConfig::Data;
  return {
      key("images", &D::images, {}, "path", "folder of the images"),
      key("labels", &D::labels, {}, "path", "folder of the label maps (the images' file names)"),
      key("include", &D::include, {}, "patterns", "file-name patterns to keep (empty: all)"),
      key("size", &D::size,
          {check<Ints>("must be [H, W] or [D, H, W]",
                       [](const Ints& s) { return s.size() == 2 || s.size() == 3; }),
           entries(in_range<int64_t>(16, 1024))},
          "voxels", "network grid, tensor order (2 or 3 entries)"),
      key("clip_low_pct", &D::clip_low_pct, {}, "percent",
          "intensity clipping before scaling to [0, 1]"),
      key("clip_high_pct", &D::clip_high_pct, {}, "percent", ""),
      key("classes", &D::classes, {non_empty<Names>("must name at least one foreground class")},
          "-", "names of the labels 1..K"),
      key("train_fraction", &D::train_fraction,
          {check<double>("must be in (0, 1)", [](double f) { return f > 0 && f < 1; })}, "fraction",
          "the first fraction of the sorted files trains, the rest tests"),
      key("test_pairs", &D::test_pairs, {at_least<int64_t>(0, " (0 = all ordered pairs)")}, "pairs",
          "seeded ordered test pairs (0 = all)"),
      key("validation_images", &D::validation_images, {at_least<int64_t>(0, " (0 = none)")},
          "images",
          "the last this many images of the training part are held out to validate (their labels "
          "choose each run's step by DSC, `validate_every` of the train sections); never test "
          "images"),
      key("validation_pairs", &D::validation_pairs, {at_least<int64_t>(0, " (0 = all)")}, "pairs",
          "seeded ordered pairs of the validation images (0 = all)"),
      seed_key(&D::seed, "seed of the test-pair list"),
  };
}

// The ranges are validate()'s (drdm/reg/voxelmorph.h).
Keys<VoxelMorphOptions> voxelmorph_keys() {
  using V = VoxelMorphOptions;
  return {
      key_with<Ints, V>(
          "encoder", [](const V& v) { return v.encoder(); },
          [](V& v, Ints w) { v.encoder(std::move(w)); }, {}, "channels",
          "encoder widths (VoxelMorph's default)"),
      key_with<Ints, V>(
          "decoder", [](const V& v) { return v.decoder(); },
          [](V& v, Ints w) { v.decoder(std::move(w)); }, {}, "channels",
          "decoder widths (VoxelMorph's default)"),
      key_with<int64_t, V>(
          "integration_steps", [](const V& v) { return v.integration_steps(); },
          [](V& v, int64_t n) { v.integration_steps(n); }, {}, "steps",
          "scaling and squaring steps (0: a plain displacement)"),
      key_with<int64_t, V>(
          "integration_downsize", [](const V& v) { return v.integration_downsize(); },
          [](V& v, int64_t n) { v.integration_downsize(n); }, {}, "-",
          "the integration's resolution divisor"),
  };
}

Keys<RegConfig::Synthetic> synthetic_keys() {
  using S = RegConfig::Synthetic;
  // The upper bounds keep the conversion to int64 defined and the fields finite: a
  // displacement beyond the largest grid (data.size <= 1024) means nothing.
  const auto level_ok = [](const std::vector<double>& l) {
    return l.size() == 2 && l[0] >= 2 && l[0] <= 4096 && l[0] == std::floor(l[0]) && l[1] >= 0 &&
           l[1] <= 1024;
  };
  const auto mrbs_in = [](const Levels& levels) {
    std::vector<MrbsLevel> out;
    for (const auto& l : levels) out.push_back({static_cast<int64_t>(l[0]), l[1]});
    return out;
  };
  const auto mrbs_out = [](const std::vector<MrbsLevel>& levels) {
    json out = json::array();
    for (const auto& l : levels) out.push_back({l.control_points, l.max_displacement});
    return out;
  };
  const auto pair_ok = [](const Ints& l) { return l.size() == 2 && l[0] >= 0 && l[1] >= 1; };
  return {
      key("pairs_per_image", &S::pairs_per_image, {in_range<int64_t>(1, 100000)}, "pairs",
          "synthetic pairs per training image (the paper: 32)"),
      key_as<Levels>(
          "mrbs", &S::mrbs, mrbs_in, mrbs_out,
          {check<Levels>(
               "entries must be [control_points in [2, 4096] (integer), max_displacement in "
               "[0, 1024] voxels]",
               [level_ok](const Levels& v) { return std::all_of(v.begin(), v.end(), level_ok); }),
           non_empty<Levels>("must have at least one level")},
          "-", "MRBS levels [control points per axis, max displacement in voxels] (docs/mrbs.md)"),
      key("mrbs_max_tries", &S::mrbs_max_tries, {at_least<int64_t>(1)}, "draws",
          "redraws before giving up on a fold-free sample"),
      key("drdm_model", &S::drdm_model, {}, "-", "DRDM model: a shipped name or a model.pt"),
      key("drdm_levels", &S::drdm_levels,
          {non_empty<std::vector<Ints>>(),
           check<std::vector<Ints>>("entries must be [T'_aug >= 0, T'_syn >= 1]",
                                    [pair_ok](const std::vector<Ints>& v) {
                                      return std::all_of(v.begin(), v.end(), pair_ok);
                                    })},
          "steps", "(T'_aug, T'_syn) pairs, used in turn"),
      key("drdm_batch", &S::drdm_batch, {at_least<int64_t>(1)}, "fields", "generation batch"),
      seed_key(&S::seed, "seed of both kinds of synthetic pairs"),
  };
}

/// Every key of a reg_synth config, each declared once.
const Keys<RegConfig>& config_keys() {
  static const Keys<RegConfig> keys = [] {
    using R = RegConfig;
    const auto lambda_check = at_least(0.0);
    Keys<R> k;
    detail::mount(k, "", Keys<R>{key("name", &R::name, {}, "", "run name")});
    detail::mount(k, "data", &R::data, data_keys());
    detail::mount(k, "voxelmorph", &R::voxelmorph, voxelmorph_keys());
    detail::mount(k, "synthetic", &R::synthetic, synthetic_keys());
    detail::mount(k, "pretrain", &R::pretrain, detail::train_section_keys());
    detail::mount(k, "pretrain",
                  Keys<R>{key("lambda", &R::pretrain_lambda, {lambda_check}, "weight",
                              "Eq. 20's weight of the smoothness term")});
    detail::mount(k, "finetune", &R::finetune, detail::train_section_keys());
    detail::mount(
        k, "finetune",
        Keys<R>{
            key("lambda", &R::finetune_lambda, {lambda_check}, "weight",
                "weight of the smoothness term"),
            key("similarity", &R::similarity,
                {check<std::string>("must be \"mse\" or \"ncc\"",
                                    [](const std::string& m) { return m == "mse" || m == "ncc"; })},
                "-", "\"mse\" or \"ncc\""),
            key("ncc_window", &R::ncc_window,
                {check<int64_t>("must be odd and >= 1",
                                [](int64_t w) { return w >= 1 && w % 2 == 1; })},
                "voxels", "window of the local NCC")});
    detail::mount(
        k, "grid", &R::grid,
        Keys<R::Grid>{key("pretrain", &R::Grid::pretrain, {non_empty<Names>()}, "-",
                          "the pretrainings compared: none, mrbs, drdm"),
                      key("finetune", &R::Grid::finetune, {non_empty<std::vector<bool>>()}, "-",
                          "with and/or without fine-tuning")});
    return k;
  }();
  return keys;
}

json defaults_json(const RegConfig& c) { return detail::keys_json(config_keys(), c); }

void check_data_and_voxelmorph(RegConfig& c, const std::string& src) {
  const auto& d = c.data;
  require(!d.images.empty() && !d.labels.empty(), src, "data.images",
          "and data.labels must name the folders of images and label maps");
  require(0 <= d.clip_low_pct && d.clip_low_pct < d.clip_high_pct && d.clip_high_pct <= 100, src,
          "data.clip_low_pct", "and data.clip_high_pct must satisfy 0 <= low < high <= 100");
  auto& v = c.voxelmorph;
  v.dims(static_cast<int64_t>(c.data.size.size()));
  try {
    validate(v);
  } catch (const std::invalid_argument& e) {
    // validate() says "voxelmorph.<key> <why>": in require's form, a --set can take the blame.
    const std::string what = e.what();
    const auto space = what.find(' ');
    require(false, src, what.substr(0, space),
            space == std::string::npos ? "is invalid" : what.substr(space + 1));
  }
  const int64_t divisor =
      std::max<int64_t>(int64_t{1} << v.encoder().size(), v.integration_downsize());
  for (auto s : c.data.size)
    require(s % divisor == 0, src, "data.size",
            "entries must be divisible by " + std::to_string(divisor) +
                " (2^levels of voxelmorph.encoder and voxelmorph.integration_downsize)");
}

RegConfig from_json(const json& j, const std::string& src) {
  const auto& keys = config_keys();
  RegConfig c;
  detail::read_keys(keys, j, src, c, "");
  detail::read_keys(keys, j, src, c, "data");
  detail::read_keys(keys, j, src, c, "voxelmorph");
  check_data_and_voxelmorph(c, src);
  detail::read_keys(keys, j, src, c, "synthetic");
  detail::read_keys(keys, j, src, c, "pretrain");
  detail::check_train_section(c.pretrain, src, "pretrain");
  detail::read_keys(keys, j, src, c, "finetune");
  detail::check_train_section(c.finetune, src, "finetune");
  detail::read_keys(keys, j, src, c, "grid");
  for (const auto& p : c.grid.pretrain)
    require(p == "none" || p == "mrbs" || p == "drdm", src, "grid.pretrain",
            "has an unknown pretraining '" + p + "' (expected none, mrbs or drdm)");
  return c;
}

}  // namespace

RegConfig parse_reg_config(const std::string& text, const std::string& src,
                           const std::vector<std::string>& overrides) {
  return detail::parse_config(defaults_json(RegConfig{}), text, src, overrides, from_json);
}

RegConfig load_reg_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_reg_config(detail::read_config_text(path), path, overrides);
}

std::string to_json(const RegConfig& c) { return defaults_json(c).dump(2); }

}  // namespace drdm::reg
