#include "drdm/io/preview.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <vector>

#include "drdm/core/spatial.h"
#include "drdm/io/image_io.h"

namespace drdm {
namespace detail {
namespace {

constexpr int64_t kGap = 4;             // pixels between panels
constexpr int64_t kMinPanelSide = 192;  // enlarge planes whose long side is shorter

// Perceptually ordered colour map (dark violet -> blue -> teal -> green ->
// yellow), sampled at five anchors and interpolated linearly.
torch::Tensor colour_map(const torch::Tensor& t01) {
  static const std::array<std::array<float, 3>, 5> anchors{
      {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}}};
  auto x = t01.clamp(0, 1) * 4;
  auto lo = x.floor().clamp(0, 3);
  auto frac = x - lo;
  auto lut =
      at::tensor(std::vector<float>{anchors[0][0], anchors[0][1], anchors[0][2], anchors[1][0],
                                    anchors[1][1], anchors[1][2], anchors[2][0], anchors[2][1],
                                    anchors[2][2], anchors[3][0], anchors[3][1], anchors[3][2],
                                    anchors[4][0], anchors[4][1], anchors[4][2]})
          .view({5, 3});
  auto i0 = lo.to(at::kLong);
  auto c0 = lut.index_select(0, i0.flatten()).t().reshape({3, t01.size(0), t01.size(1)});
  auto c1 = lut.index_select(0, (i0 + 1).flatten()).t().reshape({3, t01.size(0), t01.size(1)});
  return c0 + (c1 - c0) * frac.unsqueeze(0);
}

// Grey [3, H, W] in 0..255 from a plane, with a window shared by all panels.
torch::Tensor grey(const torch::Tensor& plane, double lo, double hi) {
  auto g = ((plane - lo) / std::max(hi - lo, 1e-12)).clamp(0, 1) * 255;
  return g.unsqueeze(0).expand({3, plane.size(0), plane.size(1)});
}

// Thin lines every `step` pixels along both axes of a plane [H, W].
torch::Tensor grid_lines(int64_t h, int64_t w, int64_t step) {
  auto rows = at::arange(h, at::kFloat).remainder(step).eq(0).view({h, 1});
  auto cols = at::arange(w, at::kFloat).remainder(step).eq(0).view({1, w});
  return at::logical_or(rows, cols).to(at::kFloat);
}

struct Plane {
  torch::Tensor image, warped, displacement;  // [h, w], [h, w], [2, h, w] (in-plane, voxels)
  std::array<int64_t, 2> extent;              // full sizes of the in-plane axes
  int64_t out_of_plane_size = 1;
  torch::Tensor out_of_plane;  // [h, w] displacement along the third axis (or empty)
  torch::Tensor reference;     // [h, w] drawn after the image (or empty)
};

torch::Tensor render_row(const Plane& p, double lo, double hi) {
  const int64_t h = p.image.size(0), w = p.image.size(1);
  const int64_t step = std::max<int64_t>(4, std::min(h, w) / 16);
  auto lines =
      warp(grid_lines(h, w, step).view({1, 1, h, w}), p.displacement.unsqueeze(0)).view({h, w});
  const std::array<float, 3> yellow{255, 220, 0};
  auto overlay = grey(p.warped, lo, hi).clone();
  for (int c = 0; c < 3; ++c) overlay[c] = overlay[c] * (1 - lines) + yellow[c] * lines;
  // Magnitude of the full displacement in % of the image size per axis.
  auto m = (p.displacement[0] / p.extent[0]).pow(2) + (p.displacement[1] / p.extent[1]).pow(2);
  if (p.out_of_plane.defined()) m = m + (p.out_of_plane / p.out_of_plane_size).pow(2);
  m = m.sqrt() * 100;
  const double mmax = std::max(m.max().item<double>(), 1e-6);
  auto mag = colour_map(m / mmax);
  auto gap = at::full({3, h, kGap}, 255.0f);
  std::vector<torch::Tensor> panels{grey(p.image, lo, hi), gap};
  if (p.reference.defined()) panels.insert(panels.end(), {grey(p.reference, lo, hi), gap});
  panels.insert(panels.end(), {grey(p.warped, lo, hi), gap, overlay, gap, mag});
  return at::cat(panels, 2);
}

void check_preview_inputs(const torch::Tensor& image, const torch::Tensor& warped,
                          const torch::Tensor& field, const torch::Tensor& reference) {
  TORCH_CHECK(image.dim() == 4 || image.dim() == 5,
              "render_warp_preview: expected an image [N, C, ...S], got ", image.sizes());
  TORCH_CHECK(warped.sizes().slice(2) == image.sizes().slice(2) &&
                  field.sizes().slice(2) == image.sizes().slice(2) &&
                  field.size(1) == image.dim() - 2,
              "render_warp_preview: expected image, warped image and field on one grid, got ",
              image.sizes(), ", ", warped.sizes(), ", ", field.sizes());
  TORCH_CHECK(!reference.defined() || reference.sizes().slice(2) == image.sizes().slice(2),
              "render_warp_preview: expected the reference on the image's grid, got ",
              reference.sizes());
}

// Window from robust percentiles of the input image: {lo, hi}.
std::array<double, 2> intensity_window(const torch::Tensor& img) {
  auto sample = img.flatten();
  if (sample.numel() > 200000)
    sample = sample.index_select(0, at::arange(0, sample.numel(), sample.numel() / 200000));
  return {at::quantile(sample, 0.005).item<double>(), at::quantile(sample, 0.995).item<double>()};
}

// The planes to draw: the image itself (2D), or the three orthogonal planes
// through the middle of a volume.
std::vector<Plane> preview_planes(const torch::Tensor& img, const torch::Tensor& wrp,
                                  const torch::Tensor& u, const torch::Tensor& ref) {
  std::vector<Plane> planes;
  if (img.dim() == 2) {
    planes.push_back({img, wrp, u, {img.size(0), img.size(1)}, 1, {}, ref});
    return planes;
  }
  const int64_t D = img.size(0), H = img.size(1), W = img.size(2);
  // axial (D fixed): in-plane H, W; coronal (H fixed): D, W; sagittal (W fixed): D, H.
  const std::array<std::array<int64_t, 3>, 3> axes{{{0, 1, 2}, {1, 0, 2}, {2, 0, 1}}};
  const std::array<int64_t, 3> sizes{D, H, W};
  for (const auto& a : axes) {
    const int64_t fixed = a[0], mid = sizes[fixed] / 2;
    auto take = [&](const torch::Tensor& t) { return t.select(t.dim() - 3 + fixed, mid); };
    auto uu = take(u);  // [3, p, q]
    planes.push_back({take(img),
                      take(wrp),
                      at::stack({uu[a[1]], uu[a[2]]}),
                      {sizes[a[1]], sizes[a[2]]},
                      sizes[fixed],
                      uu[fixed],
                      ref.defined() ? take(ref) : torch::Tensor()});
  }
  return planes;
}

// The rendered rows of the planes, enlarged by `factor`, stacked top to
// bottom with gaps and padded white to the widest row: uint8 [3, H, W].
torch::Tensor stack_rows(const std::vector<Plane>& planes, double lo, double hi, int64_t factor) {
  std::vector<torch::Tensor> rows;
  int64_t width = 0;
  for (size_t i = 0; i < planes.size(); ++i) {
    auto row = render_row(planes[i], lo, hi);
    // Coronal and sagittal planes have D vertical: draw increasing D upwards
    // (superior up for the usual NIfTI orientations).
    if (i > 0) row = row.flip({1});
    if (factor > 1) row = row.repeat_interleave(factor, 1).repeat_interleave(factor, 2);
    width = std::max(width, row.size(2));
    rows.push_back(row);
  }
  std::vector<torch::Tensor> padded;
  for (size_t i = 0; i < rows.size(); ++i) {
    auto r = rows[i];
    if (r.size(2) < width) r = at::cat({r, at::full({3, r.size(1), width - r.size(2)}, 255.0f)}, 2);
    if (i) padded.push_back(at::full({3, kGap, width}, 255.0f));
    padded.push_back(r);
  }
  return at::cat(padded, 1).round().clamp(0, 255).to(at::kByte);
}

}  // namespace
}  // namespace detail

