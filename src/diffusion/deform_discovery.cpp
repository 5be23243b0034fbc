// drdm_deform's input: the cases of an image file, a folder of images (with
// a folder of label maps) or an MSD / nnU-Net dataset folder, checked.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <stdexcept>

#include "core/soft_labels.h"
#include "diffusion/deform_internal.h"
#include "drdm/io/image_io.h"
#include "io/files.h"
#include "io/grid_check.h"
#include "io/input_checks.h"

namespace drdm::detail::deform {

/// "case_0000" -> ("case", 0) for nnU-Net channel files; ("", -1) otherwise.
std::pair<std::string, int> nnunet_channel(const std::string& stem) {
  if (stem.size() < 6 || stem[stem.size() - 5] != '_') return {"", -1};
  for (size_t i = stem.size() - 4; i < stem.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(stem[i]))) return {"", -1};
  return {stem.substr(0, stem.size() - 5), std::stoi(stem.substr(stem.size() - 4))};
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

namespace {

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

}  // namespace

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

}  // namespace drdm::detail::deform
