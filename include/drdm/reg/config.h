/// @file The reg_synth config (src/reg/config.cpp): every key with its
/// default, read from JSON with overrides and written back.
/// docs/reg_synth.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "drdm/engine/train_section.h"
#include "drdm/reg/mrbs.h"
#include "drdm/reg/voxelmorph.h"

namespace drdm::reg {

/// The defaults of the pretrain and finetune sections: VoxelMorph's Adam at
/// lr 1e-4, constant, batch 8.
inline TrainSection default_reg_train() {
  TrainSection t;
  t.batch_size = 8, t.steps = 1000, t.lr = 1e-4, t.lr_schedule = "constant";
  t.checkpoint_every = 100, t.preview_every = 0, t.log_every = 10;
  return t;
}

/// The finetune section's defaults: as pretraining, and gradients clipped to a
/// global norm of 5. Unclipped NCC fine-tuning collapsed after rare gradient
/// spikes (norms of 10 to 1e5 against a typical 1-2; docs/results/table3.md).
inline TrainSection default_reg_finetune() {
  TrainSection t = default_reg_train();
  t.grad_clip = 5.0;
  return t;
}

/// Every key of a reg_synth config (configs/reg-jsrt-cpu.json; docs/reg_synth.md).
struct RegConfig {
  std::string name = "reg";
  struct Data {
    std::string images, labels;  ///< folders of image / label-map pairs (same file names)
    /// Only these file names (empty = all); e.g. the intact hippocampus volumes.
    std::vector<std::string> include;
    std::vector<int64_t> size = {128, 128};  ///< network grid, tensor order (2 or 3 entries)
    double clip_low_pct = 0.5, clip_high_pct = 99.5;
    std::vector<std::string> classes = {"right lung", "left lung", "heart"};  ///< labels 1..K
    double train_fraction = 0.7;  ///< the first fraction of the sorted files train, the rest test
    int64_t test_pairs = 0;       ///< seeded ordered test pairs (0 = all ordered pairs)
    /// The last this many images of the training part validate (their labels
    /// choose each run's step); 0 = none. Never test images.
    int64_t validation_images = 0;
    int64_t validation_pairs = 40;  ///< seeded ordered validation pairs (0 = all)
    uint64_t seed = 0;              ///< seed of the test-pair list
  } data;
  VoxelMorphOptions
      voxelmorph;  ///< "voxelmorph": encoder, decoder, integration (dims from data.size)
  struct Synthetic {
    int64_t pairs_per_image = 4;
    std::vector<MrbsLevel> mrbs =
        mrbs_options_for({128, 128}).levels;  ///< "mrbs": [[points, max], ...]
    int64_t mrbs_max_tries = 100;
    std::string drdm_model = "chest2d";
    /// {T'_aug, T'_syn} pairs; pair k of an image uses drdm_levels[k % size].
    std::vector<std::vector<int64_t>> drdm_levels = {{10, 30}, {10, 45}};
    int64_t drdm_batch = 8;
    uint64_t seed = 0;
  } synthetic;
  TrainSection pretrain = default_reg_train();  ///< "pretrain": a train section
  double pretrain_lambda = 1.0;  ///< "pretrain.lambda": Eq. 20's weight of ||grad phi||_1
  TrainSection finetune = default_reg_finetune();  ///< "finetune": a train section
  std::string similarity = "ncc";                  ///< "finetune.similarity": "mse" or "ncc"
  int64_t ncc_window = 9;                          ///< "finetune.ncc_window"
  double finetune_lambda = 1.0;                    ///< "finetune.lambda": weight of ||grad phi||^2
  struct Grid {
    std::vector<std::string> pretrain = {"none", "mrbs", "drdm"};
    std::vector<bool> finetune = {false, true};
  } grid;
};

RegConfig load_reg_config(const std::string& path, const std::vector<std::string>& overrides = {});
RegConfig parse_reg_config(const std::string& json_text, const std::string& source,
                           const std::vector<std::string>& overrides = {});
std::string to_json(const RegConfig& config);

}  // namespace drdm::reg
