// Links against an installed libdrdm and checks one convention end to end.
#include <ATen/ATen.h>
#include <drdm/core/spatial.h>

#include <iostream>

int main() {
  auto image = at::arange(12, at::kFloat).view({1, 1, 3, 4});
  auto field = at::zeros({1, 2, 3, 4});
  field.select(1, 1).fill_(1.0);  // one voxel along W
  auto out = drdm::warp(image, field);
  const float got = out[0][0][1][2].item<float>();
  if (got != image[0][0][1][3].item<float>()) {
    std::cerr << "consumer: unexpected warp result " << got << "\n";
    return 1;
  }
  std::cout << "consumer: find_package(drdm) + link OK\n";
  return 0;
}
