#include "drdm/io/dataset.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/ParallelGuard.h>
#include <fnmatch.h>

#include "core/seeds.h"
#include "drdm/core/log.h"
#include "drdm/io/image_io.h"
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <filesystem>
#include <iomanip>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

namespace fs = std::filesystem;

namespace drdm {
namespace detail {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kForegroundLevel = 0.05;

/// Seed of the generator of one training step: depends on (seed, step) only.
uint64_t step_seed(uint64_t seed, int64_t step) {
  return splitmix64(splitmix64(seed) ^ (static_cast<uint64_t>(step) * 0xD1B54A32D192ED03ULL));
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string shape_string(at::IntArrayRef s) {
  std::string out;
  for (auto v : s) out += (out.empty() ? "" : "x") + std::to_string(v);
  return out;
}

bool matches_any(const std::vector<std::string>& patterns, const std::string& text, int flags) {
  for (const auto& p : patterns)
    if (::fnmatch(p.c_str(), text.c_str(), flags) == 0) return true;
  return false;
}

/// Image files of one folder (recursive), sorted. Throws naming the folder.
std::vector<std::string> scan_folder(const std::string& folder, const DatasetOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec))
    throw std::runtime_error("dataset: folder '" + folder + "' does not exist or is not a folder");
  std::vector<std::string> files;
  fs::recursive_directory_iterator it(folder, fs::directory_options::skip_permission_denied, ec),
      end;
  if (ec) throw std::runtime_error("dataset: cannot list folder '" + folder + "': " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec)
      throw std::runtime_error("dataset: cannot list folder '" + folder + "': " + ec.message());
    std::error_code ec2;
    const fs::path& p = it->path();
    const std::string name = p.filename().string();
    if (it->is_symlink(ec2) && !fs::exists(p, ec2) &&
        matches_any(options.include, name, FNM_PERIOD))
      throw std::runtime_error("dataset: '" + p.string() +
                               "' is a symbolic link to a file that does not exist");
    if (!it->is_regular_file(ec2)) continue;
    if (!matches_any(options.include, name, FNM_PERIOD)) continue;
    const std::string rel = p.lexically_relative(folder).generic_string();
    if (matches_any(options.exclude, rel, 0) || matches_any(options.exclude, name, 0)) continue;
    files.push_back(p.string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty())
    throw std::runtime_error(
        "dataset: no image files in folder '" + folder + "' (include: " + join(options.include) +
        (options.exclude.empty() ? "" : "; exclude: " + join(options.exclude)) + ")");
  return files;
}

std::vector<std::string> subset_of(const std::vector<std::string>& files,
                                   const std::vector<double>& subset) {
  const auto n = static_cast<double>(files.size());
  const auto first = static_cast<size_t>(std::floor(subset.at(0) * n + 1e-9));
  const auto last = static_cast<size_t>(std::floor(subset.at(1) * n + 1e-9));
  return {files.begin() + static_cast<std::ptrdiff_t>(std::min(first, files.size())),
          files.begin() + static_cast<std::ptrdiff_t>(std::min(last, files.size()))};
}

/// Percentiles lo <= hi (numpy's default "linear" method, p in [0, 100]) of
/// values v. Reorders v.
std::pair<double, double> percentiles(std::vector<float>& v, double low_pct, double high_pct) {
  const auto n = static_cast<int64_t>(v.size());
  int64_t done = 0;  // v[0, done) holds the smallest `done` values (after a selection)
  auto at_pct = [&](double p) {
    const double pos = std::clamp(p / 100.0, 0.0, 1.0) * static_cast<double>(n - 1);
    const auto k = static_cast<int64_t>(std::floor(pos));
    const double frac = pos - static_cast<double>(k);
    std::nth_element(v.begin() + std::min(done, k), v.begin() + k, v.end());
    done = k;
    const double a = v[k];
    if (frac <= 0 || k + 1 >= n) return a;
    const double b = *std::min_element(v.begin() + k + 1, v.end());
    return a + frac * (b - a);
  };
  const double lo = at_pct(low_pct);
  const double hi = at_pct(high_pct);
  return {lo, hi};
}

/// Clip to the percentiles of the image and map linearly to [0, 1]: float32,
/// contiguous, on the image's device. Falls back to min/max when the
/// percentiles coincide; a constant image gives zeros.
at::Tensor clip_normalise(const at::Tensor& image, double low_pct, double high_pct) {
  at::Tensor cpu = image.to(at::kCPU, at::kFloat).contiguous();
  const float* data = cpu.data_ptr<float>();
  const int64_t n = cpu.numel();
  std::vector<float> v(data, data + n);
  auto [lo, hi] = percentiles(v, low_pct, high_pct);
  if (!(hi > lo)) {
    const auto mm = std::minmax_element(v.begin(), v.end());
    lo = *mm.first;
    hi = *mm.second;
  }
  if (!(hi > lo)) return at::zeros(image.sizes(), image.options().dtype(at::kFloat));
  const auto flo = static_cast<float>(lo), fhi = static_cast<float>(hi);
  const float range = fhi - flo;
  if (!image.is_cpu() || !(range > 0))
    return ((image.to(at::kFloat).clamp(lo, hi) - lo) / (hi - lo)).clamp(0.0, 1.0).contiguous();
  // A plain loop: one pass, no intra-op threads (the loader already runs files in parallel).
  at::Tensor out = at::empty(cpu.sizes(), cpu.options());
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i)
    o[i] = std::min((std::clamp(data[i], flo, fhi) - flo) / range, 1.0f);
  return out;
}

