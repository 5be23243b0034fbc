#include "drdm/engine/optim.h"

#include <ATen/ATen.h>

#include <cmath>

namespace drdm {

Adam::Adam(std::vector<torch::Tensor> params, AdamOptions options)
    : params_(std::move(params)), options_(options) {
  for (const auto& p : params_) {
    exp_avg_.push_back(at::zeros_like(p));
    exp_avg_sq_.push_back(at::zeros_like(p));
  }
}

void Adam::zero_grad() {
  for (auto& p : params_)
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
}

void Adam::step(double lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  const double bc1 = 1 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double bc2 = 1 - std::pow(options_.beta2, static_cast<double>(steps_));
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& g = params_[i].grad();
    if (!g.defined()) continue;
    exp_avg_[i].lerp_(g, 1 - options_.beta1);
    exp_avg_sq_[i].mul_(options_.beta2).addcmul_(g, g, 1 - options_.beta2);
    const auto denom = (exp_avg_sq_[i].sqrt() / std::sqrt(bc2)).add_(options_.eps);
    params_[i].addcdiv_(exp_avg_[i], denom, -lr / bc1);
  }
}

void Adam::load_state(int64_t steps, const std::vector<torch::Tensor>& exp_avg,
                      const std::vector<torch::Tensor>& exp_avg_sq) {
  TORCH_CHECK(steps >= 0, "Adam::load_state: steps must be >= 0, got ", steps);
  TORCH_CHECK(exp_avg.size() == params_.size() && exp_avg_sq.size() == params_.size(),
              "Adam::load_state: expected ", params_.size(), " moment pairs, got ", exp_avg.size(),
              " and ", exp_avg_sq.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    TORCH_CHECK(
        exp_avg[i].sizes() == params_[i].sizes() && exp_avg_sq[i].sizes() == params_[i].sizes(),
        "Adam::load_state: moment ", i, " has shape ", exp_avg[i].sizes(), ", the parameter ",
        params_[i].sizes());
  }
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    exp_avg_[i].copy_(exp_avg[i]);
    exp_avg_sq_[i].copy_(exp_avg_sq[i]);
  }
  steps_ = steps;
}

}  // namespace drdm
