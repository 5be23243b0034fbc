// Private: what the parts of drdm_deform's job share. The API is
// drdm/diffusion/deform_job.h; the parts:
//   deform_config.cpp     options, config files and their JSON
//   deform_discovery.cpp  the input's cases: a file, a folder, an MSD / nnU-Net dataset
//   deform_splits.cpp     splits_final.json of a dataset output (k-fold)
//   deform_writers.cpp    the output files of the samples, dataset.json, copies
//   deform_manifest.cpp   the manifest, and merging the shards of one job
//   deform_run.cpp        the run: cases in, samples out (run_deform_job)
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "drdm/diffusion/deform_job.h"
#include "drdm/diffusion/generate.h"
#include "drdm/io/image_io.h"

namespace drdm::detail::deform {

using nlohmann::json;

// --- deform_config.cpp: options, config files and their JSON ---------------

/// "30,45:60": the levels as --levels takes them.
std::string levels_text(const std::vector<DeformLevel>& levels);
/// The whole file; throws std::runtime_error naming it when it cannot be read.
std::string read_text(const std::string& path);
/// A JSON file (duplicate keys refused); throws std::runtime_error naming it.
json parse_json_file(const std::string& path);
/// The checks on options that need neither the model nor the data.
void check_job_options(const DeformJobOptions& o);

// --- deform_discovery.cpp: the input's cases --------------------------------

struct Case {
  std::string name;                 ///< case identifier (output names start with it)
  std::vector<std::string> images;  ///< one file per channel
  std::string labels;               ///< optional
  std::string ext;                  ///< extension of the image files
};

struct Inputs {
  std::vector<Case> cases;
  bool dataset = false;                 ///< an MSD / nnU-Net dataset folder
  bool nnunet = false;                  ///< channel files named CASE_XXXX
  std::string root;                     ///< the dataset folder
  nlohmann::ordered_json dataset_json;  ///< keeps the file's key order
  /// imagesTs, labelsTs: those present, carried over unchanged
  std::vector<std::string> test_dirs;
  std::vector<std::string> test_files;  ///< their files, relative to root ("imagesTs/x.nii.gz")
  json splits;                          ///< the input's splits_final.json, or null
};

/// "case_0000" -> ("case", 0) for nnU-Net channel files; ("", -1) otherwise.
std::pair<std::string, int> nnunet_channel(const std::string& stem);
/// The input dataset's own nnU-Net split (splits_final.json beside dataset.json), if any,
/// into in.splits: a list of {"train": [case, ...], "val": [case, ...]}.
void find_splits(Inputs& in);
/// The cases of the input: a file, a dataset folder or a folder of images.
Inputs discover(const DeformJobOptions& o);
/// config.json and the manifest hold these paths: JSON needs them in UTF-8, checked before any
/// work (not when the manifest is written, after all of it).
void require_utf8_names(const DeformJobOptions& o, const Inputs& in, const std::string& model_path);
/// Checks one case: dimension, channels and labels on one grid, data readable.
void check_case(const Case& c, int64_t model_dims, DeformMode mode,
                LabelInterpolation label_interpolation);

// --- deform_splits.cpp: splits_final.json -----------------------------------

/// The case a case of ours comes from: its name without the
/// "_drdm_T<aug>[-<syn>]_s<k>" suffixes drdm_deform adds (all of them, for a
/// dataset deformed twice).
std::string source_case(std::string name);
/// Writes OUT/splits_final.json (nnU-Net v2's cross-validation split) over
/// `cases`, keeping every source case and its deformed copies in one fold.
void write_splits(const Inputs& in, const std::string& out_dir,
                  const std::map<std::string, std::string>& cases);

// --- deform_writers.cpp: output files ---------------------------------------

/// Copies a file byte for byte, atomically (nothing partial is ever visible at `to`).
void copy_file(const std::string& from, const std::string& to);
/// Cases now in OUT/imagesTr (all shards' work that has finished): name -> extension.
std::map<std::string, std::string> cases_present(const Inputs& in, const std::string& out_dir);
/// Rewrites OUT/dataset.json from the input's, listing `cases`.
void update_dataset_json(const Inputs& in, const std::string& out_dir,
                         const std::map<std::string, std::string>& cases);
/// Copies the input's test set (imagesTs/, labelsTs/) unchanged: byte copies
/// (not links, so that editing the output never edits the input), each atomic.
void copy_test_set(const Inputs& in, const std::string& out_dir);

/// Where a run writes: folder names by mode and input kind.
struct OutputLayout {
  bool pairs = false;        ///< pairs mode: moving and fixed images, both fields
  bool dataset_out = false;  ///< an MSD / nnU-Net dataset in and out (not in pairs mode)
  bool nnunet = false;       ///< channel files named CASE_XXXX
  std::string images, labels, fields, previews;
};

OutputLayout output_layout(const Inputs& in, DeformMode mode);

/// The output folders, made when the first sample is ready, so that a case
/// that fails to read (corrupt data, NaN) before it leaves nothing behind.
class OutputFolders {
 public:
  OutputFolders(const DeformJobOptions& o, const OutputLayout& l, const std::vector<Case>& cases);
  void ensure();

 private:
  std::string root_;
  std::vector<std::string> dirs_;
  bool made_ = false;
};

/// One case in memory: its channels as one tensor, labels, grid and the
/// types and extensions its outputs get.
struct CaseData {
  at::Tensor image;   ///< [1, C, ...S]
  at::Tensor labels;  ///< [1, 1, ...S], or undefined
  Geometry geometry;
  PixelType pixel = PixelType::kFloat32;  ///< the input's (PNG keeps uint8 / uint16)
  std::string label_ext, field_ext;
};

CaseData read_case(const Case& c);

/// One sample to make: its level, index and seed.
struct Work {
  DeformLevel level;
  int64_t k = 0;
  uint64_t seed = 0;
};

/// What the deformer made for a chunk of work, on the CPU. Deform and
/// augment modes fill images/labels/fields; pairs mode fills them with the
/// moving side and the fixed side too.
struct Generated {
  at::Tensor images, labels, fields;
  at::Tensor fixed, fixed_labels, moving_fields;
};

/// Writes one case's samples and returns their manifest records.
class CaseWriter {
 public:
  /// `slice_axis`: the axis a volume went through a 2D model along, or -1.
  CaseWriter(const DeformJobOptions& o, const OutputLayout& l, const Case& c, const CaseData& d,
             int64_t slice_axis)
      : o_(o), l_(l), c_(c), d_(d), axis_(slice_axis) {}

  /// Row `i` of `g`, made from `w`.
  json write(const Generated& g, int64_t i, const Work& w) const;

 private:
  json channels(const std::string& dir, const std::string& sample, const at::Tensor& row) const;
  std::string labels(const std::string& dir, const std::string& sample,
                     const at::Tensor& row) const;
  std::string field_file(const std::string& dir, const std::string& sample,
                         const at::Tensor& field) const;
  std::string preview(const std::string& sample, const at::Tensor& before, const at::Tensor& after,
                      const at::Tensor& field) const;
  json record(const Work& w, const json& outputs, const at::Tensor& field) const;

  const DeformJobOptions& o_;
  const OutputLayout& l_;
  const Case& c_;
  const CaseData& d_;
  int64_t axis_;
};

// --- deform_manifest.cpp: the manifest --------------------------------------

/// What describes the run beside its samples: program, model, options, summary.
json manifest_json(const DeformJobOptions& o, const std::string& model_path, int64_t model_step,
                   const Deformer& deformer, size_t cases, json samples);

}  // namespace drdm::detail::deform