/// Fraction of voxels > kForegroundLevel in each slice along tensor axis
/// `axis` of a normalised CPU float image [1, ...S] (contiguous).
std::vector<double> foreground_per_slice(const at::Tensor& normalised, int64_t axis) {
  const at::Tensor x = normalised.contiguous();
  const float* p = x.data_ptr<float>();
  const int64_t len = x.size(axis + 1);
  int64_t inner = 1;
  for (int64_t a = axis + 2; a < x.dim(); ++a) inner *= x.size(a);
  const int64_t outer = x.numel() / (len * inner);
  std::vector<int64_t> count(len, 0);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t k = 0; k < len; ++k) {
      const float* q = p + (o * len + k) * inner;
      int64_t c = 0;
      for (int64_t i = 0; i < inner; ++i) c += q[i] > kForegroundLevel;
      count[k] += c;
    }
  std::vector<double> out(len);
  for (int64_t k = 0; k < len; ++k)
    out[k] = static_cast<double>(count[k]) / static_cast<double>(outer * inner);
  return out;
}

/// Resamples an image [1, ...S] (values in [0, 1]) as `fit` places it:
/// antialiased resize to fit.fitted, centred in zero padding.
at::Tensor fit_with(const at::Tensor& image, const GridFit& fit) {
  const auto d = static_cast<int64_t>(fit.model_size.size());
  const std::vector<int64_t>& fitted = fit.fitted;
  bool same = true;
  for (int64_t i = 0; i < d; ++i) same = same && fitted[i] == image.size(i + 1);
  at::Tensor x = image.unsqueeze(0);  // [1, 1, ...S]
  if (!same) {
    if (d == 2) {
      // Antialiased when shrinking (a triangle filter as wide as the scale).
      x = at::_upsample_bilinear2d_aa(x, fitted, /*align_corners=*/false);
    } else {
      // No antialiased trilinear in ATen: average over whole-voxel windows
      // first (adaptive pooling covers the full extent), then trilinear.
      std::vector<int64_t> pooled(d);
      bool pool = false;
      for (int64_t i = 0; i < d; ++i) {
        const int64_t s = image.size(i + 1);
        const int64_t k = std::max<int64_t>(1, s / fitted[i]);
        pooled[i] = std::max(fitted[i], s / k);
        pool = pool || pooled[i] != s;
      }
      if (pool) x = at::adaptive_avg_pool3d(x, pooled);
      x = at::upsample_trilinear3d(x, at::IntArrayRef(fitted), /*align_corners=*/false,
                                   std::nullopt);
    }
    x = x.clamp(0.0, 1.0);
  }
  std::vector<int64_t> pad;  // last axis first, as constant_pad_nd wants
  for (int64_t i = d - 1; i >= 0; --i) {
    const int64_t total = fit.model_size[i] - fitted[i];
    pad.push_back(fit.pad_before[i]);
    pad.push_back(total - fit.pad_before[i]);
  }
  x = at::constant_pad_nd(x, pad, 0.0);
  return x.squeeze(0).contiguous();
}

/// Resamples an image [1, ...S] (values in [0, 1]) so that its physical
/// extent fits `size` with its aspect ratio kept, centred in zero padding.
at::Tensor fit_to_size(const at::Tensor& image, const std::vector<double>& spacing,
                       const std::vector<int64_t>& size, bool stretch) {
  std::vector<int64_t> shape(image.sizes().begin() + 1, image.sizes().end());
  return fit_with(image, fit_grid(shape, spacing, size, stretch));
}

