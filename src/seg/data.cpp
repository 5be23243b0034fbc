#include "drdm/seg/data.h"

#include <ATen/ATen.h>

#include <cctype>
#include <cmath>
#include <stdexcept>

#include "io/files.h"
#include "io/grid_check.h"
#include "io/input_checks.h"

namespace drdm::seg {
namespace {

std::vector<int64_t> identity_permutation(int64_t d) {
  std::vector<int64_t> p;
  for (int64_t i = 0; i < d; ++i) p.push_back(i);
  return p;
}

/// [1, 1, H, W] or [1, 1, D, H, W] -> [S, 1, H, W] slices along tensor axis 0.
at::Tensor as_slices(const at::Tensor& volume) {
  return volume.dim() == 4 ? volume.reshape({1, 1, volume.size(2), volume.size(3)})
                           : volume[0][0].unsqueeze(1);
}

/// In-plane (H, W) spacing in mm, tensor order, of an ITK-order spacing.
std::vector<double> in_plane_spacing(const std::vector<double>& s) { return {s[1], s[0]}; }

/// Labels [S, 1, h, w] into the network grid: nearest neighbour (the same
/// voxel-centre mapping as fit_image), zero padding.
at::Tensor fit_labels(const at::Tensor& labels, const GridFit& fit) {
  auto resized =
      at::_upsample_nearest_exact2d(labels.to(at::kFloat), {fit.fitted[0], fit.fitted[1]});
  const auto h0 = fit.pad_before[0], w0 = fit.pad_before[1];
  resized = at::constant_pad_nd(resized, {w0, fit.model_size[1] - fit.fitted[1] - w0, h0,
                                          fit.model_size[0] - fit.fitted[0] - h0});
  return resized.round().to(at::kLong);
}

}  // namespace

bool Reorientation::identity() const {
  for (size_t i = 0; i < permutation.size(); ++i)
    if (permutation[i] != static_cast<int64_t>(i)) return false;
  return flipped.empty();
}

Reorientation canonical_orientation(const Geometry& g) {
  const auto d = g.dimension();
  Reorientation r;
  r.permutation.assign(static_cast<size_t>(d), -1);
  r.spacing.assign(static_cast<size_t>(d), 0.0);
  for (int64_t k = 0; k < d; ++k) {  // ITK axis k
    int64_t p = 0;
    for (int64_t j = 1; j < d; ++j)
      if (std::abs(g.direction[j * d + k]) > std::abs(g.direction[p * d + k])) p = j;
    const double target = p < 2 ? -1.0 : 1.0;  // RAS as ITK writes it: -x, -y, +z
    if (g.direction[p * d + k] * target < 0) r.flipped.push_back(d - 1 - k);
    auto& slot = r.permutation[static_cast<size_t>(d - 1 - p)];
    if (slot >= 0) return Reorientation{identity_permutation(d), {}, g.spacing};  // oblique tie
    slot = d - 1 - k;
    r.spacing[static_cast<size_t>(p)] = g.spacing[static_cast<size_t>(k)];
  }
  return r;
}

torch::Tensor to_canonical(const torch::Tensor& x, const Reorientation& r) {
  if (r.identity()) return x;
  std::vector<int64_t> dims = {0, 1}, flip;
  for (auto a : r.permutation) dims.push_back(a + 2);
  for (auto a : r.flipped) flip.push_back(a + 2);
  return (flip.empty() ? x : x.flip(flip)).permute(dims).contiguous();
}

torch::Tensor from_canonical(const torch::Tensor& x, const Reorientation& r) {
  if (r.identity()) return x;
  std::vector<int64_t> dims(r.permutation.size() + 2), flip;
  dims[0] = 0, dims[1] = 1;
  for (size_t i = 0; i < r.permutation.size(); ++i)
    dims[static_cast<size_t>(r.permutation[i] + 2)] = static_cast<int64_t>(i) + 2;
  for (auto a : r.flipped) flip.push_back(a + 2);
  const auto back = x.permute(dims);
  return (flip.empty() ? back : back.flip(flip)).contiguous();
}

std::vector<LabelledCase> find_cases(const std::string& images_dir, const std::string& labels_dir) {
  std::vector<LabelledCase> cases;
  for (const auto& file : detail::list_images(images_dir)) {
    // Names go into the JSON records: checked before any work, not when the results are written.
    detail::require_utf8(file,
                         "the name of '" + detail::escaped(detail::join(images_dir, file)) + "'");
    const auto label = detail::join(labels_dir, file);
    detail::require_not_dangling(label);
    if (!detail::file_exists(label))
      throw std::runtime_error("no label map for '" + detail::join(images_dir, file) +
                               "': expected '" + label + "'");
    cases.push_back({detail::split_name(file).first, detail::join(images_dir, file), label});
  }
  if (cases.empty()) throw std::runtime_error("no images found in '" + images_dir + "'");
  return cases;
}

int64_t case_number(const std::string& name) {
  size_t i = 0;
  while (i < name.size() && !std::isdigit(static_cast<unsigned char>(name[i]))) ++i;
  if (i == name.size()) return -1;
  size_t j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  return std::stoll(name.substr(i, std::min<size_t>(j - i, 18)));
}

PreparedVolume prepare_volume(const std::string& image_path, const std::string& label_path,
                              const SliceOptions& o) {
  const auto image = read_image(image_path);
  PreparedVolume v;
  v.geometry = image.geometry;
  v.dims = image.geometry.dimension();
  v.orientation = canonical_orientation(v.geometry);
  const auto slices = as_slices(to_canonical(image.data, v.orientation));
  const std::vector<int64_t> plane = {slices.size(2), slices.size(3)};
  const auto spacing = in_plane_spacing(v.orientation.spacing);
  v.fit = fit_grid(plane, spacing, o.size);
  const auto norm = normalise_intensity(slices, o.clip_low_pct, o.clip_high_pct);
  std::vector<at::Tensor> fitted;
  for (int64_t s = 0; s < norm.size(0); ++s) fitted.push_back(fit_image(norm[s], v.fit));
  v.slices = at::stack(fitted);
  if (label_path.empty()) return v;
  const auto labels = read_labels(label_path);
  const auto difference = detail::grid_difference(v.geometry, labels.geometry);
  if (!difference.empty())
    throw std::runtime_error("label map '" + label_path + "' is not on the grid of '" + image_path +
                             "' (" + difference + ")");
  v.labels = fit_labels(as_slices(to_canonical(labels.data, v.orientation)), v.fit);
  return v;
}

torch::Tensor labels_on_image_grid(const torch::Tensor& scores, const PreparedVolume& v) {
  const auto& f = v.fit;
  const auto crop = scores.to(at::kFloat)
                        .narrow(2, f.pad_before[0], f.fitted[0])
                        .narrow(3, f.pad_before[1], f.fitted[1]);
  const auto back = at::upsample_bilinear2d(crop, {f.input_size[0], f.input_size[1]}, false);
  const auto labels = back.argmax(1, true);  // [S, 1, H, W]
  const auto canonical = v.dims == 2 ? labels.reshape({1, 1, f.input_size[0], f.input_size[1]})
                                     : labels.squeeze(1).unsqueeze(0).unsqueeze(0);
  return from_canonical(canonical, v.orientation);
}

SliceSet load_slices(const std::vector<LabelledCase>& cases, const SliceOptions& o) {
  SliceSet set;
  set.cases = cases;
  std::vector<at::Tensor> images, labels;
  for (size_t i = 0; i < cases.size(); ++i) {
    auto v = prepare_volume(cases[i].image_path, cases[i].label_path, o);
    images.push_back(v.slices);
    labels.push_back(v.labels);
    set.case_of.insert(set.case_of.end(), v.slices.size(0), static_cast<int64_t>(i));
  }
  set.images = at::cat(images);
  set.labels = at::cat(labels);
  return set;
}

}  // namespace drdm::seg
