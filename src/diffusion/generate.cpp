#include "drdm/diffusion/generate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <utility>

#include "core/enum_names.h"
#include "core/seeds.h"
#include "diffusion/cuda_graph.h"
#include "diffusion/recovery_compose.h"
#include "drdm/core/log.h"
#include "drdm/diffusion/inference.h"
#include "drdm/io/dataset.h"

namespace drdm {

namespace {

constexpr detail::EnumNames<RecoverySchedule, 2> kSchedules = {
    {RecoverySchedule::kFromLevel, "level"}, {RecoverySchedule::kAllSteps, "all"}};
constexpr detail::EnumNames<SliceMode, 2> kSliceModes = {{SliceMode::kCoherent, "coherent"},
                                                         {SliceMode::kIndependent, "independent"}};

/// The value named `name`, or "unknown <what> 'x' (expected 'a' or 'b')".
template <typename E, size_t N>
E parse_named(const detail::EnumNames<E, N>& table, const std::string& name, const char* what) {
  if (const auto value = detail::enum_value(table, name)) return *value;
  throw std::invalid_argument("unknown " + std::string(what) + " '" + name + "' (expected " +
                              detail::enum_choices(table) + ")");
}

}  // namespace

std::string to_string(RecoverySchedule schedule) { return detail::enum_name(kSchedules, schedule); }

RecoverySchedule parse_recovery_schedule(const std::string& name) {
  return parse_named(kSchedules, name, "recovery schedule");
}

uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = detail::splitmix64(seed ^ 0x6a09e667f3bcc908ULL);
  h = detail::splitmix64(h ^ a);
  h = detail::splitmix64(h ^ (b + 0x3c6ef372fe94f82bULL));
  return detail::splitmix64(h ^ (c + 0xa54ff53a5f1d36f1ULL));
}

int64_t slicing_axis(const std::vector<int64_t>& tensor_size, int64_t model_dims,
                     int64_t slice_axis) {
  if (static_cast<int64_t>(tensor_size.size()) == model_dims) return -1;
  for (size_t a = 0; a < tensor_size.size(); ++a)
    if (tensor_size[a] == 1) return static_cast<int64_t>(a);
  return slice_axis;
}

namespace {

/// cuDNN's heuristics may pick convolution engines that reduce with atomics,
/// which makes two identical generations differ on a GPU (seen on an H200:
/// 4e-3 apart after 10 steps). Generation promises the same fields for the
/// same seed, so it runs with deterministic engines and restores the setting.
class DeterministicCudnn {
 public:
  DeterministicCudnn()
      : deterministic_(at::globalContext().deterministicCuDNN()),
        benchmark_(at::globalContext().benchmarkCuDNN()) {
    at::globalContext().setDeterministicCuDNN(true);
    at::globalContext().setBenchmarkCuDNN(false);
  }
  ~DeterministicCudnn() {
    at::globalContext().setDeterministicCuDNN(deterministic_);
    at::globalContext().setBenchmarkCuDNN(benchmark_);
  }
  DeterministicCudnn(const DeterministicCudnn&) = delete;
  DeterministicCudnn& operator=(const DeterministicCudnn&) = delete;

 private:
  bool deterministic_, benchmark_;
};

at::Tensor rows(const at::Tensor& x, const std::vector<int64_t>& index) {
  return x.index_select(0, at::tensor(index, at::TensorOptions().dtype(at::kLong)).to(x.device()));
}

}  // namespace

namespace {

/// Captured recovery steps for generate_fields, when GenerationOptions::
/// cuda_graphs asks for them on a CUDA device: one graph per batch size,
/// recaptured when the batch size changes; a capture that fails is reported
/// once and generation goes on eagerly.
class StepGraphs {
 public:
  StepGraphs(bool wanted, const at::Device& device, detail::RecoveryStep step)
      : enabled_(wanted && device.is_cuda()), step_(std::move(step)) {
    if (wanted && !device.is_cuda())
      log::warn("generation: cuda_graphs applies to CUDA devices only; running eagerly on " +
                device.str());
  }