void check_preprocess_args(const at::Tensor& image, const std::vector<double>& spacing,
                           const std::vector<int64_t>& size, double low, double high) {
  const auto d = static_cast<int64_t>(size.size());
  TORCH_CHECK(d == 2 || d == 3, "preprocess_image: expected a target size of 2 or 3 entries, got ",
              d);
  TORCH_CHECK(image.dim() == d + 1 && image.size(0) == 1,
              "preprocess_image: expected an image [1, ...S] with ", d, " spatial dims, got ",
              image.sizes());
  TORCH_CHECK(image.numel() > 0, "preprocess_image: empty image ", image.sizes());
  TORCH_CHECK(static_cast<int64_t>(spacing.size()) == d, "preprocess_image: expected ", d,
              " spacings, got ", spacing.size());
  for (double s : spacing)
    TORCH_CHECK(std::isfinite(s) && s > 0, "preprocess_image: spacings must be positive, got ", s);
  for (int64_t s : size)
    TORCH_CHECK(s > 0, "preprocess_image: target sizes must be positive, got ",
                at::IntArrayRef(size));
  TORCH_CHECK(0 <= low && low < high && high <= 100,
              "preprocess_image: expected 0 <= clip_low_pct < clip_high_pct <= 100, got ", low,
              ", ", high);
}

double foreground_fraction(const at::Tensor& normalised) {
  const auto f = foreground_per_slice(normalised, 0);
  return std::accumulate(f.begin(), f.end(), 0.0) / static_cast<double>(f.size());
}

struct FileSamples {
  std::vector<at::Tensor> samples;
  std::vector<std::string> sources;
  int64_t skipped = 0;
};

FileSamples load_file(const std::string& path, const DatasetOptions& o) {
  Image image = read_image(path);
  at::Tensor x = image.data;  // [1, 1, ...S]
  if (x.dim() < 4 || x.size(0) != 1 || x.size(1) != 1)
    throw std::runtime_error("dataset: '" + path + "': expected a scalar image, got tensor " +
                             shape_string(x.sizes()));
  x = x[0];  // [1, ...S]
  std::vector<int64_t> shape(x.sizes().begin() + 1, x.sizes().end());
  std::vector<double> spacing(image.geometry.spacing.rbegin(),
                              image.geometry.spacing.rend());  // tensor order
  if (spacing.size() != shape.size())
    throw std::runtime_error("dataset: '" + path + "': geometry does not match the image");
  if (shape.size() == 3) {  // a volume of one slice is a 2D image
    for (int64_t a = 0; a < 3; ++a) {
      if (shape[a] == 1) {
        x = x.select(a + 1, 0);
        shape.erase(shape.begin() + a);
        spacing.erase(spacing.begin() + a);
        break;
      }
    }
  }
  const auto d = static_cast<int64_t>(shape.size());
  FileSamples out;
  if (o.dims == 3 && d != 3)
    throw std::runtime_error("dataset: '" + path + "' is a " + std::to_string(d) + "D image (" +
                             shape_string(shape) + ") but the dataset is 3D");
  if (d == o.dims) {
    at::Tensor n = clip_normalise(x, o.clip_low_pct, o.clip_high_pct);
    if (foreground_fraction(n) < o.min_foreground) {
      out.skipped = 1;
      return out;
    }
    out.samples.push_back(fit_to_size(n, spacing, o.size, o.fit == "stretch"));
    out.sources.push_back(path);
    return out;
  }
  // dims == 2, a 3D volume: slices along slice_axis, with the volume's intensity scale.
  at::Tensor n = clip_normalise(x, o.clip_low_pct, o.clip_high_pct);
  std::vector<double> plane = spacing;
  plane.erase(plane.begin() + o.slice_axis);
  const std::vector<double> foreground = foreground_per_slice(n, o.slice_axis);
  for (int64_t k = 0; k < shape[o.slice_axis]; ++k) {
    at::Tensor s = n.select(o.slice_axis + 1, k);  // [1, a, b]
    if (foreground[k] < o.min_foreground) {
      ++out.skipped;
      continue;
    }
    out.samples.push_back(fit_to_size(s, plane, o.size, o.fit == "stretch"));
    out.sources.push_back(path + "#" + std::to_string(k));
  }
  return out;
}

