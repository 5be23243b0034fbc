/// @file Table 2's grid of few-shot runs (src/seg/grid.cpp).
#pragma once

#include <string>

#include "drdm/seg/config.h"

namespace drdm::seg {

/// Runs the grid into output_dir: augmentation x subjects x seeds, skipping
/// finished runs and resuming half-finished ones; writes results.json,
/// results.md and predictions.png.
void run_grid(const SegConfig& config, const std::string& output_dir, bool progress = true);

}  // namespace drdm::seg
