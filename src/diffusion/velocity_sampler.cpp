#include "drdm/diffusion/velocity_sampler.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "drdm/core/spatial.h"

namespace drdm {

std::string to_string(DiffusionProcess process) {
  switch (process) {
    case DiffusionProcess::kMarkov:
      return "markov";
    case DiffusionProcess::kAuthors:
      return "authors";
    case DiffusionProcess::kStationary:
      break;
  }
  return "stationary";
}

DiffusionProcess parse_diffusion_process(const std::string& name) {
  if (name == "stationary") return DiffusionProcess::kStationary;
  if (name == "markov") return DiffusionProcess::kMarkov;
  if (name == "authors") return DiffusionProcess::kAuthors;
  throw std::invalid_argument("unknown diffusion process '" + name +
                              "' (expected \"stationary\", \"markov\" or \"authors\")");
}

void validate(const SamplerOptions& o) {
  auto fail = [](const std::string& key, const std::string& why) {
    throw std::invalid_argument("sampler." + key + ": " + why);
  };
  if (o.timesteps < 1 || o.timesteps > 10000) fail("timesteps", "must be in [1, 10000]");
  if (o.control < 4 || o.control > 1024) fail("control", "must be in [4, 1024]");
  if (o.levels < 1 || (o.control >> (o.levels - 1)) < 2)
    fail("levels", "must be >= 1 and leave at least 2 control points on the coarsest level");
  if (!(o.sigma >= 0) || !std::isfinite(o.sigma)) fail("sigma", "must be a finite number >= 0");
  if (!(o.alpha > 0) || !std::isfinite(o.alpha)) fail("alpha", "must be > 0");
  if (!(o.beta > 0) || !std::isfinite(o.beta)) fail("beta", "must be > 0");
  if (!(o.integrated_alpha > 0) || !std::isfinite(o.integrated_alpha))
    fail("integrated_alpha", "must be > 0");
  if (!(o.integrated_beta > 0) || !std::isfinite(o.integrated_beta))
    fail("integrated_beta", "must be > 0");
  if (o.integrated_max < 1 || o.integrated_max > 100000)
    fail("integrated_max", "must be in [1, 100000]");
  if (!(o.perturbation >= 0) || !std::isfinite(o.perturbation))
    fail("perturbation", "must be >= 0");
}

int64_t step_count(int64_t t, const SamplerOptions& o) {
  if (t <= 0) return 0;
  // A tiny tolerance keeps exact powers (e.g. 32^0.6 = 8) from rounding down.
  return static_cast<int64_t>(
      std::floor(std::pow(static_cast<double>(t), o.alpha) / o.beta + 1e-9));
}

int64_t integrated_count(int64_t t, const SamplerOptions& o) {
  if (t <= 0) return 0;
  const auto m = static_cast<int64_t>(
      std::floor(std::pow(static_cast<double>(t), o.integrated_alpha) / o.integrated_beta + 1e-9));
  return std::clamp<int64_t>(m, 1, o.integrated_max);
}

at::Generator make_generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

at::Generator make_generator(const torch::Device& device, uint64_t seed) {
  if (device.is_cpu()) return make_generator(seed);
  auto gen = at::globalContext().defaultGenerator(device).clone();
  gen.set_current_seed(seed);
  gen.set_offset(0);
  return gen;
}

namespace {

torch::Tensor sample_mask(const std::vector<int64_t>& flags, const torch::Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = static_cast<int64_t>(flags.size());
  std::vector<float> f(flags.begin(), flags.end());
  return at::tensor(f, at::kFloat).to(like.options()).view(shape);
}

torch::Tensor upsample(const torch::Tensor& field, at::IntArrayRef size, bool align_corners) {
  return size.size() == 2 ? at::upsample_bilinear2d(field, size, align_corners)
                          : at::upsample_trilinear3d(field, size, align_corners);
}

// The authors' conversion of a control-grid field to image voxels (kAuthors):
// channel i times (S_i / c_i)^2, as a tensor [1, d, 1, ...] of the field's options.
torch::Tensor authors_factors(const torch::Tensor& control_field,
                              const std::vector<int64_t>& image_size) {
  const auto d = static_cast<int64_t>(image_size.size());
  std::vector<double> f;
  for (int64_t i = 0; i < d; ++i) {
    const double r =
        static_cast<double>(image_size[i]) / static_cast<double>(control_field.size(2 + i));
    f.push_back(r * r);
  }
  std::vector<int64_t> shape(control_field.dim(), 1);
  shape[1] = d;
  return at::tensor(f, at::kDouble).to(control_field.options()).view(shape);
}

}  // namespace

VelocitySampler::VelocitySampler(const SamplerOptions& options, std::vector<int64_t> image_size,
                                 torch::Device device)
    : options_(options), image_size_(std::move(image_size)), device_(device) {
  validate(options_);
  TORCH_CHECK(image_size_.size() == 2 || image_size_.size() == 3,
              "VelocitySampler: expected 2 or 3 spatial sizes, got ", image_size_.size());
  for (auto s : image_size_)
    TORCH_CHECK(s >= 2, "VelocitySampler: image sizes must be >= 2, got ", s);
}

torch::Tensor VelocitySampler::velocity(int64_t batch, at::Generator& gen) const {
  return velocity_rows(batch, gen, 0, batch);
}

torch::Tensor VelocitySampler::velocity_rows(int64_t batch, at::Generator& gen, int64_t first,
                                             int64_t count) const {
  TORCH_CHECK(batch >= 1, "VelocitySampler::velocity: batch must be >= 1");
  TORCH_CHECK(first >= 0 && count >= 1 && first + count <= batch,
              "VelocitySampler::velocity_rows: rows [", first, ", ", first + count,
              ") are not in the batch of ", batch);
  const auto d = static_cast<int64_t>(image_size_.size());
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device_);
  std::vector<int64_t> full{count, d};
  for (int64_t i = 0; i < d; ++i) full.push_back(options_.control);
  auto v = at::zeros(full, opts);
  for (int64_t level = 0; level < options_.levels; ++level) {
    const int64_t c = options_.control >> level;
    std::vector<int64_t> coarse{batch, d};
    for (int64_t i = 0; i < d; ++i) coarse.push_back(c);
    // Standard deviation sigma * 2^level in control-grid voxels (Eq. 6), as
    // values on the finest grid: upsampling interpolates values unchanged.
    // Drawn on the generator's device (the CPU for make_generator's
    // generators, so that a seed gives the same field on every device), then
    // moved.
    auto noise = at::randn(coarse, gen, opts.device(gen.device()))
                     .narrow(0, first, count)
                     .to(device_)
                     .mul_(options_.sigma * std::ldexp(1.0, static_cast<int>(level)));
    if (level == 0) {
      v.add_(noise);
      continue;
    }
    // The authors' code upsamples with align_corners = false (F.interpolate's default).
    const bool corners = options_.process != DiffusionProcess::kAuthors;
    v.add_(upsample(noise, std::vector<int64_t>(d, options_.control), corners));
  }
  return v;
}