void check_options(const DatasetOptions& o) {
  if (o.folders.empty()) throw std::runtime_error("dataset: no folders given");
  if (o.dims != 2 && o.dims != 3)
    throw std::runtime_error("dataset: dims must be 2 or 3, got " + std::to_string(o.dims));
  if (static_cast<int64_t>(o.size.size()) != o.dims)
    throw std::runtime_error("dataset: size must have " + std::to_string(o.dims) +
                             " entries, got " + std::to_string(o.size.size()));
  for (auto s : o.size)
    if (s <= 0)
      throw std::runtime_error("dataset: size entries must be positive, got " +
                               shape_string(o.size));
  if (o.slice_axis < 0 || o.slice_axis > 2)
    throw std::runtime_error("dataset: slice_axis must be 0, 1 or 2, got " +
                             std::to_string(o.slice_axis));
  if (!(0 <= o.clip_low_pct && o.clip_low_pct < o.clip_high_pct && o.clip_high_pct <= 100))
    throw std::runtime_error("dataset: expected 0 <= clip_low_pct < clip_high_pct <= 100");
  if (!(o.min_foreground >= 0 && o.min_foreground <= 1))
    throw std::runtime_error("dataset: min_foreground must lie in [0, 1]");
  if (o.include.empty()) throw std::runtime_error("dataset: no include patterns");
}

void check_augment(const AugmentOptions& a) {
  TORCH_CHECK(std::isfinite(a.rotation_deg) && a.rotation_deg >= 0,
              "augment: rotation_deg must be >= 0, got ", a.rotation_deg);
  TORCH_CHECK(std::isfinite(a.translation) && a.translation >= 0,
              "augment: translation must be >= 0, got ", a.translation);
  TORCH_CHECK(a.flip_prob >= 0 && a.flip_prob <= 1, "augment: flip_prob must lie in [0, 1], got ",
              a.flip_prob);
  TORCH_CHECK(a.crop_min > 0 && a.crop_min <= a.crop_max && std::isfinite(a.crop_max),
              "augment: expected 0 < crop_min <= crop_max, got ", a.crop_min, ", ", a.crop_max);
}

/// Sampling grid [N, ...S, d] (last dim in x = W first order) of the affine
/// maps theta [N, d, d + 1] (same order) with align_corners = true, computed
/// elementwise (not as a matrix product, whose rounding could depend on the
/// BLAS's threading): bit-identical on any thread.
at::Tensor affine_grid(const at::Tensor& theta, at::IntArrayRef spatial) {
  const int64_t d = static_cast<int64_t>(spatial.size());
  const int64_t n = theta.size(0);
  auto opts = theta.options();
  // coordinate c[k] of grid axis k (x = W first), shaped to broadcast over [N, ...S]
  std::vector<at::Tensor> c(d);
  for (int64_t k = 0; k < d; ++k) {
    const int64_t axis = d - 1 - k;  // tensor axis
    const int64_t len = spatial[axis];
    at::Tensor lin = len > 1 ? at::linspace(-1.0, 1.0, len, opts) : at::zeros({1}, opts);
    std::vector<int64_t> shape(d + 1, 1);
    shape[axis + 1] = len;
    c[k] = lin.view(shape);
  }
  std::vector<at::Tensor> out(d);
  std::vector<int64_t> tshape(d + 1, 1);
  tshape[0] = n;
  for (int64_t a = 0; a < d; ++a) {
    at::Tensor acc = theta.select(1, a).select(1, d).reshape(tshape).expand([&] {
      std::vector<int64_t> s{n};
      s.insert(s.end(), spatial.begin(), spatial.end());
      return s;
    }());
    for (int64_t k = 0; k < d; ++k)
      acc = acc + theta.select(1, a).select(1, k).reshape(tshape) * c[k];
    out[a] = acc;
  }
  return at::stack(out, -1);
}

}  // namespace
}  // namespace detail

double GridFit::to_model(int64_t axis, double x) const {
  const auto a = static_cast<size_t>(axis);
  return static_cast<double>(pad_before[a]) +
         (x + 0.5) * static_cast<double>(fitted[a]) / static_cast<double>(input_size[a]) - 0.5;
}

