#include "drdm/seg/bigaug.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>

#include "drdm/core/spatial.h"

namespace drdm::seg {
namespace {

using T = BigAugSample;
constexpr double kPi = 3.14159265358979323846;
constexpr int64_t kColumns = 21;   // uniforms drawn per sample (draw_samples)
constexpr int64_t kSquarings = 7;  // scaling-and-squaring steps of the elastic velocity

// ---- validation ----

[[noreturn]] void fail(const char* key, const std::string& what) {
  throw std::invalid_argument(std::string("bigaug.") + key + ": " + what);
}

std::string num(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// v finite and in [lo, hi] (or (lo, hi] when open_low).
void check_range(const char* key, double v, double lo, double hi, bool open_low = false) {
  const bool ok = std::isfinite(v) && (open_low ? v > lo : v >= lo) && v <= hi;
  if (!ok)
    fail(key, "must be in " + std::string(open_low ? "(" : "[") + num(lo) + ", " + num(hi) +
                  "], got " + num(v));
}

void check_order(const char* min_key, double lo, const char* max_key, double hi) {
  if (!(lo <= hi))
    fail(min_key,
         "must be <= bigaug." + std::string(max_key) + ", got " + num(lo) + " > " + num(hi));
}

// ---- helpers ----

torch::TensorOptions float_options(const torch::TensorOptions& o) {
  return o.dtype_opt().has_value() ? o : o.dtype(at::kFloat);
}

// [k, 1, ...] tensor of per-sample values, like `x`.
torch::Tensor per_sample(const std::vector<double>& values, const torch::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = static_cast<int64_t>(values.size());
  return at::tensor(values, at::kDouble).to(x.options()).view(shape);
}

std::vector<int64_t> chosen(const std::vector<T>& samples, std::initializer_list<int> transforms) {
  std::vector<int64_t> idx;
  for (size_t i = 0; i < samples.size(); ++i)
    if (std::any_of(transforms.begin(), transforms.end(),
                    [&](int t) { return samples[i].applied[t]; }))
      idx.push_back(static_cast<int64_t>(i));
  return idx;
}

std::vector<double> pick(const std::vector<T>& samples, const std::vector<int64_t>& idx,
                         double T::*member) {
  std::vector<double> out;
  for (auto i : idx) out.push_back(samples[static_cast<size_t>(i)].*member);
  return out;
}

// x with the samples `idx` replaced by fn(those samples); the others untouched.
torch::Tensor on_subset(torch::Tensor x, const std::vector<int64_t>& idx,
                        const std::function<torch::Tensor(const torch::Tensor&)>& fn) {
  if (idx.empty()) return x;
  auto index = at::tensor(idx, at::kLong).to(x.device());
  return x.index_copy(0, index, fn(x.index_select(0, index)).to(x.scalar_type()));
}

void check_inputs(const torch::Tensor& images, const torch::Tensor& labels) {
  TORCH_CHECK(images.defined() && (images.dim() == 4 || images.dim() == 5),
              "bigaug: expected images [N, C, H, W] or [N, C, D, H, W]");
  TORCH_CHECK(at::isFloatingType(images.scalar_type()), "bigaug: expected floating images, got ",
              images.scalar_type());
  if (!labels.defined()) return;
  TORCH_CHECK(labels.scalar_type() == at::kLong, "bigaug: expected int64 labels, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.dim() == images.dim() && labels.size(0) == images.size(0) &&
                  labels.size(1) == 1 && labels.sizes().slice(2) == images.sizes().slice(2),
              "bigaug: labels ", labels.sizes(), " do not match images ", images.sizes(),
              " (expected [N, 1, ...S])");
  TORCH_CHECK(labels.device() == images.device(), "bigaug: labels on ", labels.device(),
              " but images on ", images.device());
}

// ---- filters ----

// [k, 2R + 1] normalised Gaussian kernels, each truncated at ceil(4 sigma);
// sigma 0 gives a delta.
torch::Tensor gaussian_kernels(const std::vector<double>& sigmas) {
  int64_t radius = 0;
  for (double s : sigmas)
    radius = std::max<int64_t>(radius, static_cast<int64_t>(std::ceil(4 * s)));
  auto k = at::zeros({static_cast<int64_t>(sigmas.size()), 2 * radius + 1}, at::kDouble);
  auto a = k.accessor<double, 2>();
  for (size_t i = 0; i < sigmas.size(); ++i) {
    const auto r = static_cast<int64_t>(std::ceil(4 * sigmas[i]));
    double sum = 0;
    for (int64_t t = -r; t <= r; ++t)
      sum += a[i][radius + t] =
          sigmas[i] > 0 ? std::exp(-0.5 * t * t / (sigmas[i] * sigmas[i])) : 1.0;
    for (int64_t t = -r; t <= r; ++t) a[i][radius + t] /= sum;
  }
  return k;
}

// Correlates each sample of x with its kernel along `dim`, replicate padding.
torch::Tensor filter_axis(const torch::Tensor& x, const torch::Tensor& kernels, int64_t dim) {
  const int64_t radius = (kernels.size(1) - 1) / 2, n = x.size(dim);
  auto pad_shape = x.sizes().vec();
  pad_shape[dim] = radius;
  auto padded = at::cat(
      {x.narrow(dim, 0, 1).expand(pad_shape), x, x.narrow(dim, n - 1, 1).expand(pad_shape)}, dim);
  auto w = kernels.to(x.options());
  std::vector<int64_t> wshape(x.dim(), 1);
  wshape[0] = x.size(0);
  auto out = at::zeros_like(x);
  for (int64_t t = 0; t < kernels.size(1); ++t)
    out.add_(padded.narrow(dim, t, n) * w.select(1, t).view(wshape));
  return out;
}

torch::Tensor blur_all(const torch::Tensor& x, const std::vector<double>& sigmas) {
  const auto kernels = gaussian_kernels(sigmas);
  auto out = x;
  for (int64_t dim = 2; dim < x.dim(); ++dim) out = filter_axis(out, kernels, dim);
  return out;
}

// ---- elastic ----

double cubic_bspline(double s) {
  s = std::abs(s);
  if (s < 1) return 2.0 / 3.0 - s * s + 0.5 * s * s * s;
  return s < 2 ? (2 - s) * (2 - s) * (2 - s) / 6.0 : 0.0;
}

// [size, n] weights of n knots at (k - 1) h, h = (size - 1) / (n - 3): the
// knots span the axis with one beyond each end (partition of unity inside).
torch::Tensor bspline_matrix(int64_t size, int64_t n) {
  if (size == 1) return at::ones({1, 1}, at::kDouble);
  auto w = at::zeros({size, n}, at::kDouble);
  auto a = w.accessor<double, 2>();
  const double h = static_cast<double>(size - 1) / static_cast<double>(n - 3);
  for (int64_t t = 0; t < size; ++t)
    for (int64_t k = 0; k < n; ++k) a[t][k] = cubic_bspline(t / h - static_cast<double>(k - 1));
  return w;
}

// Rotation of tensor axis i towards axis j by `rad` (content convention).
void plane_rotation(double r[3][3], int i, int j, double rad) {
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) r[a][b] = a == b;
  r[i][i] = r[j][j] = std::cos(rad);
  r[j][i] = std::sin(rad);
  r[i][j] = -std::sin(rad);
}

void multiply(double out[3][3], const double r[3][3]) {  // out <- out r
  double tmp[3][3] = {};
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b)
      for (int m = 0; m < 3; ++m) tmp[a][b] += out[a][m] * r[m][b];
  std::copy(&tmp[0][0], &tmp[0][0] + 9, &out[0][0]);
}

// Content rotation R of one sample (3 x 3, identity beyond d).
void rotation(double out[3][3], at::IntArrayRef size, const T& s) {
  plane_rotation(out, 0, 1, 0.0);
  if (!s.applied[T::kRotation]) return;
  const int d = static_cast<int>(size.size());
  const int planes[3][2] = {{1, 2}, {0, 2}, {0, 1}};
  for (int k = d == 2 ? 2 : 0; k < 3; ++k) {
    const int i = planes[k][0], j = planes[k][1];
    const double deg = d == 2 ? s.angles_deg[0] : s.angles_deg[k];
    if (size[i] == 1 || size[j] == 1 || deg == 0) continue;
    double r[3][3];
    plane_rotation(r, i, j, deg * kPi / 180.0);
    multiply(out, r);
  }
}

}  // namespace

