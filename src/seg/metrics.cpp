#include "drdm/seg/metrics.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace drdm::seg {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string shape_str(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

std::string spacing_str(const std::vector<double>& spacing) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < spacing.size(); ++i) s << (i ? ", " : "") << spacing[i];
  return s.str() + "]";
}

/// Throws unless every spacing entry is finite and > 0 and there are `dims`
/// of them (any number >= 1 when dims == 0).
void check_spacing(const std::vector<double>& spacing, size_t dims, const char* what) {
  if (spacing.empty() || (dims && spacing.size() != dims))
    throw std::invalid_argument(std::string(what) + ": spacing " + spacing_str(spacing) +
                                " must have " + (dims ? std::to_string(dims) : "at least 1") +
                                " entries");
  for (double s : spacing)
    if (!(s > 0.0) || !std::isfinite(s))
      throw std::invalid_argument(std::string(what) + ": spacing " + spacing_str(spacing) +
                                  " must be finite and > 0");
}

/// The spatial part of a map [...S], [1, ...S] or [1, 1, ...S] with d =
/// spacing.size() axes, as a CPU contiguous tensor; nullopt-style empty
/// Tensor when the shape does not fit.
torch::Tensor spatial_part(const torch::Tensor& t, size_t d) {
  const int64_t extra = t.dim() - static_cast<int64_t>(d);
  if (extra < 0 || extra > 2) return {};
  for (int64_t i = 0; i < extra; ++i)
    if (t.size(i) != 1) return {};
  return t.reshape(t.sizes().slice(extra));
}

/// Validates a pred/truth pair and returns their CPU spatial parts (int64,
/// or bool when `masks`), contiguous.
std::pair<torch::Tensor, torch::Tensor> canonical_pair(const torch::Tensor& pred,
                                                       const torch::Tensor& truth,
                                                       const std::vector<double>& spacing,
                                                       bool masks, const char* what) {
  const std::string shapes = "pred " + shape_str(pred) + ", truth " + shape_str(truth);
  for (const auto* t : {&pred, &truth}) {
    const bool is_bool = t->scalar_type() == at::kBool;
    if (!at::isIntegralType(t->scalar_type(), /*includeBool=*/masks) || (!masks && is_bool))
      throw std::invalid_argument(std::string(what) + ": label maps must have an integer dtype (" +
                                  shapes + ", dtypes " +
                                  std::string(c10::toString(pred.scalar_type())) + ", " +
                                  c10::toString(truth.scalar_type()) + ")");
  }
  if (spacing.size() != 2 && spacing.size() != 3)
    throw std::invalid_argument(std::string(what) + ": spacing " + spacing_str(spacing) +
                                " must have 2 or 3 entries, one per spatial axis (" + shapes + ")");
  check_spacing(spacing, spacing.size(), what);
  auto p = spatial_part(pred, spacing.size());
  auto t = spatial_part(truth, spacing.size());
  if (!p.defined() || !t.defined())
    throw std::invalid_argument(std::string(what) +
                                ": expected [...S], [1, ...S] or [1, 1, ...S] with " +
                                std::to_string(spacing.size()) + " spatial axes (spacing " +
                                spacing_str(spacing) + "), got " + shapes);
  if (p.sizes() != t.sizes())
    throw std::invalid_argument(std::string(what) + ": spatial shapes differ: " + shapes);
  const auto type = masks ? at::kBool : at::kLong;
  auto convert = [&](const torch::Tensor& x) {
    return masks ? x.to(at::kCPU).ne(0).contiguous() : x.to(at::kCPU, type).contiguous();
  };
  return {convert(p), convert(t)};
}

