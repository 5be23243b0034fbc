// drdm_train: train the DRDM recovery network on folders of unlabelled images (paper Alg. 1).
#include <CLI/CLI.hpp>
#include <iostream>
#include <string>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/diffusion/inference.h"
#include "drdm/diffusion/train_config.h"
#include "drdm/diffusion/trainer.h"
#include "drdm/io/models.h"

int main(int argc, char** argv) {
  // Hidden: the key tables of docs/configs.md, from the parser's key table.
  if (argc == 2 && std::string(argv[1]) == "--print-config-reference") {
    for (const char* section : {"", "data", "augment", "sampler", "model", "loss", "train"})
      std::cout << "<!-- section: " << (*section ? section : "name") << " -->\n"
                << drdm::train_config_reference(section) << "\n";
    return 0;
  }
  CLI::App cli{
      "Train the DRDM recovery network (paper Alg. 1) on folders of unlabelled images. "
      "Writes OUTPUT/config.json, checkpoint.pt, model.pt (for drdm_deform), metrics.jsonl and "
      "previews/*.png. Every config key is documented in docs/configs.md. A folder that holds a "
      "run "
      "is continued with --resume, never overwritten; one run at a time per folder "
      "(OUTPUT/.drdm.lock)."};
  std::string config_path, output, device, init_from;
  std::vector<std::string> overrides;
  bool resume = false, quiet = false, no_progress = false;
  cli.add_option("-c,--config", config_path, "JSON config (see configs/)")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("-o,--output", output, "Output folder (default: runs/<config name>)")
      ->check(drdm::app::non_empty());
  cli.add_flag("--resume", resume, "Continue from OUTPUT/checkpoint.pt exactly where it stopped");
  cli.add_option("--init-from", init_from,
                 "Start from these weights (a model.pt, a checkpoint.pt or a shipped model's name) "
                 "with a fresh optimiser and schedule (sets train.init_from)")
      ->check(drdm::app::non_empty());
  cli.add_option("--device", device, "cpu, cuda, cuda:N or auto (overrides train.device)")
      ->check(drdm::app::non_empty());
  cli.add_option(
         "--set", overrides,
         "Override a config key: section.key=value (repeatable), e.g. --set train.steps=500")
      ->take_all();
  double max_minutes = 0;
  cli.add_option("--max-minutes", max_minutes,
                 "Stop after this much wall time, at the next logging step, with a checkpoint "
                 "there (--resume goes on); 0: no limit")
      ->check(CLI::NonNegativeNumber);
  cli.add_flag("--no-progress", no_progress, "Do not draw the progress bar");
  cli.add_flag("-q,--quiet", quiet, "Log warnings and errors only");
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;

  drdm::app::init_program(!quiet);
  return drdm::app::run_reporting_errors("drdm_train", [&] {
    if (!device.empty()) overrides.push_back("train.device=" + device);
    if (!init_from.empty())
      overrides.push_back("train.init_from=" + drdm::resolve_model_path(init_from));
    const auto config = drdm::load_train_config(config_path, overrides);
    if (output.empty()) output = "runs/" + config.name;
    const auto s = drdm::train(config, output, resume, !no_progress, max_minutes * 60);
    std::cout << "{\"output\": \"" << output << "\", \"first_step\": " << s.first_step
              << ", \"steps\": " << s.steps << ", \"seconds\": " << s.seconds
              << ", \"last_loss\": " << s.last_loss << ", \"checkpoint\": \"" << s.checkpoint
              << "\"}\n";
  });
}