GridFit fit_grid(const std::vector<int64_t>& input_size, const std::vector<double>& spacing,
                 const std::vector<int64_t>& model_size, bool stretch) {
  const auto d = model_size.size();
  TORCH_CHECK(d == 2 || d == 3, "fit_grid: expected 2 or 3 model sizes, got ", d);
  TORCH_CHECK(input_size.size() == d && spacing.size() == d, "fit_grid: expected ", d,
              " input sizes and spacings, got ", input_size.size(), " and ", spacing.size());
  GridFit fit;
  fit.input_size = input_size;
  fit.model_size = model_size;
  double scale = 0;  // mm per model voxel
  for (size_t i = 0; i < d; ++i) {
    TORCH_CHECK(
        input_size[i] > 0 && model_size[i] > 0 && std::isfinite(spacing[i]) && spacing[i] > 0,
        "fit_grid: sizes and spacings must be positive");
    scale = std::max(scale, static_cast<double>(input_size[i]) * spacing[i] /
                                static_cast<double>(model_size[i]));
  }
  for (size_t i = 0; i < d; ++i) {
    const double extent = static_cast<double>(input_size[i]) * spacing[i];
    fit.fitted.push_back(stretch
                             ? model_size[i]
                             : std::clamp<int64_t>(std::llround(extent / scale), 1, model_size[i]));
    fit.pad_before.push_back((model_size[i] - fit.fitted.back()) / 2);
  }
  return fit;
}

torch::Tensor normalise_intensity(const torch::Tensor& image, double clip_low_pct,
                                  double clip_high_pct) {
  TORCH_CHECK(image.numel() > 0, "normalise_intensity: empty image");
  TORCH_CHECK(0 <= clip_low_pct && clip_low_pct < clip_high_pct && clip_high_pct <= 100,
              "normalise_intensity: expected 0 <= clip_low_pct < clip_high_pct <= 100");
  TORCH_CHECK(at::isfinite(image).all().item<bool>(),
              "normalise_intensity: the image holds NaN or Inf");
  return detail::clip_normalise(image, clip_low_pct, clip_high_pct);
}

torch::Tensor fit_image(const torch::Tensor& image, const GridFit& fit) {
  const auto d = static_cast<int64_t>(fit.model_size.size());
  TORCH_CHECK(
      image.dim() == d + 1 && image.size(0) == 1 &&
          std::equal(fit.input_size.begin(), fit.input_size.end(), image.sizes().begin() + 1),
      "fit_image: expected an image [1, ", at::IntArrayRef(fit.input_size), "], got ",
      image.sizes());
  return detail::fit_with(image.to(at::kFloat), fit);
}

torch::Tensor field_to_input(const torch::Tensor& field, const GridFit& fit) {
  const auto d = static_cast<int64_t>(fit.model_size.size());
  TORCH_CHECK(
      field.dim() == d + 2 && field.size(1) == d &&
          std::equal(fit.model_size.begin(), fit.model_size.end(), field.sizes().begin() + 2),
      "field_to_input: expected a field [N, ", d, ", ", at::IntArrayRef(fit.model_size), "], got ",
      field.sizes());
  const auto opts = field.options();
  // Normalised sampling coordinates (align_corners) of the input voxels, one
  // 1-D table per axis, broadcast into the grid (x = W first in its last dim).
  std::vector<at::Tensor> coords;
  for (int64_t i = 0; i < d; ++i) {
    const auto a = static_cast<size_t>(i);
    const double step = static_cast<double>(fit.fitted[a]) / static_cast<double>(fit.input_size[a]);
    at::Tensor x = at::arange(fit.input_size[a], opts.dtype(at::kDouble));
    at::Tensor m = (x + 0.5) * step + (static_cast<double>(fit.pad_before[a]) - 0.5);
    const double denom = std::max<double>(1.0, static_cast<double>(fit.model_size[a] - 1));
    coords.push_back((m * (2.0 / denom) - 1.0).to(opts.dtype()));
  }
  std::vector<at::Tensor> mesh = at::meshgrid(coords, "ij");
  std::vector<at::Tensor> reversed(mesh.rbegin(), mesh.rend());
  std::vector<int64_t> gshape{field.size(0)};
  for (auto s : fit.input_size) gshape.push_back(s);
  gshape.push_back(d);
  at::Tensor grid = at::stack(reversed, -1).unsqueeze(0).expand(gshape);
  at::Tensor sampled =
      at::grid_sampler(field, grid, /*interpolation=*/0, /*padding=*/1, /*align_corners=*/true);
  // Model voxels -> input voxels along each axis.
  std::vector<at::Tensor> channels;
  for (int64_t i = 0; i < d; ++i) {
    const auto a = static_cast<size_t>(i);
    channels.push_back(sampled.select(1, i) * (static_cast<double>(fit.input_size[a]) /
                                               static_cast<double>(fit.fitted[a])));
  }
  return at::stack(channels, 1).contiguous();
}

torch::Tensor preprocess_image(const torch::Tensor& image, const std::vector<double>& spacing,
                               const std::vector<int64_t>& size, double clip_low_pct,
                               double clip_high_pct, bool stretch) {
  detail::check_preprocess_args(image, spacing, size, clip_low_pct, clip_high_pct);
  TORCH_CHECK(at::isfinite(image).all().item<bool>(),
              "preprocess_image: the image holds NaN or Inf");
  return detail::fit_to_size(detail::clip_normalise(image, clip_low_pct, clip_high_pct), spacing,
                             size, stretch);
}

