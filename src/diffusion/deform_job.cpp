#include "drdm/diffusion/deform_job.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

#include "core/parse_integer.h"
#include "core/soft_labels.h"
#include "diffusion/deform_internal.h"
#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "drdm/diffusion/inference.h"
#include "drdm/engine/distributed.h"
#include "drdm/io/commands.h"
#include "drdm/io/image_io.h"
#include "drdm/io/preview.h"
#include "engine/config_json.h"
#include "engine/progress.h"
#include "engine/run_kind.h"
#include "io/atomic_file.h"
#include "io/grid_check.h"
#include "io/input_checks.h"
#include "io/run_lock.h"

namespace drdm {

using nlohmann::json;

using detail::deform::check_job_options;
using detail::deform::levels_text;
using detail::deform::parse_json_file;
using detail::deform::read_text;

// ---------------------------------------------------------------------------
namespace {

using detail::base_name;
using detail::join;
using detail::list_images;
using detail::split_name;

/// "case_0000" -> ("case", 0) for nnU-Net channel files; ("", -1) otherwise.
std::pair<std::string, int> nnunet_channel(const std::string& stem) {
  if (stem.size() < 6 || stem[stem.size() - 5] != '_') return {"", -1};
  for (size_t i = stem.size() - 4; i < stem.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(stem[i]))) return {"", -1};
  return {stem.substr(0, stem.size() - 5), std::stoi(stem.substr(stem.size() - 4))};
}

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
  std::vector<std::string>
      test_dirs;  ///< imagesTs, labelsTs: those present, carried over unchanged
  std::vector<std::string> test_files;  ///< their files, relative to root ("imagesTs/x.nii.gz")
  nlohmann::json splits;                ///< the input's splits_final.json, or null
};

/// Non-hidden regular files directly in `folder` (links followed), sorted.
std::vector<std::string> list_files(const std::string& folder) {
  DIR* dir = ::opendir(folder.c_str());
  if (dir == nullptr) throw std::runtime_error("cannot read folder '" + folder + "'");
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    try {
      detail::require_not_dangling(join(folder, name));  // a broken link would drop a file silently
    } catch (...) {
      ::closedir(dir);
      throw;
    }
    if (detail::file_exists(join(folder, name))) names.push_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

/// The input dataset's test set (imagesTs/, labelsTs/): every file must be readable.
void find_test_set(Inputs& in) {
  for (const char* sub : {"imagesTs", "labelsTs"}) {
    if (!detail::dir_exists(join(in.root, sub))) continue;
    in.test_dirs.push_back(sub);
    for (const auto& f : list_files(join(in.root, sub))) {
      const std::string rel = std::string(sub) + "/" + f;
      if (::access(join(in.root, rel).c_str(), R_OK) != 0)
        throw std::runtime_error("cannot read '" + join(in.root, rel) +
                                 "' (the test set is copied to the output)");
      in.test_files.push_back(rel);
    }
  }
}

/// The input dataset's own nnU-Net split (splits_final.json beside dataset.json), if any:
/// a list of {"train": [case, ...], "val": [case, ...]}.
void find_splits(Inputs& in) {
  const std::string path = join(in.root, "splits_final.json");
  if (!detail::file_exists(path)) return;
  json j;
  try {
    j = json::parse(read_text(path));
  } catch (const json::exception& e) {
    throw std::runtime_error("'" + path + "' is not valid JSON: " + e.what());
  }
  const auto names = [](const json& v) {
    return v.is_array() &&
           std::all_of(v.begin(), v.end(), [](const json& x) { return x.is_string(); });
  };
  bool ok = j.is_array() && !j.empty();
  for (const auto& fold : j)
    ok = ok && fold.is_object() && names(fold.value("train", json())) &&
         names(fold.value("val", json()));
  if (!ok)
    throw std::runtime_error(
        "'" + path + "': expected nnU-Net's splits, a list of {\"train\": [...], \"val\": [...]}");
  in.splits = std::move(j);
}

/// One image file (and one label file).
Inputs discover_file(const DeformJobOptions& o) {
  Inputs in;
  const auto [stem, ext] = split_name(base_name(o.input));
  if (stem.empty())
    throw std::runtime_error("'" + o.input +
                             "' is not a supported image (.nii.gz, .nii, .mha, .mhd, .nrrd, .png)");
  if (!o.labels.empty() && !detail::file_exists(o.labels))
    throw std::runtime_error("labels '" + o.labels + "' is not a file (the input is one file)");
  in.cases.push_back({stem, {o.input}, o.labels, ext});
  return in;
}

/// imagesTr/ files -> cases: nnU-Net channel files (CASE_XXXX) grouped per
/// case when every file is one, else one case per file.
void dataset_cases(Inputs& in) {
  const std::string images = join(in.root, "imagesTr");
  const auto files = list_images(images);
  if (files.empty()) throw std::runtime_error("'" + images + "' holds no images");
  bool all_channels = true;
  for (const auto& f : files)
    all_channels = all_channels && nnunet_channel(split_name(f).first).second >= 0;
  in.nnunet = all_channels;
  std::map<std::string, std::map<int, std::string>> grouped;
  std::map<std::string, std::string> ext_of;
  for (const auto& f : files) {
    const auto [stem, ext] = split_name(f);
    const auto [name, channel] = in.nnunet ? nnunet_channel(stem) : std::make_pair(stem, 0);
    if (in.nnunet && name.empty()) continue;
    grouped[name][channel] = join(images, f);
    ext_of[name] = ext;
  }
  for (const auto& [name, channels] : grouped) {
    Case c{name, {}, "", ext_of[name]};
    int expect = 0;
    for (const auto& [ch, path] : channels) {
      if (ch != expect++)
        throw std::runtime_error("dataset case '" + name + "' misses channel " +
                                 std::to_string(expect - 1) + " in imagesTr/");
      c.images.push_back(path);
    }
    const std::string label = join(join(in.root, "labelsTr"), name + c.ext);
    if (detail::file_exists(label)) c.labels = label;
    in.cases.push_back(std::move(c));
  }
}

/// An MSD / nnU-Net dataset folder: dataset.json, imagesTr/, labelsTr/,
/// and what is carried over (imagesTs/, labelsTs/, splits_final.json).
Inputs discover_dataset(const DeformJobOptions& o, const std::string& dataset_json) {
  Inputs in;
  in.dataset = true;
  in.root = o.input;
  try {
    in.dataset_json = nlohmann::ordered_json::parse(read_text(dataset_json));
  } catch (const json::exception& e) {
    throw std::runtime_error("'" + dataset_json + "' is not valid JSON: " + e.what());
  }
  if (!in.dataset_json.is_object())
    throw std::runtime_error("'" + dataset_json + "': expected a JSON object");
  if (!o.labels.empty())
    throw std::invalid_argument(
        "--labels is not used with a dataset folder (labels come from its labelsTr/)");
  find_test_set(in);
  find_splits(in);
  dataset_cases(in);
  return in;
}

/// A plain folder of images, with an optional parallel folder of labels
/// matched by name (CASE_0000 also matches CASE).
Inputs discover_folder(const DeformJobOptions& o) {
  Inputs in;
  const auto files = list_images(o.input);
  if (files.empty()) throw std::runtime_error("folder '" + o.input + "' holds no supported images");
  std::map<std::string, std::string> labels;  // stem -> path
  if (!o.labels.empty()) {
    if (!detail::dir_exists(o.labels))
      throw std::runtime_error("labels '" + o.labels + "' is not a folder (the input is a folder)");
    for (const auto& f : list_images(o.labels)) labels[split_name(f).first] = join(o.labels, f);
  }
  for (const auto& f : files) {
    const auto [stem, ext] = split_name(f);
    Case c{stem, {join(o.input, f)}, "", ext};
    if (!o.labels.empty()) {
      auto it = labels.find(stem);
      if (it == labels.end()) {
        const auto [name, ch] = nnunet_channel(stem);
        if (ch >= 0) it = labels.find(name);
      }
      if (it == labels.end())
        throw std::runtime_error("no label map for '" + c.images[0] + "' in '" + o.labels + "'");
      c.labels = it->second;
    }
    in.cases.push_back(std::move(c));
  }
  return in;
}

/// The cases of the input: a file, a dataset folder or a folder of images.
Inputs discover(const DeformJobOptions& o) {
  if (detail::file_exists(o.input)) return discover_file(o);
  if (!detail::dir_exists(o.input))
    throw std::runtime_error("input '" + o.input + "' does not exist");
  const std::string dataset_json = join(o.input, "dataset.json");
  if (detail::file_exists(dataset_json) && detail::dir_exists(join(o.input, "imagesTr")))
    return discover_dataset(o, dataset_json);
  return discover_folder(o);
}

/// config.json and the manifest hold these paths: JSON needs them in UTF-8, checked before any
/// work (not when the manifest is written, after all of it).
void require_utf8_names(const DeformJobOptions& o, const Inputs& in,
                        const std::string& model_path) {
  std::vector<std::string> paths = {o.input, o.output, o.labels, o.model, model_path};
  for (const auto& c : in.cases) {
    paths.insert(paths.end(), c.images.begin(), c.images.end());
    paths.push_back(c.labels);
  }
  for (const auto& f : in.test_files) paths.push_back(join(in.root, f));
  for (const auto& p : paths) detail::require_utf8(p, "'" + detail::escaped(p) + "'");
}

/// Checks one case: dimension, channels and labels on one grid, data readable.
void check_case(const Case& c, int64_t model_dims, DeformMode mode,
                LabelInterpolation label_interpolation) {
  const ImageInfo first = read_image_info(c.images[0]);
  if (first.components != 1)
    throw std::runtime_error("'" + c.images[0] + "' has " + std::to_string(first.components) +
                             " components per voxel; expected a scalar image");
  if (first.geometry.dimension() < model_dims)
    throw std::runtime_error("'" + c.images[0] + "' is " +
                             std::to_string(first.geometry.dimension()) + "D but the model is " +
                             std::to_string(model_dims) + "D");
  for (size_t i = 1; i < c.images.size(); ++i)
    detail::check_same_grid(first.geometry, read_image_info(c.images[i]).geometry, c.images[0],
                            c.images[i]);
  if (!c.labels.empty()) {
    const ImageInfo lab = read_image_info(c.labels);
    if (lab.components != 1) throw std::runtime_error("label map '" + c.labels + "' is not scalar");
    detail::check_same_grid(first.geometry, lab.geometry, c.images[0], c.labels);
  }
  // Read the data too (truncated or corrupt files, NaN / Inf, non-integer
  // labels) so that a bad case stops the run before anything is written.
  for (const auto& f : c.images) read_image(f);
  if (!c.labels.empty()) {
    const auto labels = read_labels(c.labels);
    if (label_interpolation == LabelInterpolation::kSoft)
      detail::check_soft_labels(labels.data, "label map '" + c.labels + "'");
  }
  if (c.labels.empty() && mode == DeformMode::kAugment) {
    throw std::runtime_error("augment mode needs labels, and '" + c.images[0] +
                             "' has none (give --labels, or use --mode deform)");
  }
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ULL;
  }
  return h;
}

