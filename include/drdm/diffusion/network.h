/// @file The DRDM recovery network: a recursive, time-conditioned ACNN U-Net
/// (paper App. A, Tables B.4 and B.5) that predicts a recovery field from an
/// image and a diffusion step t.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace drdm {

/// Frequencies of the sinusoidal time table (row t, pair j: sin(t w_j), cos(t w_j)).
enum class TimeFrequencies {
  kStandard,   ///< w_j = 10000^(-2j/E) (the usual transformer table)
  kEveryOther  ///< w_j = 10000^(-4j/E): every other frequency of an E-wide table
               ///< (what the authors' code computes)
};

/// What the final convolution predicts.
enum class OutputUnits {
  kVoxels,    ///< displacements in voxels
  kImageSize  ///< fractions of the image size: channel i is multiplied by the size of
              ///< spatial axis i to give voxels (the authors' code)
};

/// Plain fields, not TORCH_ARG: this struct is also the "model" section of
/// TrainConfig, filled key by key from JSON and compared field by field.
struct NetworkOptions {
  int64_t dims = 2;             ///< spatial dimensions: 2 or 3
  int64_t in_channels = 1;      ///< image channels
  int64_t timesteps = 80;       ///< T; t in [0, T] accepted (embedding table has T+1 rows)
  int64_t time_embedding = 80;  ///< sinusoidal embedding width E (Table B.4: 80); even
  int64_t recursion = 2;        ///< internal recursion K (shared weights), >= 1
  TimeFrequencies time_frequencies = TimeFrequencies::kStandard;
  /// Negative slope of the activation between the two linear layers of each
  /// per-level time MLP: 0.01 (App. A); 0 is a ReLU (the authors' code).
  double time_mlp_slope = 0.01;
  /// Instance norm in the ACNN-II blocks of the decoder (dec1..dec3); the
  /// authors' code has none there (the encoder and bottleneck always have it).
  bool decoder_norm = true;
  OutputUnits output_units = OutputUnits::kVoxels;
  /// Clamp each pass's field, channel i, to [-(S_i - 1), S_i - 1] voxels
  /// before the passes are composed (the authors' code).
  bool output_clamp = false;
};

/// "standard" / "every_other" and "voxels" / "image_size" (config values);
/// parse_* throw std::invalid_argument naming the accepted values.
std::string to_string(TimeFrequencies f);
std::string to_string(OutputUnits u);
TimeFrequencies parse_time_frequencies(const std::string& name);
OutputUnits parse_output_units(const std::string& name);

/// Recursive ACNN-II U-Net with three stride-2 levels (widths 10/20/40), a
/// sinusoidal time embedding added at every level (multiplied at the
/// bottleneck) and a final 3x3 conv to `dims` channels. The options
/// time_frequencies, time_mlp_slope, decoder_norm, output_units and
/// output_clamp reproduce the authors' RecResACNet (drdm/diffusion/import.h).
///
/// With recursion K, pass 1 predicts psi_1 = net(I, t); pass k >= 2 sees the
/// ORIGINAL image warped by the accumulated field, psi_k = net(warp(I, acc), t),
/// and acc <- compose(psi_k, acc) (psi_k acts after acc). The result is acc.
///
/// Fields follow DESIGN.md: [N, d, ...S], channel i along spatial axis i, in
/// voxels. An untrained network predicts ~0 (the identity): its output conv is
/// initialised with tiny weights and zero bias.
///
/// Parameter and buffer names (drdm::module_state) are those of every
/// checkpoint: "time_table", "te<1..7>.<0|2>.*", "enc1.0.conv_in.weight",
/// "down1.*", ..., "out.bias". Use it through the RecoveryNet holder.
class RecoveryNetImpl : public torch::nn::Cloneable<RecoveryNetImpl> {
 public:
  explicit RecoveryNetImpl(const NetworkOptions& options = {});

  /// (Re)creates every layer and the time table from `options`.
  void reset() override;

  /// image [N, in_channels, ...S] of the parameters' dtype (float32) and
  /// device; t integral [N] (or a 0-dim / 1-element tensor broadcast to N)
  /// with values in [0, T]. S must be divisible by 8 along every axis.
  /// Returns the recovery field [N, dims, ...S] in voxels: the composition of
  /// the K passes. Differentiable in the parameters and the image.
  torch::Tensor forward(const torch::Tensor& image, const torch::Tensor& t);

  /// Module::to, then the weights' memory format for the new device (on the
  /// CPU convolution weights are kept channels-last).
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

  void pretty_print(std::ostream& stream) const override;

  NetworkOptions options;
  /// Sinusoidal table [T+1, E] (a buffer).
  torch::Tensor time_table;
  /// Per-level time MLPs te1..te7: Linear(E, c) -> LeakyReLU -> Linear(c, c).
  std::vector<torch::nn::Sequential> te;
  /// ACNN-II block stacks ("enc1.0", "enc1.1", ...).
  torch::nn::Sequential enc1, enc2, enc3, bottleneck, dec1, dec2, dec3;
  /// Stride-2 convolutions, transposed convolutions and the output conv
  /// (Conv2d / Conv3d and their transposes, by dims).
  torch::nn::AnyModule down1, down2, down3, up1, up2, up3, out;

 private:
  torch::Tensor pass(const torch::Tensor& image, const torch::Tensor& steps);
  torch::Tensor embed(size_t level, const torch::Tensor& t0);
  torch::Tensor to_voxels(torch::Tensor u) const;
  void check_image(const torch::Tensor& image) const;
  torch::Tensor check_steps(const torch::Tensor& t, int64_t n) const;
  void choose_memory_format();
};

/// The recovery network: a shared handle to a RecoveryNetImpl
/// (net->forward(image, t), or net(image, t)).
TORCH_MODULE(RecoveryNet);

/// net->forward, under bf16 autocast on the image's device (CPU or CUDA) when
/// `bf16`; the field comes back in the image's dtype (float32) either way.
/// Parameters stay float32. On the CPU the dilated convolutions run in
/// float32 (oneDNN's bf16 weight gradient of that convolution returns NaN).
torch::Tensor forward_mixed(RecoveryNet& net, const torch::Tensor& image, const torch::Tensor& t,
                            bool bf16);

/// Whether this CPU runs bf16 natively (AVX512-BF16 or AMX-BF16); elsewhere
/// oneDNN emulates it, usually slower than float32.
bool cpu_has_native_bf16();

}  // namespace drdm
