/// @file Labelled images for segmentation: folders of image / label-map
/// pairs, 2D slices at a network's size, and the way back to each image's grid.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/io/dataset.h"
#include "drdm/io/image_io.h"

namespace drdm::seg {

/// One labelled image: images/NAME and labels/NAME.
struct LabelledCase {
  std::string name;  ///< the file name without extension ("patient012_frame01")
  std::string image_path, label_path;
};

/// The image files of images_dir (NIfTI, MetaImage, NRRD, PNG), sorted by
/// name, each paired with the file of the same name in labels_dir. A missing
/// label file is an error naming it; an empty folder is an error.
std::vector<LabelledCase> find_cases(const std::string& images_dir, const std::string& labels_dir);

/// The first run of digits in a case name as a number ("patient012_frame01"
/// -> 12), or -1 when there is none.
int64_t case_number(const std::string& name);

/// How images become network inputs.
struct SliceOptions {
  std::vector<int64_t> size = {128, 128};           ///< network grid (H, W)
  double clip_low_pct = 0.5, clip_high_pct = 99.5;  ///< per-volume intensity clipping, then [0, 1]
};

/// How a grid's voxel axes become the canonical orientation that every image
/// is segmented in, whatever order and sign its axes are stored in: ITK axis
/// k runs along the physical axis its direction column is closest to, with the
/// sign of NIfTI's RAS storage (ITK directions -x, -y, +z), the orientation of
/// ACDC, JSRT and the Decathlon volumes as stored. In tensor order.
struct Reorientation {
  std::vector<int64_t> permutation;  ///< canonical tensor axis i = stored axis permutation[i]
  std::vector<int64_t> flipped;      ///< stored tensor axes reversed (before the permutation)
  std::vector<double> spacing;       ///< the canonical grid's spacing, ITK order
  bool identity() const;
};
Reorientation canonical_orientation(const Geometry& geometry);
/// [N, C, ...S] on the stored grid -> the canonical grid, and back.
torch::Tensor to_canonical(const torch::Tensor& x, const Reorientation& r);
torch::Tensor from_canonical(const torch::Tensor& x, const Reorientation& r);

/// An image volume brought to the canonical orientation, cut into 2D slices
/// along tensor axis 0 (a 2D image is one slice), each fitted into the
/// network grid keeping the physical aspect ratio (drdm::fit_grid):
/// intensities linearly, labels by nearest neighbour.
struct PreparedVolume {
  torch::Tensor slices;       ///< float [S, 1, H, W] in [0, 1]
  torch::Tensor labels;       ///< int64 [S, 1, H, W] (undefined without labels)
  GridFit fit;                ///< in-plane fit of each slice
  Geometry geometry;          ///< the image's own grid
  Reorientation orientation;  ///< from the image's grid to the canonical one
  int64_t dims = 3;           ///< the image's dimension (2: [1, 1, H, W] images)
};

/// Reads and prepares one image (and its labels when label_path is not empty).
/// Labels on another grid than the image are an error naming both files.
PreparedVolume prepare_volume(const std::string& image_path, const std::string& label_path,
                              const SliceOptions& options);

/// Per-slice class scores [S, C, H, W] on the network grid -> a class map on
/// the image's own grid, int64 [1, 1, ...S] (the fit undone with linear
/// interpolation of the scores, then argmax).
torch::Tensor labels_on_image_grid(const torch::Tensor& scores, const PreparedVolume& volume);

/// Slices of many cases, stacked.
struct SliceSet {
  torch::Tensor images;          ///< float [M, 1, H, W]
  torch::Tensor labels;          ///< int64 [M, 1, H, W]
  std::vector<int64_t> case_of;  ///< per slice, its index in `cases`
  std::vector<LabelledCase> cases;
};

/// prepare_volume for every case, its slices stacked (slices without any
/// labelled voxel are kept: the network must learn to leave them empty).
SliceSet load_slices(const std::vector<LabelledCase>& cases, const SliceOptions& options);

}  // namespace drdm::seg
