// drdm_deform: generate deformation fields with a trained DRDM and deform
// images, labels and registration pairs (paper Alg. 2, 3 and 4).
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <tuple>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/core/log.h"
#include "drdm/diffusion/deform_job.h"

namespace {

std::vector<drdm::DeformLevel> parse_levels_option(const std::string& text) {
  try {
    return drdm::parse_levels(text);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("--" + std::string(e.what()));
  }
}

/// drdm_deform merge OUT_DIR... [-o MERGED].
int merge_main(int argc, char** argv) {
  CLI::App cli{
      "Merge the shards of one drdm_deform job (--shard i/n or --shard auto) into what the "
      "unsharded run writes: "
      "OUT_DIR/manifest.json (samples in the unsharded order, summary over all samples) and "
      "config.json, and for a "
      "dataset output dataset.json and splits_final.json over all cases. One shared folder is "
      "merged in place; "
      "several folders (one per shard) need -o MERGED, into which their files are hard-linked "
      "(copied across file "
      "systems). Checks first that the shard manifests 0..n-1 are all there, of one job (same "
      "options but the "
      "shard, same model), without duplicate samples; otherwise exits 1 naming the file, with "
      "nothing written.",
      "drdm_deform merge"};
  std::vector<std::string> folders;
  std::string merged;
  bool quiet = false;
  cli.add_option("OUT_DIR", folders, "The shards' output folder(s)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cli.add_option("-o,--output", merged, "Merged folder (created; required with several OUT_DIRs)")
      ->check(drdm::app::non_empty());
  cli.add_flag("-q,--quiet", quiet, "Log warnings and errors only");
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;
  drdm::app::init_program(!quiet);
  return drdm::app::run_reporting_errors("drdm_deform merge", [&] {
    const auto s = drdm::merge_deform_shards(folders, merged);
    std::cout << "{\"output\": \"" << (merged.empty() ? folders[0] : merged)
              << "\", \"shards\": " << s.shards << ", \"cases\": " << s.cases
              << ", \"samples\": " << s.samples << ", \"files\": " << s.files
              << ", \"manifest\": \"" << s.manifest << "\"}\n";
  });
}

/// The command line: the options drdm_deform's main fills, and the CLI11
/// options whose count says whether a number was given (0 is a value).
struct CommandLine {
  drdm::DeformJobOptions o;  ///< model, input, labels and output, as given
  std::string config, levels, mode, shard, labels_mode, padding, schedule, slice_mode, precision;
  std::string device;
  double slice_sigma = 0;
  int64_t samples = 0, batch = 0, slice_axis = 0, threads = 0;
  uint64_t seed = 0;
  bool quiet = false, no_progress = false, no_preview = false;
  CLI::Option *levels_opt = nullptr, *samples_opt = nullptr, *seed_opt = nullptr;
  CLI::Option *batch_opt = nullptr, *slice_axis_opt = nullptr, *slice_sigma_opt = nullptr;
  CLI::Option* threads_opt = nullptr;
};

/// What to deform, how much and where to: --model to --config.
void add_job_options(CLI::App& cli, CommandLine& c) {
  cli.add_option("--model", c.o.model,
                 "a shipped model's name or a model.pt from drdm_train (default: " +
                     std::string(drdm::kDefaultModelName) + ", or $DRDM_MODEL). Shipped models:\n" +
                     drdm::shipped_models_help())
      ->check(drdm::app::non_empty());
  cli.add_option("-i,--input", c.o.input,
                 "Image file, folder of images, or MSD / nnU-Net dataset folder")
      ->required()
      ->check(drdm::app::non_empty());
  cli.add_option("-l,--labels", c.o.labels,
                 "Label map file, or folder of label maps matched by name")
      ->check(drdm::app::non_empty());
  cli.add_option("-o,--output", c.o.output, "Output folder")
      ->required()
      ->check(drdm::app::non_empty());
  c.levels_opt =
      cli.add_option("--levels", c.levels,
                     "Deformation levels T' (default 30,45); pairs mode: AUG:SYN, e.g. 45:30");
  c.samples_opt =
      cli.add_option("-n,--samples", c.samples, "Samples per input and level (default 4)")
          ->check(CLI::Range(int64_t{1}, drdm::kMaxDeformSamples));
  c.seed_opt =
      cli.add_option("--seed", c.seed, "Seed (default 0): the same seed gives the same fields")
          ->check(drdm::app::non_negative_integer());
  cli.add_option("--mode", c.mode,
                 "deform (Alg. 2), augment (Alg. 3, labels required) or pairs (Alg. 4)")
      ->check(CLI::IsMember({"deform", "augment", "pairs"}));
  cli.add_option("--device", c.device, "cpu, cuda, cuda:N or auto (default: CUDA when present)")
      ->check(drdm::app::non_empty());
  cli.add_option(
         "--shard", c.shard,
         "i/n: process inputs i, i+n, i+2n, ... (0 <= i < n), for job arrays; auto: i/n from "
         "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_COUNT (a Slurm job array) "
         "or "
         "RANK / WORLD_SIZE (torchrun). Then join the shards with `drdm_deform merge`")
      ->check(drdm::app::non_empty());
  cli.add_option("-c,--config", c.config,
                 "JSON config with any of these options (the command line wins)")
      ->check(CLI::ExistingFile);
}

/// How to run: --batch to --quiet.
void add_run_options(CLI::App& cli, CommandLine& c) {
  c.batch_opt =
      cli.add_option("--batch", c.batch, "Samples (or 2D slices) per network pass (default 16)")
          ->check(CLI::Range(int64_t{1}, drdm::kMaxDeformBatch));
  cli.add_option("--schedule", c.schedule,
                 "level: recover t = T'..1 (paper); all: t = T..1 (authors' code)")
      ->check(CLI::IsMember({"level", "all"}));
  cli.add_option("--label-interpolation", c.labels_mode,
                 "nearest (default) or soft (one-hot linear, argmax; labels 0..255)")
      ->check(CLI::IsMember(drdm::label_interpolation_names()));
  cli.add_option("--padding", c.padding,
                 "Image padding outside the field of view: zeros (default) or border")
      ->check(CLI::IsMember(drdm::padding_names()));
  c.slice_axis_opt =
      cli.add_option("--slice-axis", c.slice_axis,
                     "3D input, 2D model: tensor axis to slice (0 = D, 1 = H, 2 = W)")
          ->check(CLI::Range(0, 2));
  cli.add_option(
         "--slice-mode", c.slice_mode,
         "3D input, 2D model: coherent (default: one start field per volume, recovery steps "
         "smoothed across slices) or independent (every slice its own 2D sample)")
      ->check(CLI::IsMember({"coherent", "independent"}));
  c.slice_sigma_opt = cli.add_option("--slice-sigma", c.slice_sigma,
                                     "coherent slices: Gaussian smoothing of each recovery step "
                                     "across slices, in slices (default 2)")
                          ->check(drdm::app::finite_in(0, 1000));
  c.threads_opt = cli.add_option("--threads", c.threads, "CPU threads (default 0: all)")
                      ->check(CLI::Range(0, 1024));
  cli.add_option("--mixed-precision", c.precision,
                 "none (default) or bf16: network passes under bf16 autocast (fields stay float32; "
                 "faster on CPUs with AVX512-BF16/AMX and on GPUs)")
      ->check(CLI::IsMember({"none", "bf16"}));
  cli.add_flag("--no-preview", c.no_preview, "Do not write preview PNGs");
  cli.add_flag("--no-progress", c.no_progress, "Do not draw the progress bar");
  cli.add_flag("-q,--quiet", c.quiet, "Log warnings and errors only");
}

/// The job's options: the config file's, then what the command line gives.
drdm::DeformJobOptions job_options(const CommandLine& c) {
  const auto given = [](const CLI::Option* opt) { return opt->count() > 0; };
  drdm::DeformJobOptions o = c.o;
  if (!c.config.empty()) drdm::load_deform_config(c.config, o);
  if (given(c.levels_opt)) o.levels = parse_levels_option(c.levels);
  if (given(c.samples_opt)) o.samples = c.samples;
  if (given(c.seed_opt)) o.seed = c.seed;
  if (!c.mode.empty()) o.mode = drdm::parse_deform_mode(c.mode);
  if (!c.device.empty()) o.device = c.device;
  if (given(c.batch_opt)) o.batch = c.batch;
  if (!c.precision.empty()) o.mixed_precision = c.precision;
  if (!c.schedule.empty()) o.schedule = drdm::parse_recovery_schedule(c.schedule);
  if (!c.labels_mode.empty())
    o.label_interpolation = drdm::parse_label_interpolation(c.labels_mode);
  if (!c.padding.empty()) o.padding = drdm::parse_padding(c.padding);
  if (given(c.slice_axis_opt)) o.slice_axis = c.slice_axis;
  if (!c.slice_mode.empty()) o.slice_mode = drdm::parse_slice_mode(c.slice_mode);
  if (given(c.slice_sigma_opt)) o.slice_sigma = c.slice_sigma;
  if (given(c.threads_opt)) o.threads = c.threads;
  if (c.no_preview) o.previews = false;
  o.progress = !c.no_progress;
  if (!c.shard.empty()) std::tie(o.shard_index, o.shard_count) = drdm::parse_shard(c.shard);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "merge") return merge_main(argc - 1, argv + 1);
  CLI::App cli{
      "Deform images (and their labels) with fields generated by a trained DRDM (paper Alg. 2-4). "
      "INPUT is an image file, a folder of images (with --labels: a folder of label maps matched "
      "by "
      "name) or an MSD / nnU-Net dataset folder (imagesTr/, labelsTr/, dataset.json). Writes per "
      "sample "
      "the field (ITK displacement field, mm), warped image(s) and labels, a preview PNG, and "
      "OUTPUT/manifest.json with every sample's level, seed, files and metrics. A job split with "
      "--shard "
      "writes manifest-shard-I-of-N.json per shard; `drdm_deform merge OUT_DIR... [-o MERGED]` "
      "joins the shards "
      "into what the unsharded run writes (see drdm_deform merge --help)."};
  CommandLine c;
  add_job_options(cli, c);
  add_run_options(cli, c);
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;
  drdm::app::init_program(!c.quiet);
  return drdm::app::run_reporting_errors("drdm_deform", [&] {
    const drdm::DeformJobOptions o = job_options(c);
    const auto s = drdm::run_deform_job(o);
    std::cout << "{\"output\": \"" << o.output << "\", \"cases\": " << s.cases
              << ", \"samples\": " << s.samples << ", \"seconds\": " << s.seconds
              << ", \"manifest\": \"" << s.manifest << "\"}\n";
  });
}
