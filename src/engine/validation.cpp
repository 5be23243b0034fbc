// Held-out validation inside a training run (RunSpec::validate): the history
// in validation.json, the best weights in best.pt, and early stopping.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "drdm/core/log.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/text_file.h"
#include "io/files.h"

namespace drdm {
namespace {

std::string history_path(const RunSpec& spec) { return spec.output_dir + "/validation.json"; }

std::string format_score(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4f", v);
  return text;
}

}  // namespace

// On resume: the checks up to the resumed step (later ones will be repeated
// exactly); a fresh run starts with none.
void TrainingRun::load_validation_history() {
  history_.clear();
  best_step_ = -1;
  const auto path = history_path(spec_);
  if (spec_.resume && detail::file_exists(path)) {
    std::ifstream in(path);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
      for (const auto& h : j.at("history"))
        if (h.at("step").get<int64_t>() <= first_step_)
          history_.emplace_back(h.at("step").get<int64_t>(), h.at("score").get<double>());
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error("cannot resume: '" + path + "' is damaged: " + e.what());
    }
  }
  for (const auto& [step, score] : history_)
    if (std::isfinite(score) && (best_step_ < 0 || score > best_score_))
      best_step_ = step, best_score_ = score;
}

namespace {

nlohmann::json history_json(const RunSpec& spec, const std::vector<std::pair<int64_t, double>>& h,
                            int64_t best_step, double best, bool stopped) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& [step, score] : h) list.push_back({{"step", step}, {"score", score}});
  return {{"measure", spec.validation_name},
          {"every", spec.validate_every},
          {"patience", spec.patience},
          {"history", list},
          {"best_step", best_step},
          {"best", best_step < 0 ? nlohmann::json() : nlohmann::json(best)},
          {"stopped_early", stopped}};
}

}  // namespace

// Scores the weights of step `done`, keeps them when best, and says whether
// patience has run out. Order of writes: best.pt, validation.json, then the
// caller's checkpoint; an interruption between them is repeated on resume.
bool TrainingRun::validate_now(int64_t done) {
  const double score = spec_.validate();
  history_.emplace_back(done, score);
  const bool better = std::isfinite(score) && (best_step_ < 0 || score > best_score_);
  if (better) best_step_ = done, best_score_ = score;
  int64_t since = 0;
  for (const auto& h : history_) since += h.first > best_step_ ? 1 : 0;
  const bool stop = spec_.patience > 0 && since >= spec_.patience;
  if (dist::world().writer()) {
    if (better)
      save_checkpoint(spec_.output_dir + "/best.pt", spec_.kind, spec_.config, done, weights_());
    write_text_atomically(
        history_path(spec_),
        history_json(spec_, history_, best_step_, best_score_, stop).dump(1) + "\n");
  }
  log::info(
      spec_.validation_name + " at step " + std::to_string(done) + ": " + format_score(score) +
      (better ? " (best)"
              : " (best " + format_score(best_score_) + " at step " + std::to_string(best_step_) +
                    ")") +
      (stop ? "; no improvement in " + std::to_string(spec_.patience) + " checks: stopping" : ""));
  return stop;
}

void TrainingRun::finish_validation(RunSummary& summary) const {
  if (!validating() || best_step_ < 0) return;
  summary.model = spec_.output_dir + "/best.pt";
  summary.chosen_step = best_step_;
  summary.best_validation = best_score_;
}

}  // namespace drdm