  /// phi advanced by one step through a graph, or an undefined tensor when
  /// graphs are off (the caller then runs the step eagerly).
  at::Tensor advance(const at::Tensor& image, const at::Tensor& phi, int64_t t) {
    if (!enabled_) return {};
    if (!graph_ || graph_->batch() != phi.size(0)) {
      graph_.reset();
      try {
        graph_ = std::make_unique<detail::RecoveryStepGraph>(step_, image, phi, t);
      } catch (const c10::Error& e) {
        log::warn(std::string("generation: CUDA graph capture failed, running eagerly: ") +
                  e.what_without_backtrace());
        enabled_ = false;
        return {};
      }
    }
    graph_->set_image(image);
    graph_->set_phi(phi);
    graph_->advance(t);
    return graph_->phi().clone();
  }

 private:
  bool enabled_;
  detail::RecoveryStep step_;
  std::unique_ptr<detail::RecoveryStepGraph> graph_;
};

/// Alg. 2's recovery loop for one batch of samples: phi from its start field
/// through t = top..1, the samples with level t[i] >= step taking part.
at::Tensor recover_batch(const detail::RecoveryStep& step_fn, StepGraphs& graphs,
                         const at::Tensor& image, at::Tensor phi, const std::vector<int64_t>& t,
                         int64_t top, const GenerationOptions& options) {
  const int64_t count = image.size(0);
  for (int64_t step = top; step >= 1; --step) {
    std::vector<int64_t> active;
    for (int64_t i = 0; i < count; ++i)
      if (options.schedule == RecoverySchedule::kAllSteps || t[static_cast<size_t>(i)] >= step)
        active.push_back(i);
    if (static_cast<int64_t>(active.size()) == count) {
      const at::Tensor graphed = graphs.advance(image, phi, step);
      const at::Tensor tt = at::full({count}, step, at::kLong);  // CPU: no sync
      phi = graphed.defined() ? graphed : step_fn(image, phi, tt);
    } else {
      const at::Tensor index =
          at::tensor(active, at::TensorOptions().dtype(at::kLong)).to(phi.device());
      const at::Tensor tt = at::full({static_cast<int64_t>(active.size())}, step, at::kLong);
      phi = phi.index_copy(0, index, step_fn(rows(image, active), rows(phi, active), tt));
    }
    if (options.on_step) options.on_step(static_cast<int64_t>(active.size()));
  }
  return phi;
}

}  // namespace

