// Private: checks that two files lie on the same voxel grid.
#pragma once

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "drdm/io/image_io.h"

namespace drdm::detail {

// "1.4x1.3" for a size, spacing or origin; the direction as its entries.
template <typename T>
std::string grid_values_text(const std::vector<T>& v) {
  std::ostringstream out;
  for (size_t i = 0; i < v.size(); ++i) out << (i ? "x" : "") << v[i];
  return out.str();
}

// How grid `b` differs from grid `a` (size, then spacing, origin and
// direction, each up to float noise in the header: 1e-4 relative), as
// "spacing 2x2 vs 1.4x1.3"; empty when they are the same grid.
inline std::string grid_difference(const Geometry& a, const Geometry& b) {
  if (a.size != b.size)
    return "size " + grid_values_text(b.size) + " vs " + grid_values_text(a.size);
  const auto close = [](const std::vector<double>& x, const std::vector<double>& y) {
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i)
      if (std::abs(x[i] - y[i]) > 1e-4 * std::max(1.0, std::abs(x[i]))) return false;
    return true;
  };
  const auto differs = [](const char* what, const std::vector<double>& x,
                          const std::vector<double>& y) {
    return std::string(what) + " " + grid_values_text(y) + " vs " + grid_values_text(x);
  };
  if (!close(a.spacing, b.spacing)) return differs("spacing", a.spacing, b.spacing);
  if (!close(a.origin, b.origin)) return differs("origin", a.origin, b.origin);
  if (!close(a.direction, b.direction)) return differs("direction", a.direction, b.direction);
  return "";
}

// Same grid up to float noise in the header: fields are only meaningful on
// the grid they were written for. `grid` names the grid in the message.
inline void check_same_grid(const Geometry& image, const Geometry& field,
                            const std::string& image_path, const std::string& field_path,
                            const std::string& grid = "grid") {
  const auto difference = grid_difference(image, field);
  if (!difference.empty())
    throw std::runtime_error("'" + field_path + "' does not lie on the " + grid + " of '" +
                             image_path + "': " + difference);
}

// A displacement field for an image lies on the image's grid or, a 2D field
// for a single-slice volume, on the volume's in-plane grid
// (Geometry::squeeze_single_slice), as drdm_deform writes it.
inline void check_field_grid(const Geometry& image, const Geometry& field,
                             const std::string& image_path, const std::string& field_path) {
  if (field.dimension() == 2 && image.single_slice_axis() >= 0)
    return check_same_grid(image.squeeze_single_slice(), field, image_path, field_path,
                           "in-plane grid");
  check_same_grid(image, field, image_path, field_path);
}

}  // namespace drdm::detail
