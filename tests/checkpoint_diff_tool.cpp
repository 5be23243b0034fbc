// Test-only tool: how far apart two libdrdm checkpoints are.
// usage: checkpoint_diff_tool A B
// Prints {"step": [a, b], "adam_step": [a, b], "tensors": n, "max_abs_diff": d,
// "max_abs": m, "adam_max_abs_diff": e, "changed": f}: the largest element
// difference over the weights (and Adam's moments), the largest weight, and
// the fraction of weights that differ by more than 1e-6. Exit 1 when the
// files hold different tensor names or shapes, 2 on bad usage or an unreadable
// file.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <exception>

#include "drdm/engine/training_engine.h"

namespace {

double max_abs(const at::Tensor& t) { return t.numel() ? t.abs().max().item<double>() : 0.0; }

double moments_diff(const drdm::Checkpoint& a, const drdm::Checkpoint& b) {
  double d = 0;
  for (size_t i = 0; i < a.exp_avg.size() && i < b.exp_avg.size(); ++i) {
    d = std::max(d, max_abs(a.exp_avg[i].to(at::kDouble) - b.exp_avg[i].to(at::kDouble)));
    d = std::max(d, max_abs(a.exp_avg_sq[i].to(at::kDouble) - b.exp_avg_sq[i].to(at::kDouble)));
  }
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s A B\n", argv[0]);
    return 2;
  }
  try {
    const auto a = drdm::read_checkpoint(argv[1]), b = drdm::read_checkpoint(argv[2]);
    double diff = 0, largest = 0, changed = 0, total = 0;
    for (const auto& [name, ta] : a.model) {
      const auto it = b.model.find(name);
      if (it == b.model.end() || it->second.sizes() != ta.sizes()) {
        std::fprintf(stderr, "'%s' differs in name or shape\n", name.c_str());
        return 1;
      }
      const auto d = (ta.to(at::kDouble) - it->second.to(at::kDouble)).abs();
      diff = std::max(diff, max_abs(d));
      changed += d.gt(1e-6).sum().item<double>();
      total += static_cast<double>(d.numel());
      largest = std::max(largest, max_abs(ta));
    }
    if (a.model.size() != b.model.size() || a.exp_avg.size() != b.exp_avg.size()) {
      std::fprintf(stderr, "the files hold different tensors\n");
      return 1;
    }
    std::printf(
        "{\"step\": [%lld, %lld], \"adam_step\": [%lld, %lld], \"tensors\": %zu, \"max_abs_diff\": "
        "%.9g, "
        "\"max_abs\": %.9g, \"adam_max_abs_diff\": %.9g, \"changed\": %.9g}\n",
        static_cast<long long>(a.step), static_cast<long long>(b.step),
        static_cast<long long>(a.adam_step), static_cast<long long>(b.adam_step), a.model.size(),
        diff, largest, moments_diff(a, b), total > 0 ? changed / total : 0.0);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
}
