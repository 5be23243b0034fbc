#include "drdm/engine/train_section.h"

#include "engine/config_json.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace drdm {

using nlohmann::json;
using detail::get;
using detail::require;

namespace {

bool finite(double v) { return std::isfinite(v); }

}  // namespace

namespace detail {

json train_section_json(const TrainSection& t) {
  return {{"batch_size", t.batch_size},
                {"steps", t.steps},
                {"lr", t.lr},
                {"lr_decay", t.lr_decay},
                {"lr_schedule", t.lr_schedule},
                {"warmup_steps", t.warmup_steps},
                {"lr_min", t.lr_min},
                {"init_from", t.init_from},
                {"seed", t.seed},
                {"checkpoint_every", t.checkpoint_every},
                {"preview_every", t.preview_every},
                {"log_every", t.log_every},
                {"mixed_precision", t.mixed_precision},
                {"device", t.device},
                {"threads", t.threads},
                {"prefetch", t.prefetch},
                {"dist_timeout", t.dist_timeout},
                {"dist_master", t.dist_master}};
}

TrainSection parse_train_section(const json& j, const std::string& src, const std::string& section) {
  const auto key = [&](const char* k) { return section + "." + k; };
  const auto& S = section;
  TrainSection t;
  t.batch_size = get<int64_t>(j, S, "batch_size", src);
  t.steps = get<int64_t>(j, S, "steps", src);
  t.lr = get<double>(j, S, "lr", src);
  t.lr_decay = get<double>(j, S, "lr_decay", src);
  t.lr_schedule = get<std::string>(j, S, "lr_schedule", src);
  t.warmup_steps = get<int64_t>(j, S, "warmup_steps", src);
  t.lr_min = get<double>(j, S, "lr_min", src);
  t.init_from = get<std::string>(j, S, "init_from", src);
  const auto seed = get<int64_t>(j, S, "seed", src);
  require(seed >= 0, src, key("seed"), "must be >= 0");
  t.seed = static_cast<uint64_t>(seed);
  t.checkpoint_every = get<int64_t>(j, S, "checkpoint_every", src);
  t.preview_every = get<int64_t>(j, S, "preview_every", src);
  t.log_every = get<int64_t>(j, S, "log_every", src);
  t.mixed_precision = get<std::string>(j, S, "mixed_precision", src);
  t.device = get<std::string>(j, S, "device", src);
  t.threads = get<int64_t>(j, S, "threads", src);
  t.prefetch = get<int64_t>(j, S, "prefetch", src);
  t.dist_timeout = get<double>(j, S, "dist_timeout", src);
  t.dist_master = get<std::string>(j, S, "dist_master", src);
  require(t.batch_size >= 1 && t.batch_size <= 4096, src, key("batch_size"),
          "must be in [1, 4096]");
  require(t.steps >= 1, src, key("steps"), "must be >= 1");
  // Far beyond any useful rate; a larger one overflows the float optimiser state.
  require(finite(t.lr) && t.lr > 0 && t.lr <= 10, src, key("lr"), "must be in (0, 10]");
  require(finite(t.lr_decay) && t.lr_decay > 0 && t.lr_decay <= 1, src, key("lr_decay"),
          "must be in (0, 1]");
  require(t.lr_schedule == "exponential" || t.lr_schedule == "cosine" ||
              t.lr_schedule == "constant",
          src, key("lr_schedule"),
          "must be \"exponential\", \"cosine\" or \"constant\", got \"" + t.lr_schedule + "\"");
  require(t.warmup_steps >= 0 && t.warmup_steps < t.steps, src, key("warmup_steps"),
          "must be in [0, " + section + ".steps) = [0, " + std::to_string(t.steps) + "), got " +
              std::to_string(t.warmup_steps));
  require(t.lr_schedule != "exponential" || t.warmup_steps == 0, src, key("warmup_steps"),
          "is only used by the \"cosine\" and \"constant\" schedules");
  require(finite(t.lr_min) && t.lr_min >= 0 && t.lr_min <= t.lr, src, key("lr_min"),
          "must be in [0, " + section + ".lr]");
  require(t.checkpoint_every >= 1, src, key("checkpoint_every"), "must be >= 1");
  require(t.preview_every >= 0, src, key("preview_every"), "must be >= 0 (0 = no previews)");
  require(t.log_every >= 1, src, key("log_every"), "must be >= 1");
  require(t.mixed_precision == "none" || t.mixed_precision == "bf16", src, key("mixed_precision"),
          "must be \"none\" or \"bf16\", got \"" + t.mixed_precision + "\"");
  require(t.device == "auto" || t.device == "cpu" || t.device.rfind("cuda", 0) == 0, src,
          key("device"),
          "must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"" + t.device + "\"");
  require(t.threads >= 0 && t.threads <= 1024, src, key("threads"), "must be in [0, 1024]");
  require(t.prefetch >= 0 && t.prefetch <= 64, src, key("prefetch"), "must be in [0, 64]");
  require(finite(t.dist_timeout) && t.dist_timeout > 0 && t.dist_timeout <= 86400, src, key("dist_timeout"),
          "must be a number of seconds in (0, 86400]");
  return t;
}

}  // namespace detail

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
