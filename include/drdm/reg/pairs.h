/// @file Synthetic registration pairs with known fields: DRDM (paper Alg. 4)
/// and random multi-resolution B-splines (MRBS).
///
/// Every pair satisfies warp(moving, target) ~ fixed: `target` is the
/// displacement a registration network is asked to output for (moving, fixed).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "drdm/diffusion/generate.h"
#include "drdm/reg/mrbs.h"

namespace drdm::reg {

struct SyntheticPairs {
  torch::Tensor moving, fixed;  ///< [N, C, ...S]
  torch::Tensor target;         ///< [N, d, ...S] in voxels: warp(moving, target) ~ fixed
};

/// MRBS pairs: moving = the image, target = an MRBS field (det J > 0),
/// fixed = warp(image, target). images [N, C, ...S]; fields drawn with `gen`
/// (on the images' device).
SyntheticPairs mrbs_pairs(const torch::Tensor& images, at::Generator& gen,
                          const MrbsOptions& options);

/// DRDM pairs (Alg. 4, Deformer::pairs): moving = phi_aug(image), fixed =
/// compose(phi_syn, phi_aug)(image) = warp(moving, phi_syn), target = phi_syn.
/// levels[i] = {T'_aug, T'_syn} of sample i (one entry: all samples).
SyntheticPairs drdm_pairs(const Deformer& deformer, const torch::Tensor& images,
                          const std::vector<std::vector<int64_t>>& levels,
                          const std::vector<uint64_t>& seeds);

}  // namespace drdm::reg
