// seg_fewshot configs: one key table (engine/config_keys.h) gives the defaults, the checked parse
// and to_json.
#include "drdm/seg/config.h"

#include <cmath>

#include "engine/config_keys.h"
#include "engine/train_section_keys.h"

namespace drdm::seg {

using detail::require;
using nlohmann::json;

namespace {

using detail::at_least;
using detail::check;
using detail::entries;
using detail::in_range;
using detail::key;
using detail::key_with;
using detail::Keys;
using detail::non_empty;
using Ints = std::vector<int64_t>;
using Names = std::vector<std::string>;

Keys<SegConfig::Data> data_keys() {
  using D = SegConfig::Data;
  const auto slices = [](auto field) {
    return std::make_pair([field](const D& d) { return d.slices.*field; },
                          [field](D& d, auto v) { d.slices.*field = std::move(v); });
  };
  const auto [size_get, size_set] = slices(&SliceOptions::size);
  const auto [low_get, low_set] = slices(&SliceOptions::clip_low_pct);
  const auto [high_get, high_set] = slices(&SliceOptions::clip_high_pct);
  return {
      key("images", &D::images, {}, "path", "folder of the images"),
      key("labels", &D::labels, {}, "path", "folder of the label maps (the images' file names)"),
      key_with<Ints, D>("size", size_get, size_set,
                        {check<Ints>("must be [H, W]", [](const Ints& s) { return s.size() == 2; }),
                         entries(in_range<int64_t>(16, 4096))},
                        "voxels", "network grid (H, W) that each slice is fitted into"),
      key_with<double, D>(
          "clip_low_pct", low_get, low_set, {}, "percent",
          "intensities are clipped to these percentiles of each volume, then scaled to [0, 1]"),
      key_with<double, D>("clip_high_pct", high_get, high_set, {}, "percent", ""),
      key("classes", &D::classes, {non_empty<Names>("must name at least one foreground class")},
          "-", "names of the labels 1..K"),
      key("group_size", &D::group_size, {at_least<int64_t>(1)}, "subjects",
          "subject s is in group (s - 1) / group_size (ACDC: five pathology groups of 20)"),
      key("pool_mod", &D::pool_mod, {}, "-",
          "the labelled pool: subjects with s mod group_size in [a, b]"),
      key("test_mod", &D::test_mod, {}, "-",
          "the test set: subjects with s mod group_size in [a, b]"),
      key("max_test_subjects", &D::max_test_subjects, {at_least<int64_t>(0, " (0 = all)")},
          "subjects", "test on the first this many test subjects (0 = all)"),
      key("rotate_flip", &D::rotate_flip, {}, "-",
          "also turn every training sample by a random multiple of 90° and mirror it with p = 0.5 "
          "(after its augmentation; needs a square `size`): for data whose in-plane axes are "
          "stored in differing orders or signs, as ACDC's are"),
      key("validation_subjects", &D::validation_subjects, {at_least<int64_t>(0, " (0 = none)")},
          "subjects",
          "held out of the labelled pool (balanced over groups, the same for every run) to choose "
          "each run's step by validation DSC (`train.validate_every`); never test subjects"),
  };
}

Keys<SegConfig::Grid> grid_keys() {
  using G = SegConfig::Grid;
  return {
      key("augmentations", &G::augmentations, {non_empty<Names>()}, "-",
          "the augmentations compared: none, bigaug, drdm"),
      key("subjects", &G::subjects, {non_empty<Ints>(), entries(at_least<int64_t>(1))}, "subjects",
          "labelled subjects per run, one run per entry"),
      key("seeds", &G::seeds, {non_empty<Ints>(), entries(at_least<int64_t>(0))}, "-",
          "one run per seed"),
  };
}

Keys<SegConfig::Drdm> drdm_keys() {
  using R = SegConfig::Drdm;
  return {
      key("model", &R::model, {}, "-", "DRDM model: a shipped name or a model.pt"),
      key("levels", &R::levels, {non_empty<Ints>(), entries(at_least<int64_t>(1))}, "steps",
          "T' of the bank's fields, used in turn"),
      key("fields_per_slice", &R::fields_per_slice, {at_least<int64_t>(1)}, "fields",
          "bank size per labelled slice"),
      key("max_fields", &R::max_fields, {at_least<int64_t>(0, " (0 = no cap)")}, "fields",
          "cap on a bank's fields (0 = none): M slices get min(fields_per_slice, max(1, max_fields "
          "/ M)) each"),
      key("batch", &R::batch, {at_least<int64_t>(1)}, "fields",
          "fields generated per network call"),
  };
}

Keys<UNetOptions> unet_keys() {
  const auto get = [](const UNetOptions& u) { return u.widths(); };
  const auto set = [](UNetOptions& u, Ints w) { u.widths(std::move(w)); };
  return {key_with<Ints, UNetOptions>(
      "widths", get, set,
      {non_empty<Ints>(),
       // At most 16 levels: 2^(levels - 1) must not shift past 63 bits.
       check<Ints>("must have at most 16 levels", [](const Ints& w) { return w.size() <= 16; }),
       // 4096 channels is far beyond any U-Net here and stops an absurd width before it allocates.
       entries(in_range<int64_t>(1, 4096))},
      "channels", "channels per level of the U-Net (dims 2, classes from data.classes)")};
}

// The BigAug ranges are validate()'s (drdm/seg/bigaug.h, docs/bigaug.md).
Keys<BigAugOptions> bigaug_keys() {
  using B = BigAugOptions;
  const auto num = [](const char* name, double B::*field, const char* doc) {
    return key(name, field, {}, "", doc);
  };
  return {
      num("p", &B::p, "probability of each transform, independently per sample"),
      num("blur_sigma_min", &B::blur_sigma_min, "Gaussian blur sigma ~ U(min, max)"),
      num("blur_sigma_max", &B::blur_sigma_max, ""),
      num("sharpen_alpha_min", &B::sharpen_alpha_min, "sharpening strength ~ U(min, max)"),
      num("sharpen_alpha_max", &B::sharpen_alpha_max, ""),
      num("sharpen_sigma1", &B::sharpen_sigma1, "sharpening's two blur sigmas"),
      num("sharpen_sigma2", &B::sharpen_sigma2, ""),
      num("noise_std_min", &B::noise_std_min, "additive N(0, std^2), std ~ U(min, max)"),
      num("noise_std_max", &B::noise_std_max, ""),
      num("brightness", &B::brightness, "additive shift ~ U(-b, b)"),
      num("gamma_min", &B::gamma_min, "gamma ~ U(min, max) on the [0, 1]-rescaled image"),
      num("gamma_max", &B::gamma_max, ""),
      num("scale_min", &B::scale_min, "x * s + o, s ~ U(min, max), o ~ U(-shift, shift)"),
      num("scale_max", &B::scale_max, ""),
      num("shift", &B::shift, ""),
      num("rotation_deg", &B::rotation_deg, "rotation ~ U(-r, r) degrees"),
      num("scaling_min", &B::scaling_min, "isotropic zoom ~ U(min, max) (s > 1 enlarges)"),
      num("scaling_max", &B::scaling_max, ""),
      key("elastic_control_points", &B::elastic_control_points, {}, "",
          "elastic deformation: control points per axis"),
      num("elastic_magnitude_min", &B::elastic_magnitude_min,
          "elastic displacement magnitude ~ U(min, max)"),
      num("elastic_magnitude_max", &B::elastic_magnitude_max, ""),
  };
}

/// Every key of a seg_fewshot config, each declared once.
const Keys<SegConfig>& config_keys() {
  static const Keys<SegConfig> keys = [] {
    Keys<SegConfig> k;
    detail::mount(k, "", Keys<SegConfig>{key("name", &SegConfig::name, {}, "", "run name")});
    detail::mount(k, "data", &SegConfig::data, data_keys());
    detail::mount(k, "grid", &SegConfig::grid, grid_keys());
    detail::mount(k, "drdm", &SegConfig::drdm, drdm_keys());
    detail::mount(k, "unet", &SegConfig::unet, unet_keys());
    detail::mount(
        k, "unet",
        Keys<SegConfig>{key(
            "loss", &SegConfig::loss,
            {check<std::string>("must be \"bce\" or \"dice_ce\"",
                                [](const std::string& l) { return l == "bce" || l == "dice_ce"; })},
            "-", "\"bce\" (Eq. 17) or \"dice_ce\"")});
    detail::mount(k, "train", &SegConfig::train, detail::train_section_keys());
    detail::mount(k, "bigaug", &SegConfig::bigaug, bigaug_keys());
    return k;
  }();
  return keys;
}

json defaults_json(const SegConfig& c) { return detail::keys_json(config_keys(), c); }

// The checks across the data keys.
void check_data(const SegConfig::Data& d, const std::string& src) {
  require(!d.images.empty() && !d.labels.empty(), src, "data.images",
          "and data.labels must name the folders of images and label maps");
  require(0 <= d.slices.clip_low_pct && d.slices.clip_low_pct < d.slices.clip_high_pct &&
              d.slices.clip_high_pct <= 100,
          src, "data.clip_low_pct", "and data.clip_high_pct must satisfy 0 <= low < high <= 100");
  for (const auto* key : {"pool_mod", "test_mod"}) {
    const auto& m = std::string(key) == "pool_mod" ? d.pool_mod : d.test_mod;
    require(m.size() == 2 && 0 <= m[0] && m[0] <= m[1] && m[1] < d.group_size, src,
            std::string("data.") + key, "must be [a, b] with 0 <= a <= b < data.group_size");
  }
  require(!d.rotate_flip || d.slices.size[0] == d.slices.size[1], src, "data.rotate_flip",
          "needs a square data.size (a quarter turn swaps its sides)");
  require(d.pool_mod[1] < d.test_mod[0] || d.test_mod[1] < d.pool_mod[0], src, "data.test_mod",
          "must not overlap data.pool_mod (no test subject may be used for training)");
}

SegConfig from_json(const json& j, const std::string& src) {
  const auto& keys = config_keys();
  SegConfig c;
  detail::read_keys(keys, j, src, c, "");
  detail::read_keys(keys, j, src, c, "data");
  check_data(c.data, src);
  detail::read_keys(keys, j, src, c, "grid");
  for (const auto& a : c.grid.augmentations)
    require(a == "none" || a == "bigaug" || a == "drdm", src, "grid.augmentations",
            "has an unknown augmentation '" + a + "' (expected none, bigaug or drdm)");
  detail::read_keys(keys, j, src, c, "drdm");
  detail::read_keys(keys, j, src, c, "unet");
  const int64_t divisor = int64_t{1} << (c.unet.widths().size() - 1);
  for (auto s : c.data.slices.size)
    require(s % divisor == 0, src, "data.size",
            "entries must be divisible by " + std::to_string(divisor) +
                " (2^(levels - 1) of unet.widths)");
  c.unet.dims(2);
  c.unet.classes(static_cast<int64_t>(c.data.classes.size()) + 1);
  detail::read_keys(keys, j, src, c, "train");
  detail::check_train_section(c.train, src);
  detail::read_keys(keys, j, src, c, "bigaug");
  try {
    validate(c.bigaug);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(src + ": config key " + e.what());
  }
  return c;
}

}  // namespace

SegConfig parse_seg_config(const std::string& text, const std::string& src,
                           const std::vector<std::string>& overrides) {
  return detail::parse_config(defaults_json(SegConfig{}), text, src, overrides, from_json);
}

SegConfig load_seg_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_seg_config(detail::read_config_text(path), path, overrides);
}

std::string to_json(const SegConfig& c) { return defaults_json(c).dump(2); }

}  // namespace drdm::seg