void validate(const BigAugOptions& o) {
  check_range("p", o.p, 0, 1);
  check_range("blur_sigma_min", o.blur_sigma_min, 0, 20);
  check_range("blur_sigma_max", o.blur_sigma_max, 0, 20);
  check_order("blur_sigma_min", o.blur_sigma_min, "blur_sigma_max", o.blur_sigma_max);
  check_range("sharpen_alpha_min", o.sharpen_alpha_min, 0, 100);
  check_range("sharpen_alpha_max", o.sharpen_alpha_max, 0, 100);
  check_order("sharpen_alpha_min", o.sharpen_alpha_min, "sharpen_alpha_max", o.sharpen_alpha_max);
  check_range("sharpen_sigma1", o.sharpen_sigma1, 0, 20, true);
  check_range("sharpen_sigma2", o.sharpen_sigma2, 0, 20, true);
  check_range("noise_std_min", o.noise_std_min, 0, 10);
  check_range("noise_std_max", o.noise_std_max, 0, 10);
  check_order("noise_std_min", o.noise_std_min, "noise_std_max", o.noise_std_max);
  check_range("brightness", o.brightness, 0, 10);
  check_range("gamma_min", o.gamma_min, 0, 100, true);
  check_range("gamma_max", o.gamma_max, 0, 100, true);
  check_order("gamma_min", o.gamma_min, "gamma_max", o.gamma_max);
  check_range("scale_min", o.scale_min, 0, 100, true);
  check_range("scale_max", o.scale_max, 0, 100, true);
  check_order("scale_min", o.scale_min, "scale_max", o.scale_max);
  check_range("shift", o.shift, 0, 10);
  check_range("rotation_deg", o.rotation_deg, 0, 180);
  check_range("scaling_min", o.scaling_min, 0, 100, true);
  check_range("scaling_max", o.scaling_max, 0, 100, true);
  check_order("scaling_min", o.scaling_min, "scaling_max", o.scaling_max);
  check_range("elastic_control_points", static_cast<double>(o.elastic_control_points), 4, 64);
  check_range("elastic_magnitude_min", o.elastic_magnitude_min, 0, 1000);
  check_range("elastic_magnitude_max", o.elastic_magnitude_max, 0, 1000);
  check_order("elastic_magnitude_min", o.elastic_magnitude_min, "elastic_magnitude_max",
              o.elastic_magnitude_max);
}

