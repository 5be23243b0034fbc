// Built without LibTorch's include path: spdlog must see Debian's fmt, not
// the newer fmt that LibTorch bundles.
#include "drdm/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace drdm::log {
namespace {

std::shared_ptr<spdlog::logger>& logger() {
  static std::shared_ptr<spdlog::logger> instance = [] {
    auto l = spdlog::stdout_color_mt("drdm");
    l->set_pattern("[%H:%M:%S] %^%l%$ %v");
    return l;
  }();
  return instance;
}

}  // namespace

void set_level(Level level) {
  static constexpr spdlog::level::level_enum map[] = {spdlog::level::debug, spdlog::level::info,
                                                      spdlog::level::warn, spdlog::level::err,
                                                      spdlog::level::off};
  logger()->set_level(map[static_cast<int>(level)]);
}

void use_stderr() {
  const auto level = logger()->level();
  spdlog::drop("drdm");
  logger() = spdlog::stderr_color_mt("drdm");
  logger()->set_pattern("[%H:%M:%S] %^%l%$ %v");
  logger()->set_level(level);
}

void debug(const std::string& message) { logger()->debug(message); }
void info(const std::string& message) { logger()->info(message); }
void warn(const std::string& message) { logger()->warn(message); }
void error(const std::string& message) { logger()->error(message); }

}  // namespace drdm::log