std::string two_digits(int64_t k) {
  std::string s = std::to_string(k);
  return s.size() < 2 ? "0" + s : s;
}

/// Copies a file byte for byte, atomically (nothing partial is ever visible at `to`).
void copy_file(const std::string& from, const std::string& to) {
  detail::write_via_temporary(to, [&](const std::string& tmp) {
    std::ifstream in(from, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read '" + from + "'");
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw std::runtime_error("cannot read '" + from + "'");
    // Checked writes: the error names the system's reason ("No space left on device").
    detail::write_file_checked(tmp, bytes.data(), bytes.size(), to);
  });
}

/// slice_axis >= 0: the volume went slice by slice through a 2D model, and
/// its slice incoherence (drdm::slice_incoherence) is reported too.
json metrics_json(const at::Tensor& field, int64_t slice_axis) {
  const FieldStats s = field_stats(field);
  json j = {{"max_magnitude_pct", s.max_magnitude_pct[0]},
            {"mean_magnitude_pct", s.mean_magnitude_pct[0]},
            {"folding_ratio", s.folding_ratio[0]}};
  if (slice_axis >= 0 && field.size(2 + slice_axis) > 1)
    j["slice_incoherence"] = slice_incoherence(field, slice_axis);
  return j;
}

json level_summary(const json& samples) {
  std::map<std::string, std::vector<json>> by_level;
  for (const auto& s : samples) by_level[s["level"].dump()].push_back(s["metrics"]);
  json out = json::array();
  for (const auto& [level, list] : by_level) {
    json row;
    row["level"] = json::parse(level);
    row["samples"] = list.size();
    for (const char* key :
         {"max_magnitude_pct", "mean_magnitude_pct", "folding_ratio", "slice_incoherence"}) {
      std::vector<double> v;
      for (const auto& m : list)
        if (m.contains(key)) v.push_back(m[key].get<double>());
      if (v.empty()) continue;  // slice_incoherence: only volumes deformed slice by slice
      double sum = 0, sq = 0;
      for (double x : v) sum += x;
      const double mean = sum / static_cast<double>(v.size());
      for (double x : v) sq += std::pow(x - mean, 2);
      row[key] = {{"mean", mean},
                  {"std", v.size() > 1 ? std::sqrt(sq / static_cast<double>(v.size() - 1)) : 0.0}};
    }
    out.push_back(row);
  }
  return out;
}

/// Cases now in OUT/imagesTr (all shards' work that has finished): name -> extension.
std::map<std::string, std::string> cases_present(const Inputs& in, const std::string& out_dir) {
  std::map<std::string, std::string> cases;
  for (const auto& f : list_images(join(out_dir, "imagesTr"))) {
    const auto [stem, ext] = split_name(f);
    const std::string name = in.nnunet ? nnunet_channel(stem).first : stem;
    if (!name.empty()) cases[name] = ext;
  }
  return cases;
}

/// Rewrites OUT/dataset.json from the input's, listing `cases`.
void update_dataset_json(const Inputs& in, const std::string& out_dir,
                         const std::map<std::string, std::string>& cases) {
  nlohmann::ordered_json j = in.dataset_json;
  j["numTraining"] = cases.size();
  if (j.contains("training") && j["training"].is_array()) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const auto& [name, ext] : cases) {
      nlohmann::ordered_json e{{"image", "./imagesTr/" + name + ext}};
      if (detail::file_exists(join(join(out_dir, "labelsTr"), name + ext)))
        e["label"] = "./labelsTr/" + name + ext;
      list.push_back(e);
    }
    j["training"] = list;
  }
  write_text_file(join(out_dir, "dataset.json"), j.dump(4) + "\n");
}

/// Copies the input's test set (imagesTs/, labelsTs/) unchanged: byte copies
/// (not links, so that editing the output never edits the input), each atomic.
void copy_test_set(const Inputs& in, const std::string& out_dir) {
  for (const auto& d : in.test_dirs) detail::make_dirs(join(out_dir, d));
  for (const auto& rel : in.test_files) copy_file(join(in.root, rel), join(out_dir, rel));
}

