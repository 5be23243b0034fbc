/// @file Registration losses: the supervised loss of synthetic pretraining
/// (paper Eq. 20) and VoxelMorph's unsupervised similarity and smoothness terms.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>

namespace drdm::reg {

/// Smoothness of a field [N, d, ...S] (voxels): for each spatial axis j the
/// mean over samples, channels and voxels of |u(x + e_j) - u(x)|^p (forward
/// differences, p = 1 or 2), averaged over the d axes (VoxelMorph's Grad loss
/// for p = 2). An axis of size 1 contributes 0. For u = A x: mean_ij |A_ij|^p.
torch::Tensor gradient_loss(const torch::Tensor& field, int64_t p);

/// VoxelMorph's local normalised cross-correlation as a loss, -mean(cc):
/// over every voxel's window of `window`^d voxels (zero padding), with sums
/// S_a, S_b, S_aa, S_bb, S_ab and n = window^d,
///   cc = (S_ab - S_a S_b / n)^2 / ((S_aa - S_a^2 / n)(S_bb - S_b^2 / n) + 1e-5).
/// a, b [N, 1, ...S]. -1 when b = k a with k > 0 (away from flat windows); an
/// offset (b = k a + c) changes the zero-padded border windows.
torch::Tensor ncc_loss(const torch::Tensor& a, const torch::Tensor& b, int64_t window = 9);

/// Eq. 20, synthetic pretraining: MSE(target, predicted) + lambda * gradient_loss(predicted, 1),
/// both fields [N, d, ...S] in voxels.
torch::Tensor supervised_loss(const torch::Tensor& target, const torch::Tensor& predicted,
                              double lambda);

/// Unsupervised fine-tuning (VoxelMorph): similarity(warped, fixed) + lambda *
/// gradient_loss(smoothed, 2), similarity "mse" or "ncc" (window ncc_window).
/// `smoothed` is the field VoxelMorph regularises (its pre-integration field).
torch::Tensor unsupervised_loss(const std::string& similarity, const torch::Tensor& warped,
                                const torch::Tensor& fixed, const torch::Tensor& smoothed,
                                double lambda, int64_t ncc_window = 9);

/// The two terms of unsupervised_loss, unweighted: {similarity, gradient_loss(smoothed, 2)}.
std::pair<torch::Tensor, torch::Tensor> unsupervised_terms(const std::string& similarity,
                                                           const torch::Tensor& warped,
                                                           const torch::Tensor& fixed,
                                                           const torch::Tensor& smoothed,
                                                           int64_t ncc_window = 9);

}  // namespace drdm::reg
