/// @file Table 3's grid of registration runs (src/reg/grid.cpp).
#pragma once

#include <string>

#include "drdm/reg/config.h"

namespace drdm::reg {

/// Runs Table 3's rows (grid.pretrain x grid.finetune) into output_dir,
/// skipping finished rows and resuming half-finished training; writes
/// results.json, results.md and pair.png.
void run_grid(const RegConfig& config, const std::string& output_dir, bool progress = true);

}  // namespace drdm::reg
