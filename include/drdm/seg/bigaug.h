/// @file BigAug (Zhang et al., IEEE TMI 2020): stacked intensity and spatial
/// augmentation for segmentation, batched, seeded and device-agnostic.
/// Parameters, formulas and their sources: docs/bigaug.md.
#pragma once

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

namespace drdm::seg {

/// Options of bigaug; config keys are "bigaug.<field>" (validate()).
/// Images are expected normalised to about [0, 1]; lengths are in voxels.
struct BigAugOptions {
  double p = 0.5;  ///< probability of each transform, independently per sample
  double blur_sigma_min = 0.25, blur_sigma_max = 1.5;  ///< Gaussian blur sigma
  /// Unsharp masking: b = G_{sigma1} * x, bb = G_{sigma2} * b, out = b + alpha (b - bb).
  double sharpen_alpha_min = 10, sharpen_alpha_max = 30;
  double sharpen_sigma1 = 1.0, sharpen_sigma2 = 0.5;
  double noise_std_min = 0, noise_std_max = 0.1;  ///< additive N(0, std^2), std ~ U(min, max)
  double brightness = 0.1;                        ///< additive shift ~ U(-b, b)
  double gamma_min = 0.5, gamma_max = 4.5;        ///< on the [0, 1]-rescaled image
  double scale_min = 0.9, scale_max = 1.1, shift = 0.1;  ///< x * s + o, o ~ U(-shift, shift)
  /// 2D: in-plane angle ~ U(-r, r); 3D: one angle ~ U(-r, r) about each axis.
  double rotation_deg = 20;
  double scaling_min = 0.4, scaling_max = 1.6;  ///< isotropic zoom (s > 1 enlarges)
  /// Elastic: cubic B-spline velocity on a grid of `elastic_control_points`
  /// knots per axis (one beyond each border), scaled so its largest vector is
  /// m ~ U(min, max) voxels, integrated by scaling and squaring (diffeomorphic).
  int64_t elastic_control_points = 7;
  double elastic_magnitude_min = 2.5, elastic_magnitude_max = 7.5;
};

/// Parameters drawn for one sample. A transform runs iff applied[t].
struct BigAugSample {
  /// The nine transforms, in the order they are applied.
  enum Transform : int {
    kBlur,
    kSharpen,
    kNoise,
    kBrightness,
    kGamma,
    kIntensity,
    kRotation,
    kScaling,
    kElastic,
    kCount
  };
  std::array<bool, kCount> applied{};
  double blur_sigma = 0, sharpen_alpha = 0, noise_std = 0, brightness_shift = 0;
  double gamma = 1, scale = 1, shift = 0;
  std::array<double, 3> angles_deg{};  ///< 2D: [0]; 3D: about axes 0, 1, 2
  double zoom = 1, elastic_magnitude = 0;
};

/// Checks every option (finite, ranges, min <= max, p in [0, 1]); throws
/// std::invalid_argument whose message starts with "bigaug.<field>".
void validate(const BigAugOptions& options);

/// Draws the parameters of `batch` samples of a `dims`-D batch (2 or 3):
/// always one [batch, 21] table of uniforms from `generator`.
std::vector<BigAugSample> draw_samples(int64_t batch, int64_t dims, const BigAugOptions& options,
                                       at::Generator& generator);

/// Applies drawn (or hand-made) parameters: images float [N, C, ...S],
/// labels int64 [N, 1, ...S] or undefined. Two seeds are drawn from
/// `generator` for two CPU streams, one for the noise and one for the elastic
/// control values (so switching one transform off leaves the other's values
/// alone); all noise is drawn on the CPU and moved to the images' device.
/// Samples skipped by a transform are copied bit for bit. Returns augmented copies (labels
/// undefined if given undefined).
std::pair<torch::Tensor, torch::Tensor> bigaug_apply(const torch::Tensor& images,
                                                     const torch::Tensor& labels,
                                                     const std::vector<BigAugSample>& samples,
                                                     const BigAugOptions& options,
                                                     at::Generator& generator);

/// BigAug: validate, draw_samples, bigaug_apply. Order: blur, sharpen, noise,
/// brightness, gamma, intensity (scale and shift), then rotation, scaling and
/// elastic composed into one field per sample, applied with drdm::warp
/// (linear, zeros) to images and drdm::warp_labels (nearest) to labels;
/// voxels pulled from outside become 0 in both. Intensity transforms leave
/// labels alone. The same generator state gives the same output.
std::pair<torch::Tensor, torch::Tensor> bigaug(const torch::Tensor& images,
                                               const torch::Tensor& labels,
                                               const BigAugOptions& options,
                                               at::Generator& generator);

// ---- individual transforms (per-sample parameters, one entry per sample) ----

/// Separable Gaussian blur with replicate padding, kernel truncated at
/// ceil(4 sigma) and normalised to sum 1; sigma 0 leaves a sample unchanged.
torch::Tensor gaussian_blur(const torch::Tensor& images, const std::vector<double>& sigmas);

/// b = blur(x, sigma1), bb = blur(b, sigma2), out = b + alpha (b - bb).
torch::Tensor gaussian_sharpen(const torch::Tensor& images, const std::vector<double>& alphas,
                               double sigma1, double sigma2);

/// Per sample and channel: r = (x - min) / (max - min), out = r^gamma (max - min) + min;
/// a constant channel is left unchanged.
torch::Tensor gamma_contrast(const torch::Tensor& images, const std::vector<double>& gammas);

/// Smooth diffeomorphic displacement [N, d, ...size] (see BigAugOptions):
/// magnitude m_b = magnitudes[b] (0 gives the zero field).
torch::Tensor elastic_field(at::IntArrayRef size, const std::vector<double>& magnitudes,
                            int64_t control_points, at::Generator& generator,
                            const torch::TensorOptions& options = {});

/// Pull-back matrix M = R^T / zoom of each sample's rotation and scaling
/// about the grid centre c = (size - 1) / 2: content at p moves to
/// c + zoom R (p - c). [N, d, d] double on the CPU. 2D: R turns axis 0
/// towards axis 1 by angles_deg[0]. 3D: R = R0 R1 R2, Rk turns the lower of
/// the other two axes towards the higher by angles_deg[k]; a rotation whose
/// plane holds an axis of size 1 is skipped.
torch::Tensor affine_matrices(at::IntArrayRef size, const std::vector<BigAugSample>& samples);

/// The one displacement field [N, d, ...size] of rotation, scaling, then
/// elastic: u(x) = M (x + e(x) - c) + c - x, so warp(I, u) equals rotating,
/// then scaling, then elastically warping I.
torch::Tensor spatial_field(at::IntArrayRef size, const std::vector<BigAugSample>& samples,
                            const BigAugOptions& options, at::Generator& generator,
                            const torch::TensorOptions& tensor_options = {});

}  // namespace drdm::seg