GeneratedFields generate_fields(RecoveryNet& net, const SamplerOptions& sampler_options,
                                const torch::Tensor& images, const std::vector<int64_t>& levels,
                                const std::vector<uint64_t>& seeds,
                                const GenerationOptions& options) {
  const int64_t d = net->options.dims;
  TORCH_CHECK(images.dim() == d + 2 && images.size(1) == net->options.in_channels,
              "generate_fields: expected images [N, ", net->options.in_channels, ", ...S] with ", d,
              " spatial dims, got ", images.sizes());
  const int64_t n = images.size(0);
  TORCH_CHECK(static_cast<int64_t>(levels.size()) == n && static_cast<int64_t>(seeds.size()) == n,
              "generate_fields: expected ", n, " levels and seeds, got ", levels.size(), " and ",
              seeds.size());
  TORCH_CHECK(options.batch >= 1, "generate_fields: batch must be >= 1");
  const int64_t big_t = sampler_options.timesteps;
  for (auto level : levels)
    TORCH_CHECK(level >= 1 && level <= big_t, "generate_fields: levels must be in [1, ", big_t,
                "], got ", level);
  at::NoGradGuard no_grad;
  const DeterministicCudnn deterministic;
  const bool was_training = net->is_training();
  net->train(false);
  const auto device = net->parameters().front().device();
  std::vector<int64_t> size(images.sizes().begin() + 2, images.sizes().end());
  const VelocitySampler sampler(sampler_options, size, device);
  const at::Tensor all = images.to(device, at::kFloat);
  const bool zero_padding = sampler_options.process == DiffusionProcess::kAuthors;
  const detail::RecoveryStep step_fn = [&net, &options, zero_padding](const at::Tensor& img,
                                                                      const at::Tensor& phi,
                                                                      const at::Tensor& t) {
    return detail::recovery_compose(forward_mixed(net, warp(img, phi), t, options.bf16), phi,
                                    zero_padding);
  };
  StepGraphs graphs(options.cuda_graphs, device, step_fn);

  std::vector<at::Tensor> fields, starts;
  for (int64_t first = 0; first < n; first += options.batch) {
    const int64_t count = std::min(options.batch, n - first);
    std::vector<int64_t> t(levels.begin() + first, levels.begin() + first + count);
    std::vector<at::Generator> gens;
    for (int64_t i = 0; i < count; ++i)
      gens.push_back(make_generator(seeds[static_cast<size_t>(first + i)]));
    const at::Tensor phi =
        sampler.sample_field(at::tensor(t, at::TensorOptions().dtype(at::kLong)), gens);
    starts.push_back(phi.clone());
    const int64_t top = options.schedule == RecoverySchedule::kAllSteps
                            ? big_t
                            : *std::max_element(t.begin(), t.end());
    fields.push_back(
        recover_batch(step_fn, graphs, all.narrow(0, first, count), phi, t, top, options));
  }
  net->train(was_training);
  return {at::cat(fields, 0), at::cat(starts, 0)};
}

std::string to_string(SliceMode mode) { return detail::enum_name(kSliceModes, mode); }

SliceMode parse_slice_mode(const std::string& name) {
  return parse_named(kSliceModes, name, "slice mode");
}

namespace {

/// [Z, Z] weights of a Gaussian of `sigma` slices over the valid slices,
/// each row normalised (a row with no valid slice in reach is all zero).
at::Tensor slice_smoothing_matrix(const std::vector<bool>& valid, double sigma) {
  const auto z = static_cast<int64_t>(valid.size());
  at::Tensor w = at::zeros({z, z}, at::kDouble);
  auto a = w.accessor<double, 2>();
  const int64_t reach = sigma > 0 ? static_cast<int64_t>(std::ceil(3 * sigma)) : 0;
  for (int64_t i = 0; i < z; ++i) {
    double total = 0;
    for (int64_t j = std::max<int64_t>(0, i - reach); j <= std::min(z - 1, i + reach); ++j) {
      if (!valid[static_cast<size_t>(j)]) continue;
      const double k = static_cast<double>(j - i);
      a[i][j] = sigma > 0 ? std::exp(-k * k / (2 * sigma * sigma)) : 1.0;
      total += a[i][j];
    }
    for (int64_t j = 0; j < z && total > 0; ++j) a[i][j] /= total;
  }
  return w.to(at::kFloat);
}

/// The network's step for the valid slices, in chunks of `batch`; zero elsewhere.
at::Tensor predict_valid(RecoveryNet& net, const at::Tensor& warped, const at::Tensor& valid_index,
                         int64_t step, int64_t batch, bool bf16) {
  const auto device = warped.device();
  std::vector<int64_t> shape(warped.sizes().begin(), warped.sizes().end());
  shape[1] = warped.dim() - 2;
  at::Tensor out = at::zeros(shape, warped.options());
  const at::Tensor inputs = warped.index_select(0, valid_index);
  std::vector<at::Tensor> parts;
  for (int64_t first = 0; first < inputs.size(0); first += batch) {
    const int64_t count = std::min(batch, inputs.size(0) - first);
    const at::Tensor t = at::full({count}, step, at::kLong);  // CPU: checked without a sync
    parts.push_back(forward_mixed(net, inputs.narrow(0, first, count), t, bf16));
  }
  return out.index_copy(0, valid_index, at::cat(parts, 0));
}

}  // namespace

