// seg_fewshot run: the grid of augmentation x labelled subjects x seeds, and its report.
#include "drdm/seg/grid.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "diffusion/run_checks.h"
#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "drdm/core/stats.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/image_io.h"
#include "drdm/io/text_file.h"
#include "drdm/seg/augment_preview.h"
#include "drdm/seg/evaluate.h"
#include "drdm/seg/train.h"
#include "engine/config_json.h"
#include "engine/progress.h"
#include "engine/run_kind.h"
#include "io/files.h"
#include "io/input_checks.h"
#include "io/run_lock.h"

namespace drdm::seg {
namespace {

using nlohmann::json;

constexpr const char* kProgram = "seg_fewshot run";
const char* const kMetrics[] = {"dice", "sensitivity", "precision", "asd", "hd95"};

double metric_of(const ClassMetrics& m, const std::string& name) {
  if (name == "dice") return m.dice;
  if (name == "sensitivity") return m.sensitivity;
  if (name == "precision") return m.precision;
  if (name == "asd") return m.asd;
  return m.hd95;
}

std::vector<int64_t> class_labels(const SegConfig& c) {
  std::vector<int64_t> labels;
  for (size_t k = 1; k <= c.data.classes.size(); ++k) labels.push_back(static_cast<int64_t>(k));
  return labels;
}

std::string run_name(const std::string& aug, int64_t n, int64_t seed) {
  return aug + "-n" + std::to_string(n) + "-s" + std::to_string(seed);
}

/// metrics[metric][class name or "avg"] = per-subject values (subjects in test order).
json per_subject(const std::vector<CaseResult>& cases, const SegConfig& c) {
  json out;
  std::map<int64_t, std::vector<const CaseResult*>> by_subject;
  for (const auto& r : cases) by_subject[r.subject].push_back(&r);
  for (const char* metric : kMetrics) {
    for (size_t k = 0; k <= c.data.classes.size(); ++k) {
      const bool avg = k == c.data.classes.size();
      std::vector<double> values;
      for (const auto& [subject, rs] : by_subject) {
        std::vector<double> v;
        for (const auto* r : rs) {
          std::vector<double> per_class;
          for (const auto& m : r->classes) per_class.push_back(metric_of(m, metric));
          v.push_back(avg ? mean_of(per_class) : per_class[k]);
        }
        values.push_back(mean_of(v));
      }
      out[metric][avg ? "avg" : c.data.classes[k]] = values;
    }
  }
  return out;
}

std::vector<double> as_values(const json& j) {
  std::vector<double> v;
  for (const auto& x : j) v.push_back(x.is_null() ? std::nan("") : x.get<double>());
  return v;
}

std::vector<LabelledCase> cases_of(const std::vector<Subject>& subjects) {
  std::vector<LabelledCase> out;
  for (const auto& s : subjects) out.insert(out.end(), s.cases.begin(), s.cases.end());
  return out;
}

std::string bank_dir(const std::string& out, int64_t n, int64_t seed) {
  return out + "/banks/n" + std::to_string(n) + "-s" + std::to_string(seed);
}

/// What one run trains on and is scored against.
struct RunInputs {
  std::vector<Subject> chosen;
  const SliceSet* validation;
  std::vector<LabelledCase> test;
  at::Tensor bank;  ///< the DRDM bank of (subjects, seed), made before any training
};

/// One run: train (or resume), evaluate on the test cases, write test_metrics.json.
json run_one(const SegConfig& c, const std::string& aug, int64_t n, int64_t seed,
             const RunInputs& in, const std::string& out, bool progress) {
  const auto dir = out + "/runs/" + run_name(aug, n, seed);
  const auto done = dir + "/test_metrics.json";
  if (detail::file_exists(done)) {
    std::ifstream file(done);
    log::info("seg_fewshot: " + run_name(aug, n, seed) + " is finished; skipping");
    return json::parse(file);
  }
  const auto& chosen = in.chosen;
  auto rc = c;
  rc.train.seed = static_cast<uint64_t>(seed);
  const auto slices = load_slices(cases_of(chosen), rc.data.slices);
  const at::Tensor bank = aug == "drdm" ? in.bank : at::Tensor();
  log::info("seg_fewshot: " + run_name(aug, n, seed) + ": " +
            std::to_string(slices.images.size(0)) + " labelled slices of " +
            std::to_string(chosen.size()) + " subject(s)");
  const auto begin = std::chrono::steady_clock::now();
  const auto trained = train_segmentation(rc, aug, slices, bank, dir, progress, *in.validation);
  const double train_secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  auto model = load_seg_model(trained.model, resolve_device(c.train.device));
  const auto results = evaluate_cases(model, in.test);
  std::vector<int64_t> numbers;
  for (const auto& s : chosen) numbers.push_back(s.number);
  json record = {
      {"augmentation", aug},
      {"subjects", n},
      {"seed", seed},
      {"chosen", numbers},
      {"labelled_slices", slices.images.size(0)},
      {"train_seconds", train_secs},
      {"bank_fields_per_slice", bank.defined() ? bank.size(1) : 0},
      {"steps_trained", trained.steps},
      {"chosen_step", trained.chosen_step < 0 ? trained.steps : trained.chosen_step},
      {"validation_dsc", trained.chosen_step < 0 ? json() : json(trained.best_validation)},
      {"stopped_early", trained.stopped_early},
      {"per_subject", per_subject(results, c)},
      {"cases", json::parse(results_json(results, class_labels(c), c.data.classes))}};
  write_text_atomically(done, record.dump(1) + "\n");
  return record;
}

std::string pm(const std::vector<double>& v, double scale, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f ± %.*f", digits, mean_of(v) * scale, digits,
                std_of(v) * scale);
  return buf;
}

std::string p_text(double p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, p < 0.001 ? "%.1e" : "%.3f", p);
  return buf;
}