std::vector<BigAugSample> draw_samples(int64_t batch, int64_t dims, const BigAugOptions& o,
                                       at::Generator& gen) {
  TORCH_CHECK(batch >= 0 && (dims == 2 || dims == 3), "draw_samples: bad batch ", batch,
              " or dims ", dims);
  auto u =
      at::rand({batch, kColumns}, gen, at::TensorOptions().dtype(at::kDouble).device(gen.device()))
          .cpu()
          .contiguous();
  auto a = u.accessor<double, 2>();
  auto lerp = [](double lo, double hi, double t) { return lo + t * (hi - lo); };
  std::vector<BigAugSample> out(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    auto& s = out[static_cast<size_t>(i)];
    for (int t = 0; t < T::kCount; ++t) s.applied[t] = a[i][t] < o.p;
    s.blur_sigma = lerp(o.blur_sigma_min, o.blur_sigma_max, a[i][9]);
    s.sharpen_alpha = lerp(o.sharpen_alpha_min, o.sharpen_alpha_max, a[i][10]);
    s.noise_std = lerp(o.noise_std_min, o.noise_std_max, a[i][11]);
    s.brightness_shift = lerp(-o.brightness, o.brightness, a[i][12]);
    s.gamma = lerp(o.gamma_min, o.gamma_max, a[i][13]);
    s.scale = lerp(o.scale_min, o.scale_max, a[i][14]);
    s.shift = lerp(-o.shift, o.shift, a[i][15]);
    for (int k = 0; k < (dims == 2 ? 1 : 3); ++k)
      s.angles_deg[k] = lerp(-o.rotation_deg, o.rotation_deg, a[i][16 + k]);
    s.zoom = lerp(o.scaling_min, o.scaling_max, a[i][19]);
    s.elastic_magnitude = lerp(o.elastic_magnitude_min, o.elastic_magnitude_max, a[i][20]);
  }
  return out;
}

