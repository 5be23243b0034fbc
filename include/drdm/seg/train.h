/// @file Few-shot training (src/seg/train.cpp): the subjects of a run, the
/// DRDM augmentation bank (Alg. 3), U-Net training on the shared engine, and
/// segmenting with a trained model.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/engine/training_engine.h"
#include "drdm/seg/config.h"
#include "drdm/seg/data.h"
#include "drdm/seg/metrics.h"
#include "drdm/seg/unet.h"

namespace drdm::seg {

/// A subject: its number and its cases (ACDC: the two frames).
struct Subject {
  int64_t number = 0;
  int64_t group = 0;
  std::vector<LabelledCase> cases;
};

/// The labelled pool, the validation subjects held out of it
/// (data.validation_subjects, balanced over groups, chosen with a fixed seed)
/// and the test subjects of data, by the mod rules.
struct Split {
  std::vector<Subject> pool, validation, test;
};
Split split_subjects(const SegConfig::Data& data);

/// n subjects of the pool, balanced over groups: groups are visited in a
/// seed-shuffled order, each time taking the next subject of that group's
/// seed-shuffled list. Deterministic for (n, seed). n < 1 or n > pool size is
/// an error.
std::vector<Subject> choose_subjects(const std::vector<Subject>& pool, int64_t n, uint64_t seed);

/// The number of bank fields per slice for M slices (drdm.fields_per_slice, capped by
/// drdm.max_fields).
int64_t bank_fields_per_slice(const SegConfig& config, int64_t slices);

/// The DRDM augmentation bank of a set of slices: K = bank_fields_per_slice
/// generated fields per slice, float16 [M, K, 2, H, W] in voxels of the slice grid.
/// Cached in dir/bank.pt with dir/manifest.json; a cache made with another
/// model, levels, K, seed or slices is rebuilt.
torch::Tensor drdm_bank(const SliceSet& slices, const SegConfig& config, uint64_t seed,
                        const std::string& dir, bool progress = true);

/// One grid run's metrics on the test set: per case, per class.
struct CaseResult {
  std::string name;
  int64_t subject = 0;
  std::vector<ClassMetrics> classes;
};

/// Mean foreground DSC of `net` on a slice set at the network grid: per case
/// (its slices together) the mean over the classes present in truth or
/// prediction, then the mean over cases. The net is left in training mode.
double validation_dice(UNet& net, const SliceSet& set, int64_t classes);

/// Trains one U-Net (augmentation "none" | "bigaug" | "drdm"; bank required for
/// "drdm") on `slices` into output_dir with the shared training engine;
/// resumes when a checkpoint is there. With train.validate_every > 0 a
/// non-empty `validation` set scores the run (validation_dice) and its best
/// step is the result (RunSummary::model is best.pt, chosen_step its step).
RunSummary train_segmentation(const SegConfig& config, const std::string& augmentation,
                              const SliceSet& slices, const torch::Tensor& bank,
                              const std::string& output_dir, bool progress = true,
                              const SliceSet& validation = {});

/// A trained segmentation model with its config.
struct SegModel {
  UNet net;
  SegConfig config;
  int64_t step = 0;
};
/// Loads a model.pt written by train_segmentation (or a shipped name under models/).
SegModel load_seg_model(const std::string& path, const torch::Device& device = torch::kCPU);

/// Segments one image file: labels int64 [1, 1, ...S] on the image's own grid.
torch::Tensor segment_file(SegModel& model, const std::string& image_path);

/// Segments each case and scores it against its labels (spacing from the file).
std::vector<CaseResult> evaluate_cases(SegModel& model, const std::vector<LabelledCase>& cases);

}  // namespace drdm::seg