at::Tensor generate_volume_fields(RecoveryNet& net, const SamplerOptions& sampler_options,
                                  const at::Tensor& slices, int64_t level, uint64_t seed,
                                  const std::vector<bool>& valid, double sigma,
                                  const GenerationOptions& options) {
  TORCH_CHECK(
      net->options.dims == 2 && slices.dim() == 4 && slices.size(1) == net->options.in_channels,
      "generate_volume_fields: expected a 2D model and slices [Z, ", net->options.in_channels,
      ", H, W], got ", slices.sizes());
  const int64_t z = slices.size(0);
  TORCH_CHECK(static_cast<int64_t>(valid.size()) == z, "generate_volume_fields: expected ", z,
              " valid flags, got ", valid.size());
  TORCH_CHECK(level >= 1 && level <= sampler_options.timesteps,
              "generate_volume_fields: level must be in [1, ", sampler_options.timesteps, "], got ",
              level);
  TORCH_CHECK(sigma >= 0 && std::isfinite(sigma),
              "generate_volume_fields: sigma must be >= 0, got ", sigma);
  TORCH_CHECK(options.batch >= 1, "generate_volume_fields: batch must be >= 1");
  at::NoGradGuard no_grad;
  const DeterministicCudnn deterministic;
  const bool was_training = net->is_training();
  net->train(false);
  const auto device = net->parameters().front().device();
  const at::Tensor image = slices.to(device, at::kFloat);
  const std::vector<int64_t> size(slices.sizes().begin() + 2, slices.sizes().end());
  const VelocitySampler sampler(sampler_options, size, device);
  std::vector<at::Generator> gens{make_generator(seed)};
  const at::Tensor start = sampler.sample_field(at::full({1}, level, at::kLong), gens);
  std::vector<int64_t> valid_rows;
  for (int64_t i = 0; i < z; ++i)
    if (valid[static_cast<size_t>(i)]) valid_rows.push_back(i);
  if (valid_rows.empty()) {
    net->train(was_training);
    return at::zeros({z, 2, size[0], size[1]}, image.options());
  }
  const at::Tensor valid_index =
      at::tensor(valid_rows, at::TensorOptions().dtype(at::kLong)).to(device);
  const at::Tensor smooth = slice_smoothing_matrix(valid, sigma).to(device);
  at::Tensor phi = start.expand({z, 2, size[0], size[1]}).contiguous();
  const int64_t top =
      options.schedule == RecoverySchedule::kAllSteps ? sampler_options.timesteps : level;
  for (int64_t step = top; step >= 1; --step) {
    const at::Tensor psi_hat =
        predict_valid(net, warp(image, phi), valid_index, step, options.batch, options.bf16);
    const at::Tensor smoothed =
        at::matmul(smooth, psi_hat.reshape({z, -1})).reshape(psi_hat.sizes());
    phi = compose(smoothed, phi);
    if (options.on_step) options.on_step(z);
  }
  net->train(was_training);
  return phi;
}

double slice_incoherence(const at::Tensor& field, int64_t axis) {
  TORCH_CHECK(field.dim() >= 4 && field.size(1) == field.dim() - 2,
              "slice_incoherence: expected a field [N, d, ...S], got ", field.sizes());
  TORCH_CHECK(axis >= 0 && axis < field.dim() - 2, "slice_incoherence: axis ", axis,
              " out of range for ", field.sizes());
  const int64_t dim = 2 + axis, n = field.size(dim);
  const at::Tensor f = field.to(at::kDouble);
  const double magnitude = f.norm(2, 1).mean().item<double>();
  if (n < 2 || magnitude == 0) return 0.0;
  const at::Tensor diff = f.narrow(dim, 1, n - 1) - f.narrow(dim, 0, n - 1);
  return diff.norm(2, 1).mean().item<double>() / magnitude;
}

