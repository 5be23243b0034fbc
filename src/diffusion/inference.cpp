#include "drdm/diffusion/inference.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <stdexcept>

#include "core/seeds.h"
#include "diffusion/drdm_checkpoint.h"
#include "drdm/core/module_state.h"
#include "drdm/core/spatial.h"
#include "drdm/io/models.h"

namespace drdm {

namespace detail {

LoadedCheckpoint read_drdm_checkpoint(const std::string& path) {
  LoadedCheckpoint c;
  c.file = read_checkpoint(path, kDrdmCheckpointKind);
  c.config = parse_train_config(c.file.config, path + " (embedded config)");
  return c;
}

}  // namespace detail

TrainedModel load_model(const std::string& name_or_path, const torch::Device& device) {
  const auto path = resolve_model_path(name_or_path);
  auto ck = detail::read_drdm_checkpoint(path);
  TrainedModel m{RecoveryNet(network_options(ck.config)), ck.config, ck.file.step};
  try {
    load_module_state(*m.net, ck.file.model);
  } catch (const c10::Error& e) {
    throw std::runtime_error("'" + path + "' does not match its own network config: " +
                             std::string(e.what_without_backtrace()));
  }
  m.net->to(device);
  m.net->train(false);
  return m;
}

std::vector<RecoveryCheck> check_recovery(RecoveryNet& net, const VelocitySampler& sampler,
                                          const at::Tensor& images,
                                          const std::vector<int64_t>& levels, int64_t repeats,
                                          uint64_t seed, int64_t batch) {
  TORCH_CHECK(
      images.dim() == 2 + static_cast<int64_t>(sampler.image_size().size()) && images.size(1) == 1,
      "check_recovery: images must be [N, 1, ...S] matching the sampler");
  TORCH_CHECK(repeats >= 1 && batch >= 1, "check_recovery: repeats and batch must be >= 1");
  at::NoGradGuard no_grad;
  const bool was_training = net->is_training();
  net->train(false);
  const auto device = net->parameters().front().device();
  std::vector<RecoveryCheck> out;
  for (const auto level : levels) {
    RecoveryCheck c;
    c.t = level;
    double no_step = 0, one_step = 0, cosine = 0;
    int64_t chunk_id = 0;
    for (int64_t r = 0; r < repeats; ++r) {
      for (int64_t start = 0; start < images.size(0); start += batch, ++chunk_id) {
        const int64_t n = std::min(batch, images.size(0) - start);
        const auto x0 = images.narrow(0, start, n).to(device);
        auto gen = make_generator(stream_seed(seed, level * 1000003 + chunk_id, 3));
        const auto t = at::full({n}, level, at::kLong);
        const auto fwd = sampler.sample(t, gen);
        const auto xt = warp(x0, fwd.phi);
        const auto psi_hat = net->forward(xt, t);
        const auto residual = compose(fwd.psi, psi_hat);  // psi + psi_hat(x + psi(x))
        const auto back = residual - fwd.psi;             // psi_hat(x + psi(x))
        const auto psi_norm = fwd.psi.norm(2, 1);
        no_step += psi_norm.mean().item<double>() * n;
        one_step += residual.norm(2, 1).mean().item<double>() * n;
        cosine +=
            (-(fwd.psi * back).sum(1) / (psi_norm * back.norm(2, 1) + 1e-6)).mean().item<double>() *
            n;
        c.samples += n;
      }
    }
    c.no_step_error = no_step / c.samples;
    c.one_step_error = one_step / c.samples;
    c.ratio = c.one_step_error / std::max(c.no_step_error, 1e-12);
    c.cosine = cosine / c.samples;
    out.push_back(c);
  }
  net->train(was_training);
  return out;
}

}  // namespace drdm
