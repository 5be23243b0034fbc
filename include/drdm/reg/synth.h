/// @file Registration with synthetic pretraining (paper Sec. 5, Table 3):
/// VoxelMorph pretrained on DRDM or MRBS pairs with known fields (Eq. 20),
/// optionally fine-tuned without supervision on real inter-subject pairs, and
/// scored by label overlap on held-out pairs. docs/reg_synth.md.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "drdm/io/image_io.h"
#include "drdm/io/dataset.h"
#include "drdm/reg/mrbs.h"
#include "drdm/reg/voxelmorph.h"
#include "drdm/seg/data.h"
#include "drdm/seg/metrics.h"
#include "drdm/engine/train_section.h"

namespace drdm::reg {

/// The defaults of the pretrain and finetune sections: VoxelMorph's Adam at
/// lr 1e-4, constant, batch 8.
inline TrainSection default_reg_train() {
  TrainSection t;
  t.batch_size = 8, t.steps = 1000, t.lr = 1e-4, t.lr_schedule = "constant";
  t.checkpoint_every = 100, t.preview_every = 0, t.log_every = 10;
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
    uint64_t seed = 0;            ///< seed of the test-pair list
  } data;
  VoxelMorphOptions voxelmorph;  ///< "voxelmorph": encoder, decoder, integration (dims from data.size)
  struct Synthetic {
    int64_t pairs_per_image = 4;
    std::vector<MrbsLevel> mrbs = mrbs_options_for({128, 128}).levels;  ///< "mrbs": [[points, max], ...]
    int64_t mrbs_max_tries = 100;
    std::string drdm_model = "chest2d";
    /// {T'_aug, T'_syn} pairs; pair k of an image uses drdm_levels[k % size].
    std::vector<std::vector<int64_t>> drdm_levels = {{10, 30}, {10, 45}};
    int64_t drdm_batch = 8;
    uint64_t seed = 0;
  } synthetic;
  TrainSection pretrain = default_reg_train();  ///< "pretrain": a train section
  double pretrain_lambda = 1.0;  ///< "pretrain.lambda": Eq. 20's weight of ||grad phi||_1
  TrainSection finetune = default_reg_train();  ///< "finetune": a train section
  std::string similarity = "ncc";  ///< "finetune.similarity": "mse" or "ncc"
  int64_t ncc_window = 9;          ///< "finetune.ncc_window"
  double finetune_lambda = 1.0;    ///< "finetune.lambda": weight of ||grad phi||^2
  struct Grid {
    std::vector<std::string> pretrain = {"none", "mrbs", "drdm"};
    std::vector<bool> finetune = {false, true};
  } grid;
};

RegConfig load_reg_config(const std::string& path, const std::vector<std::string>& overrides = {});
RegConfig parse_reg_config(const std::string& json_text, const std::string& source,
                           const std::vector<std::string>& overrides = {});
std::string to_json(const RegConfig& config);

/// One image prepared for the network, with what maps results back to its own grid.
struct RegVolume {
  std::string name, image_path, label_path;
  torch::Tensor image;   ///< float [1, 1, ...size] in [0, 1] on the network grid
  torch::Tensor raw;     ///< float [1, 1, ...S] the file's intensities on its own grid
  torch::Tensor labels;  ///< int64 [1, 1, ...S] on its own grid (undefined without labels)
  GridFit fit;           ///< network grid <-> own grid
  Geometry geometry;     ///< own grid (a single-slice volume squeezed to 2D for 2D networks)
  Geometry file_geometry;  ///< as stored in the file
  PixelType pixel_type = PixelType::kFloat32;  ///< the image file's pixel type
};

/// Reads one image (and its labels when label_path is not empty) for a
/// network of data.size. A 2D network takes 2D images and single-slice
/// volumes. Wrong dimensions, or labels on another grid, are errors naming the files.
RegVolume load_volume(const std::string& image_path, const std::string& label_path, const RegConfig::Data& data);