// ---------------------------------------------------------------------------
// Deformer

struct Deformer::Impl {
  mutable TrainedModel model;  // forward passes are not const
  torch::Device device;
  DeformerOptions options;
  int64_t slice_axis = 0;

  /// The batch on the model grid, and how to bring fields back.
  struct Prepared {
    at::Tensor model_images;  ///< [N * slices, 1, ...model]
    GridFit fit;              ///< per image (3D model / 2D model on 2D) or per slice
    int64_t n = 0;
    int64_t slices = 1;  ///< model items per input image
    int64_t axis = -1;   ///< slicing axis (tensor spatial axis) or -1
    std::vector<int64_t> input_size;
    /// Per model item: a slice with less foreground than the model was
    /// trained on (data.min_foreground), left undeformed.
    std::vector<bool> empty;
  };

  Impl(TrainedModel m, const torch::Device& dev, DeformerOptions o)
      : model(std::move(m)), device(dev), options(std::move(o)) {
    TORCH_CHECK(options.generation.batch >= 1, "Deformer: generation.batch must be >= 1");
    slice_axis = options.slice_axis >= 0 ? options.slice_axis : model.config.data.slice_axis;
    TORCH_CHECK(options.slice_sigma >= 0 && std::isfinite(options.slice_sigma),
                "Deformer: slice_sigma must be >= 0, got ", options.slice_sigma);
    TORCH_CHECK(slice_axis >= 0 && slice_axis <= 2, "Deformer: slice_axis must be 0, 1 or 2, got ",
                slice_axis);
    model.net->to(device);
    model.net->train(false);
  }

  int64_t dims() const { return model.config.data.dims; }

  Prepared prepare(const at::Tensor& images, const std::vector<double>& spacing_in) const {
    const int64_t d_in = images.dim() - 2;
    TORCH_CHECK(d_in == 2 || d_in == 3,
                "Deformer: expected images [N, C, H, W] or [N, C, D, H, W], got ", images.sizes());
    TORCH_CHECK(images.size(0) >= 1 && images.size(1) >= 1 && images.numel() > 0,
                "Deformer: empty batch ", images.sizes());
    TORCH_CHECK(d_in >= dims(), "Deformer: a ", d_in, "D batch cannot go through a ", dims(),
                "D model");
    std::vector<double> spacing =
        spacing_in.empty() ? std::vector<double>(static_cast<size_t>(d_in), 1.0) : spacing_in;
    TORCH_CHECK(static_cast<int64_t>(spacing.size()) == d_in, "Deformer: expected ", d_in,
                " spacings, got ", spacing.size());
    TORCH_CHECK(at::isfinite(images).all().item<bool>(), "Deformer: the images hold NaN or Inf");
    Prepared p;
    p.n = images.size(0);
    p.input_size.assign(images.sizes().begin() + 2, images.sizes().end());
    const auto& data = model.config.data;
    std::vector<int64_t> plane = p.input_size;
    std::vector<double> plane_spacing = spacing;
    p.axis = slicing_axis(p.input_size, dims(), slice_axis);
    if (p.axis >= 0) {
      p.slices = p.input_size[static_cast<size_t>(p.axis)];
      plane.erase(plane.begin() + p.axis);
      plane_spacing.erase(plane_spacing.begin() + p.axis);
    }
    p.fit = fit_grid(plane, plane_spacing, data.size, data.fit == "stretch");
    std::vector<at::Tensor> items;
    p.empty.assign(static_cast<size_t>(p.n * p.slices), false);
    const at::Tensor cpu = images.select(1, 0).to(at::kCPU, at::kFloat);  // channel 0: [N, ...S]
    for (int64_t b = 0; b < p.n; ++b) {
      // One intensity scale per image (a volume's slices share it).
      const at::Tensor norm =
          normalise_intensity(cpu[b].unsqueeze(0), data.clip_low_pct, data.clip_high_pct);
      if (p.axis < 0) {
        items.push_back(fit_image(norm, p.fit));
        continue;
      }
      for (int64_t k = 0; k < p.slices; ++k) {
        const at::Tensor slice = norm.select(p.axis + 1, k);
        // The same foreground measure that chose the training slices.
        const double foreground = slice.gt(0.05).to(at::kFloat).mean().item<double>();
        p.empty[static_cast<size_t>(b * p.slices + k)] = foreground < data.min_foreground;
        items.push_back(fit_image(slice, p.fit));
      }
    }
    p.model_images = at::stack(items, 0).to(device);  // [M, 1, ...model]
    return p;
  }

