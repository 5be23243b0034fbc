// `seg_fewshot predict` and `evaluate`: label maps of new images, and metrics of label maps against
// the truth.
#include "drdm/seg/evaluate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "drdm/core/stats.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/text_file.h"
#include "io/atomic_file.h"
#include "io/files.h"
#include "io/grid_check.h"
#include "io/input_checks.h"

namespace drdm::seg {
namespace {

/// The image files `input` names: itself, or the images of a folder.
std::vector<std::string> predict_inputs(const std::string& input) {
  std::vector<std::string> inputs;
  if (detail::dir_exists(input)) {
    for (const auto& f : detail::list_images(input)) inputs.push_back(detail::join(input, f));
    if (inputs.empty()) throw std::runtime_error("no images found in '" + input + "'");
  } else {
    if (!detail::file_exists(input))
      throw std::runtime_error("input '" + input + "' does not exist");
    inputs.push_back(input);
  }
  return inputs;
}

}  // namespace

std::vector<std::string> predict_files(SegModel& model, const std::string& input,
                                       const std::string& output_dir) {
  const auto inputs = predict_inputs(input);
  std::vector<std::string> outputs;
  for (const auto& path : inputs)
    outputs.push_back(detail::join(output_dir, detail::base_name(path)));
  for (const auto& out : outputs) detail::require_distinct(out, inputs);
  // Every input is read and prepared before the first write: a bad file
  // anywhere in the folder leaves no prediction (and no folder) behind.
  for (const auto& path : inputs) {
    throw_if_interrupted();  // SIGINT / SIGTERM: stop between files
    prepare_volume(path, "", model.config.data.slices);
  }
  detail::make_dirs(output_dir);
  for (size_t i = 0; i < inputs.size(); ++i) {
    throw_if_interrupted();
    const auto labels = segment_file(model, inputs[i]);
    write_labels(outputs[i], labels, read_image_info(inputs[i]).geometry);
    log::info("segmented " + inputs[i] + " -> " + outputs[i]);
  }
  return outputs;
}

std::vector<CaseResult> evaluate_folders(const std::string& pred_dir, const std::string& truth_dir,
                                         const std::vector<int64_t>& classes) {
  // A label above every scored class is a map of other classes (or a broken one): its classes
  // would be empty in both maps and not scored at all.
  const int64_t top = classes.empty() ? 0 : *std::max_element(classes.begin(), classes.end());
  std::string rule = "--classes ";
  for (size_t k = 0; k < classes.size(); ++k) rule += (k ? "," : "") + std::to_string(classes[k]);
  rule += ": give every label value of the maps";
  std::vector<CaseResult> out;
  for (const auto& c : find_cases(pred_dir, truth_dir)) {
    throw_if_interrupted();  // SIGINT / SIGTERM: stop between cases
    const auto pred = read_labels(c.image_path), truth = read_labels(c.label_path);
    detail::require_label_range(pred.data, top, c.image_path, rule);
    detail::require_label_range(truth.data, top, c.label_path, rule);
    const auto& g = truth.geometry;
    const auto difference = detail::grid_difference(g, pred.geometry);
    if (!difference.empty())
      throw std::runtime_error("'" + c.image_path + "' and '" + c.label_path +
                               "' lie on different grids (" + difference + ")");
    const std::vector<double> spacing(g.spacing.rbegin(), g.spacing.rend());
    out.push_back(
        {c.name, case_number(c.name), label_metrics(pred.data, truth.data, spacing, classes)});
  }
  return out;
}

namespace {

bool absent_in_both(const ClassMetrics& m) { return m.pred_voxels == 0 && m.truth_voxels == 0; }

/// Metric i (DSC %, sensitivity %, precision %, ASD, HD95) of one class of
/// one case; NaN for a class in neither label map (not scored, see below).
double metric(const ClassMetrics& m, int i) {
  if (absent_in_both(m)) return std::nan("");
  const double v[5] = {100 * m.dice, 100 * m.sensitivity, 100 * m.precision, m.asd, m.hd95};
  return v[i];
}

/// True when every case name holds a subject number (ACDC: patient001_frame01).
bool has_subjects(const std::vector<CaseResult>& results) {
  return std::all_of(results.begin(), results.end(), [](const auto& r) { return r.subject >= 0; });
}

/// The per-case values grouped as the table reports them: one mean per
/// subject when the names allow (has_subjects), else one per case.
std::vector<double> grouped(const std::vector<CaseResult>& results,
                            const std::vector<double>& per_case) {
  if (!has_subjects(results)) return per_case;
  std::map<int64_t, std::vector<double>> subjects;
  for (size_t i = 0; i < results.size(); ++i) subjects[results[i].subject].push_back(per_case[i]);
  std::vector<double> out;
  for (const auto& [subject, v] : subjects) out.push_back(mean_of(v));
  return out;
}

std::string table_row(const std::string& name, const std::string& label,
                      const std::vector<double> (&v)[5]) {
  char row[320];
  std::snprintf(
      row, sizeof row,
      "| %s | %s | %.1f ± %.1f | %.1f ± %.1f | %.1f ± %.1f | %.2f ± %.2f | %.2f ± %.2f |\n",
      name.c_str(), label.c_str(), mean_of(v[0]), std_of(v[0]), mean_of(v[1]), std_of(v[1]),
      mean_of(v[2]), std_of(v[2]), mean_of(v[3]), std_of(v[3]), mean_of(v[4]), std_of(v[4]));
  return row;
}

std::string class_name(const std::vector<std::string>& names, size_t k, int64_t label) {
  return k < names.size() ? names[k] : std::to_string(label);
}

}  // namespace

std::string metrics_table(const std::vector<CaseResult>& results,
                          const std::vector<int64_t>& classes,
                          const std::vector<std::string>& names) {
  std::set<int64_t> subjects;
  for (const auto& r : results) subjects.insert(r.subject);
  const bool by_subject = has_subjects(results);
  std::string md =
      std::to_string(results.size()) + " cases" +
      (by_subject ? " of " + std::to_string(subjects.size()) +
                        " subjects (mean ± standard deviation "
                        "over subjects)"
                  : " (mean ± standard deviation over cases)") +
      "\n\n| class | label | DSC % | sensitivity % | precision % | ASD (mm) | HD95 (mm) |\n"
      "|---|---:|---:|---:|---:|---:|---:|\n";
  std::vector<double> mean[5];
  for (int i = 0; i < 5; ++i) {
    std::vector<double> per_case;
    for (const auto& r : results) {
      std::vector<double> v;
      for (const auto& m : r.classes) v.push_back(metric(m, i));
      per_case.push_back(mean_of(v));
    }
    mean[i] = grouped(results, per_case);
  }
  for (size_t k = 0; k < classes.size(); ++k) {
    const auto name = class_name(names, k, classes[k]), label = std::to_string(classes[k]);
    if (std::all_of(results.begin(), results.end(),
                    [k](const auto& r) { return absent_in_both(r.classes[k]); })) {
      md += "| " + name + " | " + label + " | absent in both | | | | |\n";
      continue;
    }
    std::vector<double> v[5];
    for (int i = 0; i < 5; ++i) {
      std::vector<double> per_case;
      for (const auto& r : results) per_case.push_back(metric(r.classes[k], i));
      v[i] = grouped(results, per_case);
    }
    md += table_row(name, label, v);
  }
  const bool none_scored = std::all_of(results.begin(), results.end(), [](const auto& r) {
    return std::all_of(r.classes.begin(), r.classes.end(), absent_in_both);
  });
  return md + (none_scored ? "| mean | | absent in both | | | | |\n" : table_row("mean", "", mean));
}

std::string results_json(const std::vector<CaseResult>& results,
                         const std::vector<int64_t>& classes,
                         const std::vector<std::string>& names) {
  const auto num = [](double x) {
    return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
  };
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : results) {
    nlohmann::json per_class = nlohmann::json::array();
    for (size_t k = 0; k < r.classes.size(); ++k) {
      const auto& m = r.classes[k];
      const bool absent = absent_in_both(m);
      const auto value = [&](double x) { return absent ? nlohmann::json(nullptr) : num(x); };
      per_class.push_back(
          {{"label", k < classes.size() ? nlohmann::json(classes[k]) : nlohmann::json(nullptr)},
           {"name", class_name(names, k, k < classes.size() ? classes[k] : -1)},
           {"absent_in_both", absent},
           {"dice", value(m.dice)},
           {"sensitivity", value(m.sensitivity)},
           {"precision", value(m.precision)},
           {"asd", value(m.asd)},
           {"hd95", value(m.hd95)}});
    }
    out.push_back({{"name", r.name}, {"subject", r.subject}, {"classes", per_class}});
  }
  return out.dump(1);
}

