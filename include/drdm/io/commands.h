/// @file The library entry points behind the command-line programs.
#pragma once

#include <string>
#include <vector>

#include "drdm/core/random_field.h"
#include "drdm/core/spatial.h"

namespace drdm {

/// What `drdm_warp` does.
struct WarpFileOptions {
  std::string input;    ///< image or label map (NIfTI, MetaImage, NRRD, PNG)
  std::string field;    ///< displacement field written by write_field (physical mm)
  std::string output;   ///< written atomically
  bool labels = false;  ///< treat the input as a class map (never invents classes)
  Interpolation interpolation = Interpolation::kLinear;
  LabelInterpolation label_interpolation = LabelInterpolation::kNearest;
  Padding padding = Padding::kZeros;
  /// Output pixel type: "auto" (images: float32, or the input's type for
  /// PNG; labels: the smallest integer type) or a name such as "uint8".
  std::string pixel_type = "auto";
  /// Optional PNG: input | warped | warped with deformed grid | magnitude
  /// (images only; 3D shows the three central planes).
  std::string preview;
};

/// Reads the input and the field, checks that both lie on the same grid
/// (size, spacing, origin, direction), warps, writes. Throws naming the file.
void warp_file(const WarpFileOptions& options);

/// What `drdm_field_stats` does.
struct FieldStatsFileOptions {
  std::string field;         ///< displacement field file
  std::string json_output;   ///< optional: also write the JSON here (atomic)
  std::string jacobian_map;  ///< optional: write det(I + grad u) as a float image
};

/// Returns the statistics as pretty-printed JSON: max/mean magnitude in % of
/// the image size, folding ratio (|J| <= 0 fraction), min/max Jacobian, and
/// the grid it was computed on.
std::string field_stats_file(const FieldStatsFileOptions& options);

/// What `drdm_random_field` does.
struct RandomFieldFileOptions {
  std::string reference;  ///< image whose grid (size, spacing, origin, direction) the field gets
  std::string output;     ///< displacement field file (physical mm), written atomically
  RandomFieldOptions field;
  uint64_t seed = 0;
};

/// Writes random_smooth_field on the reference grid; returns its statistics
/// as JSON (see field_stats_file).
std::string random_field_file(const RandomFieldFileOptions& options);

/// Checks, before any work, that the file `output` can be written (its folder
/// exists and is writable, it is no folder) and is none of `inputs`: the
/// same file by device and inode, so also through `./`, a symlink or a hard
/// link. `option` (e.g. "--json") names it in the message; an empty
/// `output` or input is skipped. Throws std::invalid_argument naming both.
void check_output_file(const std::string& output, const std::vector<std::string>& inputs,
                       const std::string& option = "");

}  // namespace drdm
