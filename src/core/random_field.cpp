#include "drdm/core/random_field.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "drdm/core/spatial.h"

namespace drdm {

torch::Tensor random_smooth_field(at::IntArrayRef size, int64_t batch, uint64_t seed,
                                  const RandomFieldOptions& o,
                                  const torch::TensorOptions& tensor_options) {
  const auto d = static_cast<int64_t>(size.size());
  TORCH_CHECK(d == 2 || d == 3, "random_smooth_field: expected 2 or 3 spatial sizes, got ", size);
  for (auto s : size)
    TORCH_CHECK(s > 0, "random_smooth_field: expected positive sizes, got ", size);
  TORCH_CHECK(batch > 0, "random_smooth_field: expected batch > 0, got ", batch);
  TORCH_CHECK(o.amplitude >= 0, "random_smooth_field: amplitude must be >= 0, got ", o.amplitude);
  TORCH_CHECK(o.control >= 2, "random_smooth_field: control must be >= 2, got ", o.control);
  TORCH_CHECK(o.levels >= 1 && o.levels <= 8, "random_smooth_field: levels must be in [1, 8], got ",
              o.levels);
  TORCH_CHECK(o.squarings >= 0 && o.squarings <= 20,
              "random_smooth_field: squarings must be in [0, 20], got ", o.squarings);
  const auto opts =
      tensor_options.dtype_opt().has_value() ? tensor_options : tensor_options.dtype(at::kFloat);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<int64_t> full{batch, d};
  full.insert(full.end(), size.begin(), size.end());
  auto v = at::zeros(full, opts);
  double weight = 1.0;
  for (int64_t level = 0; level < o.levels; ++level, weight *= 0.5) {
    std::vector<int64_t> coarse{batch, d};
    const int64_t c = o.control << level;
    for (auto s : size) coarse.push_back(std::min<int64_t>(c, std::max<int64_t>(s, 2)));
    auto noise = at::randn(coarse, gen, at::TensorOptions().dtype(at::kFloat)).to(opts);
    auto up = d == 2 ? at::upsample_bilinear2d(noise, size, /*align_corners=*/true)
                     : at::upsample_trilinear3d(noise, size, /*align_corners=*/true);
    v.add_(up, weight);
  }
  // Component i scaled by the length of axis i relative to the longest axis:
  // every axis deforms by the same fraction of the field of view (a 10-slice
  // cardiac slab is not pushed by half its thickness), size-1 axes not at all.
  const int64_t longest = *std::max_element(size.begin(), size.end());
  std::vector<double> axis_scale;
  for (auto s : size)
    axis_scale.push_back(longest > 1 ? static_cast<double>(s - 1) / (longest - 1) : 0.0);
  std::vector<int64_t> cshape(full.size(), 1);
  cshape[1] = d;
  v = v * at::tensor(axis_scale, at::kDouble).to(opts).view(cshape);
  // Then scale so the largest vector of each sample has length `amplitude`.
  auto peak = v.pow(2).sum(1).sqrt().flatten(1).amax(1).clamp_min(1e-12);
  std::vector<int64_t> bshape(full.size(), 1);
  bshape[0] = batch;
  v = v * (o.amplitude / peak).view(bshape);
  return o.squarings > 0 ? integrate_scaling_squaring(v, o.squarings) : v;
}

}  // namespace drdm