torch::Tensor VelocitySampler::to_image(const torch::Tensor& control_field) const {
  const auto d = static_cast<int64_t>(image_size_.size());
  std::vector<int64_t> doubled;
  for (auto s : image_size_) doubled.push_back(2 * s);
  const auto crop = [&](torch::Tensor big) {
    for (int64_t i = 0; i < d; ++i) big = big.narrow(2 + i, image_size_[i] / 2, image_size_[i]);
    return big;
  };
  TORCH_CHECK(control_field.dim() == 2 + d && control_field.size(1) == d,
              "VelocitySampler::to_image: expected a field [N, ", d, ", ...], got ",
              control_field.sizes());
  const bool authors = options_.process == DiffusionProcess::kAuthors;
  const auto factors = authors ? authors_factors(control_field, image_size_)
                               : resize_factors(control_field, doubled);
  if (!authors && control_field.sizes().slice(2) == at::IntArrayRef(doubled))
    return crop(control_field).contiguous();
  // resize_field(control_field, doubled), centre-cropped: the same values, but
  // one sample at a time and scaled after the crop, so that the doubled grid
  // (2^d times the image) is held for one sample only, never for the batch.
  std::vector<int64_t> shape{control_field.size(0), d};
  shape.insert(shape.end(), image_size_.begin(), image_size_.end());
  auto out = at::empty(shape, control_field.options());
  for (int64_t b = 0; b < control_field.size(0); ++b) {
    const auto one = control_field.narrow(0, b, 1);
    auto big = upsample(one, doubled, /*align_corners=*/!authors);
    auto slot = out.narrow(0, b, 1);
    at::mul_out(slot, crop(big), factors);
  }
  return out;
}

ForwardSample VelocitySampler::sample(const torch::Tensor& t, at::Generator& gen) const {
  return sample_impl(t, gen, /*need_psi=*/true);
}

