// Registration losses (Eq. 20 and VoxelMorph's unsupervised terms).
#include "drdm/reg/losses.h"

#include <ATen/ATen.h>

#include <stdexcept>

namespace drdm::reg {

torch::Tensor gradient_loss(const torch::Tensor& field, int64_t p) {
  if (p != 1 && p != 2) throw std::invalid_argument("gradient_loss: p must be 1 or 2");
  if (field.dim() != 4 && field.dim() != 5)
    throw std::invalid_argument(
        "gradient_loss: expected a field [N, d, ...S] with 2 or 3 spatial axes");
  const int64_t d = field.dim() - 2;
  auto total = at::zeros({}, field.options());
  for (int64_t axis = 2; axis < field.dim(); ++axis) {
    const int64_t n = field.size(axis);
    if (n < 2) continue;
    const auto diff = field.narrow(axis, 1, n - 1) - field.narrow(axis, 0, n - 1);
    total = total + (p == 1 ? diff.abs() : diff.square()).mean();
  }
  return total / static_cast<double>(d);
}

namespace {
/// Window sums (zero padding, centred): average pooling times the window volume.
at::Tensor window_sum(const at::Tensor& x, int64_t window) {
  const int64_t d = x.dim() - 2, pad = window / 2;
  const double volume = d == 2 ? double(window * window) : double(window * window * window);
  const auto pooled = d == 2 ? at::avg_pool2d(x, window, 1, pad, false, true)
                             : at::avg_pool3d(x, window, 1, pad, false, true);
  return pooled * volume;
}
}  // namespace

torch::Tensor ncc_loss(const torch::Tensor& a, const torch::Tensor& b, int64_t window) {
  if (window < 1 || window % 2 == 0)
    throw std::invalid_argument("ncc_loss: window must be odd and >= 1");
  if (a.sizes() != b.sizes() || (a.dim() != 4 && a.dim() != 5) || a.size(1) != 1)
    throw std::invalid_argument("ncc_loss: expected two images [N, 1, ...S] of one shape");
  const double n = a.dim() == 4 ? double(window * window) : double(window * window * window);
  const auto sa = window_sum(a, window), sb = window_sum(b, window);
  const auto cross = window_sum(a * b, window) - sa * sb / n;
  const auto var_a = window_sum(a * a, window) - sa * sa / n;
  const auto var_b = window_sum(b * b, window) - sb * sb / n;
  return -(cross * cross / (var_a * var_b + 1e-5)).mean();
}

torch::Tensor supervised_loss(const torch::Tensor& target, const torch::Tensor& predicted,
                              double lambda) {
  if (target.sizes() != predicted.sizes())
    throw std::invalid_argument("supervised_loss: target and prediction differ in shape");
  return (predicted - target).square().mean() + lambda * gradient_loss(predicted, 1);
}

std::pair<torch::Tensor, torch::Tensor> unsupervised_terms(const std::string& similarity,
                                                           const torch::Tensor& warped,
                                                           const torch::Tensor& fixed,
                                                           const torch::Tensor& smoothed,
                                                           int64_t ncc_window) {
  at::Tensor sim;
  if (similarity == "mse")
    sim = (warped - fixed).square().mean();
  else if (similarity == "ncc")
    sim = ncc_loss(warped, fixed, ncc_window);
  else
    throw std::invalid_argument("unknown similarity '" + similarity + "' (expected mse or ncc)");
  return {sim, gradient_loss(smoothed, 2)};
}

torch::Tensor unsupervised_loss(const std::string& similarity, const torch::Tensor& warped,
                                const torch::Tensor& fixed, const torch::Tensor& smoothed,
                                double lambda, int64_t ncc_window) {
  const auto [sim, smooth] = unsupervised_terms(similarity, warped, fixed, smoothed, ncc_window);
  return sim + lambda * smooth;
}

}  // namespace drdm::reg
