/// @file Adam, with its whole state open for exact checkpoints.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace drdm {

struct AdamOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

/// Adam (Kingma & Ba 2015): the same update as torch.optim.Adam with
/// weight_decay 0 and amsgrad off (verified against it by bench/run_train.py).
/// Its state is plain tensors, so a checkpoint can store and restore it exactly.
class Adam {
 public:
  explicit Adam(std::vector<torch::Tensor> params, AdamOptions options = {});

  /// Drops the parameters' gradients (sets them undefined).
  void zero_grad();
  /// The parameters this optimiser updates, in order.
  const std::vector<torch::Tensor>& parameters() const { return params_; }
  /// One update with learning rate lr from the parameters' current
  /// gradients; parameters without a gradient are left alone.
  void step(double lr);

  int64_t steps() const { return steps_; }
  const std::vector<torch::Tensor>& exp_avg() const { return exp_avg_; }
  const std::vector<torch::Tensor>& exp_avg_sq() const { return exp_avg_sq_; }
  /// Restores a saved state (one moment pair per parameter, same shapes);
  /// throws c10::Error on a mismatch.
  void load_state(int64_t steps, const std::vector<torch::Tensor>& exp_avg,
                  const std::vector<torch::Tensor>& exp_avg_sq);

 private:
  std::vector<torch::Tensor> params_, exp_avg_, exp_avg_sq_;
  AdamOptions options_;
  int64_t steps_ = 0;
};

}  // namespace drdm