ForwardSample VelocitySampler::sample_rows(const torch::Tensor& t, at::Generator& gen,
                                           int64_t first, int64_t count) const {
  TORCH_CHECK(t.dim() == 1 && first >= 0 && count >= 1 && first + count <= t.numel(),
              "VelocitySampler::sample_rows: rows [", first, ", ", first + count, ") are not in t ",
              t.sizes());
  const int64_t batch = t.numel();
  return sample_impl(
      t.narrow(0, first, count), [&](int64_t) { return velocity_rows(batch, gen, first, count); },
      /*need_psi=*/true);
}

torch::Tensor VelocitySampler::sample_field(const torch::Tensor& t, at::Generator& gen) const {
  return sample_impl(t, gen, /*need_psi=*/false).phi;
}

torch::Tensor VelocitySampler::sample_field(const torch::Tensor& t,
                                            std::vector<at::Generator>& gens) const {
  TORCH_CHECK(t.dim() == 1 && static_cast<size_t>(t.numel()) == gens.size(),
              "VelocitySampler::sample_field: expected one generator per sample, got ", gens.size(),
              " for t ", t.sizes());
  const auto draw = [&](int64_t batch) {
    std::vector<at::Tensor> parts;
    for (int64_t b = 0; b < batch; ++b) parts.push_back(velocity(1, gens[static_cast<size_t>(b)]));
    return at::cat(parts, 0);
  };
  return sample_impl(t, draw, /*need_psi=*/false).phi;
}

ForwardSample VelocitySampler::sample_impl(const torch::Tensor& t, at::Generator& gen,
                                           bool need_psi) const {
  return sample_impl(
      t, [&](int64_t batch) { return velocity(batch, gen); }, need_psi);
}

ForwardSample VelocitySampler::sample_impl(const torch::Tensor& t,
                                           const std::function<torch::Tensor(int64_t)>& draw,
                                           bool need_psi) const {
  TORCH_CHECK(t.dim() == 1 && t.numel() >= 1 && !t.is_floating_point(),
              "VelocitySampler: t must be an integer tensor [N], got ", t.sizes(), " ", t.dtype());
  const auto tc = t.to(at::kCPU, at::kLong).contiguous();
  std::vector<int64_t> ts(tc.data_ptr<int64_t>(), tc.data_ptr<int64_t>() + tc.numel());
  for (auto v : ts)
    TORCH_CHECK(v >= 1 && v <= options_.timesteps, "VelocitySampler: t must be in [1, ",
                options_.timesteps, "], got ", v);
  const auto batch = static_cast<int64_t>(ts.size());
  ForwardSample out;
  if (options_.process != DiffusionProcess::kMarkov) {
    const auto v = draw(batch);
    std::vector<int64_t> n, m;
    for (auto tt : ts) {
      n.push_back(step_count(tt, options_));
      m.push_back(integrated_count(tt, options_));
    }
    auto perturbed = v;
    if (options_.perturbation > 0) {
      const auto w = draw(batch) * options_.perturbation;
      // The authors' code warps the perturbation by v: v(x) + w(x + v(x)) = compose(v, w).
      perturbed = options_.process == DiffusionProcess::kAuthors ? compose(v, w) : v + w;
    }
    out.phi = to_image(compose_power(perturbed, m));
    if (need_psi) out.psi = to_image(compose_power(v, n));
    return out;
  }
  // Markov: phi <- compose(psi_tau, phi) for tau = 1..t (psi_tau acts last);
  // the target of each sample is its own last step.
  const int64_t t_max = *std::max_element(ts.begin(), ts.end());
  torch::Tensor phi, psi;
  for (int64_t tau = 1; tau <= t_max; ++tau) {
    const auto v = draw(batch);
    std::vector<int64_t> active(batch), last(batch);
    for (int64_t b = 0; b < batch; ++b) {
      active[b] = tau <= ts[b] ? step_count(tau, options_) : 0;
      last[b] = tau == ts[b] ? 1 : 0;
    }
    const auto step = compose_power(v, active);
    phi = phi.defined() ? compose(step, phi) : step;
    if (need_psi) {
      const auto mask = sample_mask(last, step);
      psi = psi.defined() ? psi + step * mask : step * mask;
    }
  }
  out.phi = to_image(phi);
  if (need_psi) out.psi = to_image(psi);
  return out;
}

}  // namespace drdm
