/// @file Generation with a trained DRDM (paper Alg. 2), augmentation of images
/// with their labels (Alg. 3), synthetic registration pairs (Alg. 4), and the
/// streaming drdm::Deformer for C++ training loops.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "drdm/core/spatial.h"
#include "drdm/diffusion/network.h"
#include "drdm/diffusion/velocity_sampler.h"

namespace drdm {

struct TrainedModel;

/// Which recovery steps Alg. 2 runs after sampling the start field at level T'.
enum class RecoverySchedule {
  kFromLevel,  ///< t = T', T' - 1, ..., 1 (the paper's Alg. 2; default)
  kAllSteps,   ///< t = T, ..., 1 whatever T' is (what the authors' code runs)
};
std::string to_string(RecoverySchedule schedule);
/// "level" or "all"; throws std::invalid_argument otherwise.
RecoverySchedule parse_recovery_schedule(const std::string& name);

/// A seed for one sample, derived from a run seed and the sample's
/// coordinates (e.g. input index, level, repeat) by splitmix64 mixing: the
/// sample is the same whatever else runs with it (batch, shard, order).
uint64_t derive_seed(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0);

/// The tensor axis along which an image of `tensor_size` is cut into 2D
/// slices for a model of `model_dims`: -1 when the dimensions match (the
/// image goes through whole), else its first axis of size 1 (a one-slice
/// volume is one 2D image), else `slice_axis`.
int64_t slicing_axis(const std::vector<int64_t>& tensor_size, int64_t model_dims,
                     int64_t slice_axis);

struct GenerationOptions {
  RecoverySchedule schedule = RecoverySchedule::kFromLevel;
  int64_t batch = 16;  ///< samples per network forward pass (>= 1)
  /// Network passes under bf16 autocast (forward_mixed); fields stay float32.
  bool bf16 = false;
  /// On a CUDA device, capture one recovery step (warp, K network passes,
  /// compose) as a CUDA graph per batch size and replay it for every step in
  /// which all samples of the batch take part (fewer kernel launches); the
  /// fields equal the eager ones. Ignored, with a warning, on the CPU; a
  /// capture that fails is reported and generation runs eagerly.
  bool cuda_graphs = false;
  /// Progress: called after every recovery step with the number of samples
  /// it advanced (skipped empty slices are reported at once), if set.
  std::function<void(int64_t)> on_step;
};

/// What Alg. 2 produced for a batch.
struct GeneratedFields {
  torch::Tensor field;    ///< phi after recovery [N, d, ...S], voxels of the model grid
  torch::Tensor initial;  ///< the random start phi_{T':1} [N, d, ...S]
};

/// Alg. 2 on the model grid. images [N, 1, ...S] in [0, 1] (preprocessed to
/// the network's grid, on its device); levels[i] = T' of sample i in [1, T];
/// seeds[i] seeds sample i's start field (one generator per sample, so a
/// sample does not depend on the batch it runs in).
///
/// phi <- phi_{T':1} (sampler), then for t = T'..1 (or T..1, kAllSteps):
/// psi_hat = net(warp(I_0, phi), t) and phi <- compose(psi_hat, phi), always
/// warping the ORIGINAL image. Samples of different levels share forward
/// passes: at step t only those with T' >= t take part. No gradients.
GeneratedFields generate_fields(RecoveryNet& net, const SamplerOptions& sampler,
                                const torch::Tensor& images, const std::vector<int64_t>& levels,
                                const std::vector<uint64_t>& seeds,
                                const GenerationOptions& options = {});

/// Alg. 2 for the slices of ONE volume through a 2D model, coherent across
/// slices: all slices share one start field phi_{T':1} (seeded by `seed`),
/// and every predicted recovery step is smoothed along the slice axis by a
/// Gaussian of `sigma` slices before it is composed, so neighbouring slices
/// recover alike. slices [Z, 1, H, W] on the model grid (network device);
/// valid[z] = false marks a slice the network never saw the like of (less
/// foreground than data.min_foreground): it is not fed to the network and
/// takes its neighbours' smoothed step (a volume without any valid slice
/// gets the zero field). sigma = 0 smooths nothing. Returns [Z, 2, H, W].
torch::Tensor generate_volume_fields(RecoveryNet& net, const SamplerOptions& sampler,
                                     const torch::Tensor& slices, int64_t level, uint64_t seed,
                                     const std::vector<bool>& valid, double sigma,
                                     const GenerationOptions& options = {});

/// How far a field [N, d, ...S] changes from one slice to the next along
/// spatial axis `axis` (0-based, tensor order): the mean over adjacent slice
/// pairs and samples of mean_x ||u(z+1) - u(z)||, divided by the mean ||u||.
/// 0 for a field that is the same in every slice; about 1.4 for
/// independent random fields of equal size. Returns 0 for the zero field.
double slice_incoherence(const torch::Tensor& field, int64_t axis);

/// How a 3D volume given to a 2D model is deformed.
enum class SliceMode {
  kCoherent,     ///< one start field per volume, recovery steps smoothed across slices (default)
  kIndependent,  ///< every slice is an independent 2D sample (for training 2D networks on slices)
};
std::string to_string(SliceMode mode);
/// "coherent" or "independent"; throws std::invalid_argument otherwise.
SliceMode parse_slice_mode(const std::string& name);

struct DeformerOptions {
  GenerationOptions generation;
  SliceMode slice_mode = SliceMode::kCoherent;
  double slice_sigma =
      2.0;  ///< kCoherent: Gaussian smoothing of each recovery step across slices, in slices
  LabelInterpolation label_interpolation = LabelInterpolation::kNearest;
  Padding padding = Padding::kZeros;  ///< for images (labels: class 0 outside)
  /// 3D images given to a 2D model are deformed slice by slice along this
  /// tensor axis (0 = D, 1 = H, 2 = W); -1 takes the model's data.slice_axis.
  int64_t slice_axis = -1;
};

/// Images and labels deformed by one generated field per sample (Alg. 3).
struct DeformedBatch {
  torch::Tensor images;        ///< warp(images, fields) [N, C, ...S]
  torch::Tensor labels;        ///< warped labels (undefined when none were given)
  torch::Tensor fields;        ///< [N, d, ...S] in voxels of the input grid (d = image dims)
  torch::Tensor model_fields;  ///< the generated fields on the model grid (for 2D slices of 3D: [N
                               ///< * slices, 2, ...])
};

/// Registration pairs (Alg. 4): moving = warp(I, phi_aug), fixed =
/// warp(I, compose(phi_syn, phi_aug)) = warp(moving, phi_syn); the target is
/// phi_syn (fixed(x) = moving(x + phi_syn(x))).
struct PairBatch {
  torch::Tensor moving, fixed;                ///< [N, C, ...S]
  torch::Tensor moving_labels, fixed_labels;  ///< undefined when no labels were given
  torch::Tensor field;                        ///< phi_syn [N, d, ...S], input voxels
  torch::Tensor moving_field;                 ///< phi_aug [N, d, ...S], input voxels
};

/// A trained model ready to deform batches of images of any size, for C++
/// users who augment inside their own training loop:
///
///   drdm::Deformer deformer("models/cardiac2d/model.pt", torch::kCUDA);
///   auto out = deformer.deform(images, labels, /*levels=*/{45}, /*seed=*/step);
///   // out.images, out.labels, out.fields: on the device `images` came on
///
/// Images [N, C, ...S] (any intensities; C channels share one field, channel
/// 0 is what the network sees) are normalised with the model's percentile
/// clipping, fitted into the model grid keeping the physical aspect ratio
/// (`spacing`, mm per tensor axis; default isotropic), deformed there, and
/// the fields resampled back, so the outputs have the input's size. A 3D
/// batch given to a 2D model is deformed slice by slice (the through-plane
/// displacement is 0); a slice with less foreground than the model's
/// data.min_foreground (the rule that chose its training slices: fraction of
/// normalised voxels > 0.05) is left undeformed, as the network never saw one. Labels: int64 [N, 1,
/// ...S] class maps (never new classes) or one-hot float [N, K, ...S].
class Deformer {
 public:
  Deformer(const std::string& model_path, const torch::Device& device,
           DeformerOptions options = {});
  Deformer(TrainedModel model, const torch::Device& device, DeformerOptions options = {});
  ~Deformer();
  Deformer(Deformer&&) noexcept;
  Deformer& operator=(Deformer&&) noexcept;

