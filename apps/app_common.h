/// @file Shared start-up for the command-line programs.
#pragma once

#include "drdm/log.h"

namespace drdm::app {

// Logs go to stderr so that stdout carries only results (e.g. JSON).
inline void init_logging(bool verbose) {
  log::use_stderr();
  log::set_level(verbose ? log::Level::kInfo : log::Level::kWarn);
}

}  // namespace drdm::app
