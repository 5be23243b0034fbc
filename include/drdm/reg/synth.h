/// @file Registration with synthetic pretraining (paper Sec. 5, Table 3):
/// VoxelMorph pretrained on DRDM or MRBS pairs with known fields (Eq. 20),
/// optionally fine-tuned without supervision on real inter-subject pairs, and
/// scored by label overlap on held-out pairs. docs/reg_synth.md.
///
/// The umbrella a program includes; each part has the header of its own .cpp.
#pragma once

#include "drdm/reg/config.h"    // RegConfig: load, parse, to_json
#include "drdm/reg/data.h"      // RegVolume, the train/test split, test pairs
#include "drdm/reg/evaluate.h"  // register and score pairs, reg_synth register
#include "drdm/reg/grid.h"      // Table 3's grid of runs
#include "drdm/reg/train.h"     // synthetic pair banks, training, RegModel
