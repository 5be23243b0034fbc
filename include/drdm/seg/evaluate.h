/// @file Predicting and scoring label maps (src/seg/evaluate.cpp):
/// seg_fewshot predict and evaluate, and the metrics table and JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/seg/train.h"

namespace drdm::seg {

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

}  // namespace drdm::seg
