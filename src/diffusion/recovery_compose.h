// Private: the composition of one recovery step of generate_fields, apart so
// that the tests can check it.
#pragma once

#include "drdm/core/spatial.h"

namespace drdm::detail {

/// phi <- compose(psi_hat, phi), i.e. psi_hat(x) + phi(x + psi_hat(x)).
/// libdrdm's compose reads phi with border padding outside the grid. The
/// authors' generation (DRDM_augment.py with config_cmr.yaml, padding_mode
/// "zeros") reads it as zero there, which `zero_padding` selects for models
/// of sampler.process = "authors": with border padding their own code's
/// fields grow (max magnitude up to 1.5x; docs/results/table1_cardiac2d_paper).
inline torch::Tensor recovery_compose(const torch::Tensor& psi_hat, const torch::Tensor& phi,
                                      bool zero_padding) {
  if (!zero_padding) return compose(psi_hat, phi);
  return psi_hat + warp(phi, psi_hat, Interpolation::kLinear, Padding::kZeros);
}

}  // namespace drdm::detail
