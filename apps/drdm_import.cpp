// drdm_import: convert the authors' published RecResACNet weights (a torch.save
// state dict from jianqingzheng/def_diff_rec) into a libdrdm model file.
#include <CLI/CLI.hpp>
#include <iostream>
#include <string>
#include <vector>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/diffusion/import.h"

int main(int argc, char** argv) {
  CLI::App cli{
      "Convert the authors' RecResACNet state dict (.pth from jianqingzheng/def_diff_rec, "
      "e.g. models/cmr_recresacnet/000000_cmr_recresacnet.pth) into OUTPUT/model.pt for the "
      "network a training config describes (e.g. configs/cardiac2d-paper-import.json). Every key "
      "and shape is checked. Prints a JSON summary."};
  std::string pth, config, output;
  std::vector<std::string> overrides;
  bool force = false, verbose = false;
  cli.add_option("--from", pth, "The authors' .pth state dict (torch.save zip format)")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("-c,--config", config, "Training config describing their network and process")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("-o,--output", output, "Output folder (model.pt, config.json, import.json)")
      ->required()
      ->check(drdm::app::non_empty());
  cli.add_option("--set", overrides, "Override a config key: section.key=value (repeatable)");
  cli.add_flag("--force", force, "Overwrite an existing OUTPUT/model.pt");
  cli.add_flag("-v,--verbose", verbose, "Log progress");
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;

  drdm::app::init_program(verbose);
  return drdm::app::run_reporting_errors("drdm_import", [&] {
    const auto s = drdm::import_authors_model(pth, config, output, overrides, force);
    std::cout << "{\n  \"model\": \"" << s.model << "\",\n  \"tensors\": " << s.tensors
              << ",\n  \"elements\": " << s.elements << ",\n  \"parameters\": " << s.parameters
              << ",\n  \"time_table_rows\": " << s.table_rows
              << ",\n  \"time_table_formula_max_diff\": " << s.table_formula_max_diff << "\n}\n";
  });
}
