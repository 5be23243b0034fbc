#include "drdm/seg/unet.h"

#include <torch/nn.h>

#include <stdexcept>

namespace drdm::seg {
namespace {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

nn::AnyModule conv_layer(int64_t dims, int64_t cin, int64_t cout, int64_t kernel) {
  if (dims == 2)
    return nn::AnyModule(nn::Conv2d(nn::Conv2dOptions(cin, cout, kernel).padding(kernel / 2)));
  return nn::AnyModule(nn::Conv3d(nn::Conv3dOptions(cin, cout, kernel).padding(kernel / 2)));
}

nn::AnyModule conv(nn::Module& owner, const std::string& name, int64_t dims, int64_t cin,
                   int64_t cout, int64_t kernel) {
  auto layer = conv_layer(dims, cin, cout, kernel);
  owner.register_module(name, layer.ptr());
  return layer;
}

nn::AnyModule up(nn::Module& owner, const std::string& name, int64_t dims, int64_t cin,
                 int64_t cout) {
  if (dims == 2)
    return nn::AnyModule(owner.register_module(
        name, nn::ConvTranspose2d(nn::ConvTranspose2dOptions(cin, cout, 2).stride(2))));
  return nn::AnyModule(owner.register_module(
      name, nn::ConvTranspose3d(nn::ConvTranspose3dOptions(cin, cout, 2).stride(2))));
}

/// Two 3x3 convolutions, each followed by ReLU ("conv1", "conv2").
nn::Sequential block(int64_t dims, int64_t cin, int64_t cout) {
  nn::Sequential b;
  b->push_back("conv1", conv_layer(dims, cin, cout, 3));
  b->push_back("relu1", nn::ReLU());
  b->push_back("conv2", conv_layer(dims, cout, cout, 3));
  b->push_back("relu2", nn::ReLU());
  return b;
}

void check_options(const UNetOptions& o) {
  if (o.dims() != 2 && o.dims() != 3) throw std::invalid_argument("unet.dims must be 2 or 3");
  if (o.in_channels() < 1 || o.classes() < 2)
    throw std::invalid_argument("the U-Net needs >= 1 input channel and >= 2 classes");
  if (o.widths().empty()) throw std::invalid_argument("unet.widths must not be empty");
  for (auto w : o.widths())
    if (w < 1) throw std::invalid_argument("unet.widths must be positive");
}

torch::Tensor max_pool(const torch::Tensor& x, int64_t dims) {
  return dims == 2 ? F::max_pool2d(x, F::MaxPool2dFuncOptions(2))
                   : F::max_pool3d(x, F::MaxPool3dFuncOptions(2));
}

}  // namespace

UNetImpl::UNetImpl(const UNetOptions& options) : options(options) {
  check_options(options);
  reset();
}

// Registration order and names are those of every saved checkpoint.
void UNetImpl::reset() {
  const auto& o = options;
  const auto& w = o.widths();
  enc.clear(), dec.clear(), ups.clear();
  for (size_t l = 0; l < w.size(); ++l)
    enc.push_back(register_module("enc" + std::to_string(l),
                                  block(o.dims(), l == 0 ? o.in_channels() : w[l - 1], w[l])));
  for (size_t l = 0; l + 1 < w.size(); ++l) {
    ups.push_back(up(*this, "up" + std::to_string(l), o.dims(), w[l + 1], w[l]));
    dec.push_back(register_module("dec" + std::to_string(l), block(o.dims(), 2 * w[l], w[l])));
  }
  head = conv(*this, "head", o.dims(), w[0], o.classes(), 1);
}

torch::Tensor UNetImpl::forward(const torch::Tensor& image) {
  if (image.dim() != options.dims() + 2 || image.size(1) != options.in_channels())
    throw std::invalid_argument("U-Net input must be [N, " + std::to_string(options.in_channels()) +
                                ", ...S] with " + std::to_string(options.dims()) + " spatial dims");
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
    if (l > 0) x = max_pool(x, options.dims());
    x = enc[l]->forward(x);
    skips.push_back(x);
  }
  for (int64_t l = levels - 2; l >= 0; --l)
    x = dec[l]->forward(torch::cat({ups[l].forward(x), skips[l]}, 1));
  return head.forward(x);
}

void UNetImpl::pretty_print(std::ostream& stream) const {
  stream << "drdm::seg::UNet(dims=" << options.dims() << ", in_channels=" << options.in_channels()
         << ", classes=" << options.classes() << ", levels=" << options.widths().size() << ")";
}

int64_t unet_parameter_count(const UNetOptions& o) {
  const int64_t k3 = o.dims() == 2 ? 9 : 27, k2 = o.dims() == 2 ? 4 : 8;
  const auto conv = [](int64_t cin, int64_t cout, int64_t k) { return cin * cout * k + cout; };
  const auto& w = o.widths();
  int64_t n = conv(w[0], o.classes(), 1);
  for (size_t l = 0; l < w.size(); ++l) {
    const int64_t cin = l == 0 ? o.in_channels() : w[l - 1];
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
