/// @file The segmentation network of the paper's few-shot experiment
/// (Sec. 4.1): a vanilla U-Net, 2D or 3D, and its losses.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace drdm::seg {

struct UNetOptions {
  int64_t dims = 2;          ///< 2 or 3
  int64_t in_channels = 1;   ///< image channels
  int64_t classes = 4;       ///< output channels: one per class, background included
  /// Feature width of each level; widths.size() - 1 max-pooling steps. Every
  /// spatial size must be divisible by 2^(widths.size() - 1).
  std::vector<int64_t> widths = {16, 32, 64, 128};
};

/// Encoder: per level, two 3x3 convolutions each followed by ReLU, then
/// max-pooling (stride 2) to the next level. Decoder: a stride-2 transposed
/// convolution (kernel 2) up to the finer level, concatenation with the
/// encoder's features there, and two 3x3 conv + ReLU. A 1x1 convolution gives
/// one logit map per class.
class UNet {
 public:
  explicit UNet(const UNetOptions& options = {});
  ~UNet();
  UNet(UNet&&) noexcept;
  UNet& operator=(UNet&&) noexcept;

  /// image [N, in_channels, ...S] -> logits [N, classes, ...S].
  torch::Tensor forward(const torch::Tensor& image);
  std::vector<torch::Tensor> parameters() const;
  /// Parameters by stable dotted names ("enc0.conv1.weight", ...); the tensors alias the network.
  std::map<std::string, torch::Tensor> state() const;
  /// Strict copy of named tensors into the network (an error names a missing or mismatched key).
  void load_state(const std::map<std::string, torch::Tensor>& state);
  int64_t parameter_count() const;
  void to(const torch::Device& device);
  void train(bool on = true);
  const UNetOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

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
