/// @file Training images: folder scanning, preprocessing, in-memory cache, seeded augmented
/// batches, prefetching.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace drdm {

/// Where the training images come from and how they are prepared (paper Sec. 3.2).
struct DatasetOptions {
  /// Folders scanned recursively (symbolic links to folders below them are not followed).
  std::vector<std::string> folders;
  /// A file is used when its name matches one of these (fnmatch; hidden files never match).
  std::vector<std::string> include{"*.nii.gz", "*.nii", "*.mha", "*.mhd", "*.nrrd", "*.png"};
  /// A file is skipped when its path relative to its folder (so "labels/*"
  /// excludes a labels subfolder) or its name matches one of these (fnmatch).
  std::vector<std::string> exclude;
  /// The part of each folder's sorted file list to use, as fractions
  /// [from, to): files with index in [floor(from * n), floor(to * n)). {0, 0.7}
  /// is the first 70 % of the cases by name (a training split), {0.7, 1} the rest.
  std::vector<double> subset{0.0, 1.0};
  /// Model dimension: 2 or 3.
  int64_t dims = 2;
  /// For dims = 2, a 3D volume is cut into slices along this tensor axis
  /// (0 = D, 1 = H, 2 = W). A 2D image, or a volume of size 1 along some
  /// axis, is used as one 2D image.
  int64_t slice_axis = 0;
  /// Target tensor size (dims entries).
  std::vector<int64_t> size{128, 128};
  /// Intensity threshold: clip to these percentiles of each image (for slices:
  /// of their whole volume, so one volume keeps one intensity scale), then
  /// map linearly to [0, 1].
  double clip_low_pct = 0.5, clip_high_pct = 99.5;
  /// How an image is placed in the model grid: "aspect" keeps its physical
  /// aspect ratio (its longest extent fills the grid, centred in zero
  /// padding); "stretch" resamples every axis to fill the grid, as the
  /// authors' loaders do (skimage resize to 256 x 256). A network trained on
  /// stretched images recovers less on padded ones (`cardiac2d-paper`).
  std::string fit = "aspect";
  /// Skip slices/volumes whose fraction of voxels > 0.05 (after normalisation,
  /// counted over the image itself, not the padding) is below this.
  double min_foreground = 0.05;
};

/// Random augmentation of training batches (paper Sec. 3.2).
struct AugmentOptions {
  bool enabled = true;
  /// Rotation angle ~ U(-r, r) degrees; 2D: in the plane; 3D: about a random
  /// unit axis (with a random axis, U(-r, r) is the paper's U(0, 180) about an
  /// arbitrary axis).
  double rotation_deg = 180.0;
  /// Translation ~ U(-t, t) of the image size, per axis.
  double translation = 0.125;
  /// Flip probability, per axis independently.
  double flip_prob = 0.5;
  /// Crop ratio ~ U(crop_min, crop_max): a sub-window of that fraction of the
  /// image, centred on the translated centre, resized back to full size (zoom).
  double crop_min = 0.6, crop_max = 1.0;
};

/// All preprocessed training samples of some folders, cached in memory.
class ImageDataset {
 public:
  /// Scans, reads (several threads), preprocesses and caches all samples
  /// (float32 CPU [1, ...size] in [0, 1]). Throws std::runtime_error naming
  /// the folder or file on any problem: missing folder, no matching files,
  /// unreadable file, wrong dimension, no usable sample. Logs the counts and
  /// the time taken.
  explicit ImageDataset(const DatasetOptions& options);

  /// Number of samples (2D slices or 3D volumes).
  int64_t size() const;
  /// Sample i: float32 CPU [1, ...size] in [0, 1].
  const torch::Tensor& sample(int64_t i) const;
  /// Where sample i comes from: "path" or "path#slice".
  std::string source(int64_t i) const;
  /// 2 or 3.
  int64_t dims() const;
  /// Number of files read.
  int64_t num_files() const;
  const DatasetOptions& options() const;

  /// Batch for training step `step`: sample indices (uniform, with
  /// replacement) and augmentation come from a generator seeded by (seed,
  /// step) only, so a step's batch is the same in any run and any thread
  /// (exact resume). Returns float32 CPU [batch, 1, ...size].
  torch::Tensor training_batch(int64_t batch, uint64_t seed, int64_t step,
                               const AugmentOptions& augment) const;

