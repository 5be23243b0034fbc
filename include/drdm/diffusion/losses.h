/// @file Training losses of the recovery network (paper Eq. 14).
#pragma once

#include <torch/types.h>

namespace drdm {

// Fields follow DESIGN.md: [N, d, ...S], d = 2 or 3, channel i = displacement
// along tensor spatial axis i, in voxels. psi is the forward step (the
// target), psi_hat the predicted recovery. A perfect recovery undoes psi:
// compose(psi, psi_hat) == 0, i.e. psi_hat(x + psi(x)) == -psi(x).
// Every loss is a 0-dim tensor of the inputs' dtype, on their device,
// differentiable in psi_hat (and in psi, though the trainer treats it as a
// constant). All inputs are checked (same shape, [N, d, ...S] with d = 2 or 3
// matching the number of spatial axes, floating point, same device).

/// Loss weights, paper Eq. 14: lambda = (distance, angle, regularisation).
struct LossWeights {
  double distance = 1.0;
  double angle = 1.0;
  double regularisation = 10.0;
  double eps = 1e-3;  ///< voxels (distance); voxels^2 in the cosine's denominator
};

/// The terms of recovery_loss, each a 0-dim tensor:
/// total = distance * w.distance + angle * w.angle
///       + (smoothness + folding) * w.regularisation.
struct LossTerms {
  torch::Tensor total, distance, angle, smoothness, folding;
};

/// Relative distance error:
///   mean_x || compose(psi, psi_hat)(x) ||_2 / (|| psi(x) ||_2 + eps),
/// compose(psi, psi_hat)(x) = psi(x) + psi_hat(x + psi(x)) with psi_hat
/// sampled linearly with border padding, exactly as drdm::compose. 0 for a
/// perfect recovery, ~1 for psi_hat = 0. Mean over samples and voxels.
torch::Tensor distance_loss(const torch::Tensor& psi, const torch::Tensor& psi_hat,
                            double eps = 1e-3);

/// Angle error: mean_x cos(psi(x), psi_hat(x + psi(x))), with
/// cos(a, b) = a.b / (||a|| ||b|| + eps). Minimum -1 when the recovery points
/// exactly back (psi_hat(x + psi(x)) = -psi(x)), 0 for psi_hat = 0, +1 when
/// it points the same way as psi.
///
/// Sign: the paper's Eq. 14 (and DESIGN.md) write -cos(psi, psi_hat o psi),
/// but minimising that would push psi_hat to point along psi, against the
/// distance term. The authors' code minimises +cos (their NCC of
/// psi_hat o psi against psi), i.e. -cos(-psi, psi_hat o psi): the angle
/// between the recovery and the inverse of the step. We follow the code.
torch::Tensor angle_loss(const torch::Tensor& psi, const torch::Tensor& psi_hat, double eps = 1e-3);

/// L1 smoothness of the field in units of the image size: with
/// v_i = psi_hat_i / S_i (S_i the size of spatial axis i), for each axis j the
/// mean over samples, channels and voxels of |v(x + e_j) - v(x)| (forward
/// differences), then the average over the d axes. An axis of size 1
/// contributes 0. For a linear field u = A x this is mean_ij |A_ij| / S_i.
/// (In voxel units, with the paper's weight 10, this term pins the prediction
/// to ~0 on small images; the authors' code measures it on fields in image-size
/// units, as here, so the weight means the same at every resolution.)
torch::Tensor smoothness_loss(const torch::Tensor& psi_hat);

/// Folding penalty: mean_x relu(-det(I + grad psi_hat)), with the determinant
/// of drdm::jacobian_determinant (identity included, central differences).
/// This fixes the authors' code, which omits the identity and uses one axis's
/// derivative twice, so that their penalty is ~0 on folding fields.
torch::Tensor folding_loss(const torch::Tensor& psi_hat);

/// Total loss of Eq. 14 and its terms (psi_hat is sampled at x + psi(x) once).
LossTerms recovery_loss(const torch::Tensor& psi, const torch::Tensor& psi_hat,
                        const LossWeights& w = {});

}  // namespace drdm
