#include "engine/train_section_keys.h"

#include <cmath>
#include <stdexcept>
#include <utility>

namespace drdm::detail {

namespace {

using T = TrainSection;

bool device_ok(const std::string& d) {
  return d == "auto" || d == "cpu" || d.rfind("cuda", 0) == 0;
}
bool seconds_ok(double v) { return std::isfinite(v) && v > 0 && v <= 86400; }

/// The schedule: batch, steps, learning rate, initial weights and seed.
Keys<T> schedule_keys() {
  const auto seed_in = [](int64_t v) { return static_cast<uint64_t>(v); };
  const auto seed_out = [](uint64_t v) { return v; };
  return {
      key("batch_size", &T::batch_size, {in_range<int64_t>(1, 4096)}, "images", "images per step"),
      key("steps", &T::steps, {at_least<int64_t>(1)}, "steps",
          "total optimiser steps. This is the only key that may change on `--resume` (to train "
          "longer)"),
      key("lr", &T::lr, {above_up_to(0.0, 10.0)}, "-",
          "Adam learning rate, in (0, 10] (betas 0.9 and 0.999, eps 1e-8)"),
      key("lr_decay", &T::lr_decay, {above_up_to(0.0, 1.0)}, "per step",
          "`\"exponential\"` schedule: lr · lr_decay^step"),
      key("lr_schedule", &T::lr_schedule, {one_of({"exponential", "cosine", "constant"})}, "-",
          "`\"exponential\"` (lr · lr_decay^step); `\"cosine\"`: linear warm-up over "
          "`warmup_steps` (step s uses "
          "lr·(s+1)/warmup_steps), then a half cosine from lr down to `lr_min` at `steps`; "
          "`\"constant\"`: "
          "warm-up, then lr. With `\"cosine\"` the schedule depends on `steps`, so `--resume --set "
          "train.steps=N` stretches the remaining decay"),
      key("warmup_steps", &T::warmup_steps, {}, "steps",
          "linear warm-up of the `\"cosine\"` and `\"constant\"` schedules (must be 0 for "
          "`\"exponential\"`)"),
      key("lr_min", &T::lr_min, {}, "-",
          "the learning rate the `\"cosine\"` schedule ends at (≤ lr)"),
      key("grad_clip", &T::grad_clip, {at_least<double>(0.0, " (0 = never clip)")}, "-",
          "largest global L2 norm of the gradients (all parameters together): a larger one is "
          "scaled down to it before the Adam step, and the metrics log `grad_norm` (before "
          "clipping). 0 = never clip"),
      key("init_from", &T::init_from, {}, "path",
          "start from the weights of a `model.pt` / `checkpoint.pt` (or a shipped model's name, "
          "via `drdm_train "
          "--init-from`) with a fresh optimiser and schedule from step 0: fine-tuning a shipped "
          "model on your own "
          "domain, or continuing training in a new run. The network must have the same shape "
          "(dims, channels, "
          "time embedding, T, K); the image size may differ. Ignored by `--resume`, which "
          "continues from the "
          "run's own checkpoint"),
      key_as<int64_t>("seed", &T::seed, seed_in, seed_out, {at_least<int64_t>(0)}, "-",
                      "every random choice (initial weights, batches, augmentation, t, fields) "
                      "derives from (seed, "
                      "step), so runs are reproducible and `--resume` is bit-exact on the CPU"),
  };
}

/// How the run is carried out: checkpoints, logs, precision, device, threads, data-parallel.
Keys<T> run_keys() {
  return {
      key("checkpoint_every", &T::checkpoint_every, {at_least<int64_t>(1)}, "steps",
          "atomic `checkpoint.pt` and `model.pt`; a checkpoint is also written at the end"),
      key("preview_every", &T::preview_every, {at_least<int64_t>(0, " (0 = no previews)")}, "steps",
          "`previews/step_NNNNNN.png` (0 = none). Each row shows original, deformed, deformed grid "
          "and \\|φ\\|, "
          "then deformed, recovered by one predicted step, recovery grid and \\|ψ̂\\|"),
      key("log_every", &T::log_every, {at_least<int64_t>(1)}, "steps",
          "one JSON line in `metrics.jsonl` per window (losses, t, lr, seconds per step, images "
          "per second)"),
      key("validate_every", &T::validate_every, {at_least<int64_t>(0, " (0 = no validation)")},
          "steps",
          "`seg_fewshot` and `reg_synth`: score the held-out validation subjects every this many "
          "steps and at the end (0 = never). The best-scoring weights are kept as `best.pt` and "
          "are the run's result; `validation.json` holds the history. Must be 0 for `drdm_train`"),
      key("patience", &T::patience, {at_least<int64_t>(0, " (0 = train all steps)")}, "checks",
          "with validation: stop once this many checks in a row have not beaten the best (0 = "
          "never stop early); `steps` is then a cap"),
      key("mixed_precision", &T::mixed_precision, {one_of({"none", "bf16"})}, "-",
          "`\"bf16\"`: the network's forward pass runs under bf16 autocast, on CUDA or the CPU "
          "(parameters, "
          "fields, images and checkpoints stay float32; on the CPU the dilated convolutions stay "
          "float32, whose "
          "oneDNN bf16 weight gradient returns NaN). Worth it on GPUs and on CPUs with AVX512-BF16 "
          "or AMX; "
          "elsewhere oneDNN emulates bf16 and it is slower (a warning says so). See "
          "docs/performance.md, "
          "\"Throughput (issue 21)\""),
      key("device", &T::device,
          {check<std::string>("must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"", device_ok,
                              true)},
          "-",
          "`\"auto\"` (CUDA when present), `\"cpu\"`, `\"cuda\"`, `\"cuda:N\"`; `--device` "
          "overrides it"),
      key("threads", &T::threads, {in_range<int64_t>(0, 1024)}, "threads",
          "CPU intra-op threads (0 = LibTorch's default)"),
      key("prefetch", &T::prefetch, {in_range<int64_t>(0, 64)}, "batches",
          "batches prepared ahead on a loader thread (0 = load in the training loop); the loader "
          "runs its tensor "
          "operations on its own single thread, so it never competes with the training step's "
          "threads"),
      key("dist_timeout", &T::dist_timeout,
          {check<double>("must be a number of seconds in (0, 86400]", seconds_ok)}, "s",
          "data-parallel runs ([distributed.md](distributed.md)): how long the rendezvous waits "
          "for every rank, "
          "and each all-reduce for the others; `DRDM_DIST_TIMEOUT` overrides it. Ignored by one "
          "process; may "
          "change on `--resume`"),
      key("dist_master", &T::dist_master, {}, "-",
          "data-parallel runs: rank 0's `host:port` when the launcher does not set `MASTER_ADDR` / "
          "`MASTER_PORT` (e.g. `srun`); may change on `--resume`"),
  };
}

}  // namespace

const Keys<TrainSection>& train_section_keys() {
  static const Keys<TrainSection> keys = [] {
    auto all = schedule_keys();
    for (auto& k : run_keys()) all.push_back(std::move(k));
    return all;
  }();
  return keys;
}

void check_train_section(const TrainSection& t, const std::string& src,
                         const std::string& section) {
  const auto key = [&](const char* k) { return section + "." + k; };
  require(t.warmup_steps >= 0 && t.warmup_steps < t.steps, src, key("warmup_steps"),
          "must be in [0, " + section + ".steps) = [0, " + std::to_string(t.steps) + "), got " +
              std::to_string(t.warmup_steps));
  require(t.lr_schedule != "exponential" || t.warmup_steps == 0, src, key("warmup_steps"),
          "is only used by the \"cosine\" and \"constant\" schedules");
  require(std::isfinite(t.lr_min) && t.lr_min >= 0 && t.lr_min <= t.lr, src, key("lr_min"),
          "must be in [0, " + section + ".lr]");
}

}  // namespace drdm::detail
