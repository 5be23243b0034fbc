#include "drdm/diffusion/losses.h"

#include <ATen/ATen.h>

#include "drdm/core/spatial.h"

namespace drdm {
namespace {

void check_field(const torch::Tensor& f, const char* what, const char* name) {
  TORCH_CHECK(f.defined(), what, ": ", name, " is an undefined tensor");
  TORCH_CHECK(f.dim() == 4 || f.dim() == 5, what, ": expected ", name,
              " as a field [N, d, ...S] with 2 or 3 spatial axes, got shape ", f.sizes());
  TORCH_CHECK(f.size(1) == f.dim() - 2, what, ": expected ", name, " to have ", f.dim() - 2,
              " channels (one per spatial axis), got shape ", f.sizes());
  TORCH_CHECK(at::isFloatingType(f.scalar_type()), what, ": expected a floating-point ", name,
              ", got ", f.scalar_type());
}

void check_pair(const torch::Tensor& psi, const torch::Tensor& psi_hat, const char* what) {
  check_field(psi, what, "psi");
  check_field(psi_hat, what, "psi_hat");
  TORCH_CHECK(psi.sizes() == psi_hat.sizes(), what,
              ": expected psi and psi_hat of the same shape, got ", psi.sizes(), " and ",
              psi_hat.sizes());
  TORCH_CHECK(psi.device() == psi_hat.device(), what, ": psi on ", psi.device(), " but psi_hat on ",
              psi_hat.device());
  TORCH_CHECK(psi.scalar_type() == psi_hat.scalar_type(), what,
              ": expected psi and psi_hat of the same dtype, got ", psi.scalar_type(), " and ",
              psi_hat.scalar_type());
}

// psi_hat(x + psi(x)): linear, border padding (the sampling of drdm::compose).
torch::Tensor sample_at_step(const torch::Tensor& psi, const torch::Tensor& psi_hat) {
  return warp(psi_hat, psi, Interpolation::kLinear, Padding::kBorder);
}

torch::Tensor vector_norm(const torch::Tensor& v) {
  // linalg_vector_norm's backward is 0 (not NaN) where the norm is 0.
  return at::linalg_vector_norm(v, 2, at::IntArrayRef{1});
}

torch::Tensor distance_term(const torch::Tensor& psi, const torch::Tensor& sampled, double eps) {
  const auto composed = psi + sampled;  // compose(psi, psi_hat)
  return (vector_norm(composed) / (vector_norm(psi) + eps)).mean();
}

torch::Tensor angle_term(const torch::Tensor& psi, const torch::Tensor& sampled, double eps) {
  const auto dot = (psi * sampled).sum(1);
  return (dot / (vector_norm(psi) * vector_norm(sampled) + eps)).mean();
}

}  // namespace

torch::Tensor distance_loss(const torch::Tensor& psi, const torch::Tensor& psi_hat, double eps) {
  check_pair(psi, psi_hat, "distance_loss");
  TORCH_CHECK(eps > 0, "distance_loss: expected eps > 0, got ", eps);
  return distance_term(psi, sample_at_step(psi, psi_hat), eps);
}

torch::Tensor angle_loss(const torch::Tensor& psi, const torch::Tensor& psi_hat, double eps) {
  check_pair(psi, psi_hat, "angle_loss");
  TORCH_CHECK(eps > 0, "angle_loss: expected eps > 0, got ", eps);
  return angle_term(psi, sample_at_step(psi, psi_hat), eps);
}

torch::Tensor smoothness_loss(const torch::Tensor& psi_hat) {
  check_field(psi_hat, "smoothness_loss", "psi_hat");
  const int64_t d = psi_hat.size(1);
  // Displacements as fractions of the image size along their axis (the
  // units of Table 1), so that the weight means the same at every resolution:
  // the authors' code measures this term on fields in those units too.
  std::vector<double> inv_size;
  for (int64_t i = 0; i < d; ++i)
    inv_size.push_back(1.0 / static_cast<double>(psi_hat.size(2 + i)));
  std::vector<int64_t> shape(psi_hat.dim(), 1);
  shape[1] = d;
  const auto scaled = psi_hat * at::tensor(inv_size, at::kDouble).to(psi_hat.options()).view(shape);
  torch::Tensor sum = at::zeros({}, psi_hat.options());
  for (int64_t j = 0; j < d; ++j) {
    const int64_t dim = 2 + j;
    const int64_t n = psi_hat.size(dim);
    if (n < 2) continue;  // no difference along this axis: derivative 0
    const auto diff = scaled.narrow(dim, 1, n - 1) - scaled.narrow(dim, 0, n - 1);
    sum = sum + diff.abs().mean();
  }
  return sum / static_cast<double>(d);
}

torch::Tensor folding_loss(const torch::Tensor& psi_hat) {
  check_field(psi_hat, "folding_loss", "psi_hat");
  return at::relu(-jacobian_determinant(psi_hat)).mean();
}

LossTerms recovery_loss(const torch::Tensor& psi, const torch::Tensor& psi_hat,
                        const LossWeights& w) {
  check_pair(psi, psi_hat, "recovery_loss");
  TORCH_CHECK(w.eps > 0, "recovery_loss: expected eps > 0, got ", w.eps);
  const auto sampled = sample_at_step(psi, psi_hat);
  LossTerms t;
  t.distance = distance_term(psi, sampled, w.eps);
  t.angle = angle_term(psi, sampled, w.eps);
  t.smoothness = smoothness_loss(psi_hat);
  t.folding = folding_loss(psi_hat);
  t.total =
      t.distance * w.distance + t.angle * w.angle + (t.smoothness + t.folding) * w.regularisation;
  return t;
}

}  // namespace drdm
