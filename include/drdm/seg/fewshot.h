/// @file Few-shot segmentation (paper Sec. 4, Table 2): a U-Net trained on a
/// few labelled subjects with no augmentation, BigAug, or DRDM-deformed
/// copies (Alg. 3), evaluated on held-out subjects.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "drdm/seg/bigaug.h"
#include "drdm/seg/data.h"
#include "drdm/seg/metrics.h"
#include "drdm/seg/unet.h"
#include "drdm/engine/train_section.h"

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
  } data;
  struct Grid {
    std::vector<std::string> augmentations = {"none", "bigaug", "drdm"};
    std::vector<int64_t> subjects = {1, 5, 15};  ///< labelled subjects per run
    std::vector<int64_t> seeds = {0};
  } grid;
  UNetOptions unet;           ///< "unet": widths (dims 2, classes from data.classes)
  std::string loss = "bce";   ///< "unet.loss": "bce" (Eq. 17) or "dice_ce"
  TrainSection train;   ///< "train": as drdm_train's train section
  BigAugOptions bigaug;       ///< "bigaug": docs/bigaug.md
  struct Drdm {
    std::string model = "cardiac2d";            ///< shipped name or model.pt
    std::vector<int64_t> levels = {30, 45};      ///< T' of the bank's fields, in turn
    int64_t fields_per_slice = 16;               ///< bank size per labelled slice
    /// Cap on a bank's fields (0 = none): a subset of M slices gets
    /// min(fields_per_slice, max(1, max_fields / M)) fields per slice.
    int64_t max_fields = 0;
    int64_t batch = 16;                          ///< fields generated per network call
  } drdm;
};

SegConfig load_seg_config(const std::string& path, const std::vector<std::string>& overrides = {});
SegConfig parse_seg_config(const std::string& json_text, const std::string& source,
                           const std::vector<std::string>& overrides = {});
std::string to_json(const SegConfig& config);

/// A subject: its number and its cases (ACDC: the two frames).
struct Subject {
  int64_t number = 0;
  int64_t group = 0;
  std::vector<LabelledCase> cases;
};

/// The labelled pool and the test subjects of data, by the mod rules.
struct Split {
  std::vector<Subject> pool, test;
};
Split split_subjects(const SegConfig::Data& data);

/// n subjects of the pool, balanced over groups: groups are visited in a
/// seed-shuffled order, each time taking the next subject of that group's
/// seed-shuffled list. Deterministic for (n, seed). n < 1 or n > pool size is
/// an error.
std::vector<Subject> choose_subjects(const std::vector<Subject>& pool, int64_t n, uint64_t seed);

/// The number of bank fields per slice for M slices (drdm.fields_per_slice, capped by drdm.max_fields).
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

/// Trains one U-Net (augmentation "none" | "bigaug" | "drdm"; bank required for
/// "drdm") on `slices` into output_dir with the shared training engine;
/// resumes when a checkpoint is there. Returns the path of model.pt.
std::string train_segmentation(const SegConfig& config, const std::string& augmentation,
                               const SliceSet& slices, const torch::Tensor& bank,
                               const std::string& output_dir, bool progress = true);

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

/// seg_fewshot predict: segments an image file, or every image of a folder,
/// into output_dir (same file names, the input's geometry). Refuses an output
/// that is one of the inputs (the same folder, a link), and reads every input
/// before the first write. Returns the paths written.
std::vector<std::string> predict_files(SegModel& model, const std::string& input,
                                       const std::string& output_dir);

/// seg_fewshot evaluate: every label map of pred_dir against the file of the
/// same name in truth_dir (a missing one, or another grid: size, spacing,
/// origin or direction, is an error naming both).
std::vector<CaseResult> evaluate_folders(const std::string& pred_dir, const std::string& truth_dir,
                                         const std::vector<int64_t>& classes);

/// A Markdown table per class (name, label value; DSC, sensitivity,
/// precision in %, ASD, HD95 in mm) and a mean row over the classes, as
/// mean +- std over subjects when every case name holds a subject number
/// (else over cases). A class in neither label map of a case is not scored
/// for that case; one in neither map of any case shows "absent in both".
/// `names` name `classes` (default: their label values).
std::string metrics_table(const std::vector<CaseResult>& results,
                          const std::vector<int64_t>& classes,
                          const std::vector<std::string>& names = {});
/// The per-case results as JSON text: per class its label value, name,
/// "absent_in_both" and the metrics (null when absent in both).
std::string results_json(const std::vector<CaseResult>& results,
                         const std::vector<int64_t>& classes,
                         const std::vector<std::string>& names = {});

/// What `seg_fewshot evaluate` does.
struct EvaluateOptions {
  std::string pred, truth;                   ///< folders of label maps, matched by file name
  std::vector<int64_t> classes = {1, 2, 3};  ///< label values to score
  std::vector<std::string> class_names;      ///< their names in the table and JSON
  std::string model;  ///< or: names from this model (label k: data.classes[k - 1])
  std::string json;   ///< optional: the per-case metrics as JSON (atomic)
};
/// Checks the JSON output first (its folder exists, it is none of the label
/// maps), scores pred against truth (warning about classes absent in both),
/// writes the JSON and returns the table.
std::string evaluate_command(const EvaluateOptions& options);

/// Runs the grid into output_dir: augmentation x subjects x seeds, skipping
/// finished runs and resuming half-finished ones; writes results.json,
/// results.md and predictions.png.
void run_grid(const SegConfig& config, const std::string& output_dir, bool progress = true);

}  // namespace drdm::seg
