/// @file Private: direct CPU kernels for the spatial hot paths (warp, compose).
///
/// sample_direct(input, field) computes, for every voxel x,
///   out[n, c, x] = interp(input[n, c], x + field[n, :, x])
/// with the displacement in voxels (channel i along tensor spatial axis i),
/// the same result as at::grid_sampler(align_corners=true) on the normalised
/// grid spatial.cpp builds, up to float rounding, without building that grid.
/// The ATen path stays the fallback (CUDA, other dtypes) and the test oracle.
#pragma once

#include <torch/types.h>

#include "drdm/core/sampling.h"

namespace drdm::detail {

/// Whether the direct kernels are used where they apply. True unless the
/// environment variable DRDM_SPATIAL_KERNELS was "aten" when first asked (read
/// once per process) or set_spatial_kernels_enabled(false) was called.
bool spatial_kernels_enabled();

/// Overrides spatial_kernels_enabled() for the whole process (benchmarks and
/// tests compare both paths in one run); returns the previous setting.
bool set_spatial_kernels_enabled(bool enabled);

/// Whether sample_direct handles this pair: CPU strided tensors, both float32
/// or both float64, input [Ni, C, ...S] and field [Nf, d, ...S] (d = 2 or 3)
/// with Ni, Nf equal or one of them 1, nothing empty, fewer than 2^31 voxels
/// per channel. Any strides are fine.
bool sample_direct_applicable(const torch::Tensor& input, const torch::Tensor& field);

/// The direct kernel (requires sample_direct_applicable): [max(Ni, Nf), C, ...S]
/// of the input's dtype. Border padding clips the coordinate to [0, size - 1]
/// before interpolating (gradient 0 through a clipped coordinate); size-1 axes
/// always sample index 0. Differentiable in input and field (linear mode), in
/// the input only (nearest mode; the field gets a zero gradient), like ATen.
torch::Tensor sample_direct(const torch::Tensor& input, const torch::Tensor& field,
                            Interpolation mode, Padding padding);

/// compose(a, b) = a + sample(b, a, linear, border) by the direct kernel
/// (requires sample_direct_applicable(b, a) and b.size(1) == a.size(1)); the
/// sum is taken inside the kernel when no gradient is recorded.
torch::Tensor compose_direct(const torch::Tensor& a, const torch::Tensor& b);

/// The ATen path: at::grid_sampler(align_corners=true) on a normalised grid
/// built from the field (defined in spatial.cpp). Any device and dtype.
torch::Tensor grid_sample_aten(const torch::Tensor& input, const torch::Tensor& field,
                               Interpolation mode, Padding padding);

}  // namespace drdm::detail
