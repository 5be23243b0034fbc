// drdm_field_stats: magnitude, folding and Jacobian statistics of a displacement field.
#include <CLI/CLI.hpp>
#include <iostream>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/io/commands.h"

int main(int argc, char** argv) {
  CLI::App cli{
      "Print statistics of a displacement field as JSON: max/mean magnitude in % of the image "
      "size (per axis u_i / size_i), folding ratio (fraction of voxels with det(I + grad u) <= 0), "
      "min/max Jacobian determinant (voxel units, central differences)."};
  drdm::FieldStatsFileOptions o;
  bool verbose = false;
  cli.add_option("-f,--field", o.field, "Displacement field file (ITK vector image, mm)")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("--json", o.json_output, "Also write the JSON to this file (atomically)")
      ->check(drdm::app::non_empty());
  cli.add_option("--jacobian-map", o.jacobian_map,
                 "Write the Jacobian determinant map (float32 image on the field's grid)")
      ->check(drdm::app::non_empty());
  cli.add_flag("-v,--verbose", verbose, "Log progress");
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;

  drdm::app::init_program(verbose);
  return drdm::app::run_reporting_errors("drdm_field_stats",
                                         [&] { std::cout << drdm::field_stats_file(o); });
}
