// Registration data: volumes on the network grid, the train/test split and the test pairs.
#include "drdm/reg/data.h"

#include <ATen/ATen.h>
#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>

#include "engine/config_json.h"
#include "io/files.h"
#include "io/grid_check.h"
#include "io/input_checks.h"

namespace drdm::reg {
namespace {

std::string dims_text(int64_t d) { return std::to_string(d) + "D"; }

/// A single-slice volume read for a 2D network: the size-1 axis dropped.
void squeeze_for(int64_t dims, const std::string& path, at::Tensor& data, Geometry& geometry) {
  if (dims == 2 && geometry.dimension() == 3) {
    const auto axis = geometry.single_slice_axis();
    if (axis < 0)
      throw std::runtime_error("'" + path +
                               "' is a 3D volume, but the registration network is 2D (it takes " +
                               "2D images and single-slice volumes)");
    data = data.squeeze(2 + axis);
    geometry = geometry.squeeze_single_slice();
  }
  if (dims == 3 && geometry.single_slice_axis() >= 0)
    throw std::runtime_error("'" + path + "' is a single-slice volume (" +
                             detail::grid_values_text(geometry.size) +
                             ", a 2D image), but the registration network is 3D");
  if (geometry.dimension() != dims)
    throw std::runtime_error("'" + path + "' is " + dims_text(geometry.dimension()) +
                             ", but the registration network is " + dims_text(dims));
}

}  // namespace

RegVolume load_volume(const std::string& image_path, const std::string& label_path,
                      const RegConfig::Data& data) {
  const int64_t dims = static_cast<int64_t>(data.size.size());
  auto image = read_image(image_path);
  RegVolume v;
  v.name = detail::split_name(detail::base_name(image_path)).first;
  v.image_path = image_path, v.label_path = label_path;
  v.file_geometry = image.geometry;
  v.pixel_type = image.pixel_type;
  v.geometry = image.geometry;
  v.raw = image.data;
  squeeze_for(dims, image_path, v.raw, v.geometry);
  const auto size = v.geometry.tensor_size();
  const std::vector<double> spacing(v.geometry.spacing.rbegin(), v.geometry.spacing.rend());
  v.fit = fit_grid(size, spacing, data.size);
  v.image = fit_image(normalise_intensity(v.raw[0], data.clip_low_pct, data.clip_high_pct), v.fit)
                .unsqueeze(0);
  if (!label_path.empty()) {
    if (!detail::file_exists(label_path))
      throw std::runtime_error("label file '" + label_path + "' (for '" + image_path +
                               "') does not exist");
    auto labels = read_labels(label_path);
    const auto difference = detail::grid_difference(image.geometry, labels.geometry);
    if (!difference.empty())
      throw std::runtime_error("labels '" + label_path + "' lie on another grid than the image '" +
                               image_path + "' (" + difference + ")");
    const auto classes = static_cast<int64_t>(data.classes.size());
    detail::require_label_range(labels.data, classes, label_path,
                                "data.classes names " + std::to_string(classes) + " classes");
    v.labels = labels.data;
    Geometry g = labels.geometry;
    squeeze_for(dims, label_path, v.labels, g);
  }
  return v;
}

RegSplit split_cases(const RegConfig::Data& data) {
  detail::require_data_folder(data.images, "data.images");
  detail::require_data_folder(data.labels, "data.labels");
  const auto cases = seg::find_cases(data.images, data.labels);
  const auto n_train =
      static_cast<size_t>(std::floor(data.train_fraction * static_cast<double>(cases.size())));
  const auto included = [&](const seg::LabelledCase& c) {
    if (data.include.empty()) return true;
    const auto file = detail::base_name(c.image_path);
    for (const auto& p : data.include)
      if (::fnmatch(p.c_str(), file.c_str(), 0) == 0) return true;
    return false;
  };
  RegSplit split;
  for (size_t i = 0; i < cases.size(); ++i)
    if (included(cases[i])) (i < n_train ? split.train : split.test).push_back(cases[i]);
  const auto held = static_cast<size_t>(data.validation_images);
  if (held > 0 && held + 2 <= split.train.size()) {
    split.validation.assign(split.train.end() - static_cast<std::ptrdiff_t>(held),
                            split.train.end());
    split.train.resize(split.train.size() - held);
  } else if (held > 0) {
    throw std::runtime_error("data.validation_images = " + std::to_string(held) + " leaves fewer " +
                             "than 2 of the " + std::to_string(split.train.size()) +
                             " training images of '" + data.images + "' to train on");
  }
  if (split.train.size() < 2 || split.test.size() < 2)
    throw std::runtime_error(
        "'" + data.images + "': the split (data.train_fraction, data.include) leaves " +
        std::to_string(split.train.size()) + " training and " + std::to_string(split.test.size()) +
        " test images; each needs at least 2");
  return split;
}

std::vector<std::pair<int64_t, int64_t>> test_pairs(int64_t n, int64_t count, uint64_t seed) {
  std::vector<std::pair<int64_t, int64_t>> all;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (i != j) all.emplace_back(i, j);
  if (count <= 0 || count >= static_cast<int64_t>(all.size())) return all;
  std::mt19937_64 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(count);
  std::sort(all.begin(), all.end());
  return all;
}

}  // namespace drdm::reg