 private:
  DatasetOptions options_;
  std::vector<torch::Tensor> samples_;  // [1, ...size] each, contiguous
  std::vector<std::string> sources_;
  int64_t num_files_ = 0;
};

/// Random augmentation of a batch [N, C, ...S] (S 2 or 3 dims, floating) on
/// its own device: one affine per sample (rotation, translation, crop-zoom)
/// applied in a single linear resampling with zero padding, plus flips (exact
/// permutations). All parameters are drawn from `gen` (a CPU generator), the
/// same number of draws whatever the options, so that disabling one part does
/// not change the others. Returns a new tensor of the batch's shape and dtype;
/// with every part disabled (or enabled = false) it equals the input.
torch::Tensor augment_batch(const torch::Tensor& batch, const AugmentOptions& options,
                            at::Generator& gen);

/// Preprocesses one image [1, ...S] (S 2 or 3 dims; `spacing` in mm per
/// tensor axis) to `size` (same number of dims), keeping the physical aspect
/// ratio: intensities are clipped to the given percentiles of the image and
/// mapped to [0, 1], then the image is resampled (antialiased when shrinking)
/// so that its physically longest extent (relative to `size`) fills the
/// target and centred in zero padding. With `stretch`, every axis fills the
/// target instead (no padding, aspect not kept). Returns float32 [1, ...size]
/// in [0, 1].
torch::Tensor preprocess_image(const torch::Tensor& image, const std::vector<double>& spacing,
                               const std::vector<int64_t>& size, double clip_low_pct,
                               double clip_high_pct, bool stretch = false);

/// Where an image lies in the model grid after the aspect-keeping fit of
/// preprocess_image: along tensor axis i the image (input_size[i] voxels)
/// is resampled to `fitted[i]` voxels and placed after `pad_before[i]` voxels
/// of zero padding in a grid of `model_size[i]`. Input voxel x maps to the
/// model coordinate pad_before[i] + (x + 0.5) * fitted[i] / input_size[i] - 0.5.
struct GridFit {
  std::vector<int64_t> input_size, model_size, fitted, pad_before;
  /// Model-grid coordinate of input voxel coordinate x along axis i.
  double to_model(int64_t axis, double x) const;
};

/// The fit preprocess_image uses for an image of tensor size `input_size`
/// with `spacing` (mm per tensor axis) and a model grid of `model_size`;
/// with `stretch`, fitted = model_size and no padding (data.fit = "stretch").
GridFit fit_grid(const std::vector<int64_t>& input_size, const std::vector<double>& spacing,
                 const std::vector<int64_t>& model_size, bool stretch = false);

/// Intensity step of preprocess_image alone: clip to the percentiles of the
/// image and map to [0, 1] (float32, same shape).
torch::Tensor normalise_intensity(const torch::Tensor& image, double clip_low_pct,
                                  double clip_high_pct);

/// Resampling step of preprocess_image alone: image [1, ...input_size] with
/// values in [0, 1] -> float32 [1, ...model_size] placed as `fit` says.
torch::Tensor fit_image(const torch::Tensor& image, const GridFit& fit);

/// Brings a field generated on the model grid back to the input grid of
/// `fit`: field [N, d, ...model_size] in model voxels -> [N, d, ...input_size]
/// in input voxels, sampled linearly at the input voxels' model coordinates
/// (border padding) and rescaled per axis, so that
/// warp(input, result) matches warp(model image, field) mapped back.
torch::Tensor field_to_input(const torch::Tensor& field, const GridFit& fit);

/// Background producer of training batches: keeps up to `depth` future
/// batches (steps first_step, first_step + 1, ...) prepared on `workers`
/// threads (with several workers, each runs its tensor operations serially);
/// next() returns them in step order, each bit-identical to
/// dataset.training_batch(batch, seed, step, augment). The dataset must
/// outlive the prefetcher. An exception in a worker is rethrown by the next()
/// that would have returned its batch. The destructor stops and joins the workers.
class BatchPrefetcher {
 public:
  BatchPrefetcher(const ImageDataset& dataset, int64_t batch, uint64_t seed, int64_t first_step,
                  AugmentOptions augment, int64_t depth = 2, int64_t workers = 1);
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  /// The batch of the next step (blocks until it is ready).
  torch::Tensor next();
  /// The step whose batch next() returns.
  int64_t next_step() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace drdm
