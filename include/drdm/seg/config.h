/// @file The seg_fewshot config (src/seg/config.cpp): every key with its
/// default, read from JSON with overrides and written back.
/// docs/seg_fewshot.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/engine/train_section.h"
#include "drdm/seg/bigaug.h"
#include "drdm/seg/data.h"
#include "drdm/seg/unet.h"

namespace drdm::seg {

/// Every key of a seg_fewshot config (configs/seg-acdc-cpu.json; docs/seg_fewshot.md).
struct SegConfig {
  std::string name = "seg";
  struct Data {
    std::string images, labels;  ///< folders of image / label-map pairs (same file names)
    SliceOptions slices;         ///< "size", "clip_low_pct", "clip_high_pct"
    std::vector<std::string> classes = {"RV", "MYO", "LV"};  ///< names of labels 1..K
    /// Subjects are the case numbers (first digits in the file name). Group of
    /// subject s: (s - 1) / group_size (ACDC: five pathology groups of 20).
    int64_t group_size = 20;
    std::vector<int64_t> pool_mod = {1, 9};    ///< labelled pool: s mod group_size in [a, b]
    std::vector<int64_t> test_mod = {10, 18};  ///< test set: s mod group_size in [a, b]
    int64_t max_test_subjects = 0;             ///< 0 = all (a smaller number: the first ones)
    /// Subjects of the pool held out for validation (balanced over groups; 0 = none).
    int64_t validation_subjects = 0;
    /// Every training sample also turned by a random multiple of 90 degrees and
    /// mirrored with p = 0.5 (after its augmentation; square grids only).
    bool rotate_flip = false;
  } data;
  struct Grid {
    std::vector<std::string> augmentations = {"none", "bigaug", "drdm"};
    std::vector<int64_t> subjects = {1, 5, 15};  ///< labelled subjects per run
    std::vector<int64_t> seeds = {0};
  } grid;
  UNetOptions unet;          ///< "unet": widths (dims 2, classes from data.classes)
  std::string loss = "bce";  ///< "unet.loss": "bce" (Eq. 17) or "dice_ce"
  TrainSection train;        ///< "train": as drdm_train's train section
  BigAugOptions bigaug;      ///< "bigaug": docs/bigaug.md
  struct Drdm {
    std::string model = "cardiac2d";         ///< shipped name or model.pt
    std::vector<int64_t> levels = {30, 45};  ///< T' of the bank's fields, in turn
    int64_t fields_per_slice = 16;           ///< bank size per labelled slice
    /// Cap on a bank's fields (0 = none): a subset of M slices gets
    /// min(fields_per_slice, max(1, max_fields / M)) fields per slice.
    int64_t max_fields = 0;
    int64_t batch = 16;  ///< fields generated per network call
  } drdm;
};

SegConfig load_seg_config(const std::string& path, const std::vector<std::string>& overrides = {});
SegConfig parse_seg_config(const std::string& json_text, const std::string& source,
                           const std::vector<std::string>& overrides = {});
std::string to_json(const SegConfig& config);

}  // namespace drdm::seg
