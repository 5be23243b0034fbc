// Registering volumes with a trained model, scoring pairs, and `reg_synth register`.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <stdexcept>

#include "../atomic_file.h"
#include "report.h"
#include "drdm/log.h"
#include "drdm/reg/synth.h"
#include "drdm/spatial.h"
#include "drdm/training_engine.h"

namespace drdm::reg {

torch::Tensor register_volumes(RegModel& model, const RegVolume& moving, const RegVolume& fixed) {
  if (moving.geometry.tensor_size() != fixed.geometry.tensor_size())
    throw std::runtime_error("the moving image '" + moving.image_path + "' and the fixed image '" +
                             fixed.image_path + "' lie on different grids; resample one onto the other first");
  const auto size = moving.geometry.tensor_size();
  if (model.identity) {
    std::vector<int64_t> shape{1, static_cast<int64_t>(size.size())};
    shape.insert(shape.end(), size.begin(), size.end());
    return at::zeros(shape);
  }
  at::NoGradGuard no_grad;
  const auto device = model.net.parameters().front().device();
  const auto disp = model.net.forward(moving.image.to(device), fixed.image.to(device)).cpu();
  return field_to_input(disp, moving.fit);
}

PairResult score_pair(const RegVolume& moving, const RegVolume& fixed, const torch::Tensor& field,
                      int64_t num_classes) {
  if (!moving.labels.defined() || !fixed.labels.defined())
    throw std::invalid_argument("scoring '" + moving.name + "' -> '" + fixed.name + "' needs both label maps");
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
  const auto num = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); };
  nlohmann::json classes = nlohmann::json::object();
  for (size_t k = 0; k < r.classes.size(); ++k) {
    const auto& m = r.classes[k];
    classes[k < names.size() ? names[k] : std::to_string(k + 1)] = {
        {"dice", num(m.dice)}, {"asd", num(m.asd)}, {"hd95", num(m.hd95)}};
  }
  return {{"moving", r.moving}, {"fixed", r.fixed}, {"classes", classes}, {"folding", r.folding}};
}

std::vector<std::string> register_files(RegModel& model, const std::string& moving_path,
                                        const std::string& fixed_path, const std::string& moving_labels,
                                        const std::string& fixed_labels, const std::string& output_dir) {
  if (!fixed_labels.empty() && moving_labels.empty())
    throw std::invalid_argument("--fixed-labels needs --moving-labels (the metrics compare the warped moving labels)");
  const auto moving = load_volume(moving_path, moving_labels, model.config.data);
  const auto fixed = load_volume(fixed_path, fixed_labels, model.config.data);
  const auto field = register_volumes(model, moving, fixed);
  detail::make_dirs(output_dir);
  std::vector<std::string> written;
  const auto out = [&](const std::string& name) { return written.emplace_back(detail::join(output_dir, name)); };
  write_field(out("field.nii.gz"), field, moving.geometry);
  write_image(out("warped.nii.gz"), on_file_grid(warp(moving.raw, field), moving), moving.file_geometry,
              moving.pixel_type);
  if (!moving_labels.empty())
    write_labels(out("warped_labels.nii.gz"),
                 on_file_grid(warp_labels(moving.labels, field, LabelInterpolation::kNearest), moving),
                 moving.file_geometry);
  if (!fixed_labels.empty()) {
    const auto r = score_pair(moving, fixed, field, static_cast<int64_t>(model.config.data.classes.size()));
    write_text_atomically(out("metrics.json"), report::pair_json(r, model.config.data.classes).dump(2) + "\n");
  }
  for (const auto& p : written) log::info("wrote " + p);
  return written;
}

}  // namespace drdm::reg
