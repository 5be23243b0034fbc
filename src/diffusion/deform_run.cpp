// drdm_deform's run: the input's cases (this shard's), deformed level by
// level and sample by sample in batches, written with their manifest.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <stdexcept>

#include "diffusion/deform_internal.h"
#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "drdm/diffusion/inference.h"
#include "drdm/engine/distributed.h"
#include "drdm/io/image_io.h"
#include "drdm/io/models.h"
#include "drdm/io/text_file.h"
#include "engine/progress.h"
#include "engine/run_kind.h"
#include "io/files.h"
#include "io/run_lock.h"

namespace drdm::detail::deform {
namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ULL;
  }
  return h;
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

/// What a run needs, loaded and checked before anything is written.
struct PreparedJob {
  std::string model_path;
  torch::Device device;
  TrainedModel trained;
  Inputs in;
  std::vector<Case> mine;  ///< this shard's cases
};

PreparedJob prepare_job(const DeformJobOptions& o) {
  std::string model_path = o.model.empty() ? default_model_path() : resolve_model_path(o.model);
  const torch::Device device = resolve_device(o.device);
  TrainedModel trained = load_model(model_path, device);
  const int64_t big_t = trained.config.sampler.timesteps;
  for (const auto& l : o.levels)
    if (l.aug > big_t || l.syn > big_t)
      throw std::invalid_argument("levels: " + levels_text({l}) +
                                  " exceeds the model's T = " + std::to_string(big_t));
  Inputs in = discover(o);
  require_utf8_names(o, in, model_path);
  detail::require_run_kind(o.output, "drdm_deform", {});  // not a seg_fewshot / reg_synth folder
  std::vector<Case> mine = shard_cases(in, o, trained.config.data.dims);
  return PreparedJob{std::move(model_path), device, std::move(trained), std::move(in),
                     std::move(mine)};
}

void log_job(const DeformJobOptions& o, const PreparedJob& job) {
  log::info(c10::str("drdm_deform: ", job.mine.size(), " of ", job.in.cases.size(),
                     " cases (shard ", o.shard_index, "/", o.shard_count, "), mode ",
                     to_string(o.mode), ", levels ", levels_text(o.levels), " x ", o.samples,
                     " samples, model '", job.model_path, "' (", job.trained.config.data.dims,
                     "D, step ", job.trained.step, ") on ", job.device.str()));
}

/// Progress in network steps (one model item, i.e. an image or a 2D slice,
/// advanced by one recovery step), so that long volumes show progress too.
/// SIGINT / SIGTERM stop the run at the next step.
class JobProgress {
 public:
  JobProgress(const DeformJobOptions& o, const PreparedJob& job)
      : total_(deformer_steps_total(
            job.mine, o, job.trained.config.data.dims, job.trained.config.sampler.timesteps,
            o.slice_axis >= 0 ? o.slice_axis : job.trained.config.data.slice_axis)),
        bar_("drdm_deform recovery steps", total_, 0, o.progress) {}
  void step(int64_t n) {
    done_ += n;
    bar_.update(std::min(done_, total_), case_);
    throw_if_interrupted();
  }
  void start_case(const std::string& name) { case_ = name; }
  void finish() { bar_.finish(); }

 private:
  int64_t total_;
  detail::ProgressBar bar_;
  int64_t done_ = 0;
  std::string case_;
};

/// Deforms every case of `mine` and returns their samples' records; the
/// output folders exist afterwards.
json deform_cases(const Deformer& deformer, const DeformJobOptions& o, const OutputLayout& layout,
                  const std::vector<Case>& mine, int64_t model_dims, JobProgress& progress) {
  OutputFolders folders(o, layout, mine);
  json samples = json::array();
  for (const auto& c : mine) {
    throw_if_interrupted();
    progress.start_case(c.name);
    deform_case(deformer, o, layout, c, model_dims, folders, samples);
  }
  progress.finish();
  folders.ensure();
  return samples;
}

/// A dataset output's own files: the test set (shard 0), dataset.json and
/// splits_final.json over the cases now there.
void write_dataset_files(const DeformJobOptions& o, const Inputs& in) {
  if (o.shard_index == 0) copy_test_set(in, o.output);
  const auto cases = cases_present(in, o.output);
  update_dataset_json(in, o.output, cases);
  write_splits(in, o.output, cases);
}

}  // namespace
}  // namespace drdm::detail::deform

namespace drdm {

DeformJobSummary run_deform_job(const DeformJobOptions& o) {
  using namespace detail::deform;
  const auto start = std::chrono::steady_clock::now();
  check_job_options(o);
  if (o.threads > 0) at::set_num_threads(static_cast<int>(o.threads));
  // Everything is checked before anything is written.
  PreparedJob job = prepare_job(o);
  // One run per output folder (shards of one job share it, one process per shard).
  const detail::RunLock lock(o.output, "drdm_deform",
                             o.shard_count > 1 ? "shard-" + std::to_string(o.shard_index) + "-of-" +
                                                     std::to_string(o.shard_count)
                                               : "");
  log_job(o, job);
  JobProgress progress(o, job);
  DeformerOptions dopt = deformer_options(o);
  dopt.generation.on_step = [&progress](int64_t n) { progress.step(n); };
  const int64_t model_step = job.trained.step;
  const int64_t model_dims = job.trained.config.data.dims;
  const Deformer deformer(std::move(job.trained), job.device, dopt);
  const OutputLayout layout = output_layout(job.in, o.mode);
  json samples = deform_cases(deformer, o, layout, job.mine, model_dims, progress);
  if (layout.dataset_out) write_dataset_files(o, job.in);
  write_text_atomically(detail::join(o.output, "config" + shard_suffix(o) + ".json"),
                        to_json(o) + "\n");
  DeformJobSummary summary;
  summary.cases = static_cast<int64_t>(job.mine.size());
  summary.samples = static_cast<int64_t>(samples.size());
  summary.manifest = detail::join(o.output, "manifest" + shard_suffix(o) + ".json");
  const json manifest =
      manifest_json(o, job.model_path, model_step, deformer, job.mine.size(), std::move(samples));
  write_text_atomically(summary.manifest, manifest.dump(2) + "\n");
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace drdm
