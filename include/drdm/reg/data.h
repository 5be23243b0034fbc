/// @file Registration data (src/reg/data.cpp): volumes on the network grid,
/// the train/test split and the seeded test pairs.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "drdm/io/dataset.h"
#include "drdm/io/image_io.h"
#include "drdm/reg/config.h"
#include "drdm/seg/data.h"

namespace drdm::reg {

/// One image prepared for the network, with what maps results back to its own grid.
struct RegVolume {
  std::string name, image_path, label_path;
  torch::Tensor image;     ///< float [1, 1, ...size] in [0, 1] on the network grid
  torch::Tensor raw;       ///< float [1, 1, ...S] the file's intensities on its own grid
  torch::Tensor labels;    ///< int64 [1, 1, ...S] on its own grid (undefined without labels)
  GridFit fit;             ///< network grid <-> own grid
  Geometry geometry;       ///< own grid (a single-slice volume squeezed to 2D for 2D networks)
  Geometry file_geometry;  ///< as stored in the file
  PixelType pixel_type = PixelType::kFloat32;  ///< the image file's pixel type
};

/// Reads one image (and its labels when label_path is not empty) for a
/// network of data.size. A 2D network takes 2D images and single-slice
/// volumes. Wrong dimensions, or labels on another grid, are errors naming the files.
RegVolume load_volume(const std::string& image_path, const std::string& label_path,
                      const RegConfig::Data& data);

/// The cases of data (sorted by name, data.include applied) split into the
/// first train_fraction and the rest.
struct RegSplit {
  std::vector<seg::LabelledCase> train, validation, test;  ///< validation: data.validation_images
};
RegSplit split_cases(const RegConfig::Data& data);

/// The fixed, seeded list of ordered test pairs (moving, fixed), indices into test, moving !=
/// fixed.
std::vector<std::pair<int64_t, int64_t>> test_pairs(int64_t test_cases, int64_t count,
                                                    uint64_t seed);

}  // namespace drdm::reg
