#include "drdm/core/spatial.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>

#include "core/soft_labels.h"
#include "core/spatial_kernels.h"

namespace drdm {
namespace detail {
namespace {

// grid_sampler's integer codes (ATen/native/GridSamplerUtils.h).
constexpr int64_t kGridBilinear = 0;
constexpr int64_t kGridNearest = 1;
constexpr int64_t kGridZeros = 0;
constexpr int64_t kGridBorder = 1;

int64_t spatial_dims(const torch::Tensor& t) { return t.dim() - 2; }

void check_field(const torch::Tensor& field, const char* what) {
  TORCH_CHECK(field.defined(), what, ": expected a field tensor, got an undefined tensor");
  TORCH_CHECK(field.dim() == 4 || field.dim() == 5, what,
              ": expected a field [N, d, H, W] or [N, d, D, H, W], got sizes ", field.sizes());
  TORCH_CHECK(field.size(1) == spatial_dims(field), what, ": expected ", spatial_dims(field),
              " displacement channels for a ", spatial_dims(field), "D field, got sizes ",
              field.sizes());
  TORCH_CHECK(at::isFloatingType(field.scalar_type()), what,
              ": expected a floating-point field, got ", field.scalar_type());
}

// Checks that `field` can warp `input`: same spatial size, same device,
// batch equal or broadcastable from 1.
void check_pair(const torch::Tensor& input, const torch::Tensor& field, const char* what) {
  check_field(field, what);
  TORCH_CHECK(input.defined() && input.dim() == field.dim(), what, ": expected an input with ",
              field.dim(), " dims to match field ", field.sizes(), ", got ",
              input.defined() ? input.sizes() : at::IntArrayRef{});
  TORCH_CHECK(input.sizes().slice(2) == field.sizes().slice(2), what,
              ": spatial sizes differ: input ", input.sizes(), " vs field ", field.sizes());
  TORCH_CHECK(input.size(0) == field.size(0) || field.size(0) == 1 || input.size(0) == 1, what,
              ": batch sizes differ: input ", input.size(0), " vs field ", field.size(0));
  TORCH_CHECK(input.device() == field.device(), what, ": input on ", input.device(),
              " but field on ", field.device());
}

// i * scale - 1 for i in [0, n) (exactly these float operations: an identity
// field must sample voxel centres exactly), cached per thread by size, dtype
// and device.
torch::Tensor normalised_axis(int64_t n, double scale, const torch::TensorOptions& options) {
  // Never destroyed: a GPU tensor must not outlive CUDA's teardown at exit.
  using Cache = std::map<std::tuple<int64_t, int, int, int>, torch::Tensor>;
  thread_local auto* cache_ptr = new Cache();
  auto& cache = *cache_ptr;
  const auto key = std::make_tuple(n, static_cast<int>(c10::typeMetaToScalarType(options.dtype())),
                                   static_cast<int>(options.device().type()),
                                   static_cast<int>(options.device().index()));
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();
  at::NoGradGuard no_grad;
  auto axis = at::arange(n, options.requires_grad(false)).mul_(scale).sub_(1.0);
  cache.emplace(key, axis);
  return axis;
}

// Normalised grid_sample grid [N, ...S, d] (last dim in reversed axis order)
// for the pull-back x + u(x) of a field [N, d, ...S].
torch::Tensor sampling_grid(const torch::Tensor& field) {
  const int64_t d = field.size(1);
  std::vector<torch::Tensor> coords;
  coords.reserve(d);
  for (int64_t i = d - 1; i >= 0; --i) {
    const int64_t n = field.size(2 + i);
    // Size-1 axes map every coordinate to index 0 (scale 0, offset -1).
    const double scale = n > 1 ? 2.0 / static_cast<double>(n - 1) : 0.0;
    std::vector<int64_t> shape(d + 1, 1);
    shape[0] = 1;
    shape[1 + i] = n;
    // One fused base + scale * u per axis: few launches matter on a GPU
    // (about 5 us each); the axis's coordinates are made once per thread.
    coords.push_back(
        at::add(normalised_axis(n, scale, field.options()).view(shape), field.select(1, i), scale));
  }
  return at::stack(coords, -1);
}

torch::Tensor grid_sample_codes(const torch::Tensor& input, const torch::Tensor& field,
                                int64_t mode, int64_t padding) {
  auto grid = sampling_grid(field);
  auto src = input;
  if (grid.size(0) != src.size(0)) {
    const int64_t n = std::max(grid.size(0), src.size(0));
    std::vector<int64_t> gs(grid.sizes().begin(), grid.sizes().end());
    gs[0] = n;
    grid = grid.expand(gs);
    std::vector<int64_t> is(src.sizes().begin(), src.sizes().end());
    is[0] = n;
    src = src.expand(is);
  }
  return at::grid_sampler(src, grid, mode, padding, /*align_corners=*/true);
}

// The direct kernel serves sampling without gradients (the forward process,
// generation, image and label warps). Where autograd needs it, ATen samples:
// the kernel's own backward agrees with ATen's in the kernel tests, but an
// 80-step VoxelMorph fine-tuning through it learned a 2-voxel shift only to
// -1.5 voxels (MSE) and not at all (NCC), against -2.5 and -2.0 through
// ATen (tests/test_reg_synth.cpp); until that is explained, training stays on
// ATen's gradients.
bool use_direct(const torch::Tensor& input, const torch::Tensor& field) {
  const bool needs_grad =
      at::GradMode::is_enabled() && (input.requires_grad() || field.requires_grad());
  return !needs_grad && spatial_kernels_enabled() && sample_direct_applicable(input, field);
}

// Samples input at x + field(x): the direct CPU kernel where it applies
// (spatial_kernels.h), at::grid_sampler otherwise.
torch::Tensor grid_sample(const torch::Tensor& input, const torch::Tensor& field, int64_t mode,
                          int64_t padding) {
  if (use_direct(input, field))
    return sample_direct(input, field,
                         mode == kGridBilinear ? Interpolation::kLinear : Interpolation::kNearest,
                         padding == kGridZeros ? Padding::kZeros : Padding::kBorder);
  return grid_sample_codes(input, field, mode, padding);
}

// base + sample(phi, base, linear, border): compose(base, phi).
torch::Tensor compose_step(const torch::Tensor& base, const torch::Tensor& phi) {
  if (use_direct(phi, base)) return compose_direct(base, phi);
  return base + grid_sample(phi, base, kGridBilinear, kGridBorder);
}

// Derivative along `dim`: central differences inside, one-sided at the ends.
torch::Tensor finite_difference(const torch::Tensor& x, int64_t dim) {
  const int64_t n = x.size(dim);
  if (n == 1) return at::zeros_like(x);
  auto first = x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1);
  auto last = x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1);
  auto inside = (x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)) * 0.5;
  return at::cat({first, inside, last}, dim);
}

}  // namespace