/// The cases of data (sorted by name, data.include applied) split into the
/// first train_fraction and the rest.
struct RegSplit {
  std::vector<seg::LabelledCase> train, test;
};
RegSplit split_cases(const RegConfig::Data& data);

/// The fixed, seeded list of ordered test pairs (moving, fixed), indices into test, moving != fixed.
std::vector<std::pair<int64_t, int64_t>> test_pairs(int64_t test_cases, int64_t count, uint64_t seed);

/// A bank of synthetic pairs of `kind` ("mrbs" or "drdm") for the training
/// images (float [M, 1, ...size]): pairs_per_image pairs per image, images
/// float16, targets float32. Cached in dir/bank.pt (+ manifest.json); a cache
/// made for other images or settings is rebuilt.
struct PairBank {
  torch::Tensor moving, fixed, target;
  double seconds = 0;  ///< time it took to generate (0 when read from the cache)
};
PairBank synthetic_bank(const std::string& kind, const torch::Tensor& images, const RegConfig& config,
                        const std::string& dir, bool progress = true);

/// Trains VoxelMorph into output_dir with the shared training engine (resumes
/// when a checkpoint is there). phase "pretrain": on `bank` with Eq. 20;
/// phase "finetune": on random ordered pairs of `images` (no labels), starting
/// from init_weights (a model.pt; empty = from scratch). Returns model.pt's path.
std::string train_registration(const RegConfig& config, const std::string& phase, const PairBank& bank,
                               const torch::Tensor& images, const std::string& init_weights,
                               const std::string& output_dir, bool progress = true);

/// A trained registration model; identity = true registers nothing (the zero field).
struct RegModel {
  VoxelMorph net;
  RegConfig config;
  int64_t step = 0;
  bool identity = false;
};
/// Loads a model.pt of train_registration (or a shipped name under models/).
RegModel load_reg_model(const std::string& name_or_path, const torch::Device& device = torch::kCPU);

/// The field of a pair on the moving image's own grid, [1, d, ...S] in
/// voxels: warp(moving.raw, field) ~ fixed. The two volumes must share a grid
/// (an error names both files otherwise).
torch::Tensor register_volumes(RegModel& model, const RegVolume& moving, const RegVolume& fixed);

/// Scores of one registered pair: per class (seg::ClassMetrics of the warped
/// moving labels against the fixed labels, spacing of the fixed file) and the
/// fraction of voxels with det J <= 0.
struct PairResult {
  std::string moving, fixed;
  std::vector<seg::ClassMetrics> classes;
  double folding = 0;
};
PairResult score_pair(const RegVolume& moving, const RegVolume& fixed, const torch::Tensor& field,
                      int64_t num_classes);

/// What reg_synth register wrote, and (with fixed labels) its metrics as a
/// Markdown table: per class DSC, ASD and HD95 before and after registration.
struct RegisterResult {
  std::vector<std::string> written;
  std::string metrics_table;
};

/// reg_synth register: writes field.nii.gz (ITK displacement, mm), warped
/// image, warped labels (when moving_labels is set) and metrics.json (when
/// fixed_labels is set: per class its label value and the metrics after and
/// "before" registration, and mean_dice / mean_dice_before) into
/// output_dir. Refuses, before any work, an output that is one of the inputs
/// (by path or link) and images on different grids or of the network's
/// other dimension.
RegisterResult register_files(RegModel& model, const std::string& moving, const std::string& fixed,
                              const std::string& moving_labels, const std::string& fixed_labels,
                              const std::string& output_dir);

/// Runs Table 3's rows (grid.pretrain x grid.finetune) into output_dir,
/// skipping finished rows and resuming half-finished training; writes
/// results.json, results.md and pair.png.
void run_grid(const RegConfig& config, const std::string& output_dir, bool progress = true);

}  // namespace drdm::reg
