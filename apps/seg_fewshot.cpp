// seg_fewshot: few-shot segmentation with no / BigAug / DRDM augmentation (paper Sec. 4, Table 2).
#include <CLI/CLI.hpp>
#include <iostream>

#include "app_common.h"
#include "cli_checks.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/models.h"
#include "drdm/seg/augment_preview.h"
#include "drdm/seg/fewshot.h"

namespace {

struct Options {
  std::string config, output, model = "seg-cardiac2d", input, device = "auto";
  std::vector<std::string> sets;
  drdm::seg::EvaluateOptions eval;
  bool no_progress = false, quiet = false;
  int64_t preview_subjects = 4;
  uint64_t preview_seed = 0;
};

CLI::App* add_run(CLI::App& cli, Options& o) {
  auto* r =
      cli.add_subcommand("run",
                         "Run the grid: augmentation x labelled subjects x seeds (reruns skip "
                         "finished runs and resume a half-finished one)");
  r->add_option("--config", o.config, "seg_fewshot config (e.g. configs/seg-acdc-cpu.json)")
      ->required()
      ->check(CLI::ExistingFile);
  r->add_option("--output", o.output,
                "Output folder (default: runs/<config name>; one run at a time)")
      ->check(drdm::app::non_empty());
  r->add_option("--set", o.sets, "Override a config key: section.key=value (repeatable)")
      ->take_all();
  r->add_flag("--no-progress", o.no_progress, "Do not draw progress bars");
  return r;
}

CLI::App* add_predict(CLI::App& cli, Options& o) {
  auto* p = cli.add_subcommand("predict",
                               "Segment images (2D, or volumes slice by slice); label maps keep "
                               "the input's geometry");
  p->add_option("--model", o.model,
                "model.pt of a grid run, or a shipped segmentation model:\n" +
                    drdm::shipped_models_help("segmentation"))
      ->capture_default_str()
      ->check(drdm::app::non_empty());
  p->add_option("--input", o.input, "An image file or a folder of images")
      ->required()
      ->check(drdm::app::non_empty());
  p->add_option("--output", o.output, "Folder for the label maps (the inputs' file names)")
      ->required()
      ->check(drdm::app::non_empty());
  p->add_option("--device", o.device, "cpu, cuda, cuda:N or auto")
      ->capture_default_str()
      ->check(drdm::app::non_empty());
  return p;
}

CLI::App* add_evaluate(CLI::App& cli, drdm::seg::EvaluateOptions& eval) {
  auto* e = cli.add_subcommand(
      "evaluate", "Metrics of predicted label maps against the truth, matched by name");
  e->add_option("--pred", eval.pred, "Folder of predicted label maps")
      ->required()
      ->check(drdm::app::non_empty());
  e->add_option("--truth", eval.truth, "Folder of true label maps (same file names)")
      ->required()
      ->check(drdm::app::non_empty());
  e->add_option("--json", eval.json, "Also write the per-case metrics as JSON here")
      ->check(drdm::app::non_empty());
  e->add_option("--classes", eval.classes, "Label values to score")
      ->delimiter(',')
      ->check(drdm::app::non_negative_integer().description(""))
      ->type_name("LABEL")
      ->default_str("1,2,3");
  e->add_option("--class-names", eval.class_names,
                "Their names in the table and the JSON, e.g. RV,MYO,LV")
      ->delimiter(',')
      ->type_name("NAME");
  e->add_option("--model", eval.model,
                "Or take the names from this model (label k: its k-th class)")
      ->check(drdm::app::non_empty());
  return e;
}

CLI::App* add_preview(CLI::App& cli, Options& o) {
  auto* v = cli.add_subcommand(
      "preview-bigaug",
      "Picture of BigAug on real labelled slices: each transform alone over its range,\nthen "
      "full samples; prints the legend (Markdown)");
  v->add_option("--config", o.config, "seg_fewshot config: data and bigaug sections")
      ->required()
      ->check(CLI::ExistingFile);
  v->add_option("--output", o.output, "PNG to write")->required()->check(drdm::app::non_empty());
  v->add_option("--set", o.sets, "Override a config key: section.key=value (repeatable)")
      ->take_all();
  v->add_option("--subjects", o.preview_subjects, "Pool subjects whose slices are shown")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  v->add_option("--seed", o.preview_seed, "Seed of the sample rows")->capture_default_str();
  return v;
}

/// preview-bigaug: slices of the first pool subjects (balanced choice, seed 0).
std::string preview_bigaug(const Options& o) {
  const auto c = drdm::seg::load_seg_config(o.config, o.sets);
  const auto split = drdm::seg::split_subjects(c.data);
  std::vector<drdm::seg::LabelledCase> cases;
  for (const auto& s : drdm::seg::choose_subjects(
           split.pool, std::min<int64_t>(o.preview_subjects, split.pool.size()), 0))
    cases.insert(cases.end(), s.cases.begin(), s.cases.end());
  return drdm::seg::write_bigaug_preview(drdm::seg::load_slices(cases, c.data.slices), c.bigaug,
                                         o.output, 8, 2, o.preview_seed);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{
      "Few-shot segmentation with no / BigAug / DRDM augmentation (paper Sec. 4, Table 2). "
      "See docs/seg_fewshot.md."};
  cli.require_subcommand(1);
  Options o;
  cli.add_flag("-q,--quiet", o.quiet, "Log warnings and errors only");
  auto* r = add_run(cli, o);
  auto* p = add_predict(cli, o);
  add_evaluate(cli, o.eval);
  auto* v = add_preview(cli, o);
  if (const auto code = drdm::app::parse_command_line(cli, argc, argv)) return *code;

  drdm::app::init_program(!o.quiet);
  return drdm::app::run_reporting_errors("seg_fewshot", [&] {
    if (*r) {
      const auto c = drdm::seg::load_seg_config(o.config, o.sets);
      drdm::seg::run_grid(c, o.output.empty() ? "runs/" + c.name : o.output, !o.no_progress);
    } else if (*v) {
      std::cout << preview_bigaug(o);
    } else if (*p) {
      auto m = drdm::seg::load_seg_model(o.model, drdm::resolve_device(o.device));
      drdm::seg::predict_files(m, o.input, o.output);
    } else {
      std::cout << drdm::seg::evaluate_command(o.eval);
    }
  });
}
