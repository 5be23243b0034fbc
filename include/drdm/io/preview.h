/// @file Preview pictures of deformations: image, deformed image, grid overlay, magnitude map.
#pragma once

#include <torch/types.h>

#include <string>

namespace drdm {

/// Renders one sample as an RGB montage, uint8 [3, H, W] on the CPU. Panels
/// from left to right: the image, the warped image, the warped image with
/// the deformed grid drawn over it, and the displacement magnitude (% of the
/// image size, colour map from 0 to its maximum).
/// 2D: image/warped [1, 1, H, W], field [1, 2, H, W] (only sample 0 of a
/// batch is drawn). 3D: one row per central plane (axial D, coronal H,
/// sagittal W), showing the in-plane components. Small images are enlarged
/// by an integer factor with nearest-neighbour so that panels are legible.
/// With a `reference` (same shape as image, e.g. the fixed image of a
/// registration pair), its panel follows the image's.
torch::Tensor render_warp_preview(const torch::Tensor& image, const torch::Tensor& warped,
                                  const torch::Tensor& field, const torch::Tensor& reference = {});

/// render_warp_preview written as a PNG (atomically).
void write_warp_preview(const std::string& path, const torch::Tensor& image,
                        const torch::Tensor& warped, const torch::Tensor& field,
                        const torch::Tensor& reference = {});

}  // namespace drdm