/// The case a case of ours comes from: its name without the
/// "_drdm_T<aug>[-<syn>]_s<k>" suffixes drdm_deform adds (all of them, for a
/// dataset deformed twice).
std::string source_case(std::string name) {
  static const std::regex suffix("_drdm_T[0-9]+(-[0-9]+)?_s[0-9]+$");
  std::smatch m;
  while (std::regex_search(name, m, suffix)) name.erase(static_cast<size_t>(m.position(0)));
  return name;
}

/// Validation folds of scikit-learn's KFold(n_splits, shuffle=True,
/// random_state=seed) over n items, which nnU-Net v2 uses for its default
/// split (seed 12345): the indices 0..n-1 shuffled as numpy's legacy
/// RandomState(seed).shuffle does (MT19937; position i swapped with a draw
/// in [0, i] by masked rejection, i from n-1 down to 1), then cut into
/// n_splits consecutive folds, the first n % n_splits of them one larger.
std::vector<std::vector<size_t>> kfold_validation(size_t n, size_t n_splits, uint32_t seed) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::mt19937 mt(seed);
  for (size_t i = n; i-- > 1;) {
    uint32_t mask = static_cast<uint32_t>(i);
    for (int s = 1; s < 32; s *= 2) mask |= mask >> s;
    uint32_t j = 0;
    do {
      j = static_cast<uint32_t>(mt()) & mask;
    } while (j > i);
    std::swap(idx[i], idx[j]);
  }
  std::vector<std::vector<size_t>> folds;
  size_t start = 0;
  for (size_t f = 0; f < n_splits; ++f) {
    const size_t len = n / n_splits + (f < n % n_splits ? 1 : 0);
    folds.emplace_back(idx.begin() + static_cast<std::ptrdiff_t>(start),
                       idx.begin() + static_cast<std::ptrdiff_t>(start + len));
    start += len;
  }
  return folds;
}

/// Writes OUT/splits_final.json (nnU-Net v2's cross-validation split) over
/// `cases`, keeping every source case and its deformed copies in one fold:
/// the input's own splits_final.json extended by the copies when it has one,
/// else nnU-Net's default 5-fold split of the input's cases (the same
/// validation cases as nnU-Net would pick for the input dataset).
void write_splits(const Inputs& in, const std::string& out_dir,
                  const std::map<std::string, std::string>& cases) {
  // Folds as (train, val) sets of source cases.
  std::vector<std::pair<std::set<std::string>, std::set<std::string>>> folds;
  if (!in.splits.is_null()) {
    for (const auto& f : in.splits)
      folds.push_back(
          {f["train"].get<std::set<std::string>>(), f["val"].get<std::set<std::string>>()});
  } else {
    std::set<std::string> unique;
    for (const auto& c : in.cases) unique.insert(source_case(c.name));
    const std::vector<std::string> sources(unique.begin(), unique.end());
    if (sources.size() < 2) {
      log::warn(
          "drdm_deform: no splits_final.json written: cross-validation needs at least 2 source "
          "cases");
      return;
    }
    const auto val = kfold_validation(sources.size(), std::min<size_t>(5, sources.size()), 12345);
    for (const auto& v : val) {
      std::set<std::string> tr(unique), va;
      for (size_t i : v) va.insert(sources[i]), tr.erase(sources[i]);
      folds.push_back({tr, va});
    }
  }
  json out = json::array();
  std::set<std::string> placed;
  for (const auto& [tr, va] : folds) {
    json train = json::array(), val = json::array();
    for (const auto& [name, ext] : cases) {
      const std::string src = source_case(name);
      if (tr.count(src)) train.push_back(name), placed.insert(name);
      if (va.count(src)) val.push_back(name), placed.insert(name);
    }
    out.push_back({{"train", train}, {"val", val}});
  }
  for (const auto& [name, ext] : cases)
    if (!placed.count(name))
      log::warn("drdm_deform: case '" + name +
                "' is in no fold of splits_final.json (its source case '" + source_case(name) +
                "' is in none)");
  write_text_file(join(out_dir, "splits_final.json"), out.dump(4) + "\n");
}

std::vector<double> tensor_spacing(const Geometry& g) {
  return {g.spacing.rbegin(), g.spacing.rend()};
}

/// Network items per sample of a case: 1, or its slices for a volume through a 2D model.
int64_t items_per_sample(const Geometry& g, int64_t model_dims, int64_t slice_axis) {
  const auto ts = g.tensor_size();
  const int64_t axis = slicing_axis(ts, model_dims, slice_axis);
  return axis < 0 ? 1 : ts[static_cast<size_t>(axis)];
}

/// Total recovery steps x items of a run (the progress bar's units).
int64_t deformer_steps_total(const std::vector<Case>& cases, const DeformJobOptions& o,
                             int64_t model_dims, int64_t big_t, int64_t slice_axis) {
  const bool all = o.schedule == RecoverySchedule::kAllSteps;
  int64_t per_sample = 0;
  for (const auto& l : o.levels)
    per_sample +=
        (all ? big_t : l.aug) + (o.mode == DeformMode::kPairs ? (all ? big_t : l.syn) : 0);
  int64_t total = 0;
  for (const auto& c : cases)
    total += items_per_sample(read_image_info(c.images[0]).geometry, model_dims, slice_axis) *
             per_sample * o.samples;
  return std::max<int64_t>(total, 1);
}

}  // namespace