/// Pools a run's per-subject values over seeds (mean per subject).
std::vector<double> pooled(const std::vector<json>& runs, const std::string& metric,
                           const std::string& cls) {
  std::vector<double> sum;
  for (const auto& r : runs) {
    const auto v = as_values(r["per_subject"][metric][cls]);
    if (sum.empty()) sum.assign(v.size(), 0.0);
    for (size_t i = 0; i < v.size(); ++i) sum[i] += v[i] / static_cast<double>(runs.size());
  }
  return sum;
}

using Runs = std::map<std::string, std::vector<json>>;

// Table 2's layout: DSC per class and the averages of the other metrics, per run.
void summary_table(std::ostringstream& md, const SegConfig& c, const Runs& runs,
                   const std::vector<std::string>& cls) {
  md << "| subjects | augmentation |";
  for (const auto& k : cls) md << " DSC " << k << " |";
  md << " Sen avg | Pre avg | ASD avg | HD95 avg |\n|---|---|";
  for (size_t i = 0; i < cls.size() + 4; ++i) md << "---:|";
  md << "\n";
  for (auto n : c.grid.subjects)
    for (const auto& aug : c.grid.augmentations) {
      const auto it = runs.find(aug + "-n" + std::to_string(n));
      if (it == runs.end()) continue;
      md << "| " << n << " | " << aug << " |";
      for (const auto& k : cls) md << " " << pm(pooled(it->second, "dice", k), 100, 1) << " |";
      md << " " << pm(pooled(it->second, "sensitivity", "avg"), 100, 1) << " | "
         << pm(pooled(it->second, "precision", "avg"), 100, 1) << " | "
         << pm(pooled(it->second, "asd", "avg"), 1, 2) << " | "
         << pm(pooled(it->second, "hd95", "avg"), 1, 2) << " |\n";
    }
}

void per_class_table(std::ostringstream& md, const SegConfig& c, const Runs& runs) {
  md << "\nPer class (sensitivity / precision / ASD / HD95):\n\n| subjects | augmentation | class "
        "| Sen | Pre | ASD | HD95 |\n"
     << "|---|---|---|---:|---:|---:|---:|\n";
  for (auto n : c.grid.subjects)
    for (const auto& aug : c.grid.augmentations) {
      const auto it = runs.find(aug + "-n" + std::to_string(n));
      if (it == runs.end()) continue;
      for (const auto& k : c.data.classes)
        md << "| " << n << " | " << aug << " | " << k << " | "
           << pm(pooled(it->second, "sensitivity", k), 100, 1) << " | "
           << pm(pooled(it->second, "precision", k), 100, 1) << " | "
           << pm(pooled(it->second, "asd", k), 1, 2) << " | "
           << pm(pooled(it->second, "hd95", k), 1, 2) << " |\n";
    }
}