namespace {

using Rotation = std::array<std::array<double, 3>, 3>;

Rotation rotation_2d(double angle) {
  const double cs = std::cos(angle), sn = std::sin(angle);
  return {{{cs, -sn, 0}, {sn, cs, 0}, {0, 0, 1}}};
}

/// Rodrigues' formula: `angle` about the direction of `axis` (x if it is ~0).
Rotation rotation_3d(double angle, const double* axis) {
  double ax[3] = {axis[0], axis[1], axis[2]};
  const double norm = std::sqrt(ax[0] * ax[0] + ax[1] * ax[1] + ax[2] * ax[2]);
  if (norm < 1e-12) {
    ax[0] = 1, ax[1] = 0, ax[2] = 0;
  } else {
    for (double& a : ax) a /= norm;
  }
  const double cs = std::cos(angle), sn = std::sin(angle);
  const double kx[3][3] = {{0, -ax[2], ax[1]}, {ax[2], 0, -ax[0]}, {-ax[1], ax[0], 0}};
  Rotation rot{};
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) {
      double k2 = 0;
      for (int m = 0; m < 3; ++m) k2 += kx[a][m] * kx[m][b];
      rot[a][b] = (a == b ? 1.0 : 0.0) + sn * kx[a][b] + (1 - cs) * k2;
    }
  return rot;
}

}  // namespace

torch::Tensor augment_batch(const torch::Tensor& batch, const AugmentOptions& options,
                            at::Generator& gen) {
  TORCH_CHECK(batch.dim() == 4 || batch.dim() == 5,
              "augment_batch: expected [N, C, H, W] or [N, C, D, H, W], got ", batch.sizes());
  TORCH_CHECK(at::isFloatingType(batch.scalar_type()),
              "augment_batch: expected a floating batch, got ", batch.scalar_type());
  detail::check_augment(options);
  if (!options.enabled || batch.numel() == 0) return batch.clone();
  const int64_t n = batch.size(0);
  const int64_t d = batch.dim() - 2;
  at::IntArrayRef spatial = batch.sizes().slice(2);

  // Always the same draws, whatever the options: angle, d translations, d flips, crop; 3D: axis.
  const auto dbl = at::TensorOptions().dtype(at::kDouble);
  at::Tensor u = at::rand({n, 2 + 2 * d}, gen, dbl).contiguous();
  at::Tensor axis = d == 3 ? at::randn({n, 3}, gen, dbl).contiguous() : at::Tensor();
  const double* pu = u.data_ptr<double>();
  const double* pa = d == 3 ? axis.data_ptr<double>() : nullptr;

  const bool resample = options.rotation_deg != 0 || options.translation != 0 ||
                        options.crop_min != 1 || options.crop_max != 1;
  at::Tensor theta = at::zeros({n, d, d + 1}, dbl);  // grid order (x = W first)
  auto th = theta.accessor<double, 3>();
  std::vector<std::vector<int64_t>> flips(n);
  for (int64_t i = 0; i < n; ++i) {
    const double* r = pu + i * (2 + 2 * d);
    const double angle = (2 * r[0] - 1) * options.rotation_deg * detail::kPi / 180.0;
    const double crop = options.crop_min + r[1] * (options.crop_max - options.crop_min);
    for (int64_t k = 0; k < d; ++k)
      if (r[2 + d + k] < options.flip_prob) flips[i].push_back(2 + k);
    // Rotation in voxel units (tensor axis order), so that it is rigid on non-square grids.
    const Rotation rot = d == 2 ? rotation_2d(angle) : rotation_3d(angle, pa + 3 * i);
    // x_norm = crop * H^-1 R H y_norm + shift, H = diag((size - 1) / 2).
    for (int64_t a = 0; a < d; ++a) {
      const double ha = std::max<double>(1.0, static_cast<double>(spatial[a] - 1)) / 2;
      for (int64_t b = 0; b < d; ++b) {
        const double hb = std::max<double>(1.0, static_cast<double>(spatial[b] - 1)) / 2;
        th[i][d - 1 - a][d - 1 - b] = crop * rot[a][b] * hb / ha;
      }
      const double shift =
          (2 * r[2 + a] - 1) * options.translation * 2;  // image size = 2 in normalised units
      th[i][d - 1 - a][d] = shift;
    }
  }

  at::Tensor out;
  if (resample) {
    at::Tensor grid = detail::affine_grid(theta.to(batch.device(), batch.scalar_type()), spatial);
    out = at::grid_sampler(batch, grid, /*bilinear*/ 0, /*zeros*/ 0, /*align_corners=*/true);
  } else {
    out = batch.clone();
  }
  for (int64_t i = 0; i < n; ++i) {
    if (flips[i].empty()) continue;
    at::Tensor s = out.narrow(0, i, 1);
    s.copy_(at::flip(s, flips[i]));
  }
  return out;
}

