// drdm_random_field: a smooth random diffeomorphic displacement field on an image's grid.
#include <CLI/CLI.hpp>
#include <iostream>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/io/commands.h"

int main(int argc, char** argv) {
  CLI::App cli{
      "Write a smooth random displacement field on the grid of a reference image: multi-scale "
      "Gaussian velocity on control grids, integrated by scaling and squaring (invertible). "
      "Prints the field's statistics as JSON. For demos, tests and classical augmentation; "
      "learned DRDM fields come from drdm_deform."};
  drdm::RandomFieldFileOptions o;
  bool verbose = false;
  cli.add_option("-r,--reference", o.reference, "Image that defines the grid")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("-o,--output", o.output, "Displacement field file (ITK vector image, mm)")
      ->required()
      ->check(drdm::app::non_empty());
  cli.add_option("--amplitude", o.field.amplitude,
                 "Largest velocity, in voxels (~ largest displacement)")
      ->check(drdm::app::finite_in(0, 10000))
      ->capture_default_str();
  cli.add_option("--control", o.field.control, "Control points per axis on the coarsest level")
      ->check(CLI::Range(2, 512))
      ->capture_default_str();
  cli.add_option("--levels", o.field.levels,
                 "Levels; each finer one doubles the control points, halves the amplitude")
      ->check(CLI::Range(1, 8))
      ->capture_default_str();
  cli.add_option("--squarings", o.field.squarings,
                 "Scaling-and-squaring steps (0: use the velocity as displacement)")
      ->check(CLI::Range(0, 20))
      ->capture_default_str();
  cli.add_option("--seed", o.seed, "Random seed")
      ->check(drdm::app::non_negative_integer())
      ->capture_default_str();
  cli.add_flag("-v,--verbose", verbose, "Log progress");
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;

  drdm::app::init_program(verbose);
  return drdm::app::run_reporting_errors("drdm_random_field",
                                         [&] { std::cout << drdm::random_field_file(o); });
}