torch::Tensor render_warp_preview(const torch::Tensor& image, const torch::Tensor& warped,
                                  const torch::Tensor& field, const torch::Tensor& reference) {
  detail::check_preview_inputs(image, warped, field, reference);
  at::NoGradGuard no_grad;
  const auto ref = reference.defined() ? reference[0][0].to(at::kFloat).cpu() : torch::Tensor();
  auto img = image[0][0].to(at::kFloat).cpu();
  auto wrp = warped[0][0].to(at::kFloat).cpu();
  auto u = field[0].to(at::kFloat).cpu();
  const auto [lo, hi] = detail::intensity_window(img);
  const auto planes = detail::preview_planes(img, wrp, u, ref);
  // One enlargement for all rows, from the longest image axis, so that the
  // planes keep a common scale and thin slabs stay thin strips.
  const int64_t side = *std::max_element(img.sizes().begin(), img.sizes().end());
  const int64_t factor = std::clamp<int64_t>((detail::kMinPanelSide + side - 1) / side, 1, 8);
  return detail::stack_rows(planes, lo, hi, factor);
}

void write_warp_preview(const std::string& path, const torch::Tensor& image,
                        const torch::Tensor& warped, const torch::Tensor& field,
                        const torch::Tensor& reference) {
  write_rgb_png(path, render_warp_preview(image, warped, field, reference));
}

}  // namespace drdm
