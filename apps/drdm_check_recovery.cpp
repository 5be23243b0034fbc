// drdm_check_recovery: does a trained model recover? One predicted step at several t on held-out
// images.
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <sstream>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/engine/distributed.h"
#include "drdm/io/commands.h"
#include "drdm/io/dataset.h"
#include "drdm/io/models.h"
#include "drdm/diffusion/inference.h"

int main(int argc, char** argv) {
  CLI::App cli{
      "Measure whether a trained DRDM model has learned to recover: for each level t, deform "
      "held-out "
      "images by the forward process and compare the error left after one predicted recovery step, "
      "mean ||compose(psi_t, psi_hat)||, with the error of doing nothing, mean ||psi_t|| (voxels). "
      "Prints JSON."};
  std::string model, device = "auto", output;
  std::vector<std::string> folders, include;
  std::vector<int64_t> levels{5, 10, 20, 40, 60, 80};
  int64_t repeats = 2, max_images = 64;
  uint64_t seed = 0;
  bool quiet = false;
  cli.add_option("-m,--model", model,
                 "a shipped model's name (cardiac2d, chest2d, hippocampus3d) or a model.pt / "
                 "checkpoint.pt from drdm_train")
      ->required()
      ->check(drdm::app::non_empty());
  cli.add_option("-d,--data", folders, "Folder(s) of held-out images (not used in training)")
      ->required();
  cli.add_option("--include", include, "File name patterns (default: the model's data.include)");
  std::vector<double> subset{0.0, 1.0};
  cli.add_option("--subset", subset,
                 "FROM,TO: use this part of each folder's sorted files, e.g. 0.7,1 = the last 30 % "
                 "(default 0,1: all)")
      ->delimiter(',')
      ->expected(2);
  cli.add_option("--levels", levels, "Levels t to test")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{10000}))
      ->capture_default_str();
  cli.add_option("--repeats", repeats, "Forward draws per image and level")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  cli.add_option("--max-images", max_images, "Use at most this many images (evenly spread)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cli.add_option("--seed", seed, "Random seed")
      ->check(drdm::app::non_negative_integer())
      ->capture_default_str();
  cli.add_option("--device", device, "cpu, cuda, cuda:N or auto")
      ->capture_default_str()
      ->check(drdm::app::non_empty());
  cli.add_option("-o,--output", output, "Also write the JSON to this file")
      ->check(drdm::app::non_empty());
  cli.add_flag("-q,--quiet", quiet, "Log warnings and errors only");
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;

  drdm::app::init_program(!quiet);
  return drdm::app::run_reporting_errors("drdm_check_recovery", [&] {
    if (levels.empty()) throw std::invalid_argument("--levels: none given");
    drdm::check_output_file(output, {drdm::resolve_model_path(model)}, "--output");
    const auto dev = drdm::resolve_device(device);
    auto m = drdm::load_model(model, dev);
    auto data = m.config.data;
    data.folders = folders;
    if (!include.empty()) data.include = include;
    data.exclude.clear();
    if (subset.size() != 2 || !(subset[0] >= 0 && subset[0] < subset[1] && subset[1] <= 1))
      throw std::invalid_argument("--subset: expected FROM,TO with 0 <= FROM < TO <= 1");
    data.subset = subset;
    drdm::ImageDataset dataset(data);
    const int64_t n = std::min(dataset.size(), max_images);
    std::vector<at::Tensor> picked;
    for (int64_t i = 0; i < n; ++i) picked.push_back(dataset.sample(i * dataset.size() / n));
    const auto images = at::stack(picked);
    for (auto t : levels)
      if (t < 1 || t > m.config.sampler.timesteps)
        throw std::invalid_argument("--levels: " + std::to_string(t) + " is outside [1, " +
                                    std::to_string(m.config.sampler.timesteps) + "]");
    drdm::VelocitySampler sampler(m.config.sampler, m.config.data.size, dev);
    const auto checks = drdm::check_recovery(m.net, sampler, images, levels, repeats, seed);
    std::ostringstream js;
    js << "{\n  \"model\": \"" << model << "\",\n  \"model_step\": " << m.step
       << ",\n  \"images\": " << n << ",\n  \"repeats\": " << repeats << ",\n  \"levels\": [\n";
    for (size_t i = 0; i < checks.size(); ++i) {
      const auto& c = checks[i];
      js << "    {\"t\": " << c.t << ", \"no_step_error_voxels\": " << c.no_step_error
         << ", \"one_step_error_voxels\": " << c.one_step_error << ", \"ratio\": " << c.ratio
         << ", \"cosine\": " << c.cosine << ", \"samples\": " << c.samples << "}"
         << (i + 1 < checks.size() ? "," : "") << "\n";
    }
    js << "  ]\n}\n";
    if (!output.empty()) drdm::write_text_file(output, js.str());  // atomic, checked
    std::cout << js.str();
  });
}
