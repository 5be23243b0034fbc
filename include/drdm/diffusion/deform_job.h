/// @file What `drdm_deform` does: files, folders or MSD / nnU-Net datasets in,
/// generated fields, warped images and labels, previews and a manifest out.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "drdm/diffusion/generate.h"
#include "drdm/io/models.h"

namespace drdm {

/// What to produce for each input case.
enum class DeformMode {
  kDeform,   ///< Alg. 2: generated field, warped image (and labels when given)
  kAugment,  ///< Alg. 3: as kDeform, labels required
  kPairs,    ///< Alg. 4: moving, fixed and the target field phi_syn
};
std::string to_string(DeformMode mode);
/// "deform", "augment" or "pairs"; throws std::invalid_argument otherwise.
DeformMode parse_deform_mode(const std::string& name);

/// One deformation level; in pairs mode `syn` is T'_syn (aug = syn when
/// written as a single number). Text form: "45" or "45:30" (aug:syn).
struct DeformLevel {
  int64_t aug = 45;
  int64_t syn = 45;
};
/// Parses "30,45" or "45:30,60:20"; throws std::invalid_argument naming the bad entry.
std::vector<DeformLevel> parse_levels(const std::string& text);

/// Upper bounds of DeformJobOptions::samples and ::batch (checked before any
/// work or allocation).
constexpr int64_t kMaxDeformSamples = 100000;
constexpr int64_t kMaxDeformBatch = 4096;

/// Everything drdm_deform takes. JSON config keys (drdm_deform --config) are
/// the member names; the command line overrides the file.
struct DeformJobOptions {
  std::string model;   ///< model.pt / checkpoint.pt; empty: default_model_path()
  std::string input;   ///< a file, a folder of images, or an MSD / nnU-Net dataset folder
  std::string labels;  ///< a label file, or a folder of label maps matched by name (optional)
  std::string output;  ///< output folder (created)
  DeformMode mode = DeformMode::kDeform;
  std::vector<DeformLevel> levels{{30, 30}, {45, 45}};
  int64_t samples = 4;  ///< samples per input and level, in [1, kMaxDeformSamples]
  uint64_t seed = 0;
  std::string device = "auto";
  int64_t shard_index = 0,
          shard_count = 1;  ///< this job does inputs i, i + n, i + 2n, ... (0 <= i < n)
  int64_t batch = 16;  ///< samples per network pass (2D slices count one each), <= kMaxDeformBatch
  RecoverySchedule schedule = RecoverySchedule::kFromLevel;
  LabelInterpolation label_interpolation = LabelInterpolation::kNearest;
  Padding padding = Padding::kZeros;
  int64_t slice_axis = -1;  ///< 3D inputs to a 2D model: tensor axis; -1: the model's
  SliceMode slice_mode =
      SliceMode::kCoherent;  ///< 3D inputs to a 2D model: coherent volumes or independent slices
  double slice_sigma = 2.0;  ///< kCoherent: smoothing of recovery steps across slices, in slices
  bool previews = true;
  bool progress = true;
  int64_t threads = 0;                   ///< CPU threads (0: LibTorch's default)
  std::string mixed_precision = "none";  ///< "none" or "bf16": network passes under bf16 autocast
};

/// --shard: "i/n" -> (i, n), or "auto": the shard of a Slurm job array task
/// (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) or
/// of a torchrun worker (RANK of WORLD_SIZE). Throws naming the option or the
/// variables when the text or the environment gives no shard; the range
/// 0 <= i < n is checked here for auto and by run_deform_job for i/n.
std::pair<int64_t, int64_t> parse_shard(const std::string& text);

/// Reads a drdm_deform JSON config into `options` (keys present replace the
/// defaults). Unknown keys and wrong types are errors naming the file and key.
void load_deform_config(const std::string& path, DeformJobOptions& options);
/// The options as JSON (what `config.json` in the output holds).
std::string to_json(const DeformJobOptions& options);

/// What a run produced.
struct DeformJobSummary {
  int64_t cases = 0;    ///< input cases processed by this shard
  int64_t samples = 0;  ///< samples written
  double seconds = 0;
  std::string manifest;  ///< path of the manifest
};

/// Runs drdm_deform: checks the options and every input first (readable,
/// labels on the image's grid, dimensions the model can take, label values
/// that soft interpolation can take) so that bad input stops the run before
/// anything is written; takes the output folder's lock (OUTPUT/.drdm.lock;
/// shards share the folder, one process per shard); then writes per sample the field (ITK
/// displacement field, mm), the warped image(s), the warped labels and a
/// preview PNG, and finally manifest.json (manifest-shard-I-of-N.json for a
/// shard) with every sample's input, level, seed, outputs and metrics
/// (max/mean magnitude in % of the image size and folding ratio, on the
/// written field). For a dataset input the output is a dataset of the same
/// layout (originals copied, augmented cases added, dataset.json updated).
/// Throws std::runtime_error / std::invalid_argument naming the file or key.
DeformJobSummary run_deform_job(const DeformJobOptions& options);

/// What a merge produced.
struct DeformMergeSummary {
  int64_t shards = 0;    ///< n, the shards merged
  int64_t cases = 0;     ///< input cases of the job
  int64_t samples = 0;   ///< samples in the merged manifest
  int64_t files = 0;     ///< files brought into `merged` from other folders (0 in place)
  std::string manifest;  ///< path of the merged manifest.json
};

/// drdm_deform merge: joins the shards of one job (manifest-shard-I-of-N.json
/// and config-shard-I-of-N.json, in one shared folder or one folder per
/// shard) into what the unsharded run writes: the same files, manifest.json
/// (samples in the unsharded order, summary recomputed over all of them) and
/// config.json (options.shard "0/1", options.output the merged folder), and
/// for a dataset output dataset.json and splits_final.json over all cases.
/// `merged` empty: `folders` must be one folder, merged in place. Otherwise
/// the shard folders' files are hard-linked (byte copies across file
/// systems) into `merged` first. Everything is checked before anything is
/// written: n shard manifests 0..n-1 all present once, one job (the same
/// options except shard and output, the same model and device), no sample
/// twice, every listed file present, no file that `merged` already holds
/// with other bytes, no other run's manifest or config in `merged`. Every
/// file is written atomically, manifest.json last. Throws
/// std::runtime_error / std::invalid_argument naming the file and key.
DeformMergeSummary merge_deform_shards(const std::vector<std::string>& folders,
                                       const std::string& merged = "");

}  // namespace drdm