namespace {

/// Where a run writes: folder names by mode and input kind.
struct OutputLayout {
  bool pairs = false;        ///< pairs mode: moving and fixed images, both fields
  bool dataset_out = false;  ///< an MSD / nnU-Net dataset in and out (not in pairs mode)
  bool nnunet = false;       ///< channel files named CASE_XXXX
  std::string images, labels, fields, previews;
};

OutputLayout output_layout(const Inputs& in, DeformMode mode) {
  OutputLayout l;
  l.pairs = mode == DeformMode::kPairs;
  l.dataset_out = in.dataset && !l.pairs;
  l.nnunet = in.nnunet;
  l.images = l.dataset_out ? "imagesTr" : (l.pairs ? "moving" : "images");
  l.labels = l.dataset_out ? "labelsTr" : (l.pairs ? "moving_labels" : "labels");
  l.fields = l.dataset_out ? "drdm_fields" : "fields";
  l.previews = l.dataset_out ? "drdm_previews" : "previews";
  return l;
}

/// The output folders, made when the first sample is ready, so that a case
/// that fails to read (corrupt data, NaN) before it leaves nothing behind.
class OutputFolders {
 public:
  OutputFolders(const DeformJobOptions& o, const OutputLayout& l, const std::vector<Case>& cases)
      : root_(o.output) {
    dirs_ = {l.images, l.fields};
    if (o.previews) dirs_.push_back(l.previews);
    if (l.pairs) dirs_.insert(dirs_.end(), {"fixed", "moving_fields"});
    bool any_labels = false;
    for (const auto& c : cases) any_labels = any_labels || !c.labels.empty();
    if (any_labels) dirs_.push_back(l.labels);
    if (any_labels && l.pairs) dirs_.push_back("fixed_labels");
  }
  void ensure() {
    if (made_) return;
    for (const auto& d : dirs_) detail::make_dirs(join(root_, d));
    made_ = true;
  }

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

CaseData read_case(const Case& c) {
  CaseData d;
  std::vector<at::Tensor> channels;
  for (size_t i = 0; i < c.images.size(); ++i) {
    Image img = read_image(c.images[i]);
    channels.push_back(img.data);
    if (i == 0) d.geometry = img.geometry, d.pixel = img.pixel_type;
  }
  d.image = at::cat(channels, 1);
  if (!c.labels.empty()) d.labels = read_labels(c.labels).data;
  d.label_ext = c.labels.empty() ? c.ext : split_name(base_name(c.labels)).second;
  d.field_ext = detail::has_extension(c.ext, ".png") ? ".nii.gz" : c.ext;
  return d;
}

/// One sample to make: its level, index and seed.
struct Work {
  DeformLevel level;
  int64_t k = 0;
  uint64_t seed = 0;
};

/// Every level x sample of a case, each with the seed its name and level give.
std::vector<Work> case_work(const Case& c, const DeformJobOptions& o) {
  std::vector<Work> work;
  for (const auto& l : o.levels)
    for (int64_t k = 0; k < o.samples; ++k)
      work.push_back(
          {l, k,
           derive_seed(o.seed, fnv1a(c.name), static_cast<uint64_t>(l.aug * 1000 + l.syn),
                       static_cast<uint64_t>(k))});
  return work;
}

/// What the deformer made for a chunk of work, on the CPU. Deform and
/// augment modes fill images/labels/fields; pairs mode fills them with the
/// moving side and the fixed side too.
struct Generated {
  at::Tensor images, labels, fields;
  at::Tensor fixed, fixed_labels, moving_fields;
};

at::Tensor cpu_or_undefined(const at::Tensor& x) { return x.defined() ? x.cpu() : x; }

Generated generate_chunk(const Deformer& deformer, const CaseData& d, const std::vector<Work>& work,
                         bool pairs) {
  const auto n = static_cast<int64_t>(work.size());
  std::vector<int64_t> aug, syn;
  std::vector<uint64_t> seeds;
  for (const auto& w : work) {
    aug.push_back(w.level.aug);
    syn.push_back(w.level.syn);
    seeds.push_back(w.seed);
  }
  const auto repeat = [n](const at::Tensor& x) {
    if (!x.defined()) return x;
    std::vector<int64_t> shape(static_cast<size_t>(x.dim()), -1);
    shape[0] = n;
    return x.expand(shape).contiguous();
  };
  const auto spacing = tensor_spacing(d.geometry);
  Generated g;
  if (pairs) {
    auto r = deformer.pairs(repeat(d.image), repeat(d.labels), aug, syn, seeds, spacing);
    g.images = r.moving, g.labels = r.moving_labels, g.fields = r.field;
    g.fixed = r.fixed, g.fixed_labels = r.fixed_labels, g.moving_fields = r.moving_field;
  } else {
    auto r = deformer.deform_with_seeds(repeat(d.image), repeat(d.labels), aug, seeds, spacing);
    g.images = r.images, g.labels = r.labels, g.fields = r.fields;
  }
  for (at::Tensor* x :
       {&g.images, &g.labels, &g.fields, &g.fixed, &g.fixed_labels, &g.moving_fields})
    *x = cpu_or_undefined(*x);
  return g;
}

std::string sample_name(const std::string& case_name, const Work& w, bool pairs) {
  std::string s = case_name + "_drdm_T" + std::to_string(w.level.aug);
  if (pairs) s += "-" + std::to_string(w.level.syn);
  return s + "_s" + two_digits(w.k);
}

/// Writes one case's samples and returns their manifest records.
class CaseWriter {
 public:
  /// `slice_axis`: the axis a volume went through a 2D model along, or -1.
  CaseWriter(const DeformJobOptions& o, const OutputLayout& l, const Case& c, const CaseData& d,
             int64_t slice_axis)
      : o_(o), l_(l), c_(c), d_(d), axis_(slice_axis) {}

  /// Row `i` of `g`, made from `w`.
  json write(const Generated& g, int64_t i, const Work& w) const {
    const std::string sample = sample_name(c_.name, w, l_.pairs);
    const at::Tensor field = g.fields[i].unsqueeze(0);
    json out;
    out[l_.pairs ? "moving" : "image"] = channels(l_.images, sample, g.images[i]);
    if (g.labels.defined())
      out[l_.pairs ? "moving_labels" : "labels"] = labels(l_.labels, sample, g.labels[i]);
    out["field"] = field_file(l_.fields, sample, field);
    if (l_.pairs) {
      out["fixed"] = channels("fixed", sample, g.fixed[i]);
      if (g.fixed_labels.defined())
        out["fixed_labels"] = labels("fixed_labels", sample, g.fixed_labels[i]);
      out["moving_field"] = field_file("moving_fields", sample, g.moving_fields[i].unsqueeze(0));
    }
    if (o_.previews) {
      // Deform and augment modes show input -> output; pairs mode moving -> fixed.
      const at::Tensor before = l_.pairs ? first_channel(g.images[i]) : d_.image.narrow(1, 0, 1);
      const at::Tensor after = first_channel(l_.pairs ? g.fixed[i] : g.images[i]);
      out["preview"] = preview(sample, before, after, field);
    }
    return record(w, out, field);
  }

 private:
  static at::Tensor first_channel(const at::Tensor& row) {
    return row.narrow(0, 0, 1).unsqueeze(0);
  }

  /// `row` [C, ...S]: one file per channel, named as nnU-Net or as the input.
  json channels(const std::string& dir, const std::string& sample, const at::Tensor& row) const {
    json files = json::array();
    for (int64_t ch = 0; ch < row.size(0); ++ch) {
      std::string suffix;
      if (l_.nnunet && l_.dataset_out) {
        suffix = std::to_string(ch);
        suffix = "_" + std::string(4 - std::min<size_t>(4, suffix.size()), '0') + suffix;
      } else if (row.size(0) > 1) {
        suffix = "_c" + std::to_string(ch);
      }
      const std::string rel = dir + "/" + sample + suffix + c_.ext;
      write_image(join(o_.output, rel), row.narrow(0, ch, 1).unsqueeze(0), d_.geometry, d_.pixel);
      files.push_back(rel);
    }
    return files.size() == 1 ? files[0] : files;
  }

  std::string labels(const std::string& dir, const std::string& sample,
                     const at::Tensor& row) const {
    const std::string rel = dir + "/" + sample + d_.label_ext;
    write_labels(join(o_.output, rel), row.unsqueeze(0), d_.geometry);
    return rel;
  }

  /// A single-slice volume (e.g. 256x256x1) gets 2D fields on its in-plane grid.
  std::string field_file(const std::string& dir, const std::string& sample,
                         const at::Tensor& field) const {
    const std::string rel = dir + "/" + sample + d_.field_ext;
    const Image written = squeeze_single_slice_field(field, d_.geometry);
    write_field(join(o_.output, rel), written.data, written.geometry);
    return rel;
  }

  /// A volume deformed slice by slice shows the central slice of the slicing axis.
  std::string preview(const std::string& sample, const at::Tensor& before, const at::Tensor& after,
                      const at::Tensor& field) const {
    const std::string rel = l_.previews + "/" + sample + ".png";
    const std::string path = join(o_.output, rel);
    if (axis_ < 0) {
      write_warp_preview(path, before, after, field);
      return rel;
    }
    const int64_t mid = d_.geometry.tensor_size()[static_cast<size_t>(axis_)] / 2;
    std::vector<int64_t> keep;
    for (int64_t a = 0; a < 3; ++a)
      if (a != axis_) keep.push_back(a);
    const at::Tensor plane_field =
        at::stack({field.select(1, keep[0]), field.select(1, keep[1])}, 1).select(2 + axis_, mid);
    write_warp_preview(path, before.select(2 + axis_, mid), after.select(2 + axis_, mid),
                       plane_field);
    return rel;
  }

