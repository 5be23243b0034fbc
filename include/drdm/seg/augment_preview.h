/// @file Pictures of augmentations on real labelled slices
/// (src/seg/augment_preview.cpp): what each BigAug transform does over its
/// documented range, and full BigAug samples, with their label maps.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

#include "drdm/seg/bigaug.h"
#include "drdm/seg/data.h"

namespace drdm::seg {

/// RGB uint8 [3, H, W]: a [0, 1] grey slice [H, W] (clamped) with labels 1, 2,
/// 3 blended in red, green and blue.
torch::Tensor label_overlay(const torch::Tensor& image, const torch::Tensor& labels);

/// One row per BigAug transform alone, swept from the low to the high end of
/// its range in `columns` steps on one slice (the one with most labelled
/// voxels), then `sample_rows` rows of full BigAug samples (every transform
/// at its p) on slices with labels, from `seed`. Writes the PNG and returns
/// a Markdown legend: per row, the transform and the values of its columns.
std::string write_bigaug_preview(const SliceSet& slices, const BigAugOptions& options,
                                 const std::string& png, int64_t columns = 8,
                                 int64_t sample_rows = 2, uint64_t seed = 0);

}  // namespace drdm::seg
