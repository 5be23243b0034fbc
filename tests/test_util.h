// Helpers shared by the GoogleTest suites.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace drdm::test {

/// [1, 1, ...size] float image whose values are the linear voxel index:
/// strictly increasing and asymmetric, so any axis mix-up shows.
inline at::Tensor ramp_image(at::IntArrayRef size) {
  std::vector<int64_t> shape{1, 1};
  shape.insert(shape.end(), size.begin(), size.end());
  int64_t n = 1;
  for (auto s : size) n *= s;
  return at::arange(n, at::kFloat).view(shape);
}

}  // namespace drdm::test