torch::Tensor grid_sample_aten(const torch::Tensor& input, const torch::Tensor& field,
                               Interpolation mode, Padding padding) {
  return grid_sample_codes(input, field,
                           mode == Interpolation::kLinear ? kGridBilinear : kGridNearest,
                           padding == Padding::kZeros ? kGridZeros : kGridBorder);
}

}  // namespace detail

torch::Tensor identity_grid(at::IntArrayRef size, const torch::TensorOptions& options) {
  TORCH_CHECK(size.size() == 2 || size.size() == 3,
              "identity_grid: expected 2 or 3 spatial sizes, got ", size);
  for (auto s : size) TORCH_CHECK(s > 0, "identity_grid: expected positive sizes, got ", size);
  const auto opts = options.dtype_opt().has_value() ? options : options.dtype(at::kFloat);
  std::vector<torch::Tensor> axes;
  for (auto s : size) axes.push_back(at::arange(s, opts));
  auto grids = at::meshgrid(axes, "ij");
  return at::stack(grids, 0).unsqueeze(0);
}

torch::Tensor warp(const torch::Tensor& image, const torch::Tensor& field,
                   Interpolation interpolation, Padding padding) {
  detail::check_pair(image, field, "warp");
  TORCH_CHECK(at::isFloatingType(image.scalar_type()),
              "warp: expected a floating-point image, got ", image.scalar_type(),
              " (use warp_labels for class maps)");
  auto f = field.scalar_type() == image.scalar_type() ? field : field.to(image.scalar_type());
  return detail::grid_sample(
      image, f,
      interpolation == Interpolation::kLinear ? detail::kGridBilinear : detail::kGridNearest,
      padding == Padding::kZeros ? detail::kGridZeros : detail::kGridBorder);
}

