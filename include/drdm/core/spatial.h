/// @file Spatial core: identity grids, warping, composition, resizing, integration, Jacobians.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "drdm/core/sampling.h"

namespace drdm {

// Conventions (DESIGN.md, fixed once):
//  * images  float [N, C, H, W] or [N, C, D, H, W];
//  * labels  int64 [N, 1, ...] class maps, or one-hot float [N, K, ...];
//  * fields  float [N, d, ...spatial], channel i = displacement along tensor
//    spatial axis i (3D: D, H, W), in voxels of the field's own grid;
//  * warp(I, u)(x) = I(x + u(x))  (pull-back);
//  * compose(a, b)(x) = a(x) + b(x + a(x)), so warp(I, compose(a, b)) ==
//    warp(warp(I, b), a): b acts on the image first.
// Every function takes device and dtype from its inputs and works on CPU and
// CUDA alike. Spatial axes of size 1 are allowed (a single-slice volume): the
// displacement along such an axis is ignored when sampling.

/// Voxel coordinates of a grid: [1, d, ...size], channel i holds the index
/// along spatial axis i. d = size.size() must be 2 or 3.
torch::Tensor identity_grid(at::IntArrayRef size, const torch::TensorOptions& options = {});

/// Pull-back warp of an image. image [N, C, ...S] floating, field [N|1, d, ...S]
/// in voxels (S of the image). Returns [N, C, ...S] of the image's dtype.
/// Differentiable in the image and the field (linear mode).
torch::Tensor warp(const torch::Tensor& image, const torch::Tensor& field,
                   Interpolation interpolation = Interpolation::kLinear,
                   Padding padding = Padding::kZeros);

/// Pull-back warp of labels that never invents a class.
///  * int64 class map [N, 1, ...S] -> int64 [N, 1, ...S]; kNearest samples the
///    nearest voxel, kSoft warps a one-hot encoding linearly and takes argmax.
///    Outside the image (zero padding) the result is class 0.
///  * one-hot / probability float [N, K, ...S] -> float [N, K, ...S] warped
///    linearly (kSoft) or by nearest neighbour (kNearest).
/// num_classes <= 0 means max(label) + 1.
torch::Tensor warp_labels(const torch::Tensor& labels, const torch::Tensor& field,
                          LabelInterpolation interpolation = LabelInterpolation::kNearest,
                          int64_t num_classes = 0);

/// compose(a, b)(x) = a(x) + b(x + a(x)); a, b [N, d, ...S] in voxels.
/// warp(I, compose(a, b)) == warp(warp(I, b), a). b is sampled with border
/// padding. Differentiable in both.
torch::Tensor compose(const torch::Tensor& a, const torch::Tensor& b);

/// Resample a field [N, d, ...S] to grid `size` (d entries) with linear
/// interpolation (align_corners), rescaling channel i by
/// (size_i - 1) / (S_i - 1) so that it stays in voxels of the new grid.
torch::Tensor resize_field(const torch::Tensor& field, at::IntArrayRef size);

/// The per-channel factors resize_field multiplies by, as a tensor [1, d, 1, ...]
/// of the field's dtype and device: (size_i - 1) / (S_i - 1), 1 or 0 on size-1 axes.
torch::Tensor resize_factors(const torch::Tensor& field, at::IntArrayRef size);

/// The field v composed with itself: n copies of v (n >= 0; n = 0 gives the
/// zero field), computed as phi <- compose(v, phi). This is the "n_t-fold
/// self-composition" of the forward process.
torch::Tensor compose_power(const torch::Tensor& v, int64_t n);

/// compose_power with a count per sample (v [N, d, ...S], counts.size() == N,
/// counts >= 0): sample b is v composed with itself counts[b] times, exactly as
/// compose_power(v[b], counts[b]) computes it, in one batched loop.
torch::Tensor compose_power(const torch::Tensor& v, const std::vector<int64_t>& counts);

/// Displacement of exp(v) for a stationary velocity field v [N, d, ...S]
/// (voxels) by scaling and squaring with `steps` squarings (v / 2^steps, then
/// `steps` self-compositions).
torch::Tensor integrate_scaling_squaring(const torch::Tensor& v, int64_t steps = 7);

/// Jacobian determinant det(I + grad u) of x -> x + u(x): field [N, d, ...S]
/// -> [N, 1, ...S]. Central differences inside, one-sided at the border, in
/// voxel units. Axes of size 1 contribute derivative 0. Differentiable.
torch::Tensor jacobian_determinant(const torch::Tensor& field);

/// Fraction of voxels with det(I + grad u) <= 0, per sample: [N].
torch::Tensor folding_ratio(const torch::Tensor& field);

/// Per-voxel magnitude || (u_i / S_i)_i ||_2 in % of the image size:
/// field [N, d, ...S] -> [N, 1, ...S].
torch::Tensor magnitude_pct(const torch::Tensor& field);

/// Summary statistics of one or more fields, each value per sample.
struct FieldStats {
  std::vector<double> max_magnitude_pct;
  std::vector<double> mean_magnitude_pct;
  std::vector<double> folding_ratio;
  std::vector<double> min_jacobian;
  std::vector<double> max_jacobian;
};

/// Statistics of a field [N, d, ...S] (see magnitude_pct, jacobian_determinant).
FieldStats field_stats(const torch::Tensor& field);

}  // namespace drdm
