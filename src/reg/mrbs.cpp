#include "drdm/reg/mrbs.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "drdm/core/spatial.h"

namespace drdm::reg {
namespace {

/// The uniform cubic B-spline kernel, support (-2, 2).
double bspline3(double s) {
  s = std::abs(s);
  if (s < 1.0) return (4.0 - 6.0 * s * s + 3.0 * s * s * s) / 6.0;
  if (s < 2.0) return (2.0 - s) * (2.0 - s) * (2.0 - s) / 6.0;
  return 0.0;
}

/// [size, n] weights taking n control values to `size` voxels (see bspline_upsample).
torch::Tensor bspline_matrix(int64_t size, int64_t n) {
  auto w = torch::zeros({size, n}, torch::kDouble);
  auto a = w.accessor<double, 2>();
  for (int64_t x = 0; x < size; ++x) {
    const double t = size > 1 ? static_cast<double>(x) * (n - 1) / (size - 1) : 0.0;
    const auto j0 = static_cast<int64_t>(std::floor(t));
    for (int64_t j = j0 - 1; j <= j0 + 2; ++j)
      a[x][std::clamp<int64_t>(j, 0, n - 1)] += bspline3(t - static_cast<double>(j));
  }
  return w;
}

}  // namespace

void validate(const MrbsOptions& o) {
  if (o.levels.empty()) throw std::invalid_argument("mrbs.levels must not be empty");
  for (size_t l = 0; l < o.levels.size(); ++l) {
    const auto& v = o.levels[l];
    if (v.control_points < 2)
      throw std::invalid_argument("mrbs.levels[" + std::to_string(l) +
                                  "].control_points must be >= 2");
    if (!std::isfinite(v.max_displacement) || v.max_displacement < 0)
      throw std::invalid_argument("mrbs.levels[" + std::to_string(l) +
                                  "].max_displacement must be finite and >= 0");
  }
  if (o.max_tries < 1) throw std::invalid_argument("mrbs.max_tries must be >= 1");
}

MrbsOptions mrbs_options_for(at::IntArrayRef size) {
  if (size.empty()) throw std::invalid_argument("mrbs_options_for: empty size");
  const double scale = static_cast<double>(*std::max_element(size.begin(), size.end())) / 128.0;
  MrbsOptions o;
  for (auto& l : o.levels) l.max_displacement *= scale;
  return o;
}

torch::Tensor bspline_upsample(const torch::Tensor& coefficients, at::IntArrayRef size) {
  const int64_t d = static_cast<int64_t>(size.size());
  if (coefficients.dim() != d + 2)
    throw std::invalid_argument("bspline_upsample: coefficients must be [N, C, ...n] with " +
                                std::to_string(d) + " spatial axes");
  if (!coefficients.is_floating_point())
    throw std::invalid_argument("bspline_upsample: coefficients must be floating point");
  auto x = coefficients;
  for (int64_t i = 0; i < d; ++i) {
    const int64_t n = coefficients.size(2 + i);
    if (n < 2) throw std::invalid_argument("bspline_upsample: needs >= 2 control points per axis");
    if (size[i] < 1) throw std::invalid_argument("bspline_upsample: sizes must be positive");
    const auto w = bspline_matrix(size[i], n).to(coefficients.options());  // [S, n]
    x = x.movedim(2 + i, -1).matmul(w.t()).movedim(-1, 2 + i);
  }
  return x.contiguous();
}

torch::Tensor mrbs_unchecked(at::IntArrayRef size, int64_t batch, at::Generator& gen,
                             const MrbsOptions& options,
                             const torch::TensorOptions& tensor_options) {
  validate(options);
  const int64_t d = static_cast<int64_t>(size.size());
  if (d != 2 && d != 3) throw std::invalid_argument("MRBS: size must have 2 or 3 entries");
  if (batch < 1) throw std::invalid_argument("MRBS: batch must be >= 1");
  const auto& topt = tensor_options;  // dtype float and the CPU unless given
  if (!at::isFloatingType(c10::typeMetaToScalarType(topt.dtype())))
    throw std::invalid_argument("MRBS: the dtype must be floating point");
  if (gen.device().type() != topt.device().type())
    throw std::invalid_argument("MRBS: the generator is for " + gen.device().str() +
                                " but the fields are made on " + topt.device().str());
  torch::NoGradGuard no_grad;
  torch::Tensor total;
  for (const auto& level : options.levels) {
    std::vector<int64_t> shape = {batch, d};
    shape.insert(shape.end(), d, level.control_points);
    auto c =
        at::rand(shape, gen, topt).mul_(2.0 * level.max_displacement).sub_(level.max_displacement);
    auto u = bspline_upsample(c, size);
    total = total.defined() ? total.add_(u) : u;
  }
  // A displacement along a size-1 axis means nothing (spatial.h): keep it 0.
  for (int64_t i = 0; i < d; ++i)
    if (size[i] == 1) total.select(1, i).zero_();
  return total;
}

torch::Tensor mrbs_field(at::IntArrayRef size, int64_t batch, at::Generator& gen,
                         const MrbsOptions& options, const torch::TensorOptions& tensor_options) {
  torch::NoGradGuard no_grad;
  auto out = mrbs_unchecked(size, batch, gen, options, tensor_options);
  for (int64_t draws = 1;; ++draws) {
    const auto min_det = std::get<0>(jacobian_determinant(out).flatten(1).min(1));
    const auto bad = min_det.gt(0).logical_not().nonzero().flatten();  // NaN counts as folded
    if (bad.numel() == 0) return out;
    if (draws >= options.max_tries)
      throw std::runtime_error("MRBS: " + std::to_string(bad.numel()) +
                               " sample(s) still fold (det J <= 0) after max_tries = " +
                               std::to_string(options.max_tries) +
                               " draws; lower the levels' max_displacement or raise max_tries");
    out.index_copy_(0, bad, mrbs_unchecked(size, bad.numel(), gen, options, out.options()));
  }
}

}  // namespace drdm::reg