  json record(const Work& w, const json& outputs, const at::Tensor& field) const {
    json s;
    s["case"] = c_.name;
    s["input"] = c_.images.size() == 1 ? json(c_.images[0]) : json(c_.images);
    s["labels"] = c_.labels.empty() ? json(nullptr) : json(c_.labels);
    s["level"] = l_.pairs ? json{{"aug", w.level.aug}, {"syn", w.level.syn}} : json(w.level.aug);
    s["sample"] = w.k;
    s["seed"] = w.seed;
    s["outputs"] = outputs;
    s["metrics"] = metrics_json(field, axis_);
    return s;
  }

  const DeformJobOptions& o_;
  const OutputLayout& l_;
  const Case& c_;
  const CaseData& d_;
  int64_t axis_;
};

/// Deforms one case (every level x sample, in chunks that fill the batch)
/// and appends its samples' records to `samples`.
void deform_case(const Deformer& deformer, const DeformJobOptions& o, const OutputLayout& l,
                 const Case& c, int64_t model_dims, OutputFolders& folders, json& samples) {
  const CaseData d = read_case(c);
  const int64_t axis = slicing_axis(d.geometry.tensor_size(), model_dims, deformer.slice_axis());
  // A 3D volume through a 2D model is many network items per sample.
  const auto chunk = static_cast<size_t>(std::max<int64_t>(
      1, o.batch / items_per_sample(d.geometry, model_dims, deformer.slice_axis())));
  const CaseWriter writer(o, l, c, d, axis);
  const std::vector<Work> work = case_work(c, o);
  for (size_t w0 = 0; w0 < work.size(); w0 += chunk) {
    const std::vector<Work> part(
        work.begin() + static_cast<std::ptrdiff_t>(w0),
        work.begin() + static_cast<std::ptrdiff_t>(std::min(work.size(), w0 + chunk)));
    const Generated g = generate_chunk(deformer, d, part, l.pairs);
    folders.ensure();
    for (size_t i = 0; i < part.size(); ++i)
      samples.push_back(writer.write(g, static_cast<int64_t>(i), part[i]));
  }
  if (l.dataset_out) {  // the original case beside its augmented copies
    for (const auto& f : c.images) copy_file(f, join(join(o.output, "imagesTr"), base_name(f)));
    if (!c.labels.empty())
      copy_file(c.labels, join(join(o.output, "labelsTr"), base_name(c.labels)));
  }
}

/// This shard's cases (every shard_count-th from shard_index), checked.
std::vector<Case> shard_cases(const Inputs& in, const DeformJobOptions& o, int64_t model_dims) {
  std::vector<Case> mine;
  for (size_t i = 0; i < in.cases.size(); ++i)
    if (static_cast<int64_t>(i % static_cast<size_t>(o.shard_count)) == o.shard_index)
      mine.push_back(in.cases[i]);
  for (const auto& c : mine) check_case(c, model_dims, o.mode, o.label_interpolation);
  if (in.dataset) {
    char a[4096], b[4096];
    if (::realpath(in.root.c_str(), a) != nullptr && ::realpath(o.output.c_str(), b) != nullptr &&
        std::string(a) == std::string(b))
      throw std::invalid_argument("the output folder must not be the input dataset '" + in.root +
                                  "'");
  }
  return mine;
}

DeformerOptions deformer_options(const DeformJobOptions& o) {
  DeformerOptions d;
  d.generation.batch = o.batch;
  d.generation.bf16 = o.mixed_precision == "bf16";
  d.generation.schedule = o.schedule;
  d.label_interpolation = o.label_interpolation;
  d.padding = o.padding;
  d.slice_axis = o.slice_axis;
  d.slice_mode = o.slice_mode;
  d.slice_sigma = o.slice_sigma;
  return d;
}

std::string shard_suffix(const DeformJobOptions& o) {
  return o.shard_count > 1
             ? "-shard-" + std::to_string(o.shard_index) + "-of-" + std::to_string(o.shard_count)
             : "";
}

/// What describes the run beside its samples: program, model, options, summary.
json manifest_json(const DeformJobOptions& o, const std::string& model_path, int64_t model_step,
                   const Deformer& deformer, size_t cases, json samples) {
  json m;
  m["program"] = "drdm_deform";
  m["mode"] = to_string(o.mode);
  m["model"] = model_path;
  m["model_step"] = model_step;
  m["model_size"] = deformer.model_size();
  m["device"] = deformer.device().str();
  m["options"] = json::parse(to_json(o));
  m["metrics_note"] =
      "metrics of the written field on the input grid: magnitude ||(u_i / size_i)_i|| in % of the "
      "image size (max "
      "and mean over voxels), folding_ratio = fraction of voxels with det(I + grad u) <= 0";
  m["cases"] = cases;
  m["summary"] = level_summary(samples);
  m["samples"] = std::move(samples);
  return m;
}

}  // namespace

DeformJobSummary run_deform_job(const DeformJobOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  check_job_options(o);
  if (o.threads > 0) at::set_num_threads(static_cast<int>(o.threads));

  // Everything is checked before anything is written.
  const std::string model_path =
      o.model.empty() ? default_model_path() : resolve_model_path(o.model);
  const torch::Device device = resolve_device(o.device);
  TrainedModel trained = load_model(model_path, device);
  const int64_t big_t = trained.config.sampler.timesteps;
  for (const auto& l : o.levels)
    if (l.aug > big_t || l.syn > big_t)
      throw std::invalid_argument("levels: " + levels_text({l}) +
                                  " exceeds the model's T = " + std::to_string(big_t));
  const Inputs in = discover(o);
  require_utf8_names(o, in, model_path);
  detail::require_run_kind(o.output, "drdm_deform", {});  // not a seg_fewshot / reg_synth folder
  const int64_t model_dims = trained.config.data.dims;
  const std::vector<Case> mine = shard_cases(in, o, model_dims);
  // One run per output folder (shards of one job share it, one process per shard).
  const detail::RunLock lock(o.output, "drdm_deform",
                             o.shard_count > 1 ? "shard-" + std::to_string(o.shard_index) + "-of-" +
                                                     std::to_string(o.shard_count)
                                               : "");
  log::info(c10::str("drdm_deform: ", mine.size(), " of ", in.cases.size(), " cases (shard ",
                     o.shard_index, "/", o.shard_count, "), mode ", to_string(o.mode), ", levels ",
                     levels_text(o.levels), " x ", o.samples, " samples, model '", model_path,
                     "' (", model_dims, "D, step ", trained.step, ") on ", device.str()));

  // Progress in network steps (one model item, i.e. an image or a 2D slice,
  // advanced by one recovery step), so that long volumes show progress too.
  // SIGINT / SIGTERM stop the run at the next step.
  const int64_t big_steps =
      deformer_steps_total(mine, o, model_dims, big_t,
                           o.slice_axis >= 0 ? o.slice_axis : trained.config.data.slice_axis);
  detail::ProgressBar bar("drdm_deform recovery steps", big_steps, 0, o.progress);
  int64_t steps_done = 0;
  std::string current_case;
  DeformerOptions dopt = deformer_options(o);
  dopt.generation.on_step = [&](int64_t n) {
    steps_done += n;
    bar.update(std::min(steps_done, big_steps), current_case);
    throw_if_interrupted();
  };
  const int64_t model_step = trained.step;
  const Deformer deformer(std::move(trained), device, dopt);

  const OutputLayout layout = output_layout(in, o.mode);
  OutputFolders folders(o, layout, mine);
  json samples = json::array();
  for (const auto& c : mine) {
    throw_if_interrupted();
    current_case = c.name;
    deform_case(deformer, o, layout, c, model_dims, folders, samples);
  }
  bar.finish();
  folders.ensure();
  if (layout.dataset_out) {
    if (o.shard_index == 0) copy_test_set(in, o.output);
    const auto cases = cases_present(in, o.output);
    update_dataset_json(in, o.output, cases);
    write_splits(in, o.output, cases);
  }
  write_text_file(join(o.output, "config" + shard_suffix(o) + ".json"), to_json(o) + "\n");
  DeformJobSummary summary;
  summary.cases = static_cast<int64_t>(mine.size());
  summary.samples = static_cast<int64_t>(samples.size());
  summary.manifest = join(o.output, "manifest" + shard_suffix(o) + ".json");
  const json manifest =
      manifest_json(o, model_path, model_step, deformer, mine.size(), std::move(samples));
  write_text_file(summary.manifest, manifest.dump(2) + "\n");
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace drdm

// ---------------------------------------------------------------------------
// drdm_deform merge: the shards of one job -> what the unsharded run writes.
namespace drdm {
namespace {

/// One shard's manifest, checked and parsed.
struct Shard {
  int64_t index = 0, count = 0;
  std::string folder;    ///< the folder it lies in
  std::string manifest;  ///< its path
  json m;
};

std::string shard_file(const std::string& prefix, int64_t i, int64_t n) {
  return prefix + "-shard-" + std::to_string(i) + "-of-" + std::to_string(n) + ".json";
}

/// "manifest-shard-3-of-8.json" -> (3, 8) for `prefix` "manifest"; (-1, -1) for other names.
std::pair<int64_t, int64_t> shard_of_name(const std::string& name, const std::string& prefix) {
  static const std::regex re("-shard-([0-9]{1,9})-of-([0-9]{1,9})\\.json");
  std::smatch m;
  if (name.compare(0, prefix.size(), prefix) != 0) return {-1, -1};
  const std::string rest = name.substr(prefix.size());
  if (!std::regex_match(rest, m, re)) return {-1, -1};
  return {*detail::parse_integer(m[1].str()), *detail::parse_integer(m[2].str())};
}

/// "cuda:1" -> "cuda": shards on different GPUs of one kind are one job.
json device_kind(const json& device) {
  if (!device.is_string()) return device;
  const auto text = device.get<std::string>();
  return text.substr(0, text.find(':'));
}

/// What makes two runs one job: the model, the kind of device and the
/// options but the shard and the output folder, flattened ("options.seed").
json job_identity(const json& manifest) {
  json j;
  for (const char* k : {"program", "mode", "model", "model_step", "model_size", "device"})
    j[k] = manifest.contains(k) ? manifest[k] : json();
  j["device"] = device_kind(j["device"]);
  for (const auto& [k, v] : manifest["options"].items())
    if (k != "shard" && k != "output") j["options." + k] = k == "device" ? device_kind(v) : v;
  return j;
}

/// The first key whose value differs between `a` and `b` (objects), or "".
std::string first_difference(const json& a, const json& b) {
  for (const auto& [k, v] : a.items())
    if (!b.contains(k) || b[k] != v) return k;
  for (const auto& [k, v] : b.items())
    if (!a.contains(k)) return k;
  return "";
}

/// Throws naming both files and the key when `other` is not a run of the job of `ref`.
void require_same_job(const json& ref, const std::string& ref_path, const json& other,
                      const std::string& other_path, const std::string& hint) {
  const json a = job_identity(ref), b = job_identity(other);
  const std::string key = first_difference(a, b);
  if (key.empty()) return;
  const auto shown = [&](const json& j) {
    return j.contains(key) ? j[key].dump() : std::string("absent");
  };
  throw std::runtime_error("'" + other_path + "' and '" + ref_path + "' are not runs of one job: " +
                           key + " is " + shown(b) + " there, " + shown(a) + " here" + hint);
}

/// A drdm_deform manifest (program, options, cases, samples), or an error naming `path`.
json load_manifest(const std::string& path) {
  json m = parse_json_file(path);
  const auto bad = [&](const std::string& key) {
    return std::runtime_error("'" + path + "' is not a drdm_deform manifest (key '" + key +
                              "' missing or malformed)");
  };
  if (!m.is_object() || m.value("program", "") != "drdm_deform") throw bad("program");
  if (!m.contains("options") || !m["options"].is_object() || !m["options"].contains("shard"))
    throw bad("options");
  if (!m.contains("cases") || !m["cases"].is_number_unsigned()) throw bad("cases");
  if (!m.contains("samples") || !m["samples"].is_array()) throw bad("samples");
  for (const auto& s : m["samples"])
    if (!s.is_object() || !s.contains("input") || !s.contains("outputs") ||
        !s["outputs"].is_object() || !s.contains("level") || !s.contains("metrics"))
      throw bad("samples");
  return m;
}

/// Non-hidden files and folders under `folder`, relative to it, sorted ("images",
/// "images/a.nii.gz").
void walk(const std::string& folder, const std::string& rel, std::vector<std::string>& files,
          std::vector<std::string>& dirs) {
  const std::string here = rel.empty() ? folder : join(folder, rel);
  DIR* dir = ::opendir(here.c_str());
  if (dir == nullptr) throw std::runtime_error("cannot read folder '" + here + "'");
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.') names.push_back(e->d_name);
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    const std::string r = rel.empty() ? name : rel + "/" + name;
    if (detail::dir_exists(join(folder, r))) {
      dirs.push_back(r);
      walk(folder, r, files, dirs);
    } else if (detail::file_exists(join(folder, r))) {
      files.push_back(r);
    }
  }
}

std::string real_path(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) != nullptr ? std::string(buf) : std::string();
}

/// The absolute path `path` has or will have: links resolved in the part that exists.
std::string future_path(const std::string& path) {
  const std::string real = real_path(path);
  if (!real.empty()) return real;
  const auto slash =
      path.find_last_of('/', path.size() > 1 && path.back() == '/' ? path.size() - 2 : path.npos);
  if (slash == std::string::npos) return join(real_path("."), path);
  return join(future_path(slash == 0 ? "/" : path.substr(0, slash)), path.substr(slash + 1));
}

bool same_bytes(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  if (sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino) return true;
  return sa.st_size == sb.st_size && read_text(a) == read_text(b);
}

/// The shard manifests in `folders`, by index: n of them, 0..n-1 each once, of one job.
std::vector<Shard> find_shards(const std::vector<std::string>& folders) {
  std::vector<Shard> found;
  for (const auto& f : folders) {
    size_t before = found.size();
    for (const auto& name : list_files(f)) {
      const auto [i, n] = shard_of_name(name, "manifest");
      if (i < 0) continue;
      const std::string path = join(f, name);
      if (n < 1 || i >= n || name != shard_file("manifest", i, n))
        throw std::runtime_error("'" + path + "' does not name a shard i of n with 0 <= i < n");
      found.push_back({i, n, f, path, load_manifest(path)});
      const std::string shard = found.back().m["options"]["shard"].is_string()
                                    ? found.back().m["options"]["shard"].get<std::string>()
                                    : "";
      if (shard != std::to_string(i) + "/" + std::to_string(n))
        throw std::runtime_error("'" + path + "': options.shard is '" + shard + "', not " +
                                 std::to_string(i) + "/" + std::to_string(n) + " as its name says");
    }
    if (found.size() == before)
      throw std::runtime_error("'" + f +
                               "' holds no shard manifest (manifest-shard-I-of-N.json, written by "
                               "drdm_deform --shard)");
  }
  const int64_t n = found[0].count;
  const std::string first = found[0].manifest;
  std::vector<Shard> by_index(static_cast<size_t>(n));
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (auto& s : found) {
    if (s.count != n)
      throw std::runtime_error("'" + s.manifest + "' is one of " + std::to_string(s.count) +
                               " shards, but '" + first + "' one of " + std::to_string(n) +
                               ": not shards of one job");
    const auto k = static_cast<size_t>(s.index);
    if (seen[k])
      throw std::runtime_error("shard " + std::to_string(s.index) + "/" + std::to_string(n) +
                               " is there twice: '" + by_index[k].manifest + "' and '" +
                               s.manifest + "'");
    seen[k] = true;
    by_index[k] = std::move(s);
  }
  std::string where;
  for (const auto& f : folders) where += (where.empty() ? "'" : ", '") + f + "'";
  for (int64_t i = 0; i < n; ++i)
    if (!seen[static_cast<size_t>(i)])
      throw std::runtime_error("shard " + std::to_string(i) + "/" + std::to_string(n) +
                               " is missing: no '" + shard_file("manifest", i, n) + "' in " +
                               where + " (run that shard, or wait until it has finished)");
  for (const auto& s : by_index) {
    require_same_job(by_index[0].m, by_index[0].manifest, s.m, s.manifest, "");
    const std::string config = join(s.folder, shard_file("config", s.index, n));
    if (!detail::file_exists(config))
      throw std::runtime_error("'" + config + "' is missing beside '" + s.manifest + "'");
    const json c = parse_json_file(config);
    const std::string key =
        c.is_object() ? first_difference(s.m["options"], c) : std::string("(not an object)");
    if (!key.empty())
      throw std::runtime_error("'" + config + "' does not hold the options of '" + s.manifest +
                               "' (key '" + key + "')");
  }
  return by_index;
}

/// The samples of one case (one input) in a manifest: consecutive runs.
std::vector<json> case_groups(const Shard& s) {
  std::vector<json> groups;
  for (const auto& x : s.m["samples"]) {
    if (groups.empty() || groups.back()[0]["input"] != x["input"]) groups.push_back(json::array());
    groups.back().push_back(x);
  }
  if (groups.size() != s.m["cases"].get<size_t>())
    throw std::runtime_error("'" + s.manifest + "' counts " + s.m["cases"].dump() +
                             " cases but has samples of " + std::to_string(groups.size()));
  return groups;
}

/// The relative paths of a sample's outputs.
std::vector<std::string> output_paths(const json& sample) {
  std::vector<std::string> out;
  for (const auto& [k, v] : sample["outputs"].items())
    for (const auto& p : v.is_array() ? v : json::array({v})) out.push_back(p.get<std::string>());
  return out;
}

/// All samples in the unsharded run's order: shard i did cases i, i + n, ...
/// Checks that the shards split one list of cases, each case and file once.
json merged_samples(const std::vector<Shard>& shards) {
  const auto n = shards.size();
  std::vector<std::vector<json>> groups;
  size_t cases = 0;
  for (const auto& s : shards) cases += (groups.emplace_back(case_groups(s))).size();
  std::map<std::string, std::string> owner;  // input or output file -> manifest
  for (size_t i = 0; i < n; ++i) {
    const size_t expect = cases / n + (i < cases % n ? 1 : 0);
    if (groups[i].size() != expect)
      throw std::runtime_error("'" + shards[i].manifest + "' has " +
                               std::to_string(groups[i].size()) + " cases, but shard " +
                               std::to_string(i) + " of " + std::to_string(n) + " of " +
                               std::to_string(cases) + " cases has " + std::to_string(expect) +
                               ": the shards did not read the same input");
    for (const auto& g : groups[i]) {
      std::vector<std::string> keys{"input " + g[0]["input"].dump()};
      for (const auto& x : g)
        for (const auto& p : output_paths(x)) {
          keys.push_back("file '" + p + "'");
          if (!detail::file_exists(join(shards[i].folder, p)))
            throw std::runtime_error("'" + join(shards[i].folder, p) + "', listed in '" +
                                     shards[i].manifest + "', is missing");
        }
      for (const auto& k : keys) {
        const auto [it, fresh] = owner.emplace(k, shards[i].manifest);
        if (!fresh)
          throw std::runtime_error("the " + k + " is in both '" + it->second + "' and '" +
                                   shards[i].manifest + "': duplicate samples");
      }
    }
  }
  json samples = json::array();
  for (size_t j = 0; j < cases; ++j)
    for (const auto& x : groups[j % n][j / n]) samples.push_back(x);
  return samples;
}

/// The manifest and options of the merged run: the unsharded run's.
json merged_manifest(const std::vector<Shard>& shards, const std::string& output, json samples) {
  json m = shards[0].m;
  m["options"]["shard"] = "0/1";
  m["options"]["output"] = output;
  size_t cases = 0;
  for (const auto& s : shards) cases += s.m["cases"].get<size_t>();
  m["cases"] = cases;
  m["summary"] = level_summary(samples);
  m["samples"] = std::move(samples);
  return m;
}

/// Refuses `merged` when a manifest or config there is of another job.
void require_no_other_run(const std::string& merged, const json& job, const std::string& job_path) {
  if (!detail::dir_exists(merged)) return;
  for (const auto& name : list_files(merged)) {
    const std::string path = join(merged, name);
    const bool manifest = name == "manifest.json" || shard_of_name(name, "manifest").first >= 0;
    const bool config = name == "config.json" || shard_of_name(name, "config").first >= 0;
    if (!manifest && !config) continue;
    const std::string hint =
        " (the merged folder '" + merged + "' holds another run: choose a new folder)";
    if (manifest) {
      json m;
      try {
        m = load_manifest(path);
      } catch (const std::runtime_error&) {
        throw std::runtime_error("'" + path + "' is not a manifest of this job" + hint);
      }
      require_same_job(job, job_path, m, path, hint);
    } else {
      const json c = parse_json_file(path);
      if (!c.is_object())
        throw std::runtime_error("'" + path + "' is not a config of this job" + hint);
      json as_manifest = job;
      as_manifest["options"] = c;
      require_same_job(job, job_path, as_manifest, path, hint);
    }
  }
}

/// Files the shard folders bring into `merged`: relative path -> source.
/// Records, JSON files the merge rewrites and hidden files are left out.
std::map<std::string, std::string> plan_copies(const std::vector<std::string>& folders,
                                               const std::string& merged, bool dataset,
                                               std::set<std::string>& dirs) {
  const std::string merged_real = real_path(merged);
  std::map<std::string, std::string> plan;
  for (const auto& f : folders) {
    if (!merged_real.empty() && real_path(f) == merged_real) continue;
    std::vector<std::string> files, sub;
    walk(f, "", files, sub);
    dirs.insert(sub.begin(), sub.end());
    for (const auto& rel : files) {
      if (rel == "manifest.json" || rel == "config.json" ||
          shard_of_name(rel, "manifest").first >= 0 || shard_of_name(rel, "config").first >= 0 ||
          (dataset && (rel == "dataset.json" || rel == "splits_final.json")))
        continue;
      const std::string from = join(f, rel);
      const auto [it, fresh] = plan.emplace(rel, from);
      if (!fresh && !same_bytes(it->second, from))
        throw std::runtime_error("'" + it->second + "' and '" + from +
                                 "' differ: not shards of one job");
    }
  }
  for (const auto& [rel, from] : plan) {
    const std::string to = join(merged, rel);
    if (detail::dir_exists(to) || (detail::file_exists(to) && !same_bytes(from, to)))
      throw std::runtime_error("'" + to + "' already exists and differs from '" + from +
                               "' (the merged folder '" + merged +
                               "' holds another run: choose a new folder)");
  }
  return plan;
}

/// A hard link, or an atomic byte copy where links cannot be made (another file system).
void link_or_copy(const std::string& from, const std::string& to) {
  if (detail::file_exists(to)) return;  // the same bytes, checked by plan_copies
  if (::link(from.c_str(), to.c_str()) == 0) return;
  copy_file(from, to);
}

/// The merged dataset's Inputs as update_dataset_json and write_splits need
/// them, from the shards' outputs: the input's dataset.json (all but the
/// case lists each shard rewrote), the folds of the shards' splits (as
/// source cases), and nnU-Net channel naming when every image has it.
Inputs dataset_inputs(const std::vector<std::string>& folders, const std::string& merged) {
  Inputs in;
  in.dataset = true;
  const auto without_cases = [](nlohmann::ordered_json j) {
    j.erase("numTraining");
    j.erase("training");
    return j;
  };
  const auto has = [](const std::string& f, const char* name) {
    return detail::file_exists(join(f, name));
  };
  const auto with = std::find_if(folders.begin(), folders.end(),
                                 [&](const auto& f) { return has(f, "dataset.json"); });
  const auto with_splits = std::find_if(folders.begin(), folders.end(),
                                        [&](const auto& f) { return has(f, "splits_final.json"); });
  std::vector<std::set<std::string>> train, val;
  bool all_channels = true, any_image = false;
  for (const auto& f : folders) {
    for (const char* name : {"dataset.json", "splits_final.json"}) {
      const auto& other = std::string(name) == "dataset.json" ? with : with_splits;
      if (other != folders.end() && !has(f, name))
        throw std::runtime_error("'" + join(f, name) + "' is missing, but '" + join(*other, name) +
                                 "' is there");
    }
    const std::string path = join(f, "dataset.json");
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(read_text(path));
    } catch (const json::exception& e) {
      throw std::runtime_error("'" + path + "' is not valid JSON: " + e.what());
    }
    if (!j.is_object()) throw std::runtime_error("'" + path + "': expected a JSON object");
    if (in.dataset_json.is_null()) in.dataset_json = j;
    if (without_cases(j) != without_cases(in.dataset_json))
      throw std::runtime_error("'" + path + "' and '" + join(folders[0], "dataset.json") +
                               "' differ beyond their case lists: not shards of one job");
    for (const auto& img : list_images(join(f, "imagesTr"))) {
      any_image = true;
      all_channels = all_channels && nnunet_channel(split_name(img).first).second >= 0;
    }
    Inputs shard;  // its splits, as folds of source cases
    shard.root = f;
    find_splits(shard);
    if (shard.splits.is_null()) continue;
    if (!train.empty() && shard.splits.size() != train.size())
      throw std::runtime_error("'" + join(f, "splits_final.json") + "' has " +
                               std::to_string(shard.splits.size()) + " folds, '" +
                               join(*with_splits, "splits_final.json") + "' " +
                               std::to_string(train.size()) + ": not shards of one job");
    train.resize(shard.splits.size()), val.resize(shard.splits.size());
    for (size_t k = 0; k < shard.splits.size(); ++k) {
      for (const auto& c : shard.splits[k]["train"])
        train[k].insert(source_case(c.get<std::string>()));
      for (const auto& c : shard.splits[k]["val"]) val[k].insert(source_case(c.get<std::string>()));
    }
  }
  in.root = merged;
  in.nnunet = any_image && all_channels;
  if (!train.empty()) {
    in.splits = json::array();
    for (size_t k = 0; k < train.size(); ++k)
      in.splits.push_back({{"train", train[k]}, {"val", val[k]}});
  }
  return in;
}

}  // namespace

