/// @file Registering and scoring pairs (src/reg/evaluate.cpp): a pair's
/// field, its label overlap and folding, and reg_synth register.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/reg/data.h"
#include "drdm/reg/train.h"
#include "drdm/seg/metrics.h"

namespace drdm::reg {

/// The field of a pair on the moving image's own grid, [1, d, ...S] in
/// voxels: warp(moving.raw, field) ~ fixed. The two volumes must share a grid
/// (an error names both files otherwise).
torch::Tensor register_volumes(RegModel& model, const RegVolume& moving, const RegVolume& fixed);

/// Labelled volumes held out of training, and the ordered pairs that score a run.
struct RegValidation {
  std::vector<RegVolume> volumes;
  std::vector<std::pair<int64_t, int64_t>> pairs;  ///< (moving, fixed) indices into volumes
};

/// Mean over pairs of the mean over classes 1..classes of the DSC between the
/// moving labels warped by the model's field (nearest neighbour) and the
/// fixed labels, on the volumes' own grid. Classes absent from both count 1.
double validation_dice(RegModel& model, const RegValidation& validation, int64_t classes);

/// Scores of one registered pair: per class (seg::ClassMetrics of the warped
/// moving labels against the fixed labels, spacing of the fixed file) and the
/// fraction of voxels with det J <= 0.
struct PairResult {
  std::string moving, fixed;
  std::vector<seg::ClassMetrics> classes;
  double folding = 0;
};
PairResult score_pair(const RegVolume& moving, const RegVolume& fixed, const torch::Tensor& field,
                      int64_t num_classes);

/// What reg_synth register wrote, and (with fixed labels) its metrics as a
/// Markdown table: per class DSC, ASD and HD95 before and after registration.
struct RegisterResult {
  std::vector<std::string> written;
  std::string metrics_table;
};

/// reg_synth register: writes field.nii.gz (ITK displacement, mm), warped
/// image, warped labels (when moving_labels is set) and metrics.json (when
/// fixed_labels is set: per class its label value and the metrics after and
/// "before" registration, and mean_dice / mean_dice_before) into
/// output_dir. Refuses, before any work, an output that is one of the inputs
/// (by path or link) and images on different grids or of the network's
/// other dimension.
RegisterResult register_files(RegModel& model, const std::string& moving, const std::string& fixed,
                              const std::string& moving_labels, const std::string& fixed_labels,
                              const std::string& output_dir);

}  // namespace drdm::reg
