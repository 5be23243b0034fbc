/// @file The forward (deformation diffusion) process: multi-scale random velocity fields,
/// the noise schedules, and the fields that deform a training image (paper Sec. 2.1, DESIGN.md).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace drdm {

/// How the image field phi_{t:1} relates to the target step psi_t.
enum class DiffusionProcess {
  /// One velocity v per sample (what the authors' code does and what produced
  /// the published numbers): psi_t = v composed n_t times, phi_{t:1} = a 5%
  /// perturbed v composed m_t times.
  kStationary,
  /// The paper's Eq. (2): independent steps psi_1..psi_t (psi_tau = v_tau
  /// composed n_tau times), phi_{t:1} = compose(psi_t, compose(psi_{t-1}, ...)).
  kMarkov,
  /// The authors' code exactly (Diffusion/diffuser.py of jianqingzheng/def_diff_rec), for models
  /// trained on it: the stationary process with their three departures (docs/configs.md,
  /// docs/results/forward-parity.md). (1) The coarse levels of a velocity are upsampled with
  /// align_corners = false. (2) The perturbation is warped by v: phi_{t:1} uses
  /// compose(v, perturbation * w) = v + perturbation * w(x + v(x)), w an independent velocity.
  /// (3) A control-grid field reaches the image as their code converts it: displacements
  /// multiplied by (S_i / control)^2 image voxels per control voxel (S_i / (2 control) times the
  /// geometric factor: 2x at 256^2 with control 64), resampled with align_corners = false, after
  /// the composition. Their v_scale (a fraction of the control grid) is sigma = v_scale * control.
  kAuthors,
};

std::string to_string(DiffusionProcess process);
/// "stationary", "markov" or "authors"; throws std::invalid_argument otherwise.
DiffusionProcess parse_diffusion_process(const std::string& name);

struct SamplerOptions {
  int64_t timesteps = 80;  ///< T
  /// Control grid points per axis. The control grid covers twice the image's
  /// field of view (the image is its central half), corners aligned.
  int64_t control = 64;
  /// Scales: the control grid and its 1/2, 1/4, ... subsamplings (levels >= 1).
  int64_t levels = 4;
  /// Standard deviation of the finest component, in control-grid voxels; the
  /// component of level i has sigma * 2^i (paper Eq. 6).
  double sigma = 0.005;
  double alpha = 0.6;  ///< n_t = floor(t^alpha / beta)
  double beta = 1.0;
  double integrated_alpha =
      1.3;  ///< m_t = clamp(floor(t^integrated_alpha / integrated_beta), 1, integrated_max)
  double integrated_beta = 1.5;
  int64_t integrated_max = 200;
  /// Relative strength of the independent multi-scale perturbation added to v
  /// before it builds the image field (stationary process; paper Sec. 3.3: 5%;
  /// the authors' code: 8%, warped by v, see kAuthors).
  double perturbation = 0.05;
  DiffusionProcess process = DiffusionProcess::kStationary;
};

/// Throws std::invalid_argument naming the option when an option is out of range.
void validate(const SamplerOptions& options);

/// n_t = floor(t^alpha / beta) for t >= 1 (0 for t = 0).
int64_t step_count(int64_t t, const SamplerOptions& options);
/// m_t = clamp(floor(t^integrated_alpha / integrated_beta), 1, integrated_max) for t >= 1 (0 for t
/// = 0).
int64_t integrated_count(int64_t t, const SamplerOptions& options);

/// The sampler's generator for `seed`: a CPU generator. The sampler draws its
/// noise on the generator's device and moves it to its own, so a seed gives
/// the same fields on the CPU and on any GPU (up to float rounding in the
/// steps after the draw). Training, generation and the recovery check use it.
at::Generator make_generator(uint64_t seed);
/// A generator for `device` seeded with `seed` (CPU or CUDA), for draws made
/// directly on that device (MRBS fields, tests).
at::Generator make_generator(const torch::Device& device, uint64_t seed);

/// One draw of the forward process for a batch.
struct ForwardSample {
  torch::Tensor psi;  ///< the step psi_t [N, d, ...S], voxels of the image grid (the network learns
                      ///< its inverse)
  torch::Tensor
      phi;  ///< the image field phi_{t:1} [N, d, ...S]; the training input is warp(I_0, phi)
};

/// Samples the forward process for images of one size on one device.
class VelocitySampler {
 public:
  /// image_size: the tensor spatial size (2 or 3 entries).
  VelocitySampler(const SamplerOptions& options, std::vector<int64_t> image_size,
                  torch::Device device = torch::kCPU);

  /// A multi-scale velocity on the control grid, [batch, d, control, ...], in control-grid voxels.
  torch::Tensor velocity(int64_t batch, at::Generator& gen) const;
  /// Rows [first, first + count) of velocity(batch, gen): the same draws, the
  /// other rows' noise dropped before any work on it.
  torch::Tensor velocity_rows(int64_t batch, at::Generator& gen, int64_t first,
                              int64_t count) const;

  /// Control-grid field -> image grid: resampled to twice the image size
  /// (DESIGN's resize rule) and centre-cropped, in image voxels. For the authors' process
  /// (kAuthors) their conversion instead: values times (S_i / control_i)^2, resampled with
  /// align_corners = false to twice the image size, centre-cropped.
  torch::Tensor to_image(const torch::Tensor& control_field) const;

  /// psi_t and phi_{t:1} for per-sample levels t (int64 [N], 1 <= t <= T).
  ForwardSample sample(const torch::Tensor& t, at::Generator& gen) const;
  /// Rows [first, first + count) of sample(t, gen) for the whole batch t,
  /// computed for those rows alone (a data-parallel rank's share of the
  /// global batch: the same fields as one process would draw for them).
  ForwardSample sample_rows(const torch::Tensor& t, at::Generator& gen, int64_t first,
                            int64_t count) const;

  /// Only phi_{t:1} (what generation starts from, Alg. 2 line 3).
  torch::Tensor sample_field(const torch::Tensor& t, at::Generator& gen) const;
  /// sample_field with one generator per sample (gens.size() == N): sample b
  /// depends only on t[b] and gens[b], whatever else is in the batch.
  torch::Tensor sample_field(const torch::Tensor& t, std::vector<at::Generator>& gens) const;

  const SamplerOptions& options() const { return options_; }
  const std::vector<int64_t>& image_size() const { return image_size_; }

 private:
  ForwardSample sample_impl(const torch::Tensor& t, at::Generator& gen, bool need_psi) const;
  ForwardSample sample_impl(const torch::Tensor& t,
                            const std::function<torch::Tensor(int64_t)>& draw, bool need_psi) const;
  SamplerOptions options_;
  std::vector<int64_t> image_size_;
  torch::Device device_;
};

}  // namespace drdm