DeformMergeSummary merge_deform_shards(const std::vector<std::string>& folders,
                                       const std::string& merged_arg) {
  if (folders.empty()) throw std::invalid_argument("merge: no shard folders given");
  if (merged_arg.empty() && folders.size() > 1)
    throw std::invalid_argument("merge: " + std::to_string(folders.size()) +
                                " folders need -o MERGED (one shared folder is merged in place)");
  const std::string merged = merged_arg.empty() ? folders[0] : merged_arg;
  std::set<std::string> reals;
  for (const auto& f : folders) {
    if (!detail::dir_exists(f)) throw std::runtime_error("shard folder '" + f + "' does not exist");
    if (!reals.insert(real_path(f)).second)
      throw std::invalid_argument("merge: folder '" + f + "' is given twice");
  }
  const std::string merged_abs = future_path(merged);
  for (const auto& r : reals)
    if (merged_abs.compare(0, r.size() + 1, r + "/") == 0)
      throw std::invalid_argument("merge: the merged folder '" + merged +
                                  "' lies inside the shard folder '" + r + "'");
  // No shard may still be writing: every folder locked for the whole merge.
  std::vector<std::unique_ptr<detail::RunLock>> locks;
  for (const auto& f : folders)
    locks.push_back(std::make_unique<detail::RunLock>(f, "drdm_deform merge"));

  // Everything is checked before anything is written.
  const std::vector<Shard> shards = find_shards(folders);
  json samples = merged_samples(shards);
  const json& job = shards[0].m;
  require_no_other_run(merged, job, shards[0].manifest);
  const bool dataset =
      job["mode"] != "pairs" && std::any_of(folders.begin(), folders.end(), [](const auto& f) {
        return detail::file_exists(join(f, "dataset.json"));
      });
  std::set<std::string> dirs;
  const auto plan = plan_copies(folders, merged, dataset, dirs);
  Inputs in;
  if (dataset) in = dataset_inputs(folders, merged);
  json manifest = merged_manifest(shards, merged, std::move(samples));

  if (!reals.count(real_path(merged)))
    locks.push_back(std::make_unique<detail::RunLock>(merged, "drdm_deform merge"));
  for (const auto& d : dirs) detail::make_dirs(join(merged, d));
  for (const auto& [rel, from] : plan) link_or_copy(from, join(merged, rel));
  if (dataset) {
    const auto cases = cases_present(in, merged);
    update_dataset_json(in, merged, cases);
    write_splits(in, merged, cases);
  }
  write_text_file(join(merged, "config.json"), manifest["options"].dump(2) + "\n");
  const std::string manifest_path = join(merged, "manifest.json");
  write_text_file(manifest_path, manifest.dump(2) + "\n");
  log::info(c10::str("drdm_deform merge: ", shards.size(), " shards, ",
                     manifest["cases"].get<size_t>(), " cases, ", manifest["samples"].size(),
                     " samples, ", plan.size(), " files brought into '", merged, "'"));
  DeformMergeSummary s;
  s.shards = static_cast<int64_t>(shards.size());
  s.cases = manifest["cases"].get<int64_t>();
  s.samples = static_cast<int64_t>(manifest["samples"].size());
  s.files = static_cast<int64_t>(plan.size());
  s.manifest = manifest_path;
  return s;
}

}  // namespace drdm