/// 1D squared distance transform of samples f at positions q * s (f = +inf
/// where there is no feature): d[q] = min_p f[p] + (s (q - p))^2. The lower
/// envelope of the parabolas rooted at the finite samples; v holds their
/// indices, z the boundaries between them. Scratch v (n), z (n + 1).
void edt_1d(const double* f, double* d, int64_t n, double s, std::vector<int64_t>& v,
            std::vector<double>& z) {
  int64_t k = -1;
  for (int64_t q = 0; q < n; ++q) {
    if (f[q] == kInf) continue;
    const double xq = s * static_cast<double>(q);
    double cut = -kInf;
    while (k >= 0) {
      const double xp = s * static_cast<double>(v[k]);
      cut = ((f[q] + xq * xq) - (f[v[k]] + xp * xp)) / (2.0 * (xq - xp));
      if (cut > z[k]) break;
      --k;
    }
    ++k;
    v[k] = q;
    z[k] = k == 0 ? -kInf : cut;
    z[k + 1] = kInf;
  }
  if (k < 0) {
    std::fill(d, d + n, kInf);
    return;
  }
  int64_t j = 0;
  for (int64_t q = 0; q < n; ++q) {
    const double xq = s * static_cast<double>(q);
    while (z[j + 1] < xq) ++j;
    const double dx = xq - s * static_cast<double>(v[j]);
    d[q] = f[v[j]] + dx * dx;
  }
}

/// Applies edt_1d along axis `axis` of a contiguous buffer of shape `sizes`.
void edt_axis(double* buf, const std::vector<int64_t>& sizes, size_t axis, double s) {
  const int64_t n = sizes[axis];
  int64_t outer = 1, inner = 1;
  for (size_t a = 0; a < axis; ++a) outer *= sizes[a];
  for (size_t a = axis + 1; a < sizes.size(); ++a) inner *= sizes[a];
  std::vector<double> f(n), d(n), z(n + 1);
  std::vector<int64_t> v(n);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double* line = buf + o * n * inner + i;
      for (int64_t q = 0; q < n; ++q) f[q] = line[q * inner];
      edt_1d(f.data(), d.data(), n, s, v, z);
      for (int64_t q = 0; q < n; ++q) line[q * inner] = d[q];
    }
}

/// Distances at the `at` voxels to the nearest `to` voxel (both bool masks).
std::vector<double> distances_at(const torch::Tensor& at_mask, const torch::Tensor& to,
                                 const std::vector<double>& spacing) {
  auto selected = distance_transform(to, spacing).masked_select(at_mask).contiguous();
  const double* p = selected.data_ptr<double>();
  return {p, p + selected.numel()};
}

/// Both masks cropped to the bounding box of their union. Surfaces and
/// surface distances do not change: everything outside is background.
std::pair<torch::Tensor, torch::Tensor> crop_to_union(torch::Tensor p, torch::Tensor t) {
  const auto where = p.logical_or(t).nonzero();  // [K, d], K > 0
  const auto lo = where.amin(0), hi = where.amax(0);
  for (int64_t a = 0; a < p.dim(); ++a) {
    const int64_t start = lo[a].item<int64_t>(), length = hi[a].item<int64_t>() - start + 1;
    p = p.narrow(a, start, length);
    t = t.narrow(a, start, length);
  }
  return {p.contiguous(), t.contiguous()};
}

double ratio(int64_t num, int64_t den) { return den ? static_cast<double>(num) / den : kNaN; }

/// Metrics of two canonical bool masks.
ClassMetrics metrics_of(const torch::Tensor& p, const torch::Tensor& t,
                        const std::vector<double>& spacing) {
  ClassMetrics m{};
  m.pred_voxels = p.sum().item<int64_t>();
  m.truth_voxels = t.sum().item<int64_t>();
  if (m.pred_voxels == 0 && m.truth_voxels == 0) return {1.0, 1.0, 1.0, 0.0, 0.0, 0, 0};
  const int64_t overlap = p.logical_and(t).sum().item<int64_t>();
  m.dice = 2.0 * static_cast<double>(overlap) / static_cast<double>(m.pred_voxels + m.truth_voxels);
  m.sensitivity = ratio(overlap, m.truth_voxels);
  m.precision = ratio(overlap, m.pred_voxels);
  m.asd = m.hd95 = kNaN;
  if (m.pred_voxels == 0 || m.truth_voxels == 0) return m;
  const auto [pc, tc] = crop_to_union(p, t);
  const auto sp = surface(pc), st = surface(tc);
  const auto pt = distances_at(sp, st, spacing), tp = distances_at(st, sp, spacing);
  double sum = 0.0;
  for (double x : pt) sum += x;
  for (double x : tp) sum += x;
  m.asd = sum / static_cast<double>(pt.size() + tp.size());
  m.hd95 = std::max(percentile(pt, 95.0), percentile(tp, 95.0));
  return m;
}

}  // namespace

