// reg_synth run: Table 3's rows (synthetic pretraining x real fine-tuning),
// results.json / results.md with Wilcoxon tests, and the pair figure.
#include "drdm/reg/grid.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>

#include "diffusion/run_checks.h"
#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "drdm/core/spatial.h"
#include "drdm/core/stats.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/preview.h"
#include "drdm/io/text_file.h"
#include "drdm/reg/data.h"
#include "drdm/reg/evaluate.h"
#include "drdm/reg/train.h"
#include "engine/config_json.h"
#include "engine/run_kind.h"
#include "io/files.h"
#include "io/input_checks.h"
#include "io/run_lock.h"
#include "reg/report.h"

namespace drdm::reg {
namespace {

using nlohmann::json;

constexpr const char* kProgram = "reg_synth run";

struct Row {
  std::string pretrain;
  bool finetune = false;
  std::string name() const { return pretrain + (finetune ? "-finetuned" : "-synthetic-only"); }
};

struct Data {
  at::Tensor train_images;  // [M, 1, ...size]
  std::vector<RegVolume> test;
  std::vector<std::pair<int64_t, int64_t>> pairs;
  RegValidation validation;  // data.validation_images of the training part, labelled
};

/// The validation score of the runs (none without validation images).
RegValidate validator(const Data& d, const RegConfig& c) {
  if (d.validation.volumes.empty()) return {};
  const auto classes = static_cast<int64_t>(c.data.classes.size());
  return [&d, classes](RegModel& m) { return validation_dice(m, d.validation, classes); };
}

Data load_data(const RegConfig& c) {
  const auto split = split_cases(c.data);
  Data d;
  std::vector<at::Tensor> images;
  for (const auto& cs : split.train) images.push_back(load_volume(cs.image_path, "", c.data).image);
  d.train_images = at::cat(images);
  for (const auto& cs : split.test)
    d.test.push_back(load_volume(cs.image_path, cs.label_path, c.data));
  d.pairs = test_pairs(static_cast<int64_t>(d.test.size()), c.data.test_pairs, c.data.seed);
  for (const auto& cs : split.validation)
    d.validation.volumes.push_back(load_volume(cs.image_path, cs.label_path, c.data));
  if (!split.validation.empty())
    d.validation.pairs = test_pairs(static_cast<int64_t>(split.validation.size()),
                                    c.data.validation_pairs, c.data.seed + 1);
  log::info("registration data: " + std::to_string(split.train.size()) + " training images, " +
            std::to_string(split.validation.size()) + " validation images, " +
            std::to_string(split.test.size()) + " test images, " + std::to_string(d.pairs.size()) +
            " test pairs");
  return d;
}

/// The elapsed_seconds of a run's last metrics line (0 when there is none).
double run_seconds(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last.empty() ? 0.0 : json::parse(last).value("elapsed_seconds", 0.0);
}

/// What a row's results depend on (a rerun with another config redoes the row).
json row_identity(const RegConfig& c, const Row& row) {
  auto j = json::parse(to_json(c));
  j.erase("grid");
  j["row"] = row.name();
  return j;
}

json evaluate_row(RegModel& model, const Data& d, const RegConfig& c) {
  json pairs = json::array();
  for (const auto& [m, f] : d.pairs) {
    throw_if_interrupted();  // SIGINT / SIGTERM: stop between cases
    const auto field = register_volumes(model, d.test[m], d.test[f]);
    pairs.push_back(report::pair_json(
        score_pair(d.test[m], d.test[f], field, static_cast<int64_t>(c.data.classes.size())),
        c.data.classes));
  }
  return pairs;
}

json run_row(const RegConfig& c, const Row& row, const Data& d,
             const std::map<std::string, std::string>& pretrained, const std::string& out,
             bool progress) {
  const auto dir = detail::join(out, row.name());
  const auto path = dir + "/results.json";
  const auto identity = row_identity(c, row);
  if (detail::file_exists(path)) {
    auto done = json::parse(detail::read_config_text(path));
    if (done.value("identity", json()) == identity) {
      log::info(row.name() + ": finished before; skipped");
      return done;
    }
  }
  const auto device = resolve_device(c.finetune.device);
  std::string weights = row.pretrain == "none" ? "" : pretrained.at(row.pretrain);
  double train_seconds =
      row.pretrain == "none" ? 0 : run_seconds(detail::join(out, "pretrain-" + row.pretrain));
  int64_t chosen = -1;
  if (row.finetune) {
    const auto run = train_registration(c, "finetune", {}, d.train_images, weights, dir, progress,
                                        validator(d, c));
    weights = run.model, chosen = run.chosen_step < 0 ? run.steps : run.chosen_step;
    train_seconds += run_seconds(dir);
  }
  RegModel model = weights.empty() ? RegModel{VoxelMorph(c.voxelmorph), c, 0, true}
                                   : load_reg_model(weights, device);
  const auto begin = std::chrono::steady_clock::now();
  json result = {{"identity", identity},     {"row", row.name()},
                 {"pretrain", row.pretrain}, {"finetune", row.finetune},
                 {"model", weights},         {"pairs", evaluate_row(model, d, c)}};
  result["train_seconds"] = train_seconds;
  if (chosen >= 0) result["finetune_step"] = chosen;
  result["eval_seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  detail::make_dirs(dir);
  write_text_atomically(path, result.dump(1) + "\n");
  log::info(row.name() + ": " + std::to_string(d.pairs.size()) + " pairs scored -> " + path);
  return result;
}

/// Per pair, the mean over classes of a metric ("dice", "asd", "hd95"; null -> NaN), or the folding
/// ratio.
std::vector<double> per_pair(const json& row, const std::string& metric) {
  std::vector<double> out;
  for (const auto& p : row.at("pairs")) {
    if (metric == "folding") {
      out.push_back(p.at("folding").get<double>());
      continue;
    }
    std::vector<double> v;
    for (const auto& [name, m] : p.at("classes").items())
      v.push_back(m.at(metric).is_null() ? NAN : m.at(metric).get<double>());
    out.push_back(mean_of(v));
  }
  return out;
}

std::vector<double> class_dice(const json& row, const std::string& cls) {
  std::vector<double> out;
  for (const auto& p : row.at("pairs")) {
    const auto& m = p.at("classes").at(cls).at("dice");
    out.push_back(m.is_null() ? NAN : 100 * m.get<double>());
  }
  return out;
}

std::string pm(const std::vector<double>& v, const char* fmt) {
  char a[64], b[64];
  std::snprintf(a, sizeof a, fmt, mean_of(v));
  std::snprintf(b, sizeof b, fmt, std_of(v));
  return std::string(a) + " ± " + b;
}

std::string scale(std::vector<double> v, double k, const char* fmt) {
  for (auto& x : v) x *= k;
  return pm(v, fmt);
}

std::string summary_table(const std::vector<json>& rows, const RegConfig& c) {
  std::string md =
      "| synthetic pretraining | real fine-tuning | DSC % | ASD (mm) | HD95 (mm) | \\|J\\|<0 % |";
  for (const auto& k : c.data.classes) md += " DSC " + k + " % |";
  md += "\n|---|---|---:|---:|---:|---:|";
  for (size_t k = 0; k < c.data.classes.size(); ++k) md += "---:|";
  md += "\n";
  for (const auto& r : rows) {
    md += "| " + r.at("pretrain").get<std::string>() + " | " +
          (r.at("finetune").get<bool>() ? "yes" : "no") + " | " +
          scale(per_pair(r, "dice"), 100, "%.1f") + " | " + pm(per_pair(r, "asd"), "%.2f") + " | " +
          pm(per_pair(r, "hd95"), "%.2f") + " | " + scale(per_pair(r, "folding"), 100, "%.3f") +
          " |";
    for (const auto& k : c.data.classes) md += " " + pm(class_dice(r, k), "%.1f") + " |";
    md += "\n";
  }
  return md;
}

std::string wilcoxon_table(const std::vector<json>& rows) {
  std::string md =
      "| real fine-tuning | pairs | p (DSC) | p (ASD) | p (HD95) | p (\\|J\\|<0) "
      "|\n|---|---:|---:|---:|---:|---:|\n";
  for (bool ft : {false, true}) {
    const json *drdm = nullptr, *mrbs = nullptr;
    for (const auto& r : rows)
      if (r.at("finetune").get<bool>() == ft) {
        if (r.at("pretrain") == "drdm") drdm = &r;
        if (r.at("pretrain") == "mrbs") mrbs = &r;
      }
    if (!drdm || !mrbs) continue;
    md +=
        std::string("| ") + (ft ? "yes" : "no") + " | " + std::to_string(drdm->at("pairs").size());
    for (const auto* m : {"dice", "asd", "hd95", "folding"}) {
      char p[32];
      std::snprintf(p, sizeof p, "%.3g",
                    wilcoxon_signed_rank(per_pair(*drdm, m), per_pair(*mrbs, m)));
      md += std::string(" | ") + p;
    }
    md += " |\n";
  }
  return md;
}

/// pair.png: the first test pair, one row per grid row: moving, fixed, warped,
/// warped with the deformed grid, displacement magnitude (network grid).
void write_pair_figure(const std::vector<Row>& rows,
                       const std::map<std::string, std::string>& weights, const Data& d,
                       const RegConfig& c, const std::string& path) {
  const auto& [m, f] = d.pairs.front();
  const auto &moving = d.test[m].image, &fixed = d.test[f].image;
  std::vector<at::Tensor> pictures;
  for (const auto& row : rows) {
    at::Tensor field;
    const auto w = weights.at(row.name());
    if (!w.empty()) {
      auto model = load_reg_model(w);
      at::NoGradGuard no_grad;
      field = model.net->forward(moving, fixed);
    } else {
      std::vector<int64_t> shape{1, moving.dim() - 2};
      for (int64_t i = 2; i < moving.dim(); ++i) shape.push_back(moving.size(i));
      field = at::zeros(shape);
    }
    pictures.push_back(render_warp_preview(moving, warp(moving, field), field, fixed));
    pictures.push_back(at::full({3, 8, pictures.back().size(2)}, 255).to(at::kByte));
  }
  pictures.pop_back();
  write_rgb_png(path, at::cat(pictures, 1));
}

/// What a run can refuse is refused before its folder is made: the batches must split over
/// the ranks, the DRDM levels must be the model's.
void check_before_writing(const RegConfig& c) {
  const auto& g = c.grid;
  const auto has = [](const auto& list, const auto& value) {
    return std::find(list.begin(), list.end(), value) != list.end();
  };
  if (g.pretrain.size() >
      static_cast<size_t>(std::count(g.pretrain.begin(), g.pretrain.end(), "none")))
    dist::world().share(c.pretrain.batch_size, "pretrain.batch_size");
  if (has(g.finetune, true)) dist::world().share(c.finetune.batch_size, "finetune.batch_size");
  if (!has(g.pretrain, std::string("drdm"))) return;
  std::vector<int64_t> levels;
  for (const auto& l : c.synthetic.drdm_levels) levels.insert(levels.end(), l.begin(), l.end());
  detail::require_levels_in_model(c.synthetic.drdm_model, levels, "synthetic.drdm_levels");
}

}  // namespace

void run_grid(const RegConfig& c, const std::string& out, bool progress) {
  detail::require_output_outside(out,
                                 {{"data.images", c.data.images}, {"data.labels", c.data.labels}});
  // The rows' results.json name their model under `out`; another program's run is not overwritten.
  detail::require_utf8(out, "the output folder '" + detail::escaped(out) + "'");
  detail::require_run_kind(out, kProgram,
                           [](const std::string& text) { parse_reg_config(text, "config.json"); });
  const auto d = load_data(c);
  dist::join_for(c.pretrain.device, c.pretrain.dist_timeout,
                 c.pretrain.dist_master);  // a data-parallel job, when launched as one
  check_before_writing(c);
  std::optional<detail::RunLock> lock;  // one run per output folder; rank 0 writes
  if (dist::world().writer()) lock.emplace(out, kProgram);
  detail::record_run_kind(out, kProgram);
  std::vector<Row> rows;
  for (const auto& p : c.grid.pretrain)
    for (bool f : c.grid.finetune) rows.push_back({p, f});
  // Every bank is made before any training: generation is slow in a process that has trained
  // (docs/reg_synth.md).
  std::map<std::string, PairBank> banks;
  for (const auto& p : c.grid.pretrain)
    if (p != "none")
      banks[p] = synthetic_bank(p, d.train_images, c, detail::join(out, "bank-" + p), progress);
  std::map<std::string, std::string> pretrained, weights;
  std::map<std::string, int64_t> pretrain_steps;  // the step each pretraining was taken at
  for (auto& [p, bank] : banks) {
    const auto run = train_registration(
        c, "pretrain", bank, {}, "", detail::join(out, "pretrain-" + p), progress, validator(d, c));
    pretrained[p] = run.model;
    pretrain_steps[p] = run.chosen_step < 0 ? run.steps : run.chosen_step;
    bank = PairBank{};
  }
  std::vector<json> results;
  for (const auto& row : rows) {
    results.push_back(run_row(c, row, d, pretrained, out, progress));
    // Where the row's model is now: a finished row of a moved or copied folder names its old place.
    const auto dir = detail::join(out, row.name());
    const auto model =
        row.finetune ? dir + (detail::file_exists(dir + "/best.pt") ? "/best.pt" : "/model.pt")
                     : (row.pretrain == "none" ? "" : pretrained.at(row.pretrain));
    results.back()["model"] = weights[row.name()] = model;
    if (row.pretrain != "none") results.back()["pretrain_step"] = pretrain_steps.at(row.pretrain);
  }
  json all = {
      {"config", json::parse(to_json(c))}, {"test_pairs", d.pairs.size()}, {"rows", results}};
  write_text_atomically(detail::join(out, "results.json"), all.dump(1) + "\n");
  std::string md =
      "# " + c.name + ": registration with synthetic pretraining (Table 3)\n\n" +
      std::to_string(d.test.size()) + " test images, " + std::to_string(d.pairs.size()) +
      " ordered test pairs; mean ± std over pairs (each pair: the mean over classes).\n\n" +
      summary_table(results, c) +
      "\nPaired Wilcoxon signed-rank tests, DRDM vs MRBS pretraining:\n\n" +
      wilcoxon_table(results) + "\nFigure: pair.png (" + d.test[d.pairs.front().first].name +
      " -> " + d.test[d.pairs.front().second].name +
      "; rows in the table's order; panels: moving, fixed, " +
      "warped, warped with the deformed grid, displacement magnitude).\n";
  write_text_atomically(detail::join(out, "results.md"), md);
  write_pair_figure(rows, weights, d, c, detail::join(out, "pair.png"));
  log::info("results -> " + detail::join(out, "results.md"));
}

}  // namespace drdm::reg