namespace {

/// The names of o.classes: --class-names, or the model's classes (label k is
/// data.classes[k - 1]), or none (the table then shows the label values).
std::vector<std::string> evaluate_class_names(const EvaluateOptions& o) {
  if (!o.class_names.empty()) {
    if (o.class_names.size() != o.classes.size())
      throw std::invalid_argument("--class-names: " + std::to_string(o.class_names.size()) +
                                  " names for " + std::to_string(o.classes.size()) + " --classes");
    return o.class_names;
  }
  if (o.model.empty()) return {};
  const auto model_names = load_seg_model(o.model).config.data.classes;
  std::vector<std::string> names;
  for (const auto label : o.classes)
    names.push_back(label >= 1 && label <= static_cast<int64_t>(model_names.size())
                        ? model_names[static_cast<size_t>(label - 1)]
                        : std::to_string(label));
  return names;
}

/// Warns about classes that some cases have in neither label map: those
/// cases are not scored for them (a DSC of 100 % would say nothing).
void warn_absent_classes(const std::vector<CaseResult>& results,
                         const std::vector<int64_t>& classes) {
  for (size_t k = 0; k < classes.size(); ++k) {
    const auto n = std::count_if(results.begin(), results.end(),
                                 [k](const auto& r) { return absent_in_both(r.classes[k]); });
    if (n > 0)
      log::warn("label " + std::to_string(classes[k]) +
                " is in neither the predicted nor the true label map of " + std::to_string(n) +
                " of " + std::to_string(results.size()) +
                " cases; they are not scored for it (\"absent in both\")");
  }
}

}  // namespace

std::string evaluate_command(const EvaluateOptions& o) {
  if (o.classes.empty()) throw std::invalid_argument("--classes: none given");
  std::vector<std::string> inputs;
  for (const auto& c : find_cases(o.pred, o.truth))
    inputs.push_back(c.image_path), inputs.push_back(c.label_path);
  detail::require_writable_output(o.json, "--json");
  detail::require_distinct(o.json, inputs);
  const auto names = evaluate_class_names(o);
  const auto results = evaluate_folders(o.pred, o.truth, o.classes);
  warn_absent_classes(results, o.classes);
  if (!o.json.empty())
    write_text_atomically(o.json, results_json(results, o.classes, names) + "\n");
  return metrics_table(results, o.classes, names);
}

}  // namespace drdm::seg