namespace {

/// The files of every folder, each folder's subset, in order.
std::vector<std::string> dataset_files(const DatasetOptions& o) {
  std::vector<std::string> files;
  for (const auto& folder : o.folders) {
    const auto f = detail::subset_of(detail::scan_folder(folder, o), o.subset);
    if (f.empty())
      throw std::runtime_error("dataset: data.subset [" + std::to_string(o.subset[0]) + ", " +
                               std::to_string(o.subset[1]) + ") leaves no file of folder '" +
                               folder + "'");
    files.insert(files.end(), f.begin(), f.end());
  }
  return files;
}

/// Reads and preprocesses `files` on up to 8 threads (ITK readers are
/// independent per file); the results are in file order, so the samples do
/// not depend on the thread count. The first failing file's error is thrown,
/// naming it.
std::vector<detail::FileSamples> load_files(const std::vector<std::string>& files,
                                            const DatasetOptions& o, size_t nthreads) {
  std::vector<detail::FileSamples> results(files.size());
  std::vector<std::exception_ptr> errors(files.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    // With several loader threads, each runs its tensor operations serially
    // (a thread-local setting) rather than oversubscribing the cores.
    c10::ParallelGuard serial(nthreads > 1);
    for (size_t i = next++; i < files.size(); i = next++) {
      try {
        results[i] = detail::load_file(files[i], o);
      } catch (...) {
        errors[i] = std::current_exception();
        next = files.size();  // stop early
      }
    }
  };
  std::vector<std::thread> threads;
  for (size_t t = 1; t < nthreads; ++t) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < files.size(); ++i) {
    if (!errors[i]) continue;
    try {
      std::rethrow_exception(errors[i]);
    } catch (const std::exception& e) {
      const std::string what = e.what();
      if (what.find(files[i]) != std::string::npos) throw std::runtime_error(what);
      throw std::runtime_error("dataset: '" + files[i] + "': " + what);
    }
  }
  return results;
}

}  // namespace

ImageDataset::ImageDataset(const DatasetOptions& options) : options_(options) {
  const auto start = std::chrono::steady_clock::now();
  detail::check_options(options_);
  const std::vector<std::string> files = dataset_files(options_);
  num_files_ = static_cast<int64_t>(files.size());
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t nthreads = std::min<size_t>({files.size(), hw, 8});
  auto results = load_files(files, options_, nthreads);

  int64_t skipped = 0;
  for (auto& r : results) {
    skipped += r.skipped;
    for (size_t k = 0; k < r.samples.size(); ++k) {
      // The cache is the samples as loaded (no stacked copy: loading never
      // holds the dataset twice); each owns exactly its own voxels.
      at::Tensor t = std::move(r.samples[k]);
      if (!t.is_contiguous() || t.storage().nbytes() != t.nbytes())
        t = t.clone(at::MemoryFormat::Contiguous);
      samples_.push_back(std::move(t));
      sources_.push_back(std::move(r.sources[k]));
    }
  }
  results.clear();
  if (samples_.empty())
    throw std::runtime_error(
        "dataset: no usable samples in " + detail::join(options_.folders) + " (" +
        std::to_string(skipped) + " " + (options_.dims == 2 ? "slices" : "volumes") +
        " below min_foreground " + std::to_string(options_.min_foreground) + ")");
#if defined(__GLIBC__)
  // What the loader threads read and resampled is free now, but glibc keeps it
  // in their arenas for good when drdm::keep_freed_memory_for_reuse() is in
  // effect (as in drdm_train): give it back to the system.
  malloc_trim(0);
#endif

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::ostringstream msg;
  msg << "dataset: " << num_files_ << " files -> " << samples_.size() << " " << options_.dims
      << "D samples of " << detail::shape_string(options_.size) << " (" << skipped
      << " nearly empty skipped) from " << detail::join(options_.folders) << " in " << std::fixed
      << std::setprecision(2) << seconds << " s (" << nthreads << " threads)";
  log::info(msg.str());
}