  std::vector<uint64_t> item_seeds(const Prepared& p, const std::vector<uint64_t>& seeds) const {
    std::vector<uint64_t> out;
    for (int64_t b = 0; b < p.n; ++b)
      for (int64_t k = 0; k < p.slices; ++k)
        out.push_back(p.slices == 1
                          ? seeds[static_cast<size_t>(b)]
                          : derive_seed(seeds[static_cast<size_t>(b)], static_cast<uint64_t>(k)));
    return out;
  }

  std::vector<int64_t> item_levels(const Prepared& p, const std::vector<int64_t>& levels) const {
    TORCH_CHECK(levels.size() == 1 || static_cast<int64_t>(levels.size()) == p.n,
                "Deformer: expected 1 or ", p.n, " levels, got ", levels.size());
    std::vector<int64_t> out;
    for (int64_t b = 0; b < p.n; ++b)
      for (int64_t k = 0; k < p.slices; ++k)
        out.push_back(levels.size() == 1 ? levels[0] : levels[static_cast<size_t>(b)]);
    return out;
  }

  /// Alg. 2 for every item that is not an empty slice; empty slices get the zero field.
  at::Tensor generate(const Prepared& p, const at::Tensor& model_images,
                      const std::vector<int64_t>& levels,
                      const std::vector<uint64_t>& seeds) const {
    std::vector<int64_t> keep;
    for (size_t i = 0; i < p.empty.size(); ++i)
      if (!p.empty[i]) keep.push_back(static_cast<int64_t>(i));
    if (keep.size() == p.empty.size())
      return generate_fields(model.net, model.config.sampler, model_images, levels, seeds,
                             options.generation)
          .field;
    if (options.generation.on_step) {  // the skipped slices' steps count as done
      int64_t skipped = 0;
      for (size_t i = 0; i < p.empty.size(); ++i)
        if (p.empty[i])
          skipped += options.generation.schedule == RecoverySchedule::kAllSteps
                         ? model.config.sampler.timesteps
                         : levels[i];
      options.generation.on_step(skipped);
    }
    std::vector<int64_t> shape{model_images.size(0), dims()};
    shape.insert(shape.end(), model_images.sizes().begin() + 2, model_images.sizes().end());
    at::Tensor out = at::zeros(shape, model_images.options());
    if (keep.empty()) return out;
    std::vector<int64_t> kl;
    std::vector<uint64_t> ks;
    for (auto i : keep) {
      kl.push_back(levels[static_cast<size_t>(i)]);
      ks.push_back(seeds[static_cast<size_t>(i)]);
    }
    const at::Tensor index =
        at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(model_images.device());
    const at::Tensor fields =
        generate_fields(model.net, model.config.sampler, model_images.index_select(0, index), kl,
                        ks, options.generation)
            .field;
    return out.index_copy(0, index, fields);
  }

