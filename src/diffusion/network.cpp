#include "drdm/diffusion/network.h"

#include <ATen/autocast_mode.h>
#include <torch/nn.h>

#include <cmath>
#include <set>
#include <stdexcept>
#include <utility>

#include "drdm/core/spatial.h"

namespace drdm {
namespace {

namespace nn = torch::nn;

// Leaky ReLU slope inside the ACNN-II blocks (Table B.5); the time MLPs'
// slope is an option (NetworkOptions::time_mlp_slope).
constexpr double kBlockSlope = 1e-6;
// Three stride-2 levels: every spatial size must be divisible by 2^3.
constexpr int64_t kDivisor = 8;

// Dimension-generic layer factories: the 2D network uses the *2d modules, the
// 3D network the *3d ones; both are driven through AnyModule.
nn::AnyModule make_conv(nn::Module& owner, const std::string& name, int64_t dims, int64_t cin,
                        int64_t cout, int64_t kernel, int64_t stride, int64_t padding,
                        int64_t dilation) {
  if (dims == 2) {
    return nn::AnyModule(owner.register_module(name, nn::Conv2d(nn::Conv2dOptions(cin, cout, kernel)
                                                                    .stride(stride)
                                                                    .padding(padding)
                                                                    .dilation(dilation)
                                                                    .bias(true))));
  }
  return nn::AnyModule(owner.register_module(name, nn::Conv3d(nn::Conv3dOptions(cin, cout, kernel)
                                                                  .stride(stride)
                                                                  .padding(padding)
                                                                  .dilation(dilation)
                                                                  .bias(true))));
}

nn::AnyModule make_up(nn::Module& owner, const std::string& name, int64_t dims, int64_t c) {
  if (dims == 2) {
    return nn::AnyModule(owner.register_module(
        name, nn::ConvTranspose2d(nn::ConvTranspose2dOptions(c, c, 4).stride(2).padding(1))));
  }
  return nn::AnyModule(owner.register_module(
      name, nn::ConvTranspose3d(nn::ConvTranspose3dOptions(c, c, 4).stride(2).padding(1))));
}

nn::AnyModule make_norm(nn::Module& owner, const std::string& name, int64_t dims, int64_t c) {
  if (dims == 2) {
    return nn::AnyModule(owner.register_module(
        name,
        nn::InstanceNorm2d(nn::InstanceNorm2dOptions(c).affine(true).track_running_stats(false))));
  }
  return nn::AnyModule(owner.register_module(
      name,
      nn::InstanceNorm3d(nn::InstanceNorm3dOptions(c).affine(true).track_running_stats(false))));
}

// In place, on a tensor nothing else holds. The in-place leaky ReLU's
// backward reads its output instead of its input: with a positive slope the
// two have the same sign, so the gradient is bit-identical, and the output is
// the next convolution's input, which autograd keeps anyway (one activation
// fewer to keep per call).
torch::Tensor block_act_(torch::Tensor x) { return torch::leaky_relu_(x, kBlockSlope); }

// ACNN-II block (Table B.5):
//   x = norm(conv3x3(f));  r = conv3x3_dil1(act(x));  r = conv3x3_dil3(act(r));
//   out = act(r + x).
// Without `normalise` (the authors' decoder blocks) x = conv3x3(f) and the
// block has no "norm" parameters.
// Training memory: autograd keeps the norm's input, act(x), act(r) and the
// output (4 activations; 7 with out-of-place activations and sum). x itself
// is needed only until the residual sum: act(x) is taken on a copy.
struct AcnnBlockImpl : nn::Cloneable<AcnnBlockImpl> {
  AcnnBlockImpl(int64_t dims, int64_t cin, int64_t cout, bool normalise)
      : dims(dims), cin(cin), cout(cout), normalise(normalise) {
    reset();
  }
  void reset() override {
    conv_in = make_conv(*this, "conv_in", dims, cin, cout, 3, 1, 1, 1);
    norm = normalise ? make_norm(*this, "norm", dims, cout) : nn::AnyModule();
    conv_d1 = make_conv(*this, "conv_d1", dims, cout, cout, 3, 1, 1, 1);
    conv_d3 = make_conv(*this, "conv_d3", dims, cout, cout, 3, 1, 3, 3);
  }
  torch::Tensor forward(const torch::Tensor& f) {
    auto x = conv_in.forward(f);
    if (!norm.is_empty()) x = norm.forward(x);
    auto r = conv_d1.forward(block_act_(x.clone()));
    r = dilated_forward(block_act_(r));
    return block_act_(r.add_(x));
  }
  // Under CPU bf16 autocast, oneDNN's weight gradient of the channels-last 2D
  // dilated convolution returns NaN in 4-20 % of its entries (measured,
  // reference/cpu-profile.md), so this convolution runs in float32 there.
  torch::Tensor dilated_forward(const torch::Tensor& r) {
    if (!r.is_cpu() || !at::autocast::is_autocast_enabled(at::kCPU)) return conv_d3.forward(r);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    struct Restore {
      ~Restore() { at::autocast::set_autocast_enabled(at::kCPU, true); }
    } restore;
    return conv_d3.forward(r.to(at::kFloat));
  }
  int64_t dims, cin, cout;
  bool normalise;
  nn::AnyModule conv_in, norm, conv_d1, conv_d3;
};

// A stack of ACNN-II blocks, widths[i] -> widths[i + 1], registered as `name`
// ("enc1.0", "enc1.1", ...: the names a ModuleList had before).
nn::Sequential make_stage(nn::Module& owner, const std::string& name, int64_t dims,
                          const std::vector<int64_t>& widths, bool normalise = true) {
  nn::Sequential stage;
  for (size_t i = 0; i + 1 < widths.size(); ++i)
    stage->push_back(std::make_shared<AcnnBlockImpl>(dims, widths[i], widths[i + 1], normalise));
  return owner.register_module(name, stage);
}

// Sinusoidal table [T+1, E]: row t, pair j: column 2j = sin(t w_j), column
// 2j+1 = cos(t w_j), w_j = 1 / 10000^(2j/E) (standard) or 1 / 10000^(4j/E)
// (every other).
torch::Tensor sinusoidal_table(int64_t timesteps, int64_t width, TimeFrequencies frequencies) {
  const double step = frequencies == TimeFrequencies::kStandard ? 2.0 : 4.0;
  auto t = torch::arange(timesteps + 1, torch::kDouble).unsqueeze(1);                 // [T+1, 1]
  auto j = torch::arange(width / 2, torch::kDouble);                                  // [E/2]
  auto w = torch::pow(10000.0, -step * j / static_cast<double>(width)).unsqueeze(0);  // [1, E/2]
  auto arg = t * w;                                                                   // [T+1, E/2]
  return torch::stack({torch::sin(arg), torch::cos(arg)}, 2)
      .reshape({timesteps + 1, width})
      .to(torch::kFloat);
}

}  // namespace

std::string to_string(TimeFrequencies f) {
  return f == TimeFrequencies::kStandard ? "standard" : "every_other";
}

std::string to_string(OutputUnits u) { return u == OutputUnits::kVoxels ? "voxels" : "image_size"; }

TimeFrequencies parse_time_frequencies(const std::string& name) {
  if (name == "standard") return TimeFrequencies::kStandard;
  if (name == "every_other") return TimeFrequencies::kEveryOther;
  throw std::invalid_argument("must be \"standard\" or \"every_other\", got \"" + name + "\"");
}

OutputUnits parse_output_units(const std::string& name) {
  if (name == "voxels") return OutputUnits::kVoxels;
  if (name == "image_size") return OutputUnits::kImageSize;
  throw std::invalid_argument("must be \"voxels\" or \"image_size\", got \"" + name + "\"");
}

RecoveryNetImpl::RecoveryNetImpl(const NetworkOptions& options) : options(options) {
  const auto& o = options;
  TORCH_CHECK(o.dims == 2 || o.dims == 3, "RecoveryNet: dims must be 2 or 3, got ", o.dims);
  TORCH_CHECK(o.in_channels >= 1, "RecoveryNet: in_channels must be >= 1, got ", o.in_channels);
  TORCH_CHECK(o.timesteps >= 1, "RecoveryNet: timesteps must be >= 1, got ", o.timesteps);
  TORCH_CHECK(o.time_embedding >= 2 && o.time_embedding % 2 == 0,
              "RecoveryNet: time_embedding must be even and >= 2, got ", o.time_embedding);
  TORCH_CHECK(o.recursion >= 1, "RecoveryNet: recursion must be >= 1, got ", o.recursion);
  TORCH_CHECK(std::isfinite(o.time_mlp_slope) && o.time_mlp_slope >= 0 && o.time_mlp_slope < 1,
              "RecoveryNet: time_mlp_slope must be in [0, 1), got ", o.time_mlp_slope);
  reset();
}

// The registration order (and so the order of parameters(), which Adam's
// saved moments follow) and the names are those of every saved checkpoint.
void RecoveryNetImpl::reset() {
  const auto& o = options;
  const int64_t dims = o.dims;
  const int64_t E = o.time_embedding;
  const int64_t c0 = o.in_channels;
  time_table = register_buffer("time_table", sinusoidal_table(o.timesteps, E, o.time_frequencies));

  // Per-level time MLPs te1..te7: Linear(E, c) -> LeakyReLU(slope) -> Linear(c, c).
  te.clear();
  const std::vector<int64_t> te_widths{c0, 10, 20, 40, 80, 40, 20};
  for (size_t i = 0; i < te_widths.size(); ++i) {
    const int64_t c = te_widths[i];
    te.push_back(register_module(
        "te" + std::to_string(i + 1),
        nn::Sequential(nn::Linear(E, c),
                       nn::LeakyReLU(nn::LeakyReLUOptions().negative_slope(o.time_mlp_slope)),
                       nn::Linear(c, c))));
  }

  enc1 = make_stage(*this, "enc1", dims, {c0, 10, 10, 10});
  down1 = make_conv(*this, "down1", dims, 10, 10, 4, 2, 1, 1);
  enc2 = make_stage(*this, "enc2", dims, {10, 20, 20, 20});
  down2 = make_conv(*this, "down2", dims, 20, 20, 4, 2, 1, 1);
  enc3 = make_stage(*this, "enc3", dims, {20, 40, 40, 40});
  down3 = make_conv(*this, "down3", dims, 40, 40, 4, 2, 1, 1);
  bottleneck = make_stage(*this, "bottleneck", dims, {40, 20, 20, 40});

  up1 = make_up(*this, "up1", dims, 40);
  dec1 = make_stage(*this, "dec1", dims, {80, 40, 20, 20}, o.decoder_norm);
  up2 = make_up(*this, "up2", dims, 20);
  dec2 = make_stage(*this, "dec2", dims, {40, 20, 10, 10}, o.decoder_norm);
  up3 = make_up(*this, "up3", dims, 10);
  dec3 = make_stage(*this, "dec3", dims, {20, 10, 10, 10}, o.decoder_norm);
  out = make_conv(*this, "out", dims, 10, dims, 3, 1, 1, 1);

  // The output conv starts near zero (weights N(0, 1e-5), bias 0) so that an
  // untrained network predicts ~0 voxels, i.e. the identity transform: the
  // recursion then starts from an unwarped image and early training is not
  // swamped by random large displacements. All other layers keep PyTorch's
  // default initialisation.
  {
    torch::NoGradGuard no_grad;
    auto out_params = out.ptr()->named_parameters(/*recurse=*/false);
    out_params["weight"].normal_(0.0, 1e-5);
    out_params["bias"].zero_();
  }
  choose_memory_format();
}

// [N, c] -> [N, c, 1, ...] for broadcasting over the spatial axes.
torch::Tensor RecoveryNetImpl::embed(size_t level, const torch::Tensor& t0) {
  auto e = te[level]->forward(t0);
  std::vector<int64_t> shape{e.size(0), e.size(1)};
  shape.resize(2 + options.dims, 1);
  return e.view(shape);
}

// One pass of the U-Net of Table B.4 (no recursion). The embeddings are added
// in place to fresh conv / cat outputs (no temporary copy).
torch::Tensor RecoveryNetImpl::pass(const torch::Tensor& image, const torch::Tensor& t) {
  auto t0 = time_table.index_select(0, t);  // [N, E]
  auto f1 = enc1->forward(image + embed(0, t0));
  auto f2 = enc2->forward(down1.forward(f1).add_(embed(1, t0)));
  auto f3 = enc3->forward(down2.forward(f2).add_(embed(2, t0)));
  auto f4 = bottleneck->forward(down3.forward(f3) * embed(3, t0));
  auto f5 = dec1->forward(torch::cat({f3, up1.forward(f4)}, 1).add_(embed(4, t0)));
  auto f6 = dec2->forward(torch::cat({f2, up2.forward(f5)}, 1).add_(embed(5, t0)));
  auto f7 = dec3->forward(torch::cat({f1, up3.forward(f6)}, 1).add_(embed(6, t0)));
  return to_voxels(out.forward(f7));
}

// The output conv's prediction as a field in voxels (output_units), clamped
// to +-(S_i - 1) voxels per channel when output_clamp.
torch::Tensor RecoveryNetImpl::to_voxels(torch::Tensor u) const {
  const int64_t dims = options.dims;
  const bool scale = options.output_units == OutputUnits::kImageSize;
  if (!scale && !options.output_clamp) return u;
  std::vector<double> sizes;
  for (int64_t i = 0; i < dims; ++i) sizes.push_back(static_cast<double>(u.size(2 + i)));
  std::vector<int64_t> shape(2 + dims, 1);
  shape[1] = dims;
  const auto s = torch::tensor(sizes, u.options().dtype(torch::kFloat)).view(shape);
  if (scale) u = u * s;
  if (options.output_clamp) u = torch::clamp(u, 1 - s, s - 1);
  return u;
}

void RecoveryNetImpl::check_image(const torch::Tensor& image) const {
  const auto& o = options;
  const auto& table = time_table;
  TORCH_CHECK(image.defined(), "RecoveryNet::forward: image is undefined");
  TORCH_CHECK(image.dim() == 2 + o.dims, "RecoveryNet::forward: expected a ", o.dims,
              "D image [N, C, ...S] with ", 2 + o.dims, " dims, got sizes ", image.sizes());
  TORCH_CHECK(image.size(1) == o.in_channels, "RecoveryNet::forward: expected ", o.in_channels,
              " image channels, got sizes ", image.sizes());
  TORCH_CHECK(image.size(0) >= 1, "RecoveryNet::forward: empty batch, sizes ", image.sizes());
  for (int64_t i = 2; i < image.dim(); ++i) {
    TORCH_CHECK(image.size(i) > 0 && image.size(i) % kDivisor == 0,
                "RecoveryNet::forward: every spatial size must be a positive multiple of ",
                kDivisor, " (three stride-2 levels), got sizes ", image.sizes());
  }
  TORCH_CHECK(image.device() == table.device(), "RecoveryNet::forward: image is on ",
              image.device(), " but the network is on ", table.device(),
              " (call RecoveryNet::to first)");
  TORCH_CHECK(image.scalar_type() == table.scalar_type(), "RecoveryNet::forward: image dtype ",
              image.scalar_type(), " differs from the network's ", table.scalar_type());
}

// t checked and expanded to int64 [n] on the network's device.
torch::Tensor RecoveryNetImpl::check_steps(const torch::Tensor& t, int64_t n) const {
  const auto& o = options;
  TORCH_CHECK(t.defined(), "RecoveryNet::forward: t is undefined");
  TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false),
              "RecoveryNet::forward: t must be an integer tensor, got ", t.scalar_type());
  TORCH_CHECK(t.numel() == n || t.numel() == 1, "RecoveryNet::forward: t must hold 1 or N = ", n,
              " steps, got sizes ", t.sizes());
  if (t.is_cpu()) {
    const auto lo = t.min().item<int64_t>();
    const auto hi = t.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi <= o.timesteps, "RecoveryNet::forward: t must lie in [0, ",
                o.timesteps, "], got values in [", lo, ", ", hi, "]");
  } else {
    // On a GPU a host-side check would wait for the device at every forward
    // pass; the device checks it and fails the next synchronising call.
    at::_assert_async(at::logical_and(t.min().ge(0), t.max().le(o.timesteps)),
                      "RecoveryNet::forward: t must lie in [0, timesteps]");
  }
  auto steps = t.reshape({-1}).to(time_table.device(), torch::kLong);
  if (steps.numel() != n) steps = steps.expand({n}).contiguous();
  return steps;
}

