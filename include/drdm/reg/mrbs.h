/// @file Random multi-resolution cubic B-spline deformations (MRBS; the
/// synthetic training deformations of Eppenhof & Pluim, IEEE TMI 2019), 2D
/// and 3D, on any device. See docs/mrbs.md for the parameters and their sources.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace drdm::reg {

/// One resolution level.
struct MrbsLevel {
  /// Control points per spatial axis (>= 2), spread evenly from the first to
  /// the last voxel of every axis (corners aligned).
  int64_t control_points = 4;
  /// Every component of every control-point displacement is drawn from
  /// U(-max_displacement, max_displacement), in voxels of the image grid.
  double max_displacement = 12.8;
};

/// Defaults: the level set for a 128-voxel image (2D 128^2); use
/// mrbs_options_for(size) to scale the displacements to another size
/// (3D 64^3 gets half of them). See docs/mrbs.md for why these values.
struct MrbsOptions {
  std::vector<MrbsLevel> levels = {{4, 12.8}, {8, 6.4}, {16, 3.2}};
  /// Draws per sample (the first included) before giving up on finding one
  /// with det J > 0 everywhere.
  int64_t max_tries = 100;
};

/// Throws std::invalid_argument naming the option when one is out of range.
void validate(const MrbsOptions& options);

/// The default levels with every max_displacement scaled by longest / 128,
/// where longest is the largest entry of `size`: 128^2 -> (12.8, 6.4, 3.2),
/// 64^3 -> (6.4, 3.2, 1.6) voxels. The control-point counts do not change, so
/// the displacement relative to the control spacing is the same at every size.
MrbsOptions mrbs_options_for(at::IntArrayRef size);

/// Cubic B-spline (free-form deformation) evaluation: coefficients
/// [N, C, ...n] (one control grid per channel, n_i >= 2 points per axis) ->
/// [N, C, ...size]. Control point k of axis i sits at voxel k (size_i - 1) /
/// (n_i - 1); the value at x is sum_k B3(t - k) c_k with t = x (n_i - 1) /
/// (size_i - 1), c clamped beyond the ends. Separable (one matrix per axis);
/// the weights are non-negative and sum to 1, so the result stays within the
/// coefficients' range. A size-1 axis takes the value at t = 0.
torch::Tensor bspline_upsample(const torch::Tensor& coefficients, at::IntArrayRef size);

/// One MRBS draw without the folding check: the sum over levels of B-spline
/// fields with U(-max, max) control displacements, [batch, d, ...size] in
/// voxels (d = size.size(), 2 or 3; channel i along tensor axis i). The noise
/// is drawn with `gen`, on tensor_options' device (which must be gen's).
torch::Tensor mrbs_unchecked(at::IntArrayRef size, int64_t batch, at::Generator& gen,
                             const MrbsOptions& options = {},
                             const torch::TensorOptions& tensor_options = {});

/// MRBS fields [batch, d, ...size] in voxels with det J > 0 everywhere
/// (drdm::jacobian_determinant): a sample with any det J <= 0 is redrawn, up
/// to options.max_tries draws per sample; then std::runtime_error. The same
/// generator state gives the same fields.
torch::Tensor mrbs_field(at::IntArrayRef size, int64_t batch, at::Generator& gen,
                         const MrbsOptions& options = {},
                         const torch::TensorOptions& tensor_options = {});

}  // namespace drdm::reg
