// reg_synth: VoxelMorph pretrained on synthetic DRDM / MRBS pairs, fine-tuned on real pairs (paper
// Sec. 5, Table 3).
#include <CLI/CLI.hpp>
#include <iostream>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/models.h"
#include "drdm/reg/synth.h"

int main(int argc, char** argv) {
  CLI::App cli{
      "Registration with synthetic pretraining: VoxelMorph pretrained on DRDM or MRBS pairs, "
      "optionally fine-tuned on real pairs (paper Sec. 5, Table 3). See docs/reg_synth.md."};
  cli.require_subcommand(1);
  std::string config, output, model = "reg-chest2d", moving, fixed, moving_labels, fixed_labels,
                              device = "auto";
  std::vector<std::string> sets;
  bool no_progress = false, quiet = false;
  cli.add_flag("-q,--quiet", quiet, "Log warnings and errors only");
  auto* r =
      cli.add_subcommand("run",
                         "Run Table 3's rows: pretraining (none, MRBS, DRDM) x real fine-tuning "
                         "(no, yes); reruns skip finished rows and resume half-finished training");
  r->add_option("--config", config, "reg_synth config (e.g. configs/reg-jsrt-cpu.json)")
      ->required()
      ->check(CLI::ExistingFile);
  r->add_option("--output", output,
                "Output folder (default: runs/<config name>; one run at a time)")
      ->check(drdm::app::non_empty());
  r->add_option("--set", sets, "Override a config key: section.key=value (repeatable)")->take_all();
  r->add_flag("--no-progress", no_progress, "Do not draw progress bars");
  auto* g =
      cli.add_subcommand("register",
                         "Register a moving image to a fixed image on its grid: writes the field "
                         "(ITK, mm),\nthe warped image and labels, and with labels the metrics");
  g->add_option("--model", model,
                "model.pt of a run, or a shipped registration model:\n" +
                    drdm::shipped_models_help("registration"))
      ->capture_default_str()
      ->check(drdm::app::non_empty());
  g->add_option("--moving", moving, "Moving image")->required()->check(CLI::ExistingFile);
  g->add_option("--fixed", fixed, "Fixed image (on the moving image's grid)")
      ->required()
      ->check(CLI::ExistingFile);
  g->add_option("--output", output, "Output folder")->required()->check(drdm::app::non_empty());
  g->add_option("--moving-labels", moving_labels, "Label map of the moving image: warped too")
      ->check(drdm::app::non_empty());
  g->add_option("--fixed-labels", fixed_labels, "Label map of the fixed image: writes metrics.json")
      ->check(drdm::app::non_empty());
  g->add_option("--device", device, "cpu, cuda, cuda:N or auto")
      ->capture_default_str()
      ->check(drdm::app::non_empty());
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;

  drdm::app::init_program(!quiet);
  return drdm::app::run_reporting_errors("reg_synth", [&] {
    if (*r) {
      const auto c = drdm::reg::load_reg_config(config, sets);
      drdm::reg::run_grid(c, output.empty() ? "runs/" + c.name : output, !no_progress);
    } else {
      auto m = drdm::reg::load_reg_model(model, drdm::resolve_device(device));
      std::cout << drdm::reg::register_files(m, moving, fixed, moving_labels, fixed_labels, output)
                       .metrics_table;
    }
  });
}