namespace detail {

void check_soft_labels(const at::Tensor& labels, const std::string& source) {
  if (labels.numel() == 0) return;
  const auto lo = labels.min().item<int64_t>(), hi = labels.max().item<int64_t>();
  const std::string advice =
      "; use nearest label interpolation (drdm_warp --label-mode nearest, drdm_deform "
      "--label-interpolation nearest)";
  if (lo < 0)
    throw std::invalid_argument(source +
                                ": soft label interpolation needs class labels >= 0, found " +
                                std::to_string(lo) + advice);
  if (hi >= kMaxSoftLabelClasses)
    throw std::invalid_argument(
        source +
        ": soft label interpolation one-hot encodes every class up to the largest "
        "label, " +
        std::to_string(hi) + ", more than its limit of " + std::to_string(kMaxSoftLabelClasses) +
        " classes (labels 0.." + std::to_string(kMaxSoftLabelClasses - 1) + ")" + advice +
        ", or renumber the labels");
}

}  // namespace detail

torch::Tensor warp_labels(const torch::Tensor& labels, const torch::Tensor& field,
                          LabelInterpolation interpolation, int64_t num_classes) {
  detail::check_pair(labels, field, "warp_labels");
  const int64_t mode =
      interpolation == LabelInterpolation::kNearest ? detail::kGridNearest : detail::kGridBilinear;
  if (at::isFloatingType(labels.scalar_type())) {
    // One-hot or probability maps: warped as they are, channel by channel.
    return detail::grid_sample(labels, field.to(labels.scalar_type()), mode, detail::kGridZeros);
  }
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt ||
                  labels.scalar_type() == at::kShort || labels.scalar_type() == at::kByte,
              "warp_labels: expected an integer class map or a float one-hot map, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.size(1) == 1, "warp_labels: expected a class map [N, 1, ...], got ",
              labels.sizes(), " (pass one-hot maps as float)");
  const auto ftype = field.scalar_type();
  if (interpolation == LabelInterpolation::kNearest) {
    auto out =
        detail::grid_sample(labels.to(ftype), field, detail::kGridNearest, detail::kGridZeros);
    return out.round().to(at::kLong);
  }
  detail::check_soft_labels(labels, "warp_labels");
  const int64_t k =
      num_classes > 0 ? num_classes : (labels.numel() ? labels.max().item<int64_t>() + 1 : 1);
  auto one_hot = at::one_hot(labels.squeeze(1).to(at::kLong), k);  // [N, ...S, K]
  std::vector<int64_t> perm{0, labels.dim() - 1};
  for (int64_t i = 1; i < labels.dim() - 1; ++i) perm.push_back(i);
  auto soft = detail::grid_sample(one_hot.permute(perm).to(ftype), field, detail::kGridBilinear,
                                  detail::kGridZeros);
  // The channel sum is the share of interpolation weight that fell inside the
  // image: below one half the voxel is outside (as nearest would decide) and
  // becomes class 0. An absent class has an all-zero channel and never wins.
  auto out = soft.argmax(1, /*keepdim=*/true);
  return out.masked_fill_(soft.sum(1, /*keepdim=*/true).lt(0.5), 0);
}

