// Private: checks that two files lie on the same voxel grid.
#pragma once

#include "drdm/image_io.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace drdm::detail {

// Same grid up to float noise in the header: fields are only meaningful on
// the grid they were written for. `grid` names the grid in the message.
inline void check_same_grid(const Geometry& image, const Geometry& field, const std::string& image_path,
                            const std::string& field_path, const std::string& grid = "grid") {
  auto where = "'" + field_path + "' does not lie on the " + grid + " of '" + image_path + "': ";
  if (image.size != field.size) {
    std::string a, b;
    for (auto s : image.size) a += (a.empty() ? "" : "x") + std::to_string(s);
    for (auto s : field.size) b += (b.empty() ? "" : "x") + std::to_string(s);
    throw std::runtime_error(where + "size " + b + " vs " + a);
  }
  auto close = [](const std::vector<double>& x, const std::vector<double>& y, double tol) {
    for (size_t i = 0; i < x.size(); ++i)
      if (std::abs(x[i] - y[i]) > tol * std::max(1.0, std::abs(x[i]))) return false;
    return true;
  };
  if (!close(image.spacing, field.spacing, 1e-4)) throw std::runtime_error(where + "spacing differs");
  if (!close(image.origin, field.origin, 1e-4)) throw std::runtime_error(where + "origin differs");
  if (!close(image.direction, field.direction, 1e-4))
    throw std::runtime_error(where + "direction differs");
}

// A displacement field for an image lies on the image's grid or, a 2D field
// for a single-slice volume, on the volume's in-plane grid
// (Geometry::squeeze_single_slice), as drdm_deform writes it.
inline void check_field_grid(const Geometry& image, const Geometry& field, const std::string& image_path,
                             const std::string& field_path) {
  if (field.dimension() == 2 && image.single_slice_axis() >= 0)
    return check_same_grid(image.squeeze_single_slice(), field, image_path, field_path, "in-plane grid");
  check_same_grid(image, field, image_path, field_path);
}

}  // namespace drdm::detail
