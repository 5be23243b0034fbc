// drdm_warp: apply a displacement field file to an image or a label map.
#include <CLI/CLI.hpp>
#include <iostream>
#include <map>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/io/commands.h"

int main(int argc, char** argv) {
  CLI::App cli{
      "Apply a displacement field (ITK vector image in mm, as written by libdrdm, ITK, "
      "SimpleITK or ANTs) to an image or a label map on the same grid: out(x) = in(x + u(x))."};
  drdm::WarpFileOptions o;
  std::string interpolation = "linear", padding = "zeros", label_mode = "nearest";
  bool verbose = false;
  cli.add_option("-i,--input", o.input,
                 "Image or label map (.nii, .nii.gz, .mha, .mhd, .nrrd, .png)")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("-f,--field", o.field, "Displacement field file")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("-o,--output", o.output, "Output file (written atomically)")
      ->required()
      ->check(drdm::app::non_empty());
  cli.add_flag("--labels", o.labels, "Input is a label map: never interpolates class indices");
  cli.add_option("--interpolation", interpolation, "Image interpolation")
      ->check(CLI::IsMember(drdm::interpolation_names()))
      ->capture_default_str();
  cli.add_option(
         "--label-mode", label_mode,
         "Label interpolation: nearest, or soft (one-hot linear, then argmax; labels 0..255)")
      ->check(CLI::IsMember(drdm::label_interpolation_names()))
      ->capture_default_str();
  cli.add_option("--padding", padding, "Value outside the image: zeros, or border (replicate)")
      ->check(CLI::IsMember(drdm::padding_names()))
      ->capture_default_str();
  cli.add_option("--pixel-type", o.pixel_type,
                 "Output pixel type: auto (images float32, PNG keeps its type; labels smallest "
                 "integer type), uint8, int16, float32, ...")
      ->capture_default_str()
      ->check(drdm::app::non_empty());
  cli.add_option(
         "--preview", o.preview,
         "Also write a PNG: input | warped | deformed grid | magnitude (3D: central planes)")
      ->check(drdm::app::non_empty());
  cli.add_flag("-v,--verbose", verbose, "Log progress");
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;

  drdm::app::init_program(verbose);
  o.interpolation = drdm::parse_interpolation(interpolation);
  o.label_interpolation = drdm::parse_label_interpolation(label_mode);
  o.padding = drdm::parse_padding(padding);
  return drdm::app::run_reporting_errors("drdm_warp", [&] { drdm::warp_file(o); });
}
