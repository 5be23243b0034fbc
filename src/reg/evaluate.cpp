// Registering volumes with a trained model, scoring pairs, and `reg_synth register`.
#include "drdm/reg/evaluate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>

#include "drdm/core/log.h"
#include "drdm/core/spatial.h"
#include "drdm/core/stats.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/text_file.h"
#include "io/atomic_file.h"
#include "io/files.h"
#include "io/grid_check.h"
#include "io/input_checks.h"
#include "reg/report.h"

namespace drdm::reg {

torch::Tensor register_volumes(RegModel& model, const RegVolume& moving, const RegVolume& fixed) {
  const auto difference = detail::grid_difference(moving.geometry, fixed.geometry);
  if (!difference.empty())
    throw std::runtime_error("the moving image '" + moving.image_path + "' and the fixed image '" +
                             fixed.image_path + "' lie on different grids (" + difference +
                             "); resample one onto the other first");
  const auto size = moving.geometry.tensor_size();
  if (model.identity) {
    std::vector<int64_t> shape{1, static_cast<int64_t>(size.size())};
    shape.insert(shape.end(), size.begin(), size.end());
    return at::zeros(shape);
  }
  at::NoGradGuard no_grad;
  const auto device = model.net->parameters().front().device();
  const auto disp = model.net->forward(moving.image.to(device), fixed.image.to(device)).cpu();
  return field_to_input(disp, moving.fit);
}

double validation_dice(RegModel& model, const RegValidation& v, int64_t classes) {
  if (v.pairs.empty()) throw std::invalid_argument("validation_dice: no validation pairs");
  double total = 0;
  for (const auto& [m, f] : v.pairs) {
    const auto& moving = v.volumes[static_cast<size_t>(m)];
    const auto& fixed = v.volumes[static_cast<size_t>(f)];
    const auto warped = warp_labels(moving.labels, register_volumes(model, moving, fixed),
                                    LabelInterpolation::kNearest);
    double sum = 0;
    for (int64_t k = 1; k <= classes; ++k) {
      const auto a = warped == k, b = fixed.labels == k;
      const double n = a.sum().item<double>() + b.sum().item<double>();
      sum += n > 0 ? 2 * (a & b).sum().item<double>() / n : 1.0;
    }
    total += sum / static_cast<double>(classes);
  }
  return total / static_cast<double>(v.pairs.size());
}

PairResult score_pair(const RegVolume& moving, const RegVolume& fixed, const torch::Tensor& field,
                      int64_t num_classes) {
  if (!moving.labels.defined() || !fixed.labels.defined())
    throw std::invalid_argument("scoring '" + moving.name + "' -> '" + fixed.name +
                                "' needs both label maps");
  const auto warped = warp_labels(moving.labels, field, LabelInterpolation::kNearest);
  const auto& g = fixed.geometry;
  const std::vector<double> spacing(g.spacing.rbegin(), g.spacing.rend());
  std::vector<int64_t> classes;
  for (int64_t k = 1; k <= num_classes; ++k) classes.push_back(k);
  return {moving.name, fixed.name, seg::label_metrics(warped, fixed.labels, spacing, classes),
          folding_ratio(field)[0].item<double>()};
}

namespace {

/// A tensor on the squeezed grid [1, C, ...S2] back to the file's grid [1, C, ...S].
at::Tensor on_file_grid(const at::Tensor& x, const RegVolume& v) {
  auto shape = x.sizes().slice(0, 2).vec();
  const auto s = v.file_geometry.tensor_size();
  shape.insert(shape.end(), s.begin(), s.end());
  return x.reshape(shape);
}

}  // namespace

nlohmann::json report::pair_json(const PairResult& r, const std::vector<std::string>& names) {
  const auto num = [](double x) {
    return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
  };
  nlohmann::json classes = nlohmann::json::object();
  for (size_t k = 0; k < r.classes.size(); ++k) {
    const auto& m = r.classes[k];
    classes[k < names.size() ? names[k] : std::to_string(k + 1)] = {
        {"label", k + 1}, {"dice", num(m.dice)}, {"asd", num(m.asd)}, {"hd95", num(m.hd95)}};
  }
  return {{"moving", r.moving}, {"fixed", r.fixed}, {"classes", classes}, {"folding", r.folding}};
}

namespace {

/// metrics.json of `reg_synth register` (report::pair_json with, per class,
/// the metrics before registration) and the same as a table for stdout.
std::pair<nlohmann::json, std::string> register_report(const PairResult& after,
                                                       const PairResult& before,
                                                       const std::vector<std::string>& names) {
  auto j = report::pair_json(after, names);
  const auto b = report::pair_json(before, names);
  std::string md = "'" + after.moving + "' -> '" + after.fixed +
                   "'\n\n| class | label | DSC % before | DSC % after | ASD (mm) before | after | "
                   "HD95 (mm) before | after |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
  std::vector<double> dice[2];
  const auto text = [](const nlohmann::json& v, double scale, int digits) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f", digits, v.is_null() ? NAN : scale * v.get<double>());
    return std::string(buf);
  };
  std::vector<std::pair<int64_t, std::string>> by_label;  // the table in label order
  for (const auto& entry : j["classes"].items())
    by_label.emplace_back(entry.value()["label"].get<int64_t>(), entry.key());
  std::sort(by_label.begin(), by_label.end());
  for (const auto& [label, name] : by_label) {
    auto& m = j["classes"][name];
    const auto& o = b.at("classes").at(name);
    m["before"] = {{"dice", o["dice"]}, {"asd", o["asd"]}, {"hd95", o["hd95"]}};
    dice[0].push_back(o["dice"].is_null() ? NAN : o["dice"].get<double>());
    dice[1].push_back(m["dice"].is_null() ? NAN : m["dice"].get<double>());
    md += "| " + name + " | " + m["label"].dump() + " | " + text(o["dice"], 100, 1) + " | " +
          text(m["dice"], 100, 1) + " | " + text(o["asd"], 1, 2) + " | " + text(m["asd"], 1, 2) +
          " | " + text(o["hd95"], 1, 2) + " | " + text(m["hd95"], 1, 2) + " |\n";
  }
  j["mean_dice_before"] = mean_of(dice[0]);
  j["mean_dice"] = mean_of(dice[1]);
  char tail[160];
  std::snprintf(tail, sizeof tail,
                "| mean | | %.1f | %.1f | | | | |\n\nfolding (|J| <= 0): %.3f %% of voxels\n",
                100 * mean_of(dice[0]), 100 * mean_of(dice[1]), 100 * after.folding);
  return {j, md + tail};
}

}  // namespace

