/// @file Image and displacement-field IO with geometry (NIfTI, MetaImage, NRRD, PNG).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace drdm {

/// Pixel (component) types an image file can hold.
enum class PixelType {
  kUInt8,
  kInt8,
  kUInt16,
  kInt16,
  kUInt32,
  kInt32,
  kUInt64,
  kInt64,
  kFloat32,
  kFloat64
};

/// "uint8", "int16", "float32", ...
std::string to_string(PixelType type);

/// Where an image lies in physical space, as ITK defines it (LPS, mm).
/// All vectors are in ITK's axis order (x, y[, z]): ITK axis k is tensor
/// spatial axis d - 1 - k (x = W is the last tensor axis).
struct Geometry {
  std::vector<int64_t> size;      ///< voxels per ITK axis
  std::vector<double> spacing;    ///< mm per voxel along each ITK axis
  std::vector<double> origin;     ///< physical position (mm) of voxel 0
  std::vector<double> direction;  ///< d x d row-major; column k is the direction of ITK axis k
  /// NIfTI qform_code and sform_code of the file this grid was read from (-1: not
  /// read from a NIfTI file). The NIfTI writers keep them when at least one is > 0
  /// (ITK 5.2 alone always writes 1 and 1; see docs/conventions.md).
  int qform_code = -1;
  int sform_code = -1;

  int64_t dimension() const { return static_cast<int64_t>(size.size()); }
  /// Spatial sizes in tensor order (D, H, W) / (H, W).
  std::vector<int64_t> tensor_size() const { return {size.rbegin(), size.rend()}; }
  /// Unit spacing, zero origin, identity direction for a grid given in tensor order.
  static Geometry identity(const std::vector<int64_t>& tensor_size);
  /// A single-slice volume is a 3D grid with exactly one axis of size 1 (a
  /// 256x256x1 radiograph). Returns that axis in tensor order (0 = D, as
  /// tensor_size(); ITK axis 2 - it), or -1 for any other grid.
  int64_t single_slice_axis() const;
  /// The 2D in-plane grid of a single-slice volume: the size-1 axis dropped
  /// from size, spacing and origin, and its row and column from direction
  /// (ITK's DIRECTIONCOLLAPSETOSUBMATRIX, as SimpleITK's image[:, :, 0]).
  /// Any other grid is returned unchanged.
  Geometry squeeze_single_slice() const;
};

/// A tensor with its geometry and the pixel type it was stored with.
struct Image {
  torch::Tensor data;  ///< [1, C, ...S] (see the reader for C and dtype)
  Geometry geometry;
  PixelType pixel_type = PixelType::kFloat32;
};

/// What a file holds, read from its header only.
struct ImageInfo {
  Geometry geometry;
  PixelType pixel_type = PixelType::kFloat32;
  int64_t components = 1;
};

/// Every spatial axis of an image needs at least 2 voxels (warping normalises by
/// size - 1, finite differences need two points); the one exception is the
/// single-slice volume (Geometry::single_slice_axis), 3D with exactly one axis of
/// 1 voxel. Throws std::runtime_error naming `path` and the size for any other grid.
void check_grid_size(const Geometry& geometry, const std::string& path);

/// Reads the header of an image file. Throws std::runtime_error naming the
/// file if it is missing or unreadable, is not 2D/3D, or its grid is
/// degenerate (check_grid_size). Header only: the data is not checked.
ImageInfo read_image_info(const std::string& path);

/// Reads a scalar 2D or 3D image of any integer or float pixel type as
/// float32 [1, 1, ...S]; RGB/RGBA pixels (colour or palette PNGs) are read as
/// their luminance. Throws (naming the file) for missing, truncated or
/// unreadable files, other dimensions, degenerate grids (check_grid_size),
/// vector images, and NaN/Inf values. Compressed data (.nii.gz, compressed
/// MetaImage) is inflated to its end and its gzip/zlib checksums verified.
Image read_image(const std::string& path);

/// Reads a label map as int64 [1, 1, ...S]. Throws if a value is not an integer.
Image read_labels(const std::string& path);

/// Writes a scalar image [1, 1, ...S] (or [...S]) with `geometry` as `type`.
/// Values are rounded and clamped to the type's range for integer types.
/// PNG holds only uint8/uint16. The file is written atomically.
void write_image(const std::string& path, const torch::Tensor& image, const Geometry& geometry,
                 PixelType type = PixelType::kFloat32);

/// Writes an integer class map [1, 1, ...S] with the smallest unsigned or
/// signed integer type (>= 8 bit) that holds its values. Atomic.
void write_labels(const std::string& path, const torch::Tensor& labels, const Geometry& geometry);

/// Writes a displacement field [1, d, ...S] given in voxels of its grid (the
/// library's convention) as an ITK vector image of physical displacements in
/// mm (LPS): the form ITK's DisplacementFieldTransform, SimpleITK and ANTs
/// apply. Atomic.
void write_field(const std::string& path, const torch::Tensor& field, const Geometry& geometry);

/// A field [N, d, ...S] on `geometry` as the programs write it: on a
/// single-slice volume, the 2D field [N, 2, ...S2] on
/// geometry.squeeze_single_slice() (the size-1 axis and the displacement
/// along it dropped; warping ignores that displacement anyway); on any other
/// grid, the field and geometry unchanged.
Image squeeze_single_slice_field(const torch::Tensor& field, const Geometry& geometry);

/// Reads an ITK displacement field (vector image, physical mm) into a voxel
/// field float32 [1, d, ...S]. Throws (naming the file) unless the file holds
/// d-component vectors on a d-dimensional grid, d = 2 or 3, all finite, on a
/// grid check_grid_size accepts. NIfTI fields stored as 5D [x, y, z, 1, d] with
/// intent DISPVECT (1006; ANTs, nibabel) are read as well as ITK's VECTOR (1007);
/// a 2D field there is [x, y, 1, 1, 2].
Image read_field(const std::string& path);

/// Writes an RGB picture uint8 [3, H, W] as a PNG (atomically): previews.
void write_rgb_png(const std::string& path, const torch::Tensor& rgb);

}  // namespace drdm
