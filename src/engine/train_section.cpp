#include "drdm/engine/train_section.h"

#include <algorithm>
#include <cmath>

namespace drdm {

double learning_rate(const TrainSection& t, int64_t step) {
  const double s = static_cast<double>(step);
  if (t.lr_schedule == "exponential") return t.lr * std::pow(t.lr_decay, s);
  if (step < t.warmup_steps) return t.lr * (s + 1) / static_cast<double>(t.warmup_steps);
  if (t.lr_schedule == "constant") return t.lr;
  const double span = static_cast<double>(std::max<int64_t>(1, t.steps - t.warmup_steps));
  const double p = std::min(1.0, (s - static_cast<double>(t.warmup_steps)) / span);
  return t.lr_min + (t.lr - t.lr_min) * 0.5 * (1.0 + std::cos(M_PI * p));
}

}  // namespace drdm