RegisterResult register_files(RegModel& model, const std::string& moving_path,
                              const std::string& fixed_path, const std::string& moving_labels,
                              const std::string& fixed_labels, const std::string& output_dir) {
  if (!fixed_labels.empty() && moving_labels.empty())
    throw std::invalid_argument(
        "--fixed-labels needs --moving-labels (the metrics compare the warped moving labels)");
  for (const char* name : {"field.nii.gz", "warped.nii.gz", "warped_labels.nii.gz", "metrics.json"})
    detail::require_distinct(detail::join(output_dir, name),
                             {moving_path, fixed_path, moving_labels, fixed_labels});
  if (detail::file_exists(output_dir))
    throw std::invalid_argument("--output '" + output_dir + "' is a file, expected a folder");
  if (!fixed_labels.empty())  // metrics.json names both images
    for (const auto& path : {moving_path, fixed_path})
      detail::require_utf8(detail::base_name(path), "the name of '" + detail::escaped(path) + "'");
  const auto moving = load_volume(moving_path, moving_labels, model.config.data);
  const auto fixed = load_volume(fixed_path, fixed_labels, model.config.data);
  const auto field = register_volumes(model, moving, fixed);
  detail::make_dirs(output_dir);
  RegisterResult result;
  auto& written = result.written;
  const auto out = [&](const std::string& name) {
    return written.emplace_back(detail::join(output_dir, name));
  };
  write_field(out("field.nii.gz"), field, moving.geometry);
  write_image(out("warped.nii.gz"), on_file_grid(warp(moving.raw, field), moving),
              moving.file_geometry, moving.pixel_type);
  if (!moving_labels.empty())
    write_labels(
        out("warped_labels.nii.gz"),
        on_file_grid(warp_labels(moving.labels, field, LabelInterpolation::kNearest), moving),
        moving.file_geometry);
  if (!fixed_labels.empty()) {
    const auto classes = static_cast<int64_t>(model.config.data.classes.size());
    const auto after = score_pair(moving, fixed, field, classes);
    const auto before = score_pair(moving, fixed, at::zeros_like(field), classes);
    auto [j, table] = register_report(after, before, model.config.data.classes);
    write_text_atomically(out("metrics.json"), j.dump(2) + "\n");
    result.metrics_table = table;
  }
  for (const auto& p : written) log::info("wrote " + p);
  return result;
}

}  // namespace drdm::reg
