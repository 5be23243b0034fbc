/// @file Few-shot segmentation (paper Sec. 4, Table 2): a U-Net trained on a
/// few labelled subjects with no augmentation, BigAug, or DRDM-deformed
/// copies (Alg. 3), evaluated on held-out subjects.
///
/// The umbrella a program includes; each part has the header of its own .cpp.
#pragma once

#include "drdm/seg/config.h"    // SegConfig: load, parse, to_json
#include "drdm/seg/evaluate.h"  // predict, evaluate, metrics table and JSON
#include "drdm/seg/grid.h"      // Table 2's grid of runs
#include "drdm/seg/train.h"     // subjects, DRDM bank, training, SegModel