int64_t ImageDataset::size() const { return static_cast<int64_t>(samples_.size()); }

const torch::Tensor& ImageDataset::sample(int64_t i) const {
  TORCH_CHECK(i >= 0 && i < size(), "ImageDataset::sample: index ", i, " out of range [0, ", size(),
              ")");
  return samples_[i];
}

std::string ImageDataset::source(int64_t i) const {
  TORCH_CHECK(i >= 0 && i < size(), "ImageDataset::source: index ", i, " out of range [0, ", size(),
              ")");
  return sources_[i];
}

int64_t ImageDataset::dims() const { return options_.dims; }

int64_t ImageDataset::num_files() const { return num_files_; }

const DatasetOptions& ImageDataset::options() const { return options_; }

torch::Tensor ImageDataset::training_batch(int64_t batch, uint64_t seed, int64_t step,
                                           const AugmentOptions& augment) const {
  TORCH_CHECK(batch > 0, "training_batch: batch must be positive, got ", batch);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(detail::step_seed(seed, step));
  at::Tensor idx = at::randint(size(), {batch}, gen, at::TensorOptions().dtype(at::kLong));
  const auto* ids = idx.data_ptr<int64_t>();
  std::vector<at::Tensor> picked;
  for (int64_t b = 0; b < batch; ++b) picked.push_back(samples_[static_cast<size_t>(ids[b])]);
  at::Tensor out = at::stack(picked);
  if (augment.enabled) out = augment_batch(out, augment, gen);
  return out.contiguous();
}

struct BatchPrefetcher::Impl {
  const ImageDataset& dataset;
  int64_t batch;
  uint64_t seed;
  AugmentOptions augment;
  int64_t depth;
  std::mutex mutex;
  std::condition_variable cv;
  int64_t next_produce;
  int64_t next_consume;
  bool stop = false;
  std::map<int64_t, std::pair<at::Tensor, std::exception_ptr>> ready;
  std::vector<std::thread> threads;

  Impl(const ImageDataset& d, int64_t b, uint64_t s, int64_t first, AugmentOptions a, int64_t dp)
      : dataset(d),
        batch(b),
        seed(s),
        augment(std::move(a)),
        depth(dp),
        next_produce(first),
        next_consume(first) {}

  void work() {
    // Workers run their tensor operations serially (thread-local; results are
    // the same either way). A worker with its own intra-op team would compete
    // with the training step's team for the same cores: with 2 threads on 2
    // cores that cost 2D training 1.6x (reference/cpu-profile.md); loading a
    // batch takes well under a millisecond on one thread.
    c10::ParallelGuard serial(true);
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      cv.wait(lock, [&] { return stop || next_produce - next_consume < depth; });
      if (stop) return;
      const int64_t step = next_produce++;
      lock.unlock();
      at::Tensor t;
      std::exception_ptr error;
      try {
        t = dataset.training_batch(batch, seed, step, augment);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      ready.emplace(step, std::make_pair(std::move(t), error));
      cv.notify_all();
    }
  }
};

BatchPrefetcher::BatchPrefetcher(const ImageDataset& dataset, int64_t batch, uint64_t seed,
                                 int64_t first_step, AugmentOptions augment, int64_t depth,
                                 int64_t workers) {
  TORCH_CHECK(batch > 0, "BatchPrefetcher: batch must be positive, got ", batch);
  TORCH_CHECK(depth > 0, "BatchPrefetcher: depth must be positive, got ", depth);
  TORCH_CHECK(workers > 0, "BatchPrefetcher: workers must be positive, got ", workers);
  detail::check_augment(augment);
  impl_ = std::make_unique<Impl>(dataset, batch, seed, first_step, std::move(augment), depth);
  for (int64_t i = 0; i < workers; ++i) impl_->threads.emplace_back([this] { impl_->work(); });
}

BatchPrefetcher::~BatchPrefetcher() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  for (auto& t : impl_->threads) t.join();
}

torch::Tensor BatchPrefetcher::next() {
  std::unique_lock<std::mutex> lock(impl_->mutex);
  const int64_t step = impl_->next_consume;
  impl_->cv.wait(lock, [&] { return impl_->ready.count(step) > 0; });
  auto node = impl_->ready.extract(step);
  ++impl_->next_consume;
  lock.unlock();
  impl_->cv.notify_all();
  if (node.mapped().second) std::rethrow_exception(node.mapped().second);
  return std::move(node.mapped().first);
}

int64_t BatchPrefetcher::next_step() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->next_consume;
}

}  // namespace drdm