torch::Tensor gaussian_blur(const torch::Tensor& images, const std::vector<double>& sigmas) {
  TORCH_CHECK(static_cast<int64_t>(sigmas.size()) == images.size(0),
              "gaussian_blur: one sigma per sample");
  std::vector<int64_t> idx;
  for (size_t i = 0; i < sigmas.size(); ++i) {
    TORCH_CHECK(std::isfinite(sigmas[i]) && sigmas[i] >= 0, "gaussian_blur: bad sigma ", sigmas[i]);
    if (sigmas[i] > 0) idx.push_back(static_cast<int64_t>(i));
  }
  std::vector<double> used;
  for (auto i : idx) used.push_back(sigmas[static_cast<size_t>(i)]);
  return on_subset(images.clone(), idx, [&](const torch::Tensor& x) { return blur_all(x, used); });
}

torch::Tensor gaussian_sharpen(const torch::Tensor& images, const std::vector<double>& alphas,
                               double sigma1, double sigma2) {
  const auto n = static_cast<size_t>(images.size(0));
  TORCH_CHECK(alphas.size() == n, "gaussian_sharpen: one alpha per sample");
  auto blurred = blur_all(images, std::vector<double>(n, sigma1));
  auto more = blur_all(blurred, std::vector<double>(n, sigma2));
  return blurred + per_sample(alphas, images) * (blurred - more);
}

torch::Tensor gamma_contrast(const torch::Tensor& images, const std::vector<double>& gammas) {
  TORCH_CHECK(static_cast<int64_t>(gammas.size()) == images.size(0),
              "gamma_contrast: one gamma per sample");
  std::vector<int64_t> dims;
  for (int64_t d = 2; d < images.dim(); ++d) dims.push_back(d);
  auto lo = images.amin(dims, true), range = images.amax(dims, true) - lo;
  auto r = (images - lo) / range.clamp_min(1e-30);
  auto out = r.pow(per_sample(gammas, images)) * range + lo;
  return at::where(range > 0, out, images);
}