// DRDM against BigAug and no augmentation; each row also goes into `wilcoxon`.
void wilcoxon_table(std::ostringstream& md, const SegConfig& c, const Runs& runs,
                    const std::vector<std::string>& cls, json& wilcoxon) {
  md << "\nPaired Wilcoxon signed-rank p-values of DSC over test subjects (two-sided):\n\n"
     << "| subjects | comparison |";
  for (const auto& k : cls) md << " " << k << " |";
  md << "\n|---|---|";
  for (size_t i = 0; i < cls.size(); ++i) md << "---:|";
  md << "\n";
  wilcoxon = json::array();
  for (auto n : c.grid.subjects)
    for (const char* other : {"bigaug", "none"}) {
      const auto a = runs.find("drdm-n" + std::to_string(n)),
                 b = runs.find(std::string(other) + "-n" + std::to_string(n));
      if (a == runs.end() || b == runs.end()) continue;
      md << "| " << n << " | drdm vs " << other << " |";
      json row = {{"subjects", n}, {"comparison", std::string("drdm vs ") + other}};
      for (const auto& k : cls) {
        const double p =
            wilcoxon_signed_rank(pooled(a->second, "dice", k), pooled(b->second, "dice", k));
        row[k] = p;
        md << " " << p_text(p) << " |";
      }
      wilcoxon.push_back(row);
      md << "\n";
    }
}

// The step each run was taken at (validation) and how long it trained.
void steps_table(std::ostringstream& md, const SegConfig& c, const Runs& runs) {
  md << "\nSteps per run (seed by seed): the step taken (best validation DSC, in %) of the steps "
        "trained\n\n| subjects | augmentation | taken / trained (validation DSC) "
        "|\n|---|---|---|\n";
  for (auto n : c.grid.subjects)
    for (const auto& aug : c.grid.augmentations) {
      const auto it = runs.find(aug + "-n" + std::to_string(n));
      if (it == runs.end()) continue;
      md << "| " << n << " | " << aug << " |";
      for (const auto& r : it->second) {
        md << " " << r.value("chosen_step", json(0)).dump() << " / "
           << r.value("steps_trained", json(0)).dump();
        const auto v = r.value("validation_dsc", json());
        char text[32];
        std::snprintf(text, sizeof text, " (%.1f)", v.is_number() ? 100 * v.get<double>() : 0.0);
        if (v.is_number()) md << text;
        md << ";";
      }
      md << "\n";
    }
}

std::string results_markdown(const SegConfig& c, const Runs& runs, json& wilcoxon) {
  std::ostringstream md;
  md << "# " << c.name << ": few-shot segmentation (paper Table 2 layout)\n\n"
     << "Mean ± std over test subjects (each subject: the mean of its cases). DSC, sensitivity and "
        "precision in %; "
     << "ASD and HD95 in the files' units (mm as the headers give them). Seeds: "
     << c.grid.seeds.size() << " (per-subject values averaged over seeds).\n\n";
  std::vector<std::string> cls = c.data.classes;
  cls.push_back("avg");
  summary_table(md, c, runs, cls);
  per_class_table(md, c, runs);
  wilcoxon_table(md, c, runs, cls, wilcoxon);
  steps_table(md, c, runs);
  md << "\n![test predictions](predictions.png)\n";
  return md.str();
}