  /// Fields on the model grid for per-input levels and seeds: coherent
  /// volumes (one generation per volume) or independent items. syn: the
  /// second field of a pair (seeds derived with derive_seed(., 1)).
  at::Tensor generate_for_inputs(const Prepared& p, const at::Tensor& model_images,
                                 const std::vector<int64_t>& levels,
                                 const std::vector<uint64_t>& seeds, bool syn = false) const {
    const auto item_level = item_levels(p, levels);
    if (options.slice_mode == SliceMode::kIndependent || p.axis < 0 || p.slices < 2) {
      auto item_seed = item_seeds(p, seeds);
      if (syn)
        for (auto& s : item_seed) s = derive_seed(s, 1);
      return generate(p, model_images, item_level, item_seed);
    }
    std::vector<at::Tensor> volumes;
    for (int64_t b = 0; b < p.n; ++b) {
      const auto first = static_cast<size_t>(b * p.slices);
      std::vector<bool> valid;
      for (int64_t k = 0; k < p.slices; ++k)
        valid.push_back(!p.empty[first + static_cast<size_t>(k)]);
      const uint64_t seed =
          syn ? derive_seed(seeds[static_cast<size_t>(b)], 1) : seeds[static_cast<size_t>(b)];
      volumes.push_back(generate_volume_fields(
          model.net, model.config.sampler, model_images.narrow(0, b * p.slices, p.slices),
          item_level[first], seed, valid, options.slice_sigma, options.generation));
    }
    return at::cat(volumes, 0);
  }

  /// Model-grid fields [M, dm, ...model] -> input fields [N, d_in, ...S] on the model device.
  at::Tensor to_input(const Prepared& p, const at::Tensor& model_fields) const {
    at::Tensor f = field_to_input(model_fields, p.fit);  // [M, dm, ...plane]
    if (p.axis < 0) return f;
    // [N * slices, 2, a, b] -> [N, 3, ...S]: insert a zero through-plane
    // component and stack the slices along the slicing axis.
    std::vector<int64_t> shape{p.n, p.slices};
    shape.insert(shape.end(), f.sizes().begin() + 1, f.sizes().end());
    f = f.reshape(shape);  // [N, slices, 2, a, b]
    const at::Tensor zero = at::zeros_like(f.select(2, 0));
    std::vector<at::Tensor> comps;
    int64_t c = 0;
    for (int64_t i = 0; i < 3; ++i) comps.push_back(i == p.axis ? zero : f.select(2, c++));
    at::Tensor g = at::stack(comps, 1);  // [N, 3, slices, a, b]
    // Move the slice dimension (2) to spatial position p.axis.
    return g.movedim(2, 2 + p.axis).contiguous();
  }

  at::Tensor warp_images(const at::Tensor& images, const at::Tensor& field) const {
    return warp(images.to(at::kFloat), field, Interpolation::kLinear, options.padding);
  }

  at::Tensor warp_label_maps(const at::Tensor& labels, const at::Tensor& field) const {
    if (!labels.defined()) return {};
    return warp_labels(labels, field, options.label_interpolation);
  }

  void check_labels(const at::Tensor& images, const at::Tensor& labels) const {
    if (!labels.defined()) return;
    TORCH_CHECK(labels.dim() == images.dim() && labels.size(0) == images.size(0) &&
                    std::equal(labels.sizes().begin() + 2, labels.sizes().end(),
                               images.sizes().begin() + 2),
                "Deformer: labels ", labels.sizes(), " do not match images ", images.sizes());
    TORCH_CHECK(labels.scalar_type() == at::kLong || labels.is_floating_point(),
                "Deformer: labels must be int64 class maps or one-hot float, got ",
                labels.scalar_type());
    TORCH_CHECK(labels.scalar_type() != at::kLong || labels.size(1) == 1,
                "Deformer: int64 class maps must have one channel, got ", labels.sizes());
  }

  /// The inputs checked (labels match, one seed per image) and prepared.
  Prepared prepare_checked(const at::Tensor& images, const at::Tensor& labels, size_t seeds,
                           const std::vector<double>& spacing) const {
    check_labels(images, labels);
    Prepared p = prepare(images, spacing);
    TORCH_CHECK(static_cast<int64_t>(seeds) == p.n, "Deformer: expected ", p.n, " seeds, got ",
                seeds);
    return p;
  }
};