torch::Tensor elastic_field(at::IntArrayRef size, const std::vector<double>& magnitudes,
                            int64_t control_points, at::Generator& gen,
                            const torch::TensorOptions& options) {
  const auto d = static_cast<int64_t>(size.size());
  TORCH_CHECK(d == 2 || d == 3, "elastic_field: expected 2 or 3 sizes, got ", size);
  TORCH_CHECK(control_points >= 4, "elastic_field: control_points must be >= 4, got ",
              control_points);
  const auto opts = float_options(options);
  std::vector<int64_t> shape{static_cast<int64_t>(magnitudes.size()), d};
  for (auto s : size) shape.push_back(s > 1 ? control_points : 1);
  auto v =
      at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat).device(gen.device())).to(opts);
  const int64_t longest = *std::max_element(size.begin(), size.end());
  std::vector<double> axis_scale;
  for (int64_t i = 0; i < d; ++i) {
    auto w = bspline_matrix(size[i], shape[2 + i]).t().to(opts);
    v = at::matmul(v.movedim(2 + i, -1), w).movedim(-1, 2 + i);
    axis_scale.push_back(
        longest > 1 ? static_cast<double>(size[i] - 1) / static_cast<double>(longest - 1) : 0.0);
  }
  // Every axis deforms by the same fraction of its length; size-1 axes not at all.
  std::vector<int64_t> cshape(v.dim(), 1);
  cshape[1] = d;
  v = v * at::tensor(axis_scale, at::kDouble).to(opts).view(cshape);
  auto peak = v.pow(2).sum(1).sqrt().flatten(1).amax(1).clamp_min(1e-12);
  std::vector<int64_t> bshape(v.dim(), 1);
  bshape[0] = v.size(0);
  v = v * (at::tensor(magnitudes, at::kDouble).to(opts) / peak).view(bshape);
  return integrate_scaling_squaring(v, kSquarings);
}

torch::Tensor affine_matrices(at::IntArrayRef size, const std::vector<BigAugSample>& samples) {
  const auto d = static_cast<int64_t>(size.size());
  TORCH_CHECK(d == 2 || d == 3, "affine_matrices: expected 2 or 3 sizes, got ", size);
  auto m = at::zeros({static_cast<int64_t>(samples.size()), d, d}, at::kDouble);
  auto a = m.accessor<double, 3>();
  for (size_t b = 0; b < samples.size(); ++b) {
    double r[3][3];
    rotation(r, size, samples[b]);
    const double zoom = samples[b].applied[T::kScaling] ? samples[b].zoom : 1.0;
    TORCH_CHECK(zoom > 0, "affine_matrices: zoom must be > 0, got ", zoom);
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j) a[b][i][j] = r[j][i] / zoom;  // R^T / zoom
  }
  return m;
}

torch::Tensor spatial_field(at::IntArrayRef size, const std::vector<BigAugSample>& samples,
                            const BigAugOptions& options, at::Generator& gen,
                            const torch::TensorOptions& tensor_options) {
  const auto opts = float_options(tensor_options);
  const auto d = static_cast<int64_t>(size.size());
  std::vector<double> mags;
  for (const auto& s : samples) mags.push_back(s.applied[T::kElastic] ? s.elastic_magnitude : 0.0);
  const bool elastic = std::any_of(mags.begin(), mags.end(), [](double m) { return m > 0; });
  auto grid = identity_grid(size, opts);
  std::vector<int64_t> full{static_cast<int64_t>(samples.size()), d};
  full.insert(full.end(), size.begin(), size.end());
  auto e = elastic ? elastic_field(size, mags, options.elastic_control_points, gen, opts)
                   : at::zeros(full, opts);
  std::vector<double> centre;
  for (auto s : size) centre.push_back(0.5 * static_cast<double>(s - 1));
  std::vector<int64_t> cshape(full.size(), 1);
  cshape[1] = d;
  auto c = at::tensor(centre, at::kDouble).to(opts).view(cshape);
  auto p = grid + e - c;
  auto m = affine_matrices(size, samples).to(opts);
  std::vector<int64_t> bshape(full.size() - 1, 1);  // [k, 1, ...] against p.select(1, j)
  bshape[0] = full[0];
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < d; ++i) {
    auto row = at::zeros_like(p.select(1, 0));
    for (int64_t j = 0; j < d; ++j)
      row += m.select(1, i).select(1, j).view(bshape) * p.select(1, j);
    rows.push_back(row);
  }
  return at::stack(rows, 1) + c - grid;
}

