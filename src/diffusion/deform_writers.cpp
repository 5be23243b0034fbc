// drdm_deform's output files: each sample's images, labels, field and
// preview, and for a dataset output its dataset.json and copied files.
#include <ATen/ATen.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "diffusion/deform_internal.h"
#include "drdm/core/spatial.h"
#include "drdm/io/image_io.h"
#include "drdm/io/preview.h"
#include "drdm/io/text_file.h"
#include "io/atomic_file.h"
#include "io/files.h"

namespace drdm::detail::deform {
namespace {

std::string two_digits(int64_t k) {
  std::string s = std::to_string(k);
  return s.size() < 2 ? "0" + s : s;
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

std::string sample_name(const std::string& case_name, const Work& w, bool pairs) {
  std::string s = case_name + "_drdm_T" + std::to_string(w.level.aug);
  if (pairs) s += "-" + std::to_string(w.level.syn);
  return s + "_s" + two_digits(w.k);
}

at::Tensor first_channel(const at::Tensor& row) { return row.narrow(0, 0, 1).unsqueeze(0); }

}  // namespace

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
  write_text_atomically(join(out_dir, "dataset.json"), j.dump(4) + "\n");
}

/// Copies the input's test set (imagesTs/, labelsTs/) unchanged: byte copies
/// (not links, so that editing the output never edits the input), each atomic.
void copy_test_set(const Inputs& in, const std::string& out_dir) {
  for (const auto& d : in.test_dirs) detail::make_dirs(join(out_dir, d));
  for (const auto& rel : in.test_files) copy_file(join(in.root, rel), join(out_dir, rel));
}

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

OutputFolders::OutputFolders(const DeformJobOptions& o, const OutputLayout& l,
                             const std::vector<Case>& cases)
    : root_(o.output) {
  dirs_ = {l.images, l.fields};
  if (o.previews) dirs_.push_back(l.previews);
  if (l.pairs) dirs_.insert(dirs_.end(), {"fixed", "moving_fields"});
  bool any_labels = false;
  for (const auto& c : cases) any_labels = any_labels || !c.labels.empty();
  if (any_labels) dirs_.push_back(l.labels);
  if (any_labels && l.pairs) dirs_.push_back("fixed_labels");
}

void OutputFolders::ensure() {
  if (made_) return;
  for (const auto& d : dirs_) make_dirs(join(root_, d));
  made_ = true;
}

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

/// Row `i` of `g`, made from `w`.
json CaseWriter::write(const Generated& g, int64_t i, const Work& w) const {
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

/// `row` [C, ...S]: one file per channel, named as nnU-Net or as the input.
json CaseWriter::channels(const std::string& dir, const std::string& sample,
                          const at::Tensor& row) const {
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

std::string CaseWriter::labels(const std::string& dir, const std::string& sample,
                               const at::Tensor& row) const {
  const std::string rel = dir + "/" + sample + d_.label_ext;
  write_labels(join(o_.output, rel), row.unsqueeze(0), d_.geometry);
  return rel;
}

/// A single-slice volume (e.g. 256x256x1) gets 2D fields on its in-plane grid.
std::string CaseWriter::field_file(const std::string& dir, const std::string& sample,
                                   const at::Tensor& field) const {
  const std::string rel = dir + "/" + sample + d_.field_ext;
  const Image written = squeeze_single_slice_field(field, d_.geometry);
  write_field(join(o_.output, rel), written.data, written.geometry);
  return rel;
}

/// A volume deformed slice by slice shows the central slice of the slicing axis.
std::string CaseWriter::preview(const std::string& sample, const at::Tensor& before,
                                const at::Tensor& after, const at::Tensor& field) const {
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

json CaseWriter::record(const Work& w, const json& outputs, const at::Tensor& field) const {
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

}  // namespace drdm::detail::deform
