// Synthetic registration pairs: MRBS and DRDM (Alg. 4).
#include "drdm/reg/pairs.h"

#include <ATen/ATen.h>

#include <stdexcept>

#include "drdm/core/spatial.h"

namespace drdm::reg {

SyntheticPairs mrbs_pairs(const torch::Tensor& images, at::Generator& gen,
                          const MrbsOptions& options) {
  if (images.dim() != 4 && images.dim() != 5)
    throw std::invalid_argument(
        "mrbs_pairs: expected images [N, C, ...S] with 2 or 3 spatial axes");
  const auto field = mrbs_field(images.sizes().slice(2), images.size(0), gen, options,
                                images.options().dtype(at::kFloat));
  return {images, warp(images, field), field};
}

SyntheticPairs drdm_pairs(const Deformer& deformer, const torch::Tensor& images,
                          const std::vector<std::vector<int64_t>>& levels,
                          const std::vector<uint64_t>& seeds) {
  const auto n = static_cast<size_t>(images.size(0));
  if (levels.empty() || (levels.size() != 1 && levels.size() != n))
    throw std::invalid_argument("drdm_pairs: give one {aug, syn} level pair, or one per image");
  std::vector<int64_t> aug, syn;
  for (size_t i = 0; i < n; ++i) {
    const auto& l = levels[levels.size() == 1 ? 0 : i];
    if (l.size() != 2)
      throw std::invalid_argument("drdm_pairs: a level entry must be {T'_aug, T'_syn}");
    aug.push_back(l[0]), syn.push_back(l[1]);
  }
  auto p = deformer.pairs(images, {}, aug, syn, seeds);
  return {p.moving, p.fixed, p.field};
}

}  // namespace drdm::reg