  /// One field per image (labels may be undefined): levels has N entries
  /// (or one, for all); sample i is seeded with derive_seed(seed, i).
  DeformedBatch deform(const torch::Tensor& images, const torch::Tensor& labels,
                       const std::vector<int64_t>& levels, uint64_t seed,
                       const std::vector<double>& spacing = {}) const;
  /// As deform() with an explicit seed per sample (seeds.size() == N).
  DeformedBatch deform_with_seeds(const torch::Tensor& images, const torch::Tensor& labels,
                                  const std::vector<int64_t>& levels,
                                  const std::vector<uint64_t>& seeds,
                                  const std::vector<double>& spacing = {}) const;
  /// Alg. 4: phi_aug at aug_levels (seeds[i]), then phi_syn generated from the
  /// moving image at syn_levels (derive_seed(seeds[i], 1)).
  PairBatch pairs(const torch::Tensor& images, const torch::Tensor& labels,
                  const std::vector<int64_t>& aug_levels, const std::vector<int64_t>& syn_levels,
                  const std::vector<uint64_t>& seeds,
                  const std::vector<double>& spacing = {}) const;

  int64_t dims() const;                            ///< the model's dimension (2 or 3)
  const std::vector<int64_t>& model_size() const;  ///< the model's grid (tensor order)
  int64_t timesteps() const;                       ///< T
  int64_t slice_axis() const;                      ///< used for 3D inputs to a 2D model
  const torch::Device& device() const;
  const DeformerOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace drdm
