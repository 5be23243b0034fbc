// Private: the key table of the "train" section that every trainer's config
// shares (DRDM, seg_fewshot, reg_synth's pretrain and finetune phases).
#pragma once

#include <string>

#include "drdm/engine/train_section.h"
#include "engine/config_keys.h"

namespace drdm::detail {

/// The section's keys, each declared once (docs/configs.md, `train`).
const Keys<TrainSection>& train_section_keys();

/// The checks across the section's keys (warm-up within the steps, lr_min
/// at most lr); `section` names the section in the messages.
void check_train_section(const TrainSection& train, const std::string& source,
                         const std::string& section = "train");

}  // namespace drdm::detail
