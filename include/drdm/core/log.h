/// @file Logging facade over spdlog (kept out of Torch translation units: LibTorch ships its own
/// fmt).
#pragma once

#include <string>

namespace drdm::log {

enum class Level { kDebug, kInfo, kWarn, kError, kOff };

/// Minimum level that is printed (default: kInfo).
void set_level(Level level);
/// Sends log lines to stderr (the default for the programs, so stdout keeps results).
void use_stderr();

void debug(const std::string& message);
void info(const std::string& message);
void warn(const std::string& message);
void error(const std::string& message);

}  // namespace drdm::log
