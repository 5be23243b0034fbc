#include "engine/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace drdm::detail {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  return buf;
}

ProgressBar::ProgressBar(std::string label, int64_t total, int64_t start, bool enabled)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      start_(start),
      enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0),
      begin_(std::chrono::steady_clock::now()),
      last_draw_() {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(int64_t done, const std::string& suffix) {
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  const bool last = done >= total_;
  if (tty_) {
    if (!last && now - last_draw_ < std::chrono::milliseconds(100)) return;
  } else {
    const int64_t every = std::max<int64_t>(1, total_ / 20);
    if (!last && done / every == last_printed_ / every && last_printed_ >= 0) return;
  }
  last_draw_ = now;
  last_printed_ = done;
  const double elapsed = std::chrono::duration<double>(now - begin_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done - start_) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : -1;
  constexpr int kWidth = 24;
  const int filled =
      static_cast<int>(kWidth * std::min<double>(1.0, static_cast<double>(done) / total_));
  std::string bar(filled, '#');
  bar += std::string(kWidth - filled, '.');
  char rate_text[32];
  if (rate >= 1 || rate == 0)
    std::snprintf(rate_text, sizeof rate_text, "%.1f it/s", rate);
  else
    std::snprintf(rate_text, sizeof rate_text, "%.1f s/it", 1.0 / rate);
  std::fprintf(stderr, "%s%s [%s] %lld/%lld  %s  ETA %s  %s%s", tty_ ? "\r\033[K" : "",
               label_.c_str(), bar.c_str(), static_cast<long long>(done),
               static_cast<long long>(total_), rate_text,
               last ? format_duration(0).c_str() : format_duration(eta).c_str(), suffix.c_str(),
               tty_ ? "" : "\n");
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  if (tty_ && last_printed_ >= 0) std::fputc('\n', stderr);
}

}  // namespace drdm::detail
