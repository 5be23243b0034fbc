#include "drdm/seg/unet.h"

#include <torch/nn.h>

#include <stdexcept>

#include "../named_tensors.h"

namespace drdm::seg {
namespace {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

nn::AnyModule conv(nn::Module& owner, const std::string& name, int64_t dims, int64_t cin,
                   int64_t cout, int64_t kernel) {
  if (dims == 2)
    return nn::AnyModule(owner.register_module(
        name, nn::Conv2d(nn::Conv2dOptions(cin, cout, kernel).padding(kernel / 2))));
  return nn::AnyModule(owner.register_module(
      name, nn::Conv3d(nn::Conv3dOptions(cin, cout, kernel).padding(kernel / 2))));
}

nn::AnyModule up(nn::Module& owner, const std::string& name, int64_t dims, int64_t cin,
                 int64_t cout) {
  if (dims == 2)
    return nn::AnyModule(owner.register_module(
        name, nn::ConvTranspose2d(nn::ConvTranspose2dOptions(cin, cout, 2).stride(2))));
  return nn::AnyModule(owner.register_module(
      name, nn::ConvTranspose3d(nn::ConvTranspose3dOptions(cin, cout, 2).stride(2))));
}

/// Two 3x3 convolutions, each followed by ReLU.
struct BlockImpl : nn::Module {
  BlockImpl(int64_t dims, int64_t cin, int64_t cout)
      : conv1(conv(*this, "conv1", dims, cin, cout, 3)),
        conv2(conv(*this, "conv2", dims, cout, cout, 3)) {}
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(conv1.forward(x));
    return torch::relu(conv2.forward(x));
  }
  nn::AnyModule conv1, conv2;
};
TORCH_MODULE(Block);

void check_options(const UNetOptions& o) {
  if (o.dims != 2 && o.dims != 3) throw std::invalid_argument("unet.dims must be 2 or 3");
  if (o.in_channels < 1 || o.classes < 2)
    throw std::invalid_argument("the U-Net needs >= 1 input channel and >= 2 classes");
  if (o.widths.empty()) throw std::invalid_argument("unet.widths must not be empty");
  for (auto w : o.widths)
    if (w < 1) throw std::invalid_argument("unet.widths must be positive");
}

}  // namespace

struct UNet::Impl : nn::Module {
  explicit Impl(const UNetOptions& o) : options(o) {
    check_options(o);
    const auto& w = o.widths;
    for (size_t l = 0; l < w.size(); ++l)
      enc.push_back(register_module("enc" + std::to_string(l),
                                    Block(o.dims, l == 0 ? o.in_channels : w[l - 1], w[l])));
    for (size_t l = 0; l + 1 < w.size(); ++l) {
      ups.push_back(up(*this, "up" + std::to_string(l), o.dims, w[l + 1], w[l]));
      dec.push_back(register_module("dec" + std::to_string(l), Block(o.dims, 2 * w[l], w[l])));
    }
    head = conv(*this, "head", o.dims, w[0], o.classes, 1);
  }

  torch::Tensor forward(const torch::Tensor& image) {
    const int64_t levels = static_cast<int64_t>(enc.size());
    const int64_t divisor = int64_t{1} << (levels - 1);
    for (int64_t a = 2; a < image.dim(); ++a)
      if (image.size(a) % divisor != 0)
        throw std::invalid_argument("U-Net input: every spatial size must be divisible by " +
                                    std::to_string(divisor) + " (got " +
                                    std::to_string(image.size(a)) + ")");
    std::vector<torch::Tensor> skips;
    auto x = image;
    for (int64_t l = 0; l < levels; ++l) {
      if (l > 0) x = options.dims == 2 ? F::max_pool2d(x, F::MaxPool2dFuncOptions(2))
                                       : F::max_pool3d(x, F::MaxPool3dFuncOptions(2));
      x = enc[l]->forward(x);
      skips.push_back(x);
    }
    for (int64_t l = levels - 2; l >= 0; --l)
      x = dec[l]->forward(torch::cat({ups[l].forward(x), skips[l]}, 1));
    return head.forward(x);
  }

  UNetOptions options;
  std::vector<Block> enc, dec;
  std::vector<nn::AnyModule> ups;
  nn::AnyModule head;
};

