// seg_fewshot configs: JSON checked against the defaults (shared machinery in config_json.h).
#include <cmath>

#include "../config_json.h"
#include "drdm/seg/fewshot.h"

namespace drdm::seg {

using detail::get;
using detail::require;
using nlohmann::json;

namespace {

json bigaug_json(const BigAugOptions& b) {
  return {{"p", b.p},
          {"blur_sigma_min", b.blur_sigma_min},
          {"blur_sigma_max", b.blur_sigma_max},
          {"sharpen_alpha_min", b.sharpen_alpha_min},
          {"sharpen_alpha_max", b.sharpen_alpha_max},
          {"sharpen_sigma1", b.sharpen_sigma1},
          {"sharpen_sigma2", b.sharpen_sigma2},
          {"noise_std_min", b.noise_std_min},
          {"noise_std_max", b.noise_std_max},
          {"brightness", b.brightness},
          {"gamma_min", b.gamma_min},
          {"gamma_max", b.gamma_max},
          {"scale_min", b.scale_min},
          {"scale_max", b.scale_max},
          {"shift", b.shift},
          {"rotation_deg", b.rotation_deg},
          {"scaling_min", b.scaling_min},
          {"scaling_max", b.scaling_max},
          {"elastic_control_points", b.elastic_control_points},
          {"elastic_magnitude_min", b.elastic_magnitude_min},
          {"elastic_magnitude_max", b.elastic_magnitude_max}};
}

BigAugOptions parse_bigaug(const json& j, const std::string& src) {
  BigAugOptions b;
  const auto num = [&](const char* key) { return get<double>(j, "bigaug", key, src); };
  b.p = num("p");
  b.blur_sigma_min = num("blur_sigma_min"), b.blur_sigma_max = num("blur_sigma_max");
  b.sharpen_alpha_min = num("sharpen_alpha_min"), b.sharpen_alpha_max = num("sharpen_alpha_max");
  b.sharpen_sigma1 = num("sharpen_sigma1"), b.sharpen_sigma2 = num("sharpen_sigma2");
  b.noise_std_min = num("noise_std_min"), b.noise_std_max = num("noise_std_max");
  b.brightness = num("brightness");
  b.gamma_min = num("gamma_min"), b.gamma_max = num("gamma_max");
  b.scale_min = num("scale_min"), b.scale_max = num("scale_max"), b.shift = num("shift");
  b.rotation_deg = num("rotation_deg");
  b.scaling_min = num("scaling_min"), b.scaling_max = num("scaling_max");
  b.elastic_control_points = get<int64_t>(j, "bigaug", "elastic_control_points", src);
  b.elastic_magnitude_min = num("elastic_magnitude_min");
  b.elastic_magnitude_max = num("elastic_magnitude_max");
  try {
    validate(b);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(src + ": config key " + e.what());
  }
  return b;
}

json defaults_json(const SegConfig& c) {
  const auto& d = c.data;
  return {{"name", c.name},
          {"data",
           {{"images", d.images},
            {"labels", d.labels},
            {"size", d.slices.size},
            {"clip_low_pct", d.slices.clip_low_pct},
            {"clip_high_pct", d.slices.clip_high_pct},
            {"classes", d.classes},
            {"group_size", d.group_size},
            {"pool_mod", d.pool_mod},
            {"test_mod", d.test_mod},
            {"max_test_subjects", d.max_test_subjects}}},
          {"grid",
           {{"augmentations", c.grid.augmentations},
            {"subjects", c.grid.subjects},
            {"seeds", c.grid.seeds}}},
          {"unet", {{"widths", c.unet.widths}, {"loss", c.loss}}},
          {"train", detail::train_section_json(c.train)},
          {"bigaug", bigaug_json(c.bigaug)},
          {"drdm",
           {{"model", c.drdm.model},
            {"levels", c.drdm.levels},
            {"fields_per_slice", c.drdm.fields_per_slice},
            {"max_fields", c.drdm.max_fields},
            {"batch", c.drdm.batch}}}};
}

void parse_data(const json& j, const std::string& src, SegConfig::Data& d) {
  d.images = get<std::string>(j, "data", "images", src);
  d.labels = get<std::string>(j, "data", "labels", src);
  d.slices.size = get<std::vector<int64_t>>(j, "data", "size", src);
  d.slices.clip_low_pct = get<double>(j, "data", "clip_low_pct", src);
  d.slices.clip_high_pct = get<double>(j, "data", "clip_high_pct", src);
  d.classes = get<std::vector<std::string>>(j, "data", "classes", src);
  d.group_size = get<int64_t>(j, "data", "group_size", src);
  d.pool_mod = get<std::vector<int64_t>>(j, "data", "pool_mod", src);
  d.test_mod = get<std::vector<int64_t>>(j, "data", "test_mod", src);
  d.max_test_subjects = get<int64_t>(j, "data", "max_test_subjects", src);
  require(!d.images.empty() && !d.labels.empty(), src, "data.images",
          "and data.labels must name the folders of images and label maps");
  require(d.slices.size.size() == 2, src, "data.size", "must be [H, W]");
  for (auto s : d.slices.size)
    require(s >= 16 && s <= 4096, src, "data.size", "entries must be in [16, 4096]");
  require(0 <= d.slices.clip_low_pct && d.slices.clip_low_pct < d.slices.clip_high_pct &&
              d.slices.clip_high_pct <= 100,
          src, "data.clip_low_pct", "and data.clip_high_pct must satisfy 0 <= low < high <= 100");
  require(!d.classes.empty(), src, "data.classes", "must name at least one foreground class");
  require(d.group_size >= 1, src, "data.group_size", "must be >= 1");
  for (const auto* key : {"pool_mod", "test_mod"}) {
    const auto& m = std::string(key) == "pool_mod" ? d.pool_mod : d.test_mod;
    require(m.size() == 2 && 0 <= m[0] && m[0] <= m[1] && m[1] < d.group_size, src,
            std::string("data.") + key, "must be [a, b] with 0 <= a <= b < data.group_size");
  }
  require(d.pool_mod[1] < d.test_mod[0] || d.test_mod[1] < d.pool_mod[0], src, "data.test_mod",
          "must not overlap data.pool_mod (no test subject may be used for training)");
  require(d.max_test_subjects >= 0, src, "data.max_test_subjects", "must be >= 0 (0 = all)");
}

void parse_grid_and_drdm(const json& j, const std::string& src, SegConfig& c) {
  c.grid.augmentations = get<std::vector<std::string>>(j, "grid", "augmentations", src);
  c.grid.subjects = get<std::vector<int64_t>>(j, "grid", "subjects", src);
  c.grid.seeds = get<std::vector<int64_t>>(j, "grid", "seeds", src);
  require(!c.grid.augmentations.empty(), src, "grid.augmentations", "must not be empty");
  for (const auto& a : c.grid.augmentations)
    require(a == "none" || a == "bigaug" || a == "drdm", src, "grid.augmentations",
            "has an unknown augmentation '" + a + "' (expected none, bigaug or drdm)");
  require(!c.grid.subjects.empty(), src, "grid.subjects", "must not be empty");
  for (auto n : c.grid.subjects) require(n >= 1, src, "grid.subjects", "entries must be >= 1");
  require(!c.grid.seeds.empty(), src, "grid.seeds", "must not be empty");
  for (auto s : c.grid.seeds) require(s >= 0, src, "grid.seeds", "entries must be >= 0");
  c.drdm.model = get<std::string>(j, "drdm", "model", src);
  c.drdm.levels = get<std::vector<int64_t>>(j, "drdm", "levels", src);
  c.drdm.fields_per_slice = get<int64_t>(j, "drdm", "fields_per_slice", src);
  c.drdm.batch = get<int64_t>(j, "drdm", "batch", src);
  c.drdm.max_fields = get<int64_t>(j, "drdm", "max_fields", src);
  require(c.drdm.max_fields >= 0, src, "drdm.max_fields", "must be >= 0 (0 = no cap)");
  require(!c.drdm.levels.empty(), src, "drdm.levels", "must not be empty");
  for (auto l : c.drdm.levels) require(l >= 1, src, "drdm.levels", "entries must be >= 1");
  require(c.drdm.fields_per_slice >= 1, src, "drdm.fields_per_slice", "must be >= 1");
  require(c.drdm.batch >= 1, src, "drdm.batch", "must be >= 1");
}

SegConfig from_json(const json& j, const std::string& src) {
  SegConfig c;
  c.name = j.at("name").get<std::string>();
  parse_data(j, src, c.data);
  parse_grid_and_drdm(j, src, c);
  c.unet.widths = get<std::vector<int64_t>>(j, "unet", "widths", src);
  require(!c.unet.widths.empty(), src, "unet.widths", "must not be empty");
  // At most 16 levels: 2^(levels - 1) below must not shift past 63 bits.
  require(c.unet.widths.size() <= 16, src, "unet.widths", "must have at most 16 levels");
  // 4096 channels is far beyond any U-Net here and stops an absurd width before it allocates.
  for (auto w : c.unet.widths)
    require(w >= 1 && w <= 4096, src, "unet.widths", "entries must be in [1, 4096]");
  const int64_t divisor = int64_t{1} << (c.unet.widths.size() - 1);
  for (auto s : c.data.slices.size)
    require(s % divisor == 0, src, "data.size",
            "entries must be divisible by " + std::to_string(divisor) +
                " (2^(levels - 1) of unet.widths)");
  c.unet.dims = 2;
  c.unet.classes = static_cast<int64_t>(c.data.classes.size()) + 1;
  c.loss = get<std::string>(j, "unet", "loss", src);
  require(c.loss == "bce" || c.loss == "dice_ce", src, "unet.loss",
          "must be \"bce\" or \"dice_ce\"");
  c.train = detail::parse_train_section(j, src);
  c.bigaug = parse_bigaug(j, src);
  return c;
}

}  // namespace

SegConfig parse_seg_config(const std::string& text, const std::string& src,
                           const std::vector<std::string>& overrides) {
  const json j = detail::merge_config(defaults_json(SegConfig{}), text, src, overrides);
  return detail::blaming_overrides(src, overrides, [&] { return from_json(j, src); });
}

SegConfig load_seg_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_seg_config(detail::read_config_text(path), path, overrides);
}

std::string to_json(const SegConfig& c) { return defaults_json(c).dump(2); }

}  // namespace drdm::seg
