/// @file The DRDM recovery network: a recursive, time-conditioned ACNN U-Net
/// (paper App. A, Tables B.4 and B.5) that predicts a recovery field from an
/// image and a diffusion step t.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace drdm {

struct NetworkOptions {
  int64_t dims = 2;             ///< spatial dimensions: 2 or 3
  int64_t in_channels = 1;      ///< image channels
  int64_t timesteps = 80;       ///< T; t in [0, T] accepted (embedding table has T+1 rows)
  int64_t time_embedding = 80;  ///< sinusoidal embedding width E (Table B.4: 80); even
  int64_t recursion = 2;        ///< internal recursion K (shared weights), >= 1
};

/// Recursive ACNN-II U-Net with three stride-2 levels (widths 10/20/40), a
/// sinusoidal time embedding added at every level (multiplied at the
/// bottleneck) and a final 3x3 conv to `dims` channels.
///
/// With recursion K, pass 1 predicts psi_1 = net(I, t); pass k >= 2 sees the
/// ORIGINAL image warped by the accumulated field, psi_k = net(warp(I, acc), t),
/// and acc <- compose(psi_k, acc) (psi_k acts after acc). The result is acc.
///
/// Fields follow DESIGN.md: [N, d, ...S], channel i along spatial axis i, in
/// voxels. An untrained network predicts ~0 (the identity): its output conv is
/// initialised with tiny weights and zero bias.
class RecoveryNet {
 public:
  explicit RecoveryNet(const NetworkOptions& options = {});
  ~RecoveryNet();
  RecoveryNet(RecoveryNet&&) noexcept;
  RecoveryNet& operator=(RecoveryNet&&) noexcept;

  /// image [N, in_channels, ...S] of the parameters' dtype (float32) and
  /// device; t integral [N] (or a 0-dim / 1-element tensor broadcast to N)
  /// with values in [0, T]. S must be divisible by 8 along every axis.
  /// Returns the recovery field [N, dims, ...S] in voxels: the composition of
  /// the K passes. Differentiable in the parameters and the image.
  torch::Tensor forward(const torch::Tensor& image, const torch::Tensor& t);

  /// Trainable parameters.
  std::vector<torch::Tensor> parameters() const;
  /// All named parameters and buffers, keyed by stable dotted names (like
  /// PyTorch's state_dict keys, e.g. "enc1.0.conv_in.weight", "time_table").
  /// The tensors alias the network's own storage.
  std::map<std::string, torch::Tensor> state() const;
  /// Copies `state` into the network (values converted to the network's
  /// device and dtype). Strict: a missing, unexpected or shape-mismatched key
  /// is an error naming the key; nothing is changed then.
  void load_state(const std::map<std::string, torch::Tensor>& state);
  /// Number of trainable scalars.
  int64_t parameter_count() const;
  /// Moves parameters and buffers to `device`.
  void to(const torch::Device& device);
  /// Training / evaluation mode (instance norm keeps no running statistics,
  /// so this only sets the flag).
  void train(bool on = true);
  bool is_training() const;
  const NetworkOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace drdm