torch::Tensor compose(const torch::Tensor& a, const torch::Tensor& b) {
  detail::check_field(a, "compose(a, b): a");
  detail::check_field(b, "compose(a, b): b");
  TORCH_CHECK(a.sizes().slice(1) == b.sizes().slice(1),
              "compose(a, b): expected fields on the same grid, got a ", a.sizes(), " and b ",
              b.sizes());
  auto bb = b.scalar_type() == a.scalar_type() ? b : b.to(a.scalar_type());
  return detail::compose_step(a, bb);
}

torch::Tensor resize_field(const torch::Tensor& field, at::IntArrayRef size) {
  detail::check_field(field, "resize_field");
  const int64_t d = field.size(1);
  TORCH_CHECK(static_cast<int64_t>(size.size()) == d, "resize_field: expected ", d,
              " target sizes for a ", d, "D field, got ", size);
  for (auto s : size) TORCH_CHECK(s > 0, "resize_field: expected positive sizes, got ", size);
  if (field.sizes().slice(2) == size) return field;
  auto out = d == 2 ? at::upsample_bilinear2d(field, size, /*align_corners=*/true)
                    : at::upsample_trilinear3d(field, size, /*align_corners=*/true);
  return out.mul_(resize_factors(field, size));
}

torch::Tensor resize_factors(const torch::Tensor& field, at::IntArrayRef size) {
  detail::check_field(field, "resize_factors");
  const int64_t d = field.size(1);
  TORCH_CHECK(static_cast<int64_t>(size.size()) == d, "resize_factors: expected ", d,
              " target sizes for a ", d, "D field, got ", size);
  std::vector<double> factors(d);
  for (int64_t i = 0; i < d; ++i) {
    const int64_t old_n = field.size(2 + i);
    factors[i] = (old_n > 1 && size[i] > 1) ? static_cast<double>(size[i] - 1) / (old_n - 1)
                                            : (size[i] > 1 ? 1.0 : 0.0);
  }
  std::vector<int64_t> shape(field.dim(), 1);
  shape[1] = d;
  return at::tensor(factors, at::TensorOptions().dtype(at::kDouble))
      .to(field.options())
      .view(shape);
}

torch::Tensor compose_power(const torch::Tensor& v, int64_t n) {
  detail::check_field(v, "compose_power");
  TORCH_CHECK(n >= 0, "compose_power: expected n >= 0, got ", n);
  if (n == 0) return at::zeros_like(v);
  auto phi = v;
  if (detail::use_direct(v, v)) {  // the direct kernel takes v as it is, no grid
    for (int64_t k = 1; k < n; ++k) phi = detail::compose_step(v, phi);
    return phi;
  }
  // compose(v, phi) = v + phi(x + v(x)): the sampling grid of v is the same
  // at every step, so it is built once.
  const auto grid = n > 1 ? detail::sampling_grid(v) : torch::Tensor();
  for (int64_t k = 1; k < n; ++k)
    phi = v + at::grid_sampler(phi, grid, detail::kGridBilinear, detail::kGridBorder,
                               /*align_corners=*/true);
  return phi;
}

torch::Tensor compose_power(const torch::Tensor& v, const std::vector<int64_t>& counts) {
  detail::check_field(v, "compose_power");
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == v.size(0),
              "compose_power: expected one count per sample, got ", counts.size(),
              " counts for a batch of ", v.size(0));
  int64_t most = 0;
  for (auto c : counts) {
    TORCH_CHECK(c >= 0, "compose_power: expected counts >= 0, got ", c);
    most = std::max(most, c);
  }
  if (most == 0) return at::zeros_like(v);
  std::vector<int64_t> shape(v.dim(), 1);
  shape[0] = v.size(0);
  const auto count = at::tensor(counts, at::kLong).to(v.device()).view(shape);
  // Sample b keeps phi once it has counts[b] copies; a count of 0 is the zero field.
  auto phi = at::where(count >= 1, v, at::zeros_like(v));
  // The direct kernel takes v as it is; the ATen path builds v's grid once.
  const bool direct = detail::use_direct(v, v);
  const auto grid = most > 1 && !direct ? detail::sampling_grid(v) : torch::Tensor();
  for (int64_t k = 1; k < most; ++k) {
    auto next = direct ? detail::compose_step(v, phi)
                       : v + at::grid_sampler(phi, grid, detail::kGridBilinear, detail::kGridBorder,
                                              /*align_corners=*/true);
    phi = at::where(count > k, next, phi);
  }
  return phi;
}