/// Fig. 10-like: one test slice; per subset size a row of image | truth | each augmentation.
void write_predictions_png(const SegConfig& c, const LabelledCase& test_case,
                           const std::string& out) {
  const auto v = prepare_volume(test_case.image_path, test_case.label_path, c.data.slices);
  const auto counts = (v.labels > 0).sum({1, 2, 3});
  const int64_t z = counts.argmax().item<int64_t>();
  const auto image = v.slices[z][0], truth = v.labels[z][0];
  std::vector<at::Tensor> rows;
  for (auto n : c.grid.subjects) {
    std::vector<at::Tensor> row = {label_overlay(image, at::zeros_like(truth)),
                                   label_overlay(image, truth)};
    for (const auto& aug : c.grid.augmentations) {
      const auto dir = out + "/runs/" + run_name(aug, n, c.grid.seeds.front());
      const auto path = dir + (detail::file_exists(dir + "/best.pt") ? "/best.pt" : "/model.pt");
      if (!detail::file_exists(path)) continue;
      auto model = load_seg_model(path);
      at::NoGradGuard no_grad;
      row.push_back(
          label_overlay(image, model.net->forward(v.slices.narrow(0, z, 1)).argmax(1)[0]));
    }
    std::vector<at::Tensor> spaced;
    for (const auto& p : row)
      spaced.push_back(p), spaced.push_back(at::full({3, p.size(1), 4}, 255, p.options()));
    rows.push_back(at::cat(spaced, 2));
    rows.push_back(at::full({3, 4, rows.back().size(2)}, 255, rows.back().options()));
  }
  const int64_t width = rows.front().size(2);
  for (auto& r : rows)
    if (r.size(2) < width) r = at::constant_pad_nd(r, {0, width - r.size(2)}, 255);
  write_rgb_png(out + "/predictions.png", at::cat(rows, 1));
}

/// What a run can refuse is refused before its folder or config.json is made: the output must
/// lie outside the data, the batch must split over the ranks, the levels must be the model's.
void check_before_writing(const SegConfig& c, const std::string& out) {
  detail::require_output_outside(out,
                                 {{"data.images", c.data.images}, {"data.labels", c.data.labels}});
  dist::world().share(c.train.batch_size, "train.batch_size");
  const auto& augs = c.grid.augmentations;
  if (std::find(augs.begin(), augs.end(), "drdm") != augs.end())
    detail::require_levels_in_model(c.drdm.model, c.drdm.levels, "drdm.levels");
}

/// Every case is read once before config.json, inside the lock (a folder in use is refused at
/// once; on an error the lock removes the folder it made).
void read_every_case(const SegConfig& c, const Split& split) {
  for (const auto* subjects : {&split.pool, &split.test})
    for (const auto& s : *subjects)
      for (const auto& cs : s.cases) {
        throw_if_interrupted();
        prepare_volume(cs.image_path, cs.label_path, c.data.slices);
      }
}

/// Every label map of the split holds labels 0..K (K = the classes data.classes names): a 7
/// would be scored as background, and an empty class as a DSC of 100 %.
void check_label_values(const SegConfig& c, const Split& split) {
  const auto k = static_cast<int64_t>(c.data.classes.size());
  const auto rule = "data.classes names " + std::to_string(k) + " classes";
  for (const auto* subjects : {&split.pool, &split.test})
    for (const auto& s : *subjects)
      for (const auto& cs : s.cases)
        detail::require_label_range(read_labels(cs.label_path).data, k, cs.label_path, rule);
}

/// "unet.widths, data.size": the keys in which two configs differ (a path "/unet/widths/1" is
/// the key "unet.widths").
std::string changed_keys(const json& before, const json& now) {
  std::set<std::string> keys;
  for (const auto& op : json::diff(before, now)) {
    std::string key, part;
    std::istringstream path(op.at("path").get<std::string>());
    while (std::getline(path, part, '/'))
      if (!part.empty() && part.find_first_not_of("0123456789") != std::string::npos)
        key += (key.empty() ? "" : ".") + part;
    keys.insert(key);
  }
  std::string text;
  for (const auto& k : keys) text += (text.empty() ? "" : ", ") + k;
  return text;
}

/// A folder holding another program's run, or seg_fewshot runs made with another config, is
/// refused: finished runs are skipped, and their results would be reported under this config.
using Banks = std::map<std::pair<int64_t, int64_t>, at::Tensor>;  // (subjects, seed) -> bank

