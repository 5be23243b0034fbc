#include "drdm/reg/voxelmorph.h"

#include <torch/nn.h>

#include <stdexcept>

#include "drdm/core/spatial.h"

namespace drdm::reg {
namespace {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

nn::AnyModule conv3(nn::Module& owner, const std::string& name, int64_t dims, int64_t cin,
                    int64_t cout) {
  if (dims == 2)
    return nn::AnyModule(
        owner.register_module(name, nn::Conv2d(nn::Conv2dOptions(cin, cout, 3).padding(1))));
  return nn::AnyModule(
      owner.register_module(name, nn::Conv3d(nn::Conv3dOptions(cin, cout, 3).padding(1))));
}

torch::Tensor leaky(const torch::Tensor& x) {
  return F::leaky_relu(x, F::LeakyReLUFuncOptions().negative_slope(0.2));
}

std::string sizes_text(at::IntArrayRef s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out;
}

}  // namespace

void validate(const VoxelMorphOptions& o) {
  if (o.dims() != 2 && o.dims() != 3) throw std::invalid_argument("voxelmorph.dims must be 2 or 3");
  if (o.channels() < 1) throw std::invalid_argument("voxelmorph.channels must be >= 1");
  if (o.encoder().empty()) throw std::invalid_argument("voxelmorph.encoder must not be empty");
  if (o.encoder().size() > 16)
    throw std::invalid_argument("voxelmorph.encoder has too many levels");
  if (o.decoder().size() < o.encoder().size())
    throw std::invalid_argument("voxelmorph.decoder needs at least encoder.size() = " +
                                std::to_string(o.encoder().size()) + " entries");
  // 4096 channels is far beyond any registration network and keeps an absurd
  // value (issue 26: 100000) from allocating gigabytes before failing.
  for (auto w : o.encoder())
    if (w < 1 || w > 4096)
      throw std::invalid_argument("voxelmorph.encoder widths must be in [1, 4096]");
  for (auto w : o.decoder())
    if (w < 1 || w > 4096)
      throw std::invalid_argument("voxelmorph.decoder widths must be in [1, 4096]");
  if (o.integration_steps() < 0 || o.integration_steps() > 30)
    throw std::invalid_argument("voxelmorph.integration_steps must be in [0, 30]");
  if (o.integration_downsize() < 1)
    throw std::invalid_argument("voxelmorph.integration_downsize must be >= 1");
}

VoxelMorphImpl::VoxelMorphImpl(const VoxelMorphOptions& options) : options(options) {
  validate(options);
  reset();
}

// Registration order and names are those of every saved checkpoint.
void VoxelMorphImpl::reset() {
  const auto& o = options;
  const auto& e = o.encoder();
  const size_t levels = e.size();
  enc.clear(), dec.clear(), rem.clear();
  int64_t prev = 2 * o.channels();
  for (size_t l = 0; l < levels; ++l) {
    enc.push_back(conv3(*this, "enc" + std::to_string(l), o.dims(), prev, e[l]));
    prev = e[l];
  }
  for (size_t l = 0; l < levels; ++l) {
    dec.push_back(conv3(*this, "dec" + std::to_string(l), o.dims(), prev, o.decoder()[l]));
    prev = o.decoder()[l] + e[levels - 1 - l];  // after concatenation with the skip
  }
  for (size_t k = levels; k < o.decoder().size(); ++k) {
    rem.push_back(conv3(*this, "rem" + std::to_string(k - levels), o.dims(), prev, o.decoder()[k]));
    prev = o.decoder()[k];
  }
  flow = conv3(*this, "flow", o.dims(), prev, o.dims());
  torch::NoGradGuard no_grad;
  auto flow_params = flow.ptr()->named_parameters(/*recurse=*/false);
  flow_params["weight"].normal_(0.0, 1e-5);
  flow_params["bias"].zero_();
}

torch::Tensor VoxelMorphImpl::pool(const torch::Tensor& x) const {
  return options.dims() == 2 ? F::max_pool2d(x, F::MaxPool2dFuncOptions(2))
                             : F::max_pool3d(x, F::MaxPool3dFuncOptions(2));
}

torch::Tensor VoxelMorphImpl::flow_output(const torch::Tensor& input) {
  std::vector<torch::Tensor> skips;
  auto x = input;
  for (auto& c : enc) {
    x = leaky(c.forward(x));
    skips.push_back(x);
    x = pool(x);
  }
  for (auto& c : dec) {
    x = leaky(c.forward(x));
    const auto& skip = skips.back();
    x = F::interpolate(
        x, F::InterpolateFuncOptions().size(skip.sizes().slice(2).vec()).mode(torch::kNearest));
    x = torch::cat({x, skip}, 1);
    skips.pop_back();
  }
  for (auto& c : rem) x = leaky(c.forward(x));
  return flow.forward(x);
}

/// Returns {displacement, preintegration}.
VoxelMorphOutput VoxelMorphImpl::integrate_full(const torch::Tensor& flow_field) const {
  const auto& o = options;
  if (o.integration_steps() == 0) return {flow_field, flow_field};
  const auto full = flow_field.sizes().slice(2).vec();
  auto v = flow_field;
  if (o.integration_downsize() > 1) {
    std::vector<int64_t> small;
    for (auto s : full) {
      if (s % o.integration_downsize() != 0)
        throw std::invalid_argument("VoxelMorph: spatial size " + std::to_string(s) +
                                    " is not divisible by integration_downsize " +
                                    std::to_string(o.integration_downsize()));
      small.push_back(s / o.integration_downsize());
    }
    v = resize_field(flow_field, small);
  }
  auto u = integrate_scaling_squaring(v, o.integration_steps());
  if (o.integration_downsize() > 1) u = resize_field(u, full);
  return {u, v};
}

VoxelMorphOutput VoxelMorphImpl::forward_full(const torch::Tensor& moving,
                                              const torch::Tensor& fixed) {
  const auto& o = options;
  const std::string shape = "[N, " + std::to_string(o.channels()) + ", ...S] with " +
                            std::to_string(o.dims()) + " spatial dims";
  if (moving.dim() != o.dims() + 2 || moving.size(1) != o.channels())
    throw std::invalid_argument("VoxelMorph: moving must be " + shape + " (got [" +
                                sizes_text(moving.sizes()) + "])");
  if (fixed.sizes() != moving.sizes())
    throw std::invalid_argument("VoxelMorph: fixed [" + sizes_text(fixed.sizes()) +
                                "] differs in shape from moving [" + sizes_text(moving.sizes()) +
                                "]");
  const int64_t divisor = int64_t{1} << o.encoder().size();
  for (int64_t a = 2; a < moving.dim(); ++a)
    if (moving.size(a) % divisor != 0)
      throw std::invalid_argument("VoxelMorph: spatial size " + std::to_string(moving.size(a)) +
                                  " (of " + sizes_text(moving.sizes().slice(2)) +
                                  ") is not divisible by 2^" + std::to_string(o.encoder().size()) +
                                  " = " + std::to_string(divisor));
  return integrate_full(flow_output(torch::cat({moving, fixed}, 1)));
}

torch::Tensor VoxelMorphImpl::forward(const torch::Tensor& moving, const torch::Tensor& fixed) {
  return forward_full(moving, fixed).displacement;
}

torch::Tensor VoxelMorphImpl::integrate(const torch::Tensor& flow) const {
  const auto& o = options;
  if (flow.dim() != o.dims() + 2 || flow.size(1) != o.dims())
    throw std::invalid_argument("VoxelMorph::integrate: expected a field [N, " +
                                std::to_string(o.dims()) + ", ...S] (got [" +
                                sizes_text(flow.sizes()) + "])");
  return integrate_full(flow).displacement;
}

void VoxelMorphImpl::pretty_print(std::ostream& stream) const {
  stream << "drdm::reg::VoxelMorph(dims=" << options.dims() << ", channels=" << options.channels()
         << ", levels=" << options.encoder().size()
         << ", integration_steps=" << options.integration_steps() << ")";
}

int64_t voxelmorph_parameter_count(const VoxelMorphOptions& o) {
  validate(o);
  const int64_t k = o.dims() == 2 ? 9 : 27;  // 3x3 or 3x3x3 kernels
  const auto conv = [k](int64_t cin, int64_t cout) { return cin * cout * k + cout; };
  const auto& e = o.encoder();
  const size_t L = e.size();
  int64_t n = 0;
  // Encoder: 2C -> e0 -> e1 -> ...
  for (size_t l = 0; l < L; ++l) n += conv(l == 0 ? 2 * o.channels() : e[l - 1], e[l]);
  // Decoder level l reads the previous output (plus, from l = 1 on, the skip
  // concatenated after level l - 1, which is e[L - l]).
  for (size_t l = 0; l < L; ++l)
    n += conv(l == 0 ? e[L - 1] : o.decoder()[l - 1] + e[L - l], o.decoder()[l]);
  // Full-resolution convs: the first reads decoder[L-1] + e[0].
  int64_t prev = o.decoder()[L - 1] + e[0];
  for (size_t j = L; j < o.decoder().size(); ++j) {
    n += conv(prev, o.decoder()[j]);
    prev = o.decoder()[j];
  }
  return n + conv(prev, o.dims());  // flow
}

}  // namespace drdm::reg