torch::Tensor integrate_scaling_squaring(const torch::Tensor& v, int64_t steps) {
  detail::check_field(v, "integrate_scaling_squaring");
  TORCH_CHECK(steps >= 0 && steps <= 30,
              "integrate_scaling_squaring: expected 0 <= steps <= 30, got ", steps);
  auto u = v / std::ldexp(1.0, static_cast<int>(steps));
  for (int64_t k = 0; k < steps; ++k) u = compose(u, u);
  return u;
}

torch::Tensor jacobian_determinant(const torch::Tensor& field) {
  detail::check_field(field, "jacobian_determinant");
  const int64_t d = field.size(1);
  // grad[j] = d u / d x_j, [N, d, ...S]; J_ij = delta_ij + grad[j][:, i].
  std::vector<torch::Tensor> grad;
  for (int64_t j = 0; j < d; ++j) grad.push_back(detail::finite_difference(field, 2 + j));
  auto J = [&](int64_t i, int64_t j) {
    auto g = grad[j].select(1, i);
    return i == j ? g + 1.0 : g;
  };
  torch::Tensor det;
  if (d == 2) {
    det = J(0, 0) * J(1, 1) - J(0, 1) * J(1, 0);
  } else {
    det = J(0, 0) * (J(1, 1) * J(2, 2) - J(1, 2) * J(2, 1)) -
          J(0, 1) * (J(1, 0) * J(2, 2) - J(1, 2) * J(2, 0)) +
          J(0, 2) * (J(1, 0) * J(2, 1) - J(1, 1) * J(2, 0));
  }
  return det.unsqueeze(1);
}

torch::Tensor folding_ratio(const torch::Tensor& field) {
  auto det = jacobian_determinant(field);
  return det.le(0).flatten(1).to(field.scalar_type()).mean(1);
}

torch::Tensor magnitude_pct(const torch::Tensor& field) {
  detail::check_field(field, "magnitude_pct");
  const int64_t d = field.size(1);
  std::vector<double> inv(d);
  for (int64_t i = 0; i < d; ++i) inv[i] = 100.0 / static_cast<double>(field.size(2 + i));
  std::vector<int64_t> shape(field.dim(), 1);
  shape[1] = d;
  auto scale =
      at::tensor(inv, at::TensorOptions().dtype(at::kDouble)).to(field.options()).view(shape);
  return (field * scale).pow(2).sum(1, /*keepdim=*/true).sqrt();
}

FieldStats field_stats(const torch::Tensor& field) {
  detail::check_field(field, "field_stats");
  at::NoGradGuard no_grad;
  const auto mag = magnitude_pct(field).flatten(1).to(at::kDouble).cpu();
  const auto det = jacobian_determinant(field).flatten(1).to(at::kDouble).cpu();
  const auto fold = det.le(0).to(at::kDouble).mean(1);
  const auto mag_max = std::get<0>(mag.max(1));
  const auto mag_mean = mag.mean(1);
  const auto det_min = std::get<0>(det.min(1));
  const auto det_max = std::get<0>(det.max(1));
  FieldStats s;
  for (int64_t n = 0; n < field.size(0); ++n) {
    s.max_magnitude_pct.push_back(mag_max[n].item<double>());
    s.mean_magnitude_pct.push_back(mag_mean[n].item<double>());
    s.folding_ratio.push_back(fold[n].item<double>());
    s.min_jacobian.push_back(det_min[n].item<double>());
    s.max_jacobian.push_back(det_max[n].item<double>());
  }
  return s;
}

}  // namespace drdm
