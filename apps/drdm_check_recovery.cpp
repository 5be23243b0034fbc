// drdm_check_recovery: does a trained model recover? One predicted step at several t on held-out
// images.
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <sstream>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/diffusion/inference.h"
#include "drdm/engine/distributed.h"
#include "drdm/io/commands.h"
#include "drdm/io/dataset.h"
#include "drdm/io/models.h"
#include "drdm/io/text_file.h"

namespace {

struct Options {
  std::string model, device = "auto", output;
  std::vector<std::string> folders, include;
  std::vector<int64_t> levels{5, 10, 20, 40, 60, 80};
  int64_t repeats = 2, max_images = 64;
  uint64_t seed = 0;
  bool quiet = false;
  std::vector<double> subset{0.0, 1.0};
};

void add_options(CLI::App& cli, Options& o) {
  cli.add_option("-m,--model", o.model,
                 "a shipped model's name (cardiac2d, chest2d, hippocampus3d) or a model.pt / "
                 "checkpoint.pt from drdm_train")
      ->required()
      ->check(drdm::app::non_empty());
  cli.add_option("-d,--data", o.folders, "Folder(s) of held-out images (not used in training)")
      ->required();
  cli.add_option("--include", o.include, "File name patterns (default: the model's data.include)");
  cli.add_option("--subset", o.subset,
                 "FROM,TO: use this part of each folder's sorted files, e.g. 0.7,1 = the last 30 % "
                 "(default 0,1: all)")
      ->delimiter(',')
      ->expected(2);
  cli.add_option("--levels", o.levels, "Levels t to test")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{10000}))
      ->capture_default_str();
  cli.add_option("--repeats", o.repeats, "Forward draws per image and level")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  cli.add_option("--max-images", o.max_images, "Use at most this many images (evenly spread)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cli.add_option("--seed", o.seed, "Random seed")
      ->check(drdm::app::non_negative_integer())
      ->capture_default_str();
  cli.add_option("--device", o.device, "cpu, cuda, cuda:N or auto")
      ->capture_default_str()
      ->check(drdm::app::non_empty());
  cli.add_option("-o,--output", o.output, "Also write the JSON to this file")
      ->check(drdm::app::non_empty());
  cli.add_flag("-q,--quiet", o.quiet, "Log warnings and errors only");
}

// At most max_images held-out images, evenly spread over the dataset: [N, C, ...S].
at::Tensor held_out_images(const Options& o, drdm::DatasetOptions data) {
  data.folders = o.folders;
  if (!o.include.empty()) data.include = o.include;
  data.exclude.clear();
  if (o.subset.size() != 2 || !(o.subset[0] >= 0 && o.subset[0] < o.subset[1] && o.subset[1] <= 1))
    throw std::invalid_argument("--subset: expected FROM,TO with 0 <= FROM < TO <= 1");
  data.subset = o.subset;
  drdm::ImageDataset dataset(data);
  const int64_t n = std::min(dataset.size(), o.max_images);
  std::vector<at::Tensor> picked;
  for (int64_t i = 0; i < n; ++i) picked.push_back(dataset.sample(i * dataset.size() / n));
  return at::stack(picked);
}

std::string recovery_json(const Options& o, int64_t model_step, int64_t images,
                          const std::vector<drdm::RecoveryCheck>& checks) {
  std::ostringstream js;
  js << "{\n  \"model\": \"" << o.model << "\",\n  \"model_step\": " << model_step
     << ",\n  \"images\": " << images << ",\n  \"repeats\": " << o.repeats
     << ",\n  \"levels\": [\n";
  for (size_t i = 0; i < checks.size(); ++i) {
    const auto& c = checks[i];
    js << "    {\"t\": " << c.t << ", \"no_step_error_voxels\": " << c.no_step_error
       << ", \"one_step_error_voxels\": " << c.one_step_error << ", \"ratio\": " << c.ratio
       << ", \"cosine\": " << c.cosine << ", \"samples\": " << c.samples << "}"
       << (i + 1 < checks.size() ? "," : "") << "\n";
  }
  js << "  ]\n}\n";
  return js.str();
}

void run_check(const Options& o) {
  if (o.levels.empty()) throw std::invalid_argument("--levels: none given");
  drdm::check_output_file(o.output, {drdm::resolve_model_path(o.model)}, "--output");
  const auto dev = drdm::resolve_device(o.device);
  auto m = drdm::load_model(o.model, dev);
  const auto images = held_out_images(o, m.config.data);
  for (auto t : o.levels)
    if (t < 1 || t > m.config.sampler.timesteps)
      throw std::invalid_argument("--levels: " + std::to_string(t) + " is outside [1, " +
                                  std::to_string(m.config.sampler.timesteps) + "]");
  drdm::VelocitySampler sampler(m.config.sampler, m.config.data.size, dev);
  const auto checks = drdm::check_recovery(m.net, sampler, images, o.levels, o.repeats, o.seed);
  const auto js = recovery_json(o, m.step, images.size(0), checks);
  if (!o.output.empty()) drdm::write_text_atomically(o.output, js);  // atomic, checked
  std::cout << js;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{
      "Measure whether a trained DRDM model has learned to recover: for each level t, deform "
      "held-out "
      "images by the forward process and compare the error left after one predicted recovery step, "
      "mean ||compose(psi_t, psi_hat)||, with the error of doing nothing, mean ||psi_t|| (voxels). "
      "Prints JSON."};
  Options o;
  add_options(cli, o);
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;

  drdm::app::init_program(!o.quiet);
  return drdm::app::run_reporting_errors("drdm_check_recovery", [&] { run_check(o); });
}