namespace {

// Rotation, scaling and elastic as one field per sample that has any of
// them: images warped linearly (zeros), labels by nearest neighbour.
std::pair<torch::Tensor, torch::Tensor> spatial_part(torch::Tensor x, torch::Tensor labels,
                                                     const std::vector<BigAugSample>& samples,
                                                     const BigAugOptions& o, at::Generator& gen) {
  const auto idx = chosen(samples, {T::kRotation, T::kScaling, T::kElastic});
  if (idx.empty()) return {x, labels};
  std::vector<BigAugSample> sub;
  for (auto i : idx) sub.push_back(samples[static_cast<size_t>(i)]);
  const auto field = spatial_field(x.sizes().slice(2), sub, o, gen, x.options());
  x = on_subset(x, idx, [&](const torch::Tensor& s) { return warp(s, field); });
  if (labels.defined())
    labels = on_subset(labels, idx, [&](const torch::Tensor& l) { return warp_labels(l, field); });
  return {x, labels};
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> bigaug_apply(const torch::Tensor& images,
                                                     const torch::Tensor& labels,
                                                     const std::vector<BigAugSample>& samples,
                                                     const BigAugOptions& o, at::Generator& gen) {
  validate(o);
  check_inputs(images, labels);
  TORCH_CHECK(static_cast<int64_t>(samples.size()) == images.size(0),
              "bigaug_apply: ", samples.size(), " sample parameters for a batch of ",
              images.size(0));
  // Noise and elastic draw from their own CPU streams, seeded from `gen`:
  // switching one transform off leaves the other's values unchanged.
  auto seeds = at::randint(int64_t{1} << 62, {2}, gen,
                           at::TensorOptions().dtype(at::kLong).device(gen.device()))
                   .cpu();
  auto noise_gen =
      at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seeds[0].item<int64_t>()));
  auto elastic_gen =
      at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seeds[1].item<int64_t>()));
  auto x = images.clone();
  auto idx = chosen(samples, {T::kBlur});
  x = on_subset(x, idx, [&](const torch::Tensor& s) {
    return blur_all(s, pick(samples, idx, &T::blur_sigma));
  });
  idx = chosen(samples, {T::kSharpen});
  x = on_subset(x, idx, [&](const torch::Tensor& s) {
    return gaussian_sharpen(s, pick(samples, idx, &T::sharpen_alpha), o.sharpen_sigma1,
                            o.sharpen_sigma2);
  });
  idx = chosen(samples, {T::kNoise});
  x = on_subset(x, idx, [&](const torch::Tensor& s) {
    auto noise = at::randn(s.sizes(), noise_gen, at::TensorOptions().dtype(at::kFloat));
    return s + noise.to(s.options()) * per_sample(pick(samples, idx, &T::noise_std), s);
  });
  idx = chosen(samples, {T::kBrightness});
  x = on_subset(x, idx, [&](const torch::Tensor& s) {
    return s + per_sample(pick(samples, idx, &T::brightness_shift), s);
  });
  idx = chosen(samples, {T::kGamma});
  x = on_subset(x, idx, [&](const torch::Tensor& s) {
    return gamma_contrast(s, pick(samples, idx, &T::gamma));
  });
  idx = chosen(samples, {T::kIntensity});
  x = on_subset(x, idx, [&](const torch::Tensor& s) {
    return s * per_sample(pick(samples, idx, &T::scale), s) +
           per_sample(pick(samples, idx, &T::shift), s);
  });
  return spatial_part(x, labels.defined() ? labels.clone() : labels, samples, o, elastic_gen);
}

std::pair<torch::Tensor, torch::Tensor> bigaug(const torch::Tensor& images,
                                               const torch::Tensor& labels,
                                               const BigAugOptions& options,
                                               at::Generator& generator) {
  validate(options);
  check_inputs(images, labels);
  auto samples = draw_samples(images.size(0), images.dim() - 2, options, generator);
  return bigaug_apply(images, labels, samples, options, generator);
}

}  // namespace drdm::seg