Deformer::Deformer(const std::string& model_path, const torch::Device& device,
                   DeformerOptions options)
    : Deformer(load_model(model_path, device), device, std::move(options)) {}

Deformer::Deformer(TrainedModel model, const torch::Device& device, DeformerOptions options)
    : impl_(std::make_unique<Impl>(std::move(model), device, std::move(options))) {}

Deformer::~Deformer() = default;
Deformer::Deformer(Deformer&&) noexcept = default;
Deformer& Deformer::operator=(Deformer&&) noexcept = default;

DeformedBatch Deformer::deform_with_seeds(const torch::Tensor& images, const torch::Tensor& labels,
                                          const std::vector<int64_t>& levels,
                                          const std::vector<uint64_t>& seeds,
                                          const std::vector<double>& spacing) const {
  const Impl& m = *impl_;
  const auto p = m.prepare_checked(images, labels, seeds.size(), spacing);
  DeformedBatch out;
  out.model_fields = m.generate_for_inputs(p, p.model_images, levels, seeds);
  const at::Tensor field = m.to_input(p, out.model_fields);
  const auto back = images.device();
  out.images = m.warp_images(images.to(m.device), field).to(back);
  if (labels.defined()) out.labels = m.warp_label_maps(labels.to(m.device), field).to(back);
  out.fields = field.to(back);
  out.model_fields = out.model_fields.to(back);
  return out;
}

DeformedBatch Deformer::deform(const torch::Tensor& images, const torch::Tensor& labels,
                               const std::vector<int64_t>& levels, uint64_t seed,
                               const std::vector<double>& spacing) const {
  TORCH_CHECK(images.dim() >= 1, "Deformer: expected a batch of images");
  std::vector<uint64_t> seeds;
  for (int64_t i = 0; i < images.size(0); ++i)
    seeds.push_back(derive_seed(seed, static_cast<uint64_t>(i)));
  return deform_with_seeds(images, labels, levels, seeds, spacing);
}

PairBatch Deformer::pairs(const torch::Tensor& images, const torch::Tensor& labels,
                          const std::vector<int64_t>& aug_levels,
                          const std::vector<int64_t>& syn_levels,
                          const std::vector<uint64_t>& seeds,
                          const std::vector<double>& spacing) const {
  const Impl& m = *impl_;
  const auto p = m.prepare_checked(images, labels, seeds.size(), spacing);
  const at::Tensor aug = m.generate_for_inputs(p, p.model_images, aug_levels, seeds);
  // phi_syn is generated for the moving image (Alg. 4 line 8).
  const at::Tensor moving_model = warp(p.model_images, aug);
  const at::Tensor syn = m.generate_for_inputs(p, moving_model, syn_levels, seeds, /*syn=*/true);
  const at::Tensor aug_in = m.to_input(p, aug);
  const at::Tensor syn_in = m.to_input(p, syn);
  const at::Tensor total = compose(syn_in, aug_in);  // aug acts first, then syn
  const auto back = images.device();
  const at::Tensor img = images.to(m.device);
  PairBatch out;
  out.moving = m.warp_images(img, aug_in).to(back);
  out.fixed = m.warp_images(img, total).to(back);
  if (labels.defined()) {
    const at::Tensor lab = labels.to(m.device);
    out.moving_labels = m.warp_label_maps(lab, aug_in).to(back);
    out.fixed_labels = m.warp_label_maps(lab, total).to(back);
  }
  out.field = syn_in.to(back);
  out.moving_field = aug_in.to(back);
  return out;
}

int64_t Deformer::dims() const { return impl_->dims(); }
const std::vector<int64_t>& Deformer::model_size() const { return impl_->model.config.data.size; }
int64_t Deformer::timesteps() const { return impl_->model.config.sampler.timesteps; }
int64_t Deformer::slice_axis() const { return impl_->slice_axis; }
const torch::Device& Deformer::device() const { return impl_->device; }
const DeformerOptions& Deformer::options() const { return impl_->options; }

}  // namespace drdm
