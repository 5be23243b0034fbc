/// @file Segmentation metrics for label maps: Dice, sensitivity, precision,
/// symmetric average surface distance (ASD) and 95% Hausdorff distance (HD95).
/// Definitions and the rules for empty masks: docs/metrics.md.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace drdm::seg {

// Conventions:
//  * label maps: integer tensors [...S] with d = spacing.size() spatial axes
//    (d = 2 or 3); up to two leading axes of size 1 ([1, ...S], [1, 1, ...S])
//    are squeezed. Any device; the work is done on CPU copies.
//  * spacing: mm per voxel along each spatial axis, in TENSOR order (D, H, W) /
//    (H, W); drdm::Geometry::spacing is in ITK order (x, y, z), reversed.
//  * surface of a mask: its foreground voxels with at least one face
//    neighbour (4-connected in 2D, 6-connected in 3D) in the background or
//    outside the image.
//  * distances are between voxel centres, in mm.
// Bad input throws std::invalid_argument naming the shapes involved.

/// Scores of one class. When exactly one of the two masks is empty, asd and
/// hd95 are NaN ("undefined; excluded from means"), as is a ratio whose
/// denominator is zero. When both are empty, everything is perfect: dice,
/// sensitivity, precision 1, asd and hd95 0.
struct ClassMetrics {
  double dice;           ///< 2 |P & T| / (|P| + |T|)
  double sensitivity;    ///< |P & T| / |T| (recall)
  double precision;      ///< |P & T| / |P|
  double asd;            ///< mean of the surface distances P->T and T->P pooled (mm)
  double hd95;           ///< max of the two directed 95th percentiles (mm), see percentile()
  int64_t truth_voxels;  ///< |T|
  int64_t pred_voxels;   ///< |P|
};

/// Per-class metrics of a predicted label map against the truth, one entry
/// per element of `classes`, in that order. pred, truth: integer label maps
/// of the same spatial shape (see the conventions above); spacing: mm per
/// spatial axis, all > 0; classes: the labels to score (e.g. {1, 2, 3}).
std::vector<ClassMetrics> label_metrics(const torch::Tensor& pred, const torch::Tensor& truth,
                                        const std::vector<double>& spacing,
                                        const std::vector<int64_t>& classes);

/// The metrics of one pair of binary masks (bool or integer, non-zero =
/// foreground), shaped as in label_metrics.
ClassMetrics mask_metrics(const torch::Tensor& pred, const torch::Tensor& truth,
                          const std::vector<double>& spacing);

/// Exact Euclidean distance transform with anisotropic spacing: for every
/// voxel, the distance in mm to the nearest non-zero voxel of `features`
/// (bool or integer [...S], any number of axes = spacing.size() >= 1).
/// Returns float64 [...S] on CPU; 0 on feature voxels, +inf everywhere when
/// there is no feature voxel. Separable lower-envelope algorithm
/// (Felzenszwalb & Huttenlocher 2012), O(voxels x axes).
torch::Tensor distance_transform(const torch::Tensor& features, const std::vector<double>& spacing);

/// Surface voxels of a mask (bool or integer [...S], non-zero = foreground,
/// any number of axes): bool [...S] on CPU, true where the voxel is foreground
/// and a face neighbour is background or outside the image. Every axis is
/// spatial: pass [...S], not [1, 1, ...S] (a size-1 axis makes every voxel surface).
torch::Tensor surface(const torch::Tensor& mask);

/// Directed surface distances: for each surface voxel of `from` (in memory
/// order), the distance in mm to the nearest surface voxel of `to`. Masks as
/// in mask_metrics. Empty when `from` is empty; all +inf when `to` is empty.
std::vector<double> surface_distances(const torch::Tensor& from, const torch::Tensor& to,
                                      const std::vector<double>& spacing);

/// The q-th percentile (0 <= q <= 100) with linear interpolation between
/// order statistics, as numpy.percentile's default: with the values sorted
/// v[0] <= ... <= v[n-1] and r = q / 100 * (n - 1), the result is
/// v[floor(r)] + (r - floor(r)) * (v[floor(r) + 1] - v[floor(r)]). NaN for no values.
double percentile(std::vector<double> values, double q);

}  // namespace drdm::seg