torch::Tensor RecoveryNetImpl::forward(const torch::Tensor& image, const torch::Tensor& t) {
  check_image(image);
  const auto steps = check_steps(t, image.size(0));
  // Under autocast the passes return bf16: fields are composed in the image's
  // dtype (a no-op without autocast).
  const auto dtype = image.scalar_type();
  auto acc = pass(image, steps).to(dtype);
  for (int64_t k = 1; k < options.recursion; ++k) {
    // Re-warp the ORIGINAL image by the accumulated field (never a warped
    // image), predict the next step, and let it act after the previous ones.
    auto warped = warp(image, acc, Interpolation::kLinear, Padding::kZeros);
    auto psi = pass(warped, steps).to(dtype);
    acc = compose(psi, acc);
  }
  return acc;
}

// On the CPU, convolution weights are kept channels-last: oneDNN's
// convolutions then run channels-last end to end, about 3x faster for these
// narrow (10-80 channel) layers than the default layout (measured: one 10->10
// 3x3 conv, batch 8 at 64^2, forward + backward 11.8 ms vs 4.1 ms).
// On CUDA the default layout is kept.
void RecoveryNetImpl::choose_memory_format() {
  const bool cpu = time_table.device().is_cpu();
  for (auto& p : parameters(/*recurse=*/true)) {
    if (p.dim() < 4) continue;
    const auto format = !cpu           ? at::MemoryFormat::Contiguous
                        : p.dim() == 4 ? at::MemoryFormat::ChannelsLast
                                       : at::MemoryFormat::ChannelsLast3d;
    torch::NoGradGuard no_grad;
    p.set_data(p.contiguous(format));
  }
}

void RecoveryNetImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  nn::Module::to(device, dtype, non_blocking);
  choose_memory_format();
}

void RecoveryNetImpl::to(torch::Dtype dtype, bool non_blocking) {
  nn::Module::to(dtype, non_blocking);
  choose_memory_format();
}

void RecoveryNetImpl::to(torch::Device device, bool non_blocking) {
  nn::Module::to(device, non_blocking);
  choose_memory_format();
}

void RecoveryNetImpl::pretty_print(std::ostream& stream) const {
  stream << "drdm::RecoveryNet(dims=" << options.dims << ", in_channels=" << options.in_channels
         << ", timesteps=" << options.timesteps << ", recursion=" << options.recursion << ")";
}

torch::Tensor forward_mixed(RecoveryNet& net, const torch::Tensor& image, const torch::Tensor& t,
                            bool bf16) {
  if (!bf16) return net->forward(image, t);
  const auto type = image.device().type();
  TORCH_CHECK(type == at::kCPU || type == at::kCUDA,
              "forward_mixed: bf16 autocast needs a CPU or CUDA image, got ", image.device());
  const bool was = at::autocast::is_autocast_enabled(type);
  const auto was_dtype = at::autocast::get_autocast_dtype(type);
  at::autocast::set_autocast_dtype(type, at::kBFloat16);
  at::autocast::set_autocast_enabled(type, true);
  struct Restore {
    c10::DeviceType type;
    bool was;
    at::ScalarType dtype;
    ~Restore() {
      at::autocast::set_autocast_enabled(type, was);
      at::autocast::set_autocast_dtype(type, dtype);
      if (!was) at::autocast::clear_cache();
    }
  } restore{type, was, was_dtype};
  return net->forward(image, t).to(image.scalar_type());
}

bool cpu_has_native_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
  return false;
#endif
}

}  // namespace drdm