torch::Tensor distance_transform(const torch::Tensor& features,
                                 const std::vector<double>& spacing) {
  if (!at::isIntegralType(features.scalar_type(), /*includeBool=*/true))
    throw std::invalid_argument("distance_transform: features " + shape_str(features) +
                                " must be bool or integer, got " +
                                c10::toString(features.scalar_type()));
  if (static_cast<size_t>(features.dim()) != spacing.size())
    throw std::invalid_argument("distance_transform: features " + shape_str(features) +
                                " and spacing " + spacing_str(spacing) +
                                " differ in their number of axes");
  check_spacing(spacing, spacing.size(), "distance_transform");
  // Squared distances, 0 on features and +inf elsewhere, transformed one axis at a time.
  auto dist = at::full(features.sizes(), kInf, at::dtype(at::kDouble));
  dist.masked_fill_(features.to(at::kCPU).ne(0), 0.0);
  const std::vector<int64_t> sizes(features.sizes().begin(), features.sizes().end());
  if (dist.numel() > 0)
    for (size_t a = 0; a < sizes.size(); ++a)
      edt_axis(dist.data_ptr<double>(), sizes, a, spacing[a]);
  return dist.sqrt_();
}

torch::Tensor surface(const torch::Tensor& mask) {
  if (!at::isIntegralType(mask.scalar_type(), /*includeBool=*/true))
    throw std::invalid_argument("surface: mask " + shape_str(mask) +
                                " must be bool or integer, got " +
                                c10::toString(mask.scalar_type()));
  const auto m = mask.to(at::kCPU).ne(0).contiguous();
  const auto padded = at::constant_pad_nd(m.to(at::kByte), std::vector<int64_t>(2 * m.dim(), 1), 0);
  auto interior = m.clone();
  for (int64_t a = 0; a < m.dim(); ++a) {
    auto core = padded;  // padded, cropped back to the mask on every axis but a
    for (int64_t b = 0; b < m.dim(); ++b)
      if (b != a) core = core.narrow(b, 1, m.size(b));
    interior = interior.logical_and(core.narrow(a, 0, m.size(a)))
                   .logical_and(core.narrow(a, 2, m.size(a)));
  }
  return m.logical_and(interior.logical_not());
}

std::vector<double> surface_distances(const torch::Tensor& from, const torch::Tensor& to,
                                      const std::vector<double>& spacing) {
  const auto [f, t] = canonical_pair(from, to, spacing, /*masks=*/true, "surface_distances");
  return distances_at(surface(f), surface(t), spacing);
}

double percentile(std::vector<double> values, double q) {
  if (!(q >= 0.0 && q <= 100.0))
    throw std::invalid_argument("percentile: q = " + std::to_string(q) + " is not in [0, 100]");
  if (values.empty()) return kNaN;
  std::sort(values.begin(), values.end());
  const double r = q / 100.0 * static_cast<double>(values.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(r));
  if (lo + 1 >= values.size()) return values.back();
  const double frac = r - static_cast<double>(lo);
  return frac == 0.0 ? values[lo] : values[lo] + frac * (values[lo + 1] - values[lo]);
}

ClassMetrics mask_metrics(const torch::Tensor& pred, const torch::Tensor& truth,
                          const std::vector<double>& spacing) {
  const auto [p, t] = canonical_pair(pred, truth, spacing, /*masks=*/true, "mask_metrics");
  return metrics_of(p, t, spacing);
}

std::vector<ClassMetrics> label_metrics(const torch::Tensor& pred, const torch::Tensor& truth,
                                        const std::vector<double>& spacing,
                                        const std::vector<int64_t>& classes) {
  const auto [p, t] = canonical_pair(pred, truth, spacing, /*masks=*/false, "label_metrics");
  std::vector<ClassMetrics> out;
  out.reserve(classes.size());
  for (int64_t c : classes) out.push_back(metrics_of(p.eq(c), t.eq(c), spacing));
  return out;
}

}  // namespace drdm::seg
