// Private: what soft label interpolation (one-hot linear, then argmax) can
// take, checked before any work (drdm_warp --label-mode soft, drdm_deform
// --label-interpolation soft, drdm::warp_labels with kSoft).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace drdm::detail {

/// The most classes kSoft one-hot encodes for a class map (labels 0..255):
/// it holds max(label) + 1 channels per voxel, so a label of 70000 would need
/// tens of GB. Label maps with larger values: nearest interpolation (or renumber them).
constexpr int64_t kMaxSoftLabelClasses = 256;

/// Throws std::invalid_argument starting with `source` (e.g. the file name)
/// unless the integer class map `labels` suits kSoft: every label >= 0 and
/// < kMaxSoftLabelClasses. Cheap: run it before any work.
void check_soft_labels(const at::Tensor& labels, const std::string& source);

}  // namespace drdm::detail
