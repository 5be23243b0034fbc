/// @file VoxelMorph (Balakrishnan et al., IEEE TMI 2019) as in its public
/// default configuration, 2D and 3D: a U-Net on the concatenated pair that
/// predicts a dense displacement, optionally as a stationary velocity
/// integrated by scaling and squaring.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <ostream>
#include <vector>

namespace drdm::reg {

/// VoxelMorphOptions().dims(3).integration_steps(0) (LibTorch's TORCH_ARG
/// setters; read with options.dims()).
struct VoxelMorphOptions {
  TORCH_ARG(int64_t, dims) = 2;      ///< 2 or 3
  TORCH_ARG(int64_t, channels) = 1;  ///< channels of one image; the network sees 2 * channels
  /// Encoder convolutions, one per level (3x3 conv + LeakyReLU(0.2), then 2x
  /// max-pooling). Every spatial size must be divisible by 2^encoder.size().
  TORCH_ARG(std::vector<int64_t>, encoder) = {16, 32, 32, 32};
  /// Decoder convolutions (3x3 conv + LeakyReLU(0.2)). The first
  /// encoder.size() are each followed by nearest 2x upsampling and
  /// concatenation with the encoder features of that resolution; the rest run
  /// at full resolution. Needs decoder.size() >= encoder.size().
  TORCH_ARG(std::vector<int64_t>, decoder) = {32, 32, 32, 32, 32, 16, 16};
  /// 0: the flow conv predicts the displacement itself. > 0: it predicts a
  /// stationary velocity, integrated with this many squarings
  /// (drdm::integrate_scaling_squaring).
  TORCH_ARG(int64_t, integration_steps) = 7;
  /// With integration only: the velocity is resized (drdm::resize_field) to
  /// size / integration_downsize, integrated there and resized back. 1 = at
  /// full resolution. Every spatial size must be divisible by it.
  TORCH_ARG(int64_t, integration_downsize) = 2;
};

/// Throws std::invalid_argument naming the option when one is out of range.
void validate(const VoxelMorphOptions& options);

/// What one forward pass computes.
struct VoxelMorphOutput {
  /// [N, d, ...S] in voxels of the input grid: warp(moving, displacement) ~ fixed.
  torch::Tensor displacement;
  /// The field that is integrated, [N, d, ...S / integration_downsize]
  /// (VoxelMorph's "preint_flow", what its smoothness loss regularises); the
  /// displacement itself when integration_steps == 0.
  torch::Tensor preintegration;
};

/// Layer list (names are the keys of drdm::module_state):
///  * enc<l>   conv(in -> encoder[l]), in = 2 * channels for l = 0;
///  * dec<l>   conv(prev -> decoder[l]), l < encoder.size(), whose output is
///             upsampled and concatenated with enc<L-1-l>'s output;
///  * rem<k>   conv(prev -> decoder[encoder.size() + k]) at full resolution;
///  * flow     conv(prev -> dims), weights N(0, 1e-5), bias 0, no activation.
/// Use it through the VoxelMorph holder.
class VoxelMorphImpl : public torch::nn::Cloneable<VoxelMorphImpl> {
 public:
  /// Throws std::invalid_argument (validate) for options out of range.
  explicit VoxelMorphImpl(const VoxelMorphOptions& options = {});

  /// (Re)creates every layer from `options`.
  void reset() override;

  /// moving, fixed [N, channels, ...S] (same shape) -> displacement [N, d, ...S]
  /// in voxels, so that warp(moving, displacement) ~ fixed.
  torch::Tensor forward(const torch::Tensor& moving, const torch::Tensor& fixed);
  /// forward, also returning the field before integration.
  VoxelMorphOutput forward_full(const torch::Tensor& moving, const torch::Tensor& fixed);
  /// The network's map from its flow output [N, d, ...S] to the displacement:
  /// identity without integration, else downsize, scaling and squaring, upsize.
  torch::Tensor integrate(const torch::Tensor& flow) const;

  void pretty_print(std::ostream& stream) const override;

  VoxelMorphOptions options;
  /// 3x3 convolutions (Conv2d or Conv3d by dims).
  std::vector<torch::nn::AnyModule> enc, dec, rem;
  torch::nn::AnyModule flow;

 private:
  torch::Tensor flow_output(const torch::Tensor& input);
  VoxelMorphOutput integrate_full(const torch::Tensor& flow_field) const;
  torch::Tensor pool(const torch::Tensor& x) const;
};

/// The registration network: a shared handle to a VoxelMorphImpl
/// (net->forward(moving, fixed)).
TORCH_MODULE(VoxelMorph);

/// The parameter count of a VoxelMorph with these options, from the layer
/// shapes alone (a closed form, independent of the module code).
int64_t voxelmorph_parameter_count(const VoxelMorphOptions& options);

}  // namespace drdm::reg