UNet::UNet(const UNetOptions& options) : impl_(std::make_unique<Impl>(options)) {}
UNet::~UNet() = default;
UNet::UNet(UNet&&) noexcept = default;
UNet& UNet::operator=(UNet&&) noexcept = default;

torch::Tensor UNet::forward(const torch::Tensor& image) {
  if (image.dim() != impl_->options.dims + 2 || image.size(1) != impl_->options.in_channels)
    throw std::invalid_argument("U-Net input must be [N, " +
                                std::to_string(impl_->options.in_channels) + ", ...S] with " +
                                std::to_string(impl_->options.dims) + " spatial dims");
  return impl_->forward(image);
}

std::vector<torch::Tensor> UNet::parameters() const { return impl_->parameters(); }

std::map<std::string, torch::Tensor> UNet::state() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : impl_->named_parameters()) out[p.key()] = p.value();
  return out;
}

void UNet::load_state(const std::map<std::string, torch::Tensor>& state) {
  auto mine = this->state();
  detail::load_named_strict(mine, state, "U-Net weights");
}

int64_t UNet::parameter_count() const { return detail::element_count(parameters()); }

void UNet::to(const torch::Device& device) { impl_->to(device); }
void UNet::train(bool on) { impl_->train(on); }
const UNetOptions& UNet::options() const { return impl_->options; }

int64_t unet_parameter_count(const UNetOptions& o) {
  const int64_t k3 = o.dims == 2 ? 9 : 27, k2 = o.dims == 2 ? 4 : 8;
  const auto conv = [](int64_t cin, int64_t cout, int64_t k) { return cin * cout * k + cout; };
  const auto& w = o.widths;
  int64_t n = conv(w[0], o.classes, 1);
  for (size_t l = 0; l < w.size(); ++l) {
    const int64_t cin = l == 0 ? o.in_channels : w[l - 1];
    n += conv(cin, w[l], k3) + conv(w[l], w[l], k3);
    if (l + 1 < w.size())
      n += conv(w[l + 1], w[l], k2) + conv(2 * w[l], w[l], k3) + conv(w[l], w[l], k3);
  }
  return n;
}

namespace {
torch::Tensor one_hot_channels(const torch::Tensor& labels, int64_t classes) {
  auto oh = torch::one_hot(labels.squeeze(1), classes).to(torch::kFloat);  // [N, ...S, C]
  std::vector<int64_t> perm = {0, oh.dim() - 1};
  for (int64_t a = 1; a < oh.dim() - 1; ++a) perm.push_back(a);
  return oh.permute(perm);
}

void check_pair(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (labels.dim() != logits.dim() || labels.size(1) != 1 || labels.scalar_type() != torch::kLong)
    throw std::invalid_argument("segmentation loss: labels must be int64 [N, 1, ...S]");
  for (int64_t a = 2; a < logits.dim(); ++a)
    if (labels.size(a) != logits.size(a))
      throw std::invalid_argument("segmentation loss: labels and logits differ in size");
}
}  // namespace

torch::Tensor bce_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  check_pair(logits, labels);
  return F::binary_cross_entropy_with_logits(logits, one_hot_channels(labels, logits.size(1)));
}

torch::Tensor dice_ce_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  check_pair(logits, labels);
  const auto ce = F::cross_entropy(logits, labels.squeeze(1));
  const auto prob = torch::softmax(logits, 1).narrow(1, 1, logits.size(1) - 1);
  const auto target = one_hot_channels(labels, logits.size(1)).narrow(1, 1, logits.size(1) - 1);
  std::vector<int64_t> axes = {0};
  for (int64_t a = 2; a < logits.dim(); ++a) axes.push_back(a);
  const auto inter = (prob * target).sum(axes);
  const auto total = prob.sum(axes) + target.sum(axes);
  const auto dice = (2 * inter + 1e-5) / (total + 1e-5);
  return ce + (1 - dice.mean());
}

torch::Tensor segmentation_loss(const std::string& name, const torch::Tensor& logits,
                                const torch::Tensor& labels) {
  if (name == "bce") return bce_loss(logits, labels);
  if (name == "dice_ce") return dice_ce_loss(logits, labels);
  throw std::invalid_argument("unknown segmentation loss '" + name + "' (expected bce or dice_ce)");
}

torch::Tensor predict_labels(const torch::Tensor& logits) { return logits.argmax(1, true); }

}  // namespace drdm::seg
