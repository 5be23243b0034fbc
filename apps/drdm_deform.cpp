// drdm_deform: generate deformation fields with a trained DRDM and deform
// images, labels and registration pairs (paper Alg. 2, 3 and 4).
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <tuple>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/deform_job.h"
#include "drdm/log.h"

namespace {

std::vector<drdm::DeformLevel> parse_levels_option(const std::string& text) {
  try {
    return drdm::parse_levels(text);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("--" + std::string(e.what()));
  }
}

/// An environment variable's integer value; throws naming it when it is not one.
int64_t env_integer(const char* name, const std::string& value) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (value.empty() || used != value.size())
    throw std::invalid_argument("--shard auto: " + std::string(name) + "='" + value + "' is not an integer");
  return v;
}

/// --shard auto: the shard of a Slurm job array task (SLURM_ARRAY_TASK_ID -
/// SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) or of a torchrun worker
/// (RANK of WORLD_SIZE). Throws naming the variables when neither is there
/// or the values are not a shard i/n with 0 <= i < n.
std::pair<int64_t, int64_t> shard_from_environment() {
  const auto get = [](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    return v != nullptr ? std::optional<std::string>(v) : std::nullopt;
  };
  const auto need = [&](const char* name, const char* partner) {
    const auto v = get(name);
    if (!v)
      throw std::invalid_argument("--shard auto: " + std::string(partner) + " is set but " + name +
                                  " is not; both are needed");
    return env_integer(name, *v);
  };
  int64_t i = 0, n = 0;
  std::string used;
  if (get("SLURM_ARRAY_TASK_ID") || get("SLURM_ARRAY_TASK_COUNT")) {
    const int64_t id = need("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT");
    n = need("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID");
    used = "SLURM_ARRAY_TASK_ID=" + std::to_string(id) + ", SLURM_ARRAY_TASK_COUNT=" + std::to_string(n);
    int64_t min = 0;
    if (const auto m = get("SLURM_ARRAY_TASK_MIN")) {
      min = env_integer("SLURM_ARRAY_TASK_MIN", *m);
      used += ", SLURM_ARRAY_TASK_MIN=" + std::to_string(min);
    }
    if (const auto step = get("SLURM_ARRAY_TASK_STEP"); step && env_integer("SLURM_ARRAY_TASK_STEP", *step) != 1)
      throw std::invalid_argument("--shard auto: SLURM_ARRAY_TASK_STEP=" + *step +
                                  ": the job array must be a contiguous range (e.g. --array=0-7)");
    i = id - min;
  } else if (get("RANK") || get("WORLD_SIZE")) {
    i = need("RANK", "WORLD_SIZE");
    n = need("WORLD_SIZE", "RANK");
    used = "RANK=" + std::to_string(i) + ", WORLD_SIZE=" + std::to_string(n);
  } else {
    throw std::invalid_argument(
        "--shard auto: neither SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (a Slurm job array) nor RANK and "
        "WORLD_SIZE (torchrun) are set; give --shard i/n");
  }
  if (n < 1 || i < 0 || i >= n)
    throw std::invalid_argument("--shard auto: " + used + " gives shard " + std::to_string(i) + "/" +
                                std::to_string(n) + ", not i/n with 0 <= i < n");
  drdm::log::info("drdm_deform: --shard auto: shard " + std::to_string(i) + "/" + std::to_string(n) + " from " + used);
  return {i, n};
}

