// Augmentation pictures: each BigAug transform swept over its range, and full samples.
#include "drdm/seg/augment_preview.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <functional>
#include <stdexcept>
#include <vector>

#include "drdm/io/image_io.h"

namespace drdm::seg {

torch::Tensor label_overlay(const torch::Tensor& image, const torch::Tensor& labels) {
  static const float colours[4][3] = {{0, 0, 0}, {230, 60, 60}, {60, 200, 80}, {70, 120, 240}};
  auto grey = (image.clamp(0, 1) * 255).expand({3, image.size(0), image.size(1)}).clone();
  for (int64_t k = 1; k < 4; ++k) {
    const auto mask = (labels == k).unsqueeze(0).expand_as(grey);
    const auto col =
        at::tensor({colours[k][0], colours[k][1], colours[k][2]}).view({3, 1, 1}).expand_as(grey);
    grey = at::where(mask, 0.45 * grey + 0.55 * col, grey);
  }
  return grey.round().to(at::kByte);
}

namespace {

using T = BigAugSample;

/// How one transform is set to the fraction f in [0, 1] of its range.
struct Sweep {
  const char* name;
  const char* unit;
  std::function<double(const BigAugOptions&, double)> value;
  std::function<void(T&, double)> set;
};

double lerp(double lo, double hi, double f) { return lo + f * (hi - lo); }

std::vector<Sweep> sweeps() {
  using O = BigAugOptions;
  return {
      {"blur", "sigma (voxels)",
       [](const O& o, double f) { return lerp(o.blur_sigma_min, o.blur_sigma_max, f); },
       [](T& s, double v) { s.blur_sigma = v; }},
      {"sharpen", "alpha",
       [](const O& o, double f) { return lerp(o.sharpen_alpha_min, o.sharpen_alpha_max, f); },
       [](T& s, double v) { s.sharpen_alpha = v; }},
      {"noise", "std",
       [](const O& o, double f) { return lerp(o.noise_std_min, o.noise_std_max, f); },
       [](T& s, double v) { s.noise_std = v; }},
      {"brightness", "shift",
       [](const O& o, double f) { return lerp(-o.brightness, o.brightness, f); },
       [](T& s, double v) { s.brightness_shift = v; }},
      {"gamma", "gamma", [](const O& o, double f) { return lerp(o.gamma_min, o.gamma_max, f); },
       [](T& s, double v) { s.gamma = v; }},
      {"intensity", "scale (shift 0)",
       [](const O& o, double f) { return lerp(o.scale_min, o.scale_max, f); },
       [](T& s, double v) { s.scale = v; }},
      {"rotation", "degrees",
       [](const O& o, double f) { return lerp(-o.rotation_deg, o.rotation_deg, f); },
       [](T& s, double v) {
         s.angles_deg = {v, v, v};
       }},
      {"scaling", "zoom",
       [](const O& o, double f) { return lerp(o.scaling_min, o.scaling_max, f); },
       [](T& s, double v) { s.zoom = v; }},
      {"elastic", "peak velocity (voxels)",
       [](const O& o, double f) {
         return lerp(o.elastic_magnitude_min, o.elastic_magnitude_max, f);
       },
       [](T& s, double v) { s.elastic_magnitude = v; }},
  };
}

at::Tensor tile_row(const at::Tensor& images, const at::Tensor& labels) {
  std::vector<at::Tensor> tiles;
  for (int64_t i = 0; i < images.size(0); ++i)
    tiles.push_back(label_overlay(images[i][0], labels[i][0]));
  return at::cat(tiles, 2);
}

std::string fixed(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", v);
  return text;
}

}  // namespace

std::string write_bigaug_preview(const SliceSet& slices, const BigAugOptions& o,
                                 const std::string& png, int64_t columns, int64_t sample_rows,
                                 uint64_t seed) {
  validate(o);
  if (columns < 2 || sample_rows < 0)
    throw std::invalid_argument("bigaug preview: need at least 2 columns");
  const auto counts = (slices.labels > 0).sum({1, 2, 3});
  const auto labelled = (counts > 0).nonzero().squeeze(1);
  if (labelled.numel() == 0) throw std::invalid_argument("bigaug preview: no slice has labels");
  const auto best = counts.argmax().item<int64_t>();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto image = slices.images.narrow(0, best, 1).expand({columns, -1, -1, -1});
  const auto labels = slices.labels.narrow(0, best, 1).expand({columns, -1, -1, -1});
  std::vector<at::Tensor> rows;
  std::string legend = "| row | transform | values, left to right |\n|---|---|---|\n";
  int row = 0;
  for (const auto& sw : sweeps()) {
    std::vector<T> samples(static_cast<size_t>(columns));
    std::string values;
    for (int64_t j = 0; j < columns; ++j) {
      const double v = sw.value(o, static_cast<double>(j) / static_cast<double>(columns - 1));
      auto& s = samples[static_cast<size_t>(j)];
      s.applied[static_cast<size_t>(row)] = true;
      sw.set(s, v);
      values += (j ? ", " : "") + fixed(v);
    }
    const auto [x, l] = bigaug_apply(image, labels, samples, o, gen);
    rows.push_back(tile_row(x, l));
    legend +=
        "| " + std::to_string(++row) + " | " + sw.name + " | " + sw.unit + ": " + values + " |\n";
  }
  for (int64_t r = 0; r < sample_rows; ++r) {
    const auto pick =
        labelled.index_select(0, at::randint(labelled.numel(), {columns}, gen, at::kLong));
    const auto [x, l] =
        bigaug(slices.images.index_select(0, pick), slices.labels.index_select(0, pick), o, gen);
    rows.push_back(tile_row(x, l));
    legend += "| " + std::to_string(++row) + " | all nine at p = " + fixed(o.p) +
              " | random slices with labels |\n";
  }
  write_rgb_png(png, at::cat(rows, 1));
  return legend;
}

}  // namespace drdm::seg
