/// @file The segmentation network of the paper's few-shot experiment
/// (Sec. 4.1): a vanilla U-Net, 2D or 3D, and its losses.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace drdm::seg {

/// UNetOptions().dims(3).classes(2).widths({8, 16, 32}) (LibTorch's TORCH_ARG
/// setters; read with options.dims()).
struct UNetOptions {
  TORCH_ARG(int64_t, dims) = 2;         ///< 2 or 3
  TORCH_ARG(int64_t, in_channels) = 1;  ///< image channels
  TORCH_ARG(int64_t, classes) = 4;      ///< output channels: one per class, background included
  /// Feature width of each level; widths.size() - 1 max-pooling steps. Every
  /// spatial size must be divisible by 2^(widths.size() - 1).
  TORCH_ARG(std::vector<int64_t>, widths) = {16, 32, 64, 128};
};

/// Encoder: per level, two 3x3 convolutions each followed by ReLU, then
/// max-pooling (stride 2) to the next level. Decoder: a stride-2 transposed
/// convolution (kernel 2) up to the finer level, concatenation with the
/// encoder's features there, and two 3x3 conv + ReLU. A 1x1 convolution gives
/// one logit map per class.
///
/// Parameter names (drdm::module_state): "enc<l>.conv{1,2}.*", "up<l>.*",
/// "dec<l>.conv{1,2}.*", "head.*". Use it through the UNet holder.
class UNetImpl : public torch::nn::Cloneable<UNetImpl> {
 public:
  /// Throws std::invalid_argument for options out of range.
  explicit UNetImpl(const UNetOptions& options = {});

  /// (Re)creates every layer from `options`.
  void reset() override;

  /// image [N, in_channels, ...S] -> logits [N, classes, ...S]; every spatial
  /// size must be divisible by 2^(widths.size() - 1) (std::invalid_argument).
  torch::Tensor forward(const torch::Tensor& image);

  void pretty_print(std::ostream& stream) const override;

  UNetOptions options;
  /// Per level: conv1 -> ReLU -> conv2 -> ReLU (Conv2d or Conv3d by dims).
  std::vector<torch::nn::Sequential> enc, dec;
  /// Transposed convolutions up<l>: level l + 1 -> level l.
  std::vector<torch::nn::AnyModule> ups;
  /// 1x1 convolution to the class logits.
  torch::nn::AnyModule head;
};

/// The segmentation U-Net: a shared handle to a UNetImpl (net->forward(image)).
TORCH_MODULE(UNet);

/// The parameter count a UNet with these options has, from the layer shapes
/// (a closed form, independent of the module code).
int64_t unet_parameter_count(const UNetOptions& options);

/// The paper's loss (Eq. 17): binary cross-entropy of sigmoid(logits) per
/// class channel against the one-hot labels, averaged over voxels and classes.
/// labels: int64 [N, 1, ...S] with values in [0, classes).
torch::Tensor bce_loss(const torch::Tensor& logits, const torch::Tensor& labels);

/// The common alternative: softmax cross-entropy + soft Dice over the
/// foreground classes (1 - mean Dice), summed with equal weight.
torch::Tensor dice_ce_loss(const torch::Tensor& logits, const torch::Tensor& labels);

/// "bce" or "dice_ce"; throws std::invalid_argument for another name.
torch::Tensor segmentation_loss(const std::string& name, const torch::Tensor& logits,
                                const torch::Tensor& labels);

/// Class map from logits: argmax over channels, int64 [N, 1, ...S].
torch::Tensor predict_labels(const torch::Tensor& logits);

}  // namespace drdm::seg