/// drdm_deform merge OUT_DIR... [-o MERGED].
int merge_main(int argc, char** argv) {
  CLI::App cli{
      "Merge the shards of one drdm_deform job (--shard i/n or --shard auto) into what the unsharded run writes: "
      "OUT_DIR/manifest.json (samples in the unsharded order, summary over all samples) and config.json, and for a "
      "dataset output dataset.json and splits_final.json over all cases. One shared folder is merged in place; "
      "several folders (one per shard) need -o MERGED, into which their files are hard-linked (copied across file "
      "systems). Checks first that the shard manifests 0..n-1 are all there, of one job (same options but the "
      "shard, same model), without duplicate samples; otherwise exits 1 naming the file, with nothing written.",
      "drdm_deform merge"};
  std::vector<std::string> folders;
  std::string merged;
  bool quiet = false;
  cli.add_option("OUT_DIR", folders, "The shards' output folder(s)")->required()->check(CLI::ExistingDirectory);
  cli.add_option("-o,--output", merged, "Merged folder (created; required with several OUT_DIRs)")
      ->check(drdm::app::non_empty());
  cli.add_flag("-q,--quiet", quiet, "Log warnings and errors only");
  CLI11_PARSE(cli, argc, argv);
  drdm::app::init_program(!quiet);
  return drdm::app::run_reporting_errors("drdm_deform merge", [&] {
    const auto s = drdm::merge_deform_shards(folders, merged);
    std::cout << "{\"output\": \"" << (merged.empty() ? folders[0] : merged) << "\", \"shards\": " << s.shards
              << ", \"cases\": " << s.cases << ", \"samples\": " << s.samples << ", \"files\": " << s.files
              << ", \"manifest\": \"" << s.manifest << "\"}\n";
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "merge") return merge_main(argc - 1, argv + 1);
  CLI::App cli{
      "Deform images (and their labels) with fields generated by a trained DRDM (paper Alg. 2-4). "
      "INPUT is an image file, a folder of images (with --labels: a folder of label maps matched by "
      "name) or an MSD / nnU-Net dataset folder (imagesTr/, labelsTr/, dataset.json). Writes per sample "
      "the field (ITK displacement field, mm), warped image(s) and labels, a preview PNG, and "
      "OUTPUT/manifest.json with every sample's level, seed, files and metrics. A job split with --shard "
      "writes manifest-shard-I-of-N.json per shard; `drdm_deform merge OUT_DIR... [-o MERGED]` joins the shards "
      "into what the unsharded run writes (see drdm_deform merge --help)."};
  drdm::DeformJobOptions o;
  std::string config, levels, mode, shard, labels_mode, padding, schedule, slice_mode;
  double slice_sigma = 0;
  int64_t samples = 0, batch = 0, slice_axis = 0, threads = 0;
  uint64_t seed = 0;
  bool quiet = false, no_progress = false, no_preview = false;
  std::string device;
  cli.add_option("--model", o.model,
                 "a shipped model's name or a model.pt from drdm_train (default: " +
                     std::string(drdm::kDefaultModelName) + ", or $DRDM_MODEL). Shipped models:\n" +
                     drdm::shipped_models_help())
      ->check(drdm::app::non_empty());
  cli.add_option("-i,--input", o.input, "Image file, folder of images, or MSD / nnU-Net dataset folder")
      ->required()
      ->check(drdm::app::non_empty());
  cli.add_option("-l,--labels", o.labels, "Label map file, or folder of label maps matched by name")
      ->check(drdm::app::non_empty());
  cli.add_option("-o,--output", o.output, "Output folder")->required()->check(drdm::app::non_empty());
  auto* levels_opt =
      cli.add_option("--levels", levels, "Deformation levels T' (default 30,45); pairs mode: AUG:SYN, e.g. 45:30");
  auto* samples_opt = cli.add_option("-n,--samples", samples, "Samples per input and level (default 4)")
                          ->check(CLI::Range(int64_t{1}, drdm::kMaxDeformSamples));
  auto* seed_opt = cli.add_option("--seed", seed, "Seed (default 0): the same seed gives the same fields")
                       ->check(drdm::app::non_negative_integer());
  cli.add_option("--mode", mode, "deform (Alg. 2), augment (Alg. 3, labels required) or pairs (Alg. 4)")
      ->check(CLI::IsMember({"deform", "augment", "pairs"}));
  cli.add_option("--device", device, "cpu, cuda, cuda:N or auto (default: CUDA when present)")
      ->check(drdm::app::non_empty());
  cli.add_option("--shard", shard,
                 "i/n: process inputs i, i+n, i+2n, ... (0 <= i < n), for job arrays; auto: i/n from "
                 "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_COUNT (a Slurm job array) or "
                 "RANK / WORLD_SIZE (torchrun). Then join the shards with `drdm_deform merge`")
      ->check(drdm::app::non_empty());
  cli.add_option("-c,--config", config, "JSON config with any of these options (the command line wins)")
      ->check(CLI::ExistingFile);
  auto* batch_opt = cli.add_option("--batch", batch, "Samples (or 2D slices) per network pass (default 16)")
                        ->check(CLI::Range(int64_t{1}, drdm::kMaxDeformBatch));
  cli.add_option("--schedule", schedule, "level: recover t = T'..1 (paper); all: t = T..1 (authors' code)")
      ->check(CLI::IsMember({"level", "all"}));
  cli.add_option("--label-interpolation", labels_mode,
                 "nearest (default) or soft (one-hot linear, argmax; labels 0..255)")
      ->check(CLI::IsMember({"nearest", "soft"}));
  cli.add_option("--padding", padding, "Image padding outside the field of view: zeros (default) or border")
      ->check(CLI::IsMember({"zeros", "border"}));
  auto* slice_axis_opt =
      cli.add_option("--slice-axis", slice_axis, "3D input, 2D model: tensor axis to slice (0 = D, 1 = H, 2 = W)")
          ->check(CLI::Range(0, 2));
  cli.add_option("--slice-mode", slice_mode,
                 "3D input, 2D model: coherent (default: one start field per volume, recovery steps "
                 "smoothed across slices) or independent (every slice its own 2D sample)")
      ->check(CLI::IsMember({"coherent", "independent"}));
  auto* slice_sigma_opt =
      cli.add_option("--slice-sigma", slice_sigma,
                     "coherent slices: Gaussian smoothing of each recovery step across slices, in slices (default 2)")
          ->check(drdm::app::finite_in(0, 1000));
  auto* threads_opt =
      cli.add_option("--threads", threads, "CPU threads (default 0: all)")->check(CLI::Range(0, 1024));
  cli.add_flag("--no-preview", no_preview, "Do not write preview PNGs");
  cli.add_flag("--no-progress", no_progress, "Do not draw the progress bar");
  cli.add_flag("-q,--quiet", quiet, "Log warnings and errors only");
  CLI11_PARSE(cli, argc, argv);
  const auto given = [](const CLI::Option* opt) { return opt->count() > 0; };

  drdm::app::init_program(!quiet);
  return drdm::app::run_reporting_errors("drdm_deform", [&] {
    if (!config.empty()) drdm::load_deform_config(config, o);
    if (given(levels_opt)) o.levels = parse_levels_option(levels);
    if (given(samples_opt)) o.samples = samples;
    if (given(seed_opt)) o.seed = seed;
    if (!mode.empty()) o.mode = drdm::parse_deform_mode(mode);
    if (!device.empty()) o.device = device;
    if (given(batch_opt)) o.batch = batch;
    if (!schedule.empty()) o.schedule = drdm::parse_recovery_schedule(schedule);
    if (!labels_mode.empty())
      o.label_interpolation =
          labels_mode == "soft" ? drdm::LabelInterpolation::kSoft : drdm::LabelInterpolation::kNearest;
    if (!padding.empty()) o.padding = padding == "border" ? drdm::Padding::kBorder : drdm::Padding::kZeros;
    if (given(slice_axis_opt)) o.slice_axis = slice_axis;
    if (!slice_mode.empty()) o.slice_mode = drdm::parse_slice_mode(slice_mode);
    if (given(slice_sigma_opt)) o.slice_sigma = slice_sigma;
    if (given(threads_opt)) o.threads = threads;
    if (no_preview) o.previews = false;
    o.progress = !no_progress;
    if (shard == "auto") {
      std::tie(o.shard_index, o.shard_count) = shard_from_environment();
    } else if (!shard.empty()) {
      const auto slash = shard.find('/');
      try {
        if (slash == std::string::npos) throw std::invalid_argument("");
        size_t a = 0, b = 0;
        o.shard_index = std::stoll(shard.substr(0, slash), &a);
        o.shard_count = std::stoll(shard.substr(slash + 1), &b);
        if (a != slash || b != shard.size() - slash - 1) throw std::invalid_argument("");
      } catch (const std::exception&) {
        throw std::invalid_argument("--shard: expected i/n (e.g. 0/4) or auto, got '" + shard + "'");
      }
    }
    const auto s = drdm::run_deform_job(o);
    std::cout << "{\"output\": \"" << o.output << "\", \"cases\": " << s.cases << ", \"samples\": " << s.samples
              << ", \"seconds\": " << s.seconds << ", \"manifest\": \"" << s.manifest << "\"}\n";
  });
}