/// The DRDM banks of every (subjects, seed) cell whose drdm run is not
/// finished, made before any training (cached: a finished bank is reused).
Banks make_banks(const SegConfig& c, const Split& split, const std::string& out, bool progress) {
  Banks banks;
  const auto& a = c.grid.augmentations;
  if (std::find(a.begin(), a.end(), "drdm") == a.end()) return banks;
  for (auto n : c.grid.subjects)
    for (auto seed : c.grid.seeds) {
      const auto dir = out + "/runs/" + run_name("drdm", n, seed);
      if (detail::file_exists(dir + "/test_metrics.json")) continue;
      const auto chosen = choose_subjects(split.pool, n, static_cast<uint64_t>(seed));
      banks[{n, seed}] = drdm_bank(load_slices(cases_of(chosen), c.data.slices), c,
                                   static_cast<uint64_t>(seed), bank_dir(out, n, seed), progress);
    }
  return banks;
}

/// The grid may change (runs are named by augmentation, subjects and seed).
void check_earlier_runs(const SegConfig& c, const std::string& out) {
  detail::require_run_kind(out, kProgram,
                           [](const std::string& text) { parse_seg_config(text, "config.json"); });
  const auto path = detail::join(out, "config.json");
  if (!detail::file_exists(path)) return;
  auto before = detail::parse_json_strict(detail::read_config_text(path), path);
  auto now = json::parse(to_json(c));
  before.erase("grid"), now.erase("grid");
  if (before == now) return;
  throw std::runtime_error("output folder '" + out + "' holds runs made with another config " +
                           "(its config.json differs in " + changed_keys(before, now) + "): its " +
                           "finished runs would be kept and reported under this config. Give the " +
                           "same values, or choose another --output");
}

}  // namespace

void run_grid(const SegConfig& c, const std::string& out, bool progress) {
  const auto begin = std::chrono::steady_clock::now();
  const auto split = split_subjects(c.data);  // the data is found before the output folder is made
  dist::join_for(c.train.device, c.train.dist_timeout,
                 c.train.dist_master);  // a data-parallel job, when launched as one
  check_before_writing(c, out);
  check_label_values(c, split);
  check_earlier_runs(c, out);
  std::optional<detail::RunLock> lock;  // one run per output folder; rank 0 writes
  if (dist::world().writer()) lock.emplace(out, kProgram);
  read_every_case(c, split);
  detail::record_run_kind(out, kProgram);
  write_text_atomically(out + "/config.json", to_json(c) + "\n");
  const auto test = cases_of(split.test);
  log::info("seg_fewshot: pool of " + std::to_string(split.pool.size()) + " subjects, " +
            std::to_string(split.validation.size()) + " validation subjects, " +
            std::to_string(split.test.size()) + " test subjects (" + std::to_string(test.size()) +
            " cases)");
  const auto banks = make_banks(c, split, out, progress);  // every bank before any training
  SliceSet validation;
  if (!split.validation.empty())
    validation = load_slices(cases_of(split.validation), c.data.slices);
  std::map<std::string, std::vector<json>> runs;  // "aug-nN" -> one record per seed
  json all = json::array();
  for (auto n : c.grid.subjects)
    for (auto seed : c.grid.seeds) {
      const auto bank = banks.find({n, seed});
      const RunInputs in{choose_subjects(split.pool, n, static_cast<uint64_t>(seed)), &validation,
                         test, bank == banks.end() ? at::Tensor() : bank->second};
      for (const auto& aug : c.grid.augmentations) {
        auto record = run_one(c, aug, n, seed, in, out, progress);
        runs[aug + "-n" + std::to_string(n)].push_back(record);
        record.erase("cases");
        all.push_back(record);
      }
    }
  json wilcoxon;
  const auto md = results_markdown(c, runs, wilcoxon);
  write_predictions_png(c, test.front(), out);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  json results = {{"config", json::parse(to_json(c))},
                  {"runs", all},
                  {"wilcoxon", wilcoxon},
                  {"test_subjects", split.test.size()},
                  {"seconds_this_call", secs}};
  write_text_atomically(out + "/results.json", results.dump(1) + "\n");
  write_text_atomically(out + "/results.md", md);
  log::info("seg_fewshot: grid done in " + detail::format_duration(secs) + "; " + out +
            "/results.md");
}

}  // namespace drdm::seg
