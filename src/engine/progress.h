// Private: a progress bar on stderr for long work (training, generation).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace drdm::detail {

/// Draws "label [#####.....] 120/2000  5.2 it/s  ETA 6m01s  <suffix>" on
/// stderr. On a terminal the line is redrawn in place (at most ~10 times a
/// second); otherwise a plain line is printed about every 5% so that logs stay
/// short. Disabled bars print nothing.
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, int64_t start = 0, bool enabled = true);
  ~ProgressBar();
  /// Reports that `done` of `total` units are finished.
  void update(int64_t done, const std::string& suffix = {});
  /// Ends the line (called by the destructor too).
  void finish();

 private:
  std::string label_;
  int64_t total_, start_, last_printed_ = -1;
  bool enabled_, tty_, finished_ = false;
  std::chrono::steady_clock::time_point begin_, last_draw_;
};

/// "1h02m", "6m01s", "42s".
std::string format_duration(double seconds);

}  // namespace drdm::detail
