#include "drdm/diffusion/train_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "engine/config_keys.h"
#include "engine/train_section_keys.h"

namespace drdm {

using detail::require;
using nlohmann::json;

namespace {

using detail::check;
using detail::in_range;
using detail::key;
using detail::key_as;
using detail::Keys;

bool finite(double v) { return std::isfinite(v); }

Keys<DatasetOptions> data_keys() {
  using D = DatasetOptions;
  const auto subset_ok = [](const std::vector<double>& s) {
    return s.size() == 2 && s[0] >= 0 && s[0] < s[1] && s[1] <= 1;
  };
  return {
      key("folders", &D::folders, {}, "paths",
          "folders scanned recursively for images (required for training)"),
      key("include", &D::include,
          {detail::non_empty<std::vector<std::string>>("must list at least one pattern")},
          "patterns", "shell patterns matched against file names"),
      key("exclude", &D::exclude, {}, "patterns",
          "patterns matched against the path relative to the folder and against the file name "
          "(`\"labels/*\"`, "
          "`\"210_*\"`)"),
      key("subset", &D::subset,
          {check<std::vector<double>>(
              "must be [from, to] with 0 <= from < to <= 1 (fractions of each folder's "
              "sorted files)",
              subset_ok)},
          "fractions",
          "the part of each folder's sorted file list to use: files with index in [⌊from·n⌋, "
          "⌊to·n⌋). `[0, 0.7]` "
          "is the first 70 % of the cases by name (the shipped chest and hippocampus models' "
          "training split); "
          "`drdm_check_recovery --subset 0.7,1` checks on the rest"),
      key("dims", &D::dims,
          {check<int64_t>("must be 2 or 3", [](int64_t d) { return d == 2 || d == 3; })}, "-",
          "model dimension: 2 or 3"),
      key("slice_axis", &D::slice_axis,
          {check<int64_t>("must be 0, 1 or 2", [](int64_t a) { return a >= 0 && a <= 2; })},
          "tensor axis",
          "for a 2D model, 3D volumes are cut into slices along this axis (0 = D, slowest; 1 = H; "
          "2 = W)"),
      key("size", &D::size, {}, "voxels",
          "network grid, tensor order (H, W) or (D, H, W). Each entry must be a multiple of 8"),
      key("clip_low_pct", &D::clip_low_pct, {}, "percent",
          "intensities are clipped to these percentiles of each image (volume), then scaled to [0, "
          "1]"),
      key("clip_high_pct", &D::clip_high_pct, {}, "percent", ""),
      key("fit", &D::fit,
          {check<std::string>(
              "must be \"aspect\" (keep the aspect ratio, zero padding) or \"stretch\" (fill the "
              "grid)",
              [](const std::string& f) { return f == "aspect" || f == "stretch"; })},
          "–",
          "how an image is placed in the `size` grid: `\"aspect\"` keeps its physical aspect ratio "
          "(longest extent "
          "fills the grid, centred in zero padding); `\"stretch\"` resamples every axis to fill "
          "the grid, as the "
          "authors' loaders do. Fields are mapped back to the image's own grid either way. The "
          "imported "
          "`cardiac2d-paper` uses `\"stretch\"`: it recovers markedly less on padded slices ([its "
          "card](../models/cardiac2d-paper/README.md))"),
      key("min_foreground", &D::min_foreground,
          {check<double>("must be in [0, 1)", [](double v) { return v >= 0 && v < 1; })},
          "fraction",
          "slices or volumes with fewer voxels above 0.05 than this are skipped (empty slices)"),
  };
}

Keys<AugmentOptions> augment_keys() {
  using A = AugmentOptions;
  return {
      key("enabled", &A::enabled, {}, "-", "augment training batches"),
      key("rotation_deg", &A::rotation_deg, {in_range(0.0, 180.0)}, "degrees",
          "rotation angle ~ U(-r, r); about a random axis in 3D"),
      key("translation", &A::translation, {in_range(0.0, 0.5)}, "fraction of size",
          "shift ~ U(-t, t) per axis"),
      key("flip_prob", &A::flip_prob, {in_range(0.0, 1.0)}, "probability",
          "flip each axis independently"),
      key("crop_min", &A::crop_min, {}, "fraction",
          "crop a window of ratio ~ U(min, max) and zoom it back to full size"),
      key("crop_max", &A::crop_max, {}, "fraction", ""),
  };
}

// The ranges of the sampler's keys are validate()'s (drdm/diffusion/velocity_sampler.h).
Keys<SamplerOptions> sampler_keys() {
  using S = SamplerOptions;
  const auto process_out = [](DiffusionProcess p) { return to_string(p); };
  return {
      key_as<std::string>(
          "process", &S::process, parse_diffusion_process, process_out, {}, "-",
          "`\"stationary\"`: one velocity v per sample. The target step is ψ_t = v composed n_t "
          "times; the image field φ_t:1 is the perturbed v composed m_t times. This is the "
          "authors' "
          "code's process, less the three differences listed under `\"authors\"` below. "
          "`\"markov\"`: independent steps ψ_1..ψ_t composed (the paper's Eq. 2). `\"authors\"`: "
          "the authors' code exactly, for models trained on it (below)"),
      key("timesteps", &S::timesteps, {}, "steps", "T; training draws t ~ U{1..T}"),
      key("control", &S::control, {}, "points per axis",
          "control grid covering twice the image's field of view"),
      key("levels", &S::levels, {}, "-",
          "scales: the control grid and its 1/2, 1/4, ... subsamplings (64, 32, 16, 8)"),
      key("sigma", &S::sigma, {}, "control-grid voxels",
          "standard deviation of the finest component; level i has σ·2^i (Eq. 6)"),
      key("alpha", &S::alpha, {}, "-", "n_t = floor(t^alpha / beta) (Eq. 9 and Sec. 3.3)"),
      key("beta", &S::beta, {}, "-", ""),
      key("integrated_alpha", &S::integrated_alpha, {}, "-", "m_t = floor(t^1.3 / 1.5) (Sec. 3.3)"),
      key("integrated_beta", &S::integrated_beta, {}, "-", ""),
      key("integrated_max", &S::integrated_max, {}, "compositions",
          "m_t is clamped to [1, integrated_max]"),
      key("perturbation", &S::perturbation, {}, "fraction",
          "the image field uses v + 0.05·(an independent velocity) (Sec. 3.3: 5%)"),
  };
}

Keys<NetworkOptions> model_keys() {
  using M = NetworkOptions;
  const auto frequencies_out = [](TimeFrequencies f) { return to_string(f); };
  const auto units_out = [](OutputUnits u) { return to_string(u); };
  const auto even_ok = [](int64_t e) { return e >= 2 && e % 2 == 0 && e <= 4096; };
  return {
      key("in_channels", &M::in_channels,
          {check<int64_t>("must be 1 (grey images)", [](int64_t c) { return c == 1; })}, "",
          "image channels (grey images)"),
      key("time_embedding", &M::time_embedding,
          {check<int64_t>("must be an even number in [2, 4096]", even_ok)}, "",
          "width of the sinusoidal time embedding (Table B.4)"),
      key("recursion", &M::recursion, {in_range<int64_t>(1, 8)}, "",
          "internal recursion K (Eq. 12), shared weights"),
      key_as<std::string>("time_frequencies", &M::time_frequencies, parse_time_frequencies,
                          frequencies_out, {}, "",
                          "frequencies of the sinusoidal time table: `\"standard\"`, w_j = "
                          "10000^(−2j/E) for pair j; "
                          "`\"every_other\"`, w_j = 10000^(−4j/E) (every other frequency of an "
                          "E-wide table, as the "
                          "authors' code computes it)"),
      key("time_mlp_slope", &M::time_mlp_slope,
          {check<double>("must be in [0, 1)",
                         [](double v) { return finite(v) && v >= 0 && v < 1; })},
          "",
          "negative slope of the activation between the two linear layers of each time MLP (App. "
          "A: 0.01); `0` is "
          "a ReLU, as in the authors' code"),
      key("decoder_norm", &M::decoder_norm, {}, "",
          "instance norm in the decoder's ACNN-II blocks (`dec1`–`dec3`). The authors' code has "
          "none there "
          "(`false`); a model without it has no `dec*.norm` tensors"),
      key_as<std::string>(
          "output_units", &M::output_units, parse_output_units, units_out, {}, "",
          "what the final convolution predicts: `\"voxels\"`, or `\"image_size\"`, fractions of "
          "the "
          "image size (channel i is multiplied by the size of spatial axis i, as the authors' code "
          "does for its square images). The network's output is in voxels either way"),
      key("output_clamp", &M::output_clamp, {}, "",
          "clamp each recursion pass's field, channel i, to ±(S_i − 1) voxels before the passes "
          "are composed (the "
          "authors' code)"),
  };
}

Keys<LossWeights> loss_keys() {
  using L = LossWeights;
  const auto weight =
      check<double>("must be a finite number >= 0", [](double v) { return finite(v) && v >= 0; });
  return {
      key("distance", &L::distance, {weight}, "weight", "λ1: mean ‖compose(ψ, ψ̂)‖ / (‖ψ‖ + eps)"),
      key("angle", &L::angle, {weight}, "weight",
          "λ2: mean cos(ψ, ψ̂(x + ψ)). A perfect recovery points back, which gives −1"),
      key("regularisation", &L::regularisation, {weight}, "weight",
          "λ3: mean \\|∇(ψ̂_i / S_i)\\|₁ (the field in units of the image size, as in the authors' "
          "code; in voxel "
          "units this weight pins the prediction to zero, see below) + mean relu(−det(I + ∇ψ̂))"),
      key("eps", &L::eps,
          {check<double>("must be > 0", [](double v) { return finite(v) && v > 0; })}, "voxels",
          "ε in the distance and angle terms"),
  };
}

/// Every key of a DRDM training config, each declared once.
const Keys<TrainConfig>& config_keys() {
  static const Keys<TrainConfig> keys = [] {
    Keys<TrainConfig> k;
    detail::mount(k, "",
                  Keys<TrainConfig>{key("name", &TrainConfig::name, {}, "",
                                        "run name; the default output folder is `runs/<name>`")});
    detail::mount(k, "data", &TrainConfig::data, data_keys());
    detail::mount(k, "augment", &TrainConfig::augment, augment_keys());
    detail::mount(k, "sampler", &TrainConfig::sampler, sampler_keys());
    detail::mount(k, "model", &TrainConfig::model, model_keys());
    detail::mount(k, "loss", &TrainConfig::loss, loss_keys());
    detail::mount(k, "train", &TrainConfig::train, detail::train_section_keys());
    return k;
  }();
  return keys;
}

json defaults_json(const TrainConfig& c) { return detail::keys_json(config_keys(), c); }

// The checks across keys, after each key's own.
void check_across_keys(const TrainConfig& c, const std::string& src) {
  const auto& d = c.data;
  require(static_cast<int64_t>(d.size.size()) == d.dims, src, "data.size",
          "must have data.dims = " + std::to_string(d.dims) + " entries");
  for (auto s : d.size)
    require(s >= 8 && s % 8 == 0 && s <= 4096, src, "data.size",
            "entries must be multiples of 8 in [8, 4096] (the network halves the size three "
            "times), got " +
                std::to_string(s));
  require(d.clip_low_pct >= 0 && d.clip_low_pct < d.clip_high_pct && d.clip_high_pct <= 100, src,
          "data.clip_low_pct", "and data.clip_high_pct must satisfy 0 <= low < high <= 100");
  const auto& a = c.augment;
  require(a.crop_min > 0 && a.crop_min <= a.crop_max && a.crop_max <= 1, src, "augment.crop_min",
          "and augment.crop_max must satisfy 0 < crop_min <= crop_max <= 1");
  try {
    validate(c.sampler);
  } catch (const std::invalid_argument& e) {  // "sampler.key: why"
    const std::string m = e.what();
    const auto colon = m.find(": ");
    if (colon == std::string::npos) throw std::invalid_argument(src + ": config key " + m);
    throw std::invalid_argument(src + ": config key '" + m.substr(0, colon) + "'" +
                                m.substr(colon + 1));
  }
  detail::check_train_section(c.train, src);
  require(c.train.validate_every == 0 && c.train.patience == 0, src, "train.validate_every",
          "and train.patience must be 0 for drdm_train, which has no validation set: check "
          "held-out recovery with drdm_check_recovery");
}

TrainConfig from_json(const json& j, const std::string& src) {
  TrainConfig c;
  detail::read_keys(config_keys(), j, src, c);
  check_across_keys(c, src);
  c.model.dims = c.data.dims;
  c.model.timesteps = c.sampler.timesteps;
  return c;
}

}  // namespace

TrainConfig parse_train_config(const std::string& json_text, const std::string& source,
                               const std::vector<std::string>& overrides) {
  return detail::parse_config(defaults_json(TrainConfig{}), json_text, source, overrides,
                              from_json);
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_train_config(detail::read_config_text(path), path, overrides);
}

std::string to_json(const TrainConfig& config) { return defaults_json(config).dump(2); }

std::string train_config_reference(const std::string& section) {
  return detail::keys_reference(config_keys(), TrainConfig{}, section);
}

NetworkOptions network_options(const TrainConfig& config) {
  NetworkOptions o = config.model;
  o.dims = config.data.dims;
  o.timesteps = config.sampler.timesteps;
  return o;
}

}  // namespace drdm
