// Few-shot training: subjects, the DRDM bank, training one U-Net, segmenting and scoring.
#include "drdm/seg/train.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <stdexcept>

#include "core/out_of_memory.h"
#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "drdm/core/module_state.h"
#include "drdm/core/spatial.h"
#include "drdm/core/stats.h"
#include "drdm/diffusion/generate.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/optim.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/models.h"
#include "engine/bank_files.h"
#include "engine/config_json.h"
#include "engine/progress.h"
#include "io/files.h"
#include "io/input_checks.h"

namespace drdm::seg {
namespace {

constexpr const char* kKind = "seg-unet";
constexpr const char* kBankKind = "drdm-bank";

bool in_mod(int64_t number, int64_t group_size, const std::vector<int64_t>& mod) {
  const int64_t m = number % group_size;
  return mod[0] <= m && m <= mod[1];
}

std::vector<Subject> group_by_subject(const std::vector<LabelledCase>& cases, int64_t group_size) {
  std::map<int64_t, Subject> by_number;
  for (const auto& c : cases) {
    const auto n = case_number(c.name);
    if (n < 0)
      throw std::runtime_error("case '" + c.image_path + "' has no subject number in its name");
    auto& s = by_number[n];
    s.number = n;
    s.group = (n - 1) / group_size;
    s.cases.push_back(c);
  }
  std::vector<Subject> out;
  for (auto& [n, s] : by_number) out.push_back(std::move(s));
  return out;
}

// Moves n subjects of the pool, balanced over groups, to split.validation.
// Their seed is fixed, so every run of a grid validates on the same subjects.
void hold_out_validation(Split& split, int64_t n) {
  if (n == 0) return;
  const auto pool_size = static_cast<int64_t>(split.pool.size());
  if (n >= pool_size)
    throw std::invalid_argument("data.validation_subjects = " + std::to_string(n) +
                                " leaves no training subject in a pool of " +
                                std::to_string(pool_size));
  constexpr uint64_t kValidationSeed = 0x5EA1DA7E;  // any fixed value; not a grid seed
  split.validation = choose_subjects(split.pool, n, kValidationSeed);
  std::vector<Subject> rest;
  for (auto& s : split.pool) {
    const bool held = std::any_of(split.validation.begin(), split.validation.end(),
                                  [&](const Subject& v) { return v.number == s.number; });
    if (!held) rest.push_back(std::move(s));
  }
  split.pool = std::move(rest);
}

}  // namespace

Split split_subjects(const SegConfig::Data& data) {
  detail::require_data_folder(data.images, "data.images");
  detail::require_data_folder(data.labels, "data.labels");
  Split split;
  for (auto& s : group_by_subject(find_cases(data.images, data.labels), data.group_size)) {
    if (in_mod(s.number, data.group_size, data.pool_mod))
      split.pool.push_back(s);
    else if (in_mod(s.number, data.group_size, data.test_mod))
      split.test.push_back(s);
  }
  if (data.max_test_subjects > 0 &&
      static_cast<int64_t>(split.test.size()) > data.max_test_subjects)
    split.test.resize(data.max_test_subjects);
  if (split.pool.empty())
    throw std::runtime_error("no subject of '" + data.images + "' falls in data.pool_mod");
  if (split.test.empty())
    throw std::runtime_error("no subject of '" + data.images + "' falls in data.test_mod");
  hold_out_validation(split, data.validation_subjects);
  return split;
}

std::vector<Subject> choose_subjects(const std::vector<Subject>& pool, int64_t n, uint64_t seed) {
  if (n < 1 || n > static_cast<int64_t>(pool.size()))
    throw std::invalid_argument("cannot choose " + std::to_string(n) +
                                " labelled subjects from a pool of " + std::to_string(pool.size()));
  std::mt19937_64 rng(stream_seed(seed, n, 7));
  std::map<int64_t, std::vector<Subject>> groups;
  for (const auto& s : pool) groups[s.group].push_back(s);
  std::vector<std::vector<Subject>> lists;
  for (auto& [g, list] : groups) {
    std::shuffle(list.begin(), list.end(), rng);
    lists.push_back(list);
  }
  std::shuffle(lists.begin(), lists.end(), rng);
  std::vector<Subject> chosen;
  for (size_t round = 0; static_cast<int64_t>(chosen.size()) < n; ++round)
    for (auto& list : lists)
      if (round < list.size() && static_cast<int64_t>(chosen.size()) < n)
        chosen.push_back(list[round]);
  return chosen;
}

int64_t bank_fields_per_slice(const SegConfig& c, int64_t slices) {
  if (c.drdm.max_fields <= 0 || slices <= 0) return c.drdm.fields_per_slice;
  return std::min(c.drdm.fields_per_slice, std::max<int64_t>(1, c.drdm.max_fields / slices));
}

namespace {

nlohmann::json bank_manifest(const SliceSet& slices, const SegConfig& c, uint64_t seed) {
  std::vector<std::string> names;
  for (const auto& cs : slices.cases) names.push_back(cs.name);
  return {{"model", resolve_model_path(c.drdm.model)},
          {"levels", c.drdm.levels},
          {"fields_per_slice", bank_fields_per_slice(c, slices.images.size(0))},
          {"seed", seed},
          {"size", c.data.slices.size},
          {"cases", names},
          {"slices", slices.images.size(0)}};
}

/// Field k of slice m: level levels[k % L], seed derive_seed(seed, m, k).
at::Tensor generate_bank(const SliceSet& slices, const SegConfig& c, uint64_t seed, bool progress) {
  const auto device = resolve_device(c.train.device);
  DeformerOptions options;
  options.generation.batch = c.drdm.batch;
  options.generation.on_step = [](int64_t) {
    throw_if_interrupted();
  };  // after every recovery step
  Deformer deformer(c.drdm.model, device, options);
  const int64_t M = slices.images.size(0), K = bank_fields_per_slice(c, M);
  std::vector<at::Tensor> fields;
  detail::ProgressBar bar("drdm bank", M * K, 0, progress);
  for (int64_t start = 0; start < M * K; start += c.drdm.batch) {
    throw_if_interrupted();  // SIGINT / SIGTERM: stop between batches; nothing is written yet
    const int64_t n = std::min(c.drdm.batch, M * K - start);
    std::vector<int64_t> index, levels;
    std::vector<uint64_t> seeds;
    for (int64_t i = start; i < start + n; ++i) {
      index.push_back(i / K);
      levels.push_back(c.drdm.levels[(i % K) % c.drdm.levels.size()]);
      seeds.push_back(
          derive_seed(seed, static_cast<uint64_t>(i / K), static_cast<uint64_t>(i % K)));
    }
    const auto images = slices.images.index_select(0, at::tensor(index, at::kLong)).to(device);
    const auto out = deformer.deform_with_seeds(images, {}, levels, seeds);
    fields.push_back(out.fields.to(at::kCPU, at::kHalf));
    bar.update(start + n);
  }
  bar.finish();
  const auto& size = c.data.slices.size;
  return at::cat(fields).reshape({M, K, 2, size[0], size[1]});
}

}  // namespace

torch::Tensor drdm_bank(const SliceSet& slices, const SegConfig& c, uint64_t seed,
                        const std::string& dir, bool progress) {
  const auto manifest = bank_manifest(slices, c, seed);
  const auto path = dir + "/bank.pt";
  if (detail::bank_published(dir, manifest, "drdm bank")) {
    auto ck = read_checkpoint(path, kBankKind);
    if (nlohmann::json::parse(ck.config).value("identity", nlohmann::json()) == manifest) {
      log::info("drdm bank: reusing " + path);
      return ck.model.at("fields");
    }
    log::info("drdm bank: " + path + " was made for other slices or settings; rebuilding");
  }
  const auto begin = std::chrono::steady_clock::now();
  auto fields = detail::naming_out_of_memory(
      "making the DRDM bank (lower drdm.fields_per_slice or drdm.max_fields)",
      [&] { return generate_bank(slices, c, seed, progress); });
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  detail::make_dirs(dir);
  nlohmann::json record = {
      {"identity", manifest}, {"seconds", secs}, {"fields", fields.size(0) * fields.size(1)}};
  detail::publish_bank(dir, record, [&](const std::string& bank_path) {
    save_checkpoint(bank_path, kBankKind, record.dump(), 0, {{"fields", fields}});
  });
  log::info("drdm bank: " + std::to_string(fields.size(0) * fields.size(1)) + " fields in " +
            detail::format_duration(secs) + " -> " + path);
  return fields;
}

namespace {

/// One training batch: slices drawn with replacement from (seed, step).
struct Batch {
  at::Tensor images, labels;
};

Batch draw_batch(const SliceSet& s, const SegConfig& c, int64_t step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed(c.train.seed, step, 1));
  const auto idx = at::randint(s.images.size(0), {c.train.batch_size}, gen, at::kLong);
  return {s.images.index_select(0, idx), s.labels.index_select(0, idx)};
}

/// Alg. 3: each sample is its slice or one of the slice's K bank fields, uniformly.
Batch drdm_batch(const SliceSet& s, const at::Tensor& bank, const SegConfig& c, int64_t step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed(c.train.seed, step, 1));
  const auto idx = at::randint(s.images.size(0), {c.train.batch_size}, gen, at::kLong);
  const auto pick = at::randint(bank.size(1) + 1, {c.train.batch_size}, gen, at::kLong);
  std::vector<at::Tensor> fields;
  for (int64_t b = 0; b < c.train.batch_size; ++b) {
    const auto m = idx[b].item<int64_t>(), k = pick[b].item<int64_t>();
    fields.push_back(k == 0 ? at::zeros({2, bank.size(3), bank.size(4)})
                            : bank[m][k - 1].to(at::kFloat));
  }
  const auto field = at::stack(fields);
  return {warp(s.images.index_select(0, idx), field),
          warp_labels(s.labels.index_select(0, idx), field, LabelInterpolation::kNearest)};
}

/// x turned by k quarter turns in its last two axes, then mirrored along the last.
at::Tensor dihedral(const at::Tensor& x, int64_t k, bool mirror) {
  const auto d = x.dim();
  const auto y = at::rot90(x, k, {d - 2, d - 1});
  return mirror ? y.flip({d - 1}) : y;
}

/// The inverse of dihedral(., k, mirror).
at::Tensor undo_dihedral(const at::Tensor& y, int64_t k, bool mirror) {
  const auto d = y.dim();
  return at::rot90(mirror ? y.flip({d - 1}) : y, -k, {d - 2, d - 1});
}

/// data.rotate_flip: each sample turned by k quarter turns and mirrored (p = 0.5).
Batch rotate_flip(Batch b, const SegConfig& c, int64_t step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed(c.train.seed, step, 3));
  const auto k = at::randint(4, {b.images.size(0)}, gen, at::kLong);
  const auto mirror = at::randint(2, {b.images.size(0)}, gen, at::kLong);
  for (int64_t i = 0; i < b.images.size(0); ++i) {
    const auto turn = [&](const at::Tensor& x) {
      return dihedral(x[i], k[i].item<int64_t>(), mirror[i].item<int64_t>() != 0);
    };
    b.images[i] = turn(b.images), b.labels[i] = turn(b.labels);
  }
  return b;
}

Batch augmented_batch(const SliceSet& s, const at::Tensor& bank, const SegConfig& c,
                      const std::string& augmentation, int64_t step) {
  if (augmentation == "drdm") return drdm_batch(s, bank, c, step);
  auto batch = draw_batch(s, c, step);
  if (augmentation == "none") return batch;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed(c.train.seed, step, 2));
  auto [images, labels] = bigaug(batch.images, batch.labels, c.bigaug, gen);
  return {images, labels};
}

Batch training_batch(const SliceSet& s, const at::Tensor& bank, const SegConfig& c,
                     const std::string& augmentation, int64_t step) {
  auto batch = augmented_batch(s, bank, c, augmentation, step);
  return c.data.rotate_flip ? rotate_flip(std::move(batch), c, step) : batch;
}

}  // namespace

double validation_dice(UNet& net, const SliceSet& set, int64_t classes) {
  const auto device = net->parameters().front().device();
  net->train(false);
  at::Tensor pred;
  {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> out;
    for (int64_t s = 0; s < set.images.size(0); s += 32) {
      const auto n = std::min<int64_t>(32, set.images.size(0) - s);
      out.push_back(net->forward(set.images.narrow(0, s, n).to(device)).argmax(1).cpu());
    }
    pred = at::cat(out);
  }
  net->train(true);
  const auto truth = set.labels.squeeze(1);
  const auto case_of = at::tensor(set.case_of, at::kLong);
  double total = 0;
  int64_t counted = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(set.cases.size()); ++i) {
    const auto mine = (case_of == i).nonzero().squeeze(1);
    const auto p = pred.index_select(0, mine), t = truth.index_select(0, mine);
    double sum = 0;
    int64_t present = 0;
    for (int64_t k = 1; k <= classes; ++k) {
      const double a = (p == k).sum().item<double>(), b = (t == k).sum().item<double>();
      if (a + b == 0) continue;
      sum += 2 * ((p == k) & (t == k)).sum().item<double>() / (a + b), ++present;
    }
    if (present > 0) total += sum / static_cast<double>(present), ++counted;
  }
  return counted > 0 ? total / static_cast<double>(counted) : 0.0;
}

namespace {

void check_training_request(const SegConfig& c, const std::string& augmentation,
                            const SliceSet& slices, const torch::Tensor& bank,
                            const SliceSet& validation) {
  if (augmentation != "none" && augmentation != "bigaug" && augmentation != "drdm")
    throw std::invalid_argument("unknown augmentation '" + augmentation +
                                "' (expected none, bigaug or drdm)");
  if (augmentation == "drdm" && (!bank.defined() || bank.size(0) != slices.images.size(0)))
    throw std::invalid_argument("augmentation drdm needs a bank with one entry per training slice");
  if (slices.images.size(0) == 0) throw std::invalid_argument("the labelled subset has no slices");
  if (c.train.validate_every > 0 && !validation.images.defined())
    throw std::invalid_argument(
        "train.validate_every = " + std::to_string(c.train.validate_every) +
        " needs validation subjects: set data.validation_subjects (or train.validate_every = 0)");
}

}  // namespace

RunSummary train_segmentation(const SegConfig& c, const std::string& augmentation,
                              const SliceSet& slices, const torch::Tensor& bank,
                              const std::string& output_dir, bool progress,
                              const SliceSet& validation) {
  check_training_request(c, augmentation, slices, bank, validation);
  const auto device = resolve_device(c.train.device);
  if (c.train.threads > 0) at::set_num_threads(static_cast<int>(c.train.threads));
  at::manual_seed(c.train.seed);
  UNet net(c.unet);
  if (!c.train.init_from.empty())  // fine-tuning: these weights, a fresh optimiser and schedule
    load_module_state(*net, read_checkpoint(resolve_model_path(c.train.init_from), kKind).model);
  net->to(device);
  net->train(true);
  Adam adam(net->parameters());
  const auto identity = [](const std::string& text) {
    auto cfg = parse_seg_config(text, "checkpoint config");
    cfg.train.steps = 0;
    cfg.grid = SegConfig::Grid{};  // the grid names the runs; a run does not depend on it
    return to_json(cfg);
  };
  dist::world().agree(true,
                      "starting the " + augmentation + " run");  // every rank sees the same files
  auto spec = run_spec(c.train, output_dir, kKind, to_json(c), identity,
                       detail::file_exists(output_dir + "/checkpoint.pt"), progress);
  spec.label = augmentation;
  if (validation.images.defined()) {
    const auto classes = static_cast<int64_t>(c.data.classes.size());
    spec.validate = [&net, &validation, classes] {
      return validation_dice(net, validation, classes);
    };
    spec.validation_name = "validation DSC";
  }
  TrainingRun run(
      spec, [&] { return module_state(*net); },
      [&](const TensorMap& m) { load_module_state(*net, m); }, adam);
  run.start();
  const auto step = [&](int64_t s) -> StepResult {
    const auto batch = training_batch(slices, bank, c, augmentation, s);  // the global batch
    const auto logits = net->forward(dist::my_rows(batch.images, "train.batch_size").to(device));
    const auto labels = dist::my_rows(batch.labels, "train.batch_size").to(device);
    return descend(adam, segmentation_loss(c.loss, logits, labels), c.train, s);
  };
  return run.run(step);
}

SegModel load_seg_model(const std::string& name_or_path, const torch::Device& device) {
  const auto path = resolve_model_path(name_or_path);
  auto ck = read_checkpoint(path, kKind);
  auto config = parse_seg_config(ck.config, path + " (embedded config)");
  SegModel m{UNet(config.unet), std::move(config), ck.step};
  load_module_state(*m.net, ck.model);
  m.net->to(device);
  m.net->train(false);
  return m;
}

namespace {
/// The class scores of a batch. A model trained with data.rotate_flip saw every
/// slice in the 8 quarter turns and mirrorings: its probabilities (softmax, or
/// sigmoid for a "bce" model) are averaged over the 8 views, each turned back
/// (test-time augmentation; on the validation subjects it beat one view).
at::Tensor batch_scores(SegModel& model, const at::Tensor& x) {
  if (!model.config.data.rotate_flip) return model.net->forward(x).sigmoid();
  const bool bce = model.config.loss == "bce";
  at::Tensor sum;
  for (int64_t k = 0; k < 4; ++k)
    for (const bool mirror : {false, true}) {
      const auto logits = model.net->forward(dihedral(x, k, mirror));
      const auto probs = undo_dihedral(bce ? logits.sigmoid() : logits.softmax(1), k, mirror);
      sum = sum.defined() ? sum + probs : probs;
    }
  return sum / 8.0;
}

at::Tensor slice_scores(SegModel& model, const at::Tensor& slices) {
  at::NoGradGuard no_grad;
  const auto device = model.net->parameters().front().device();
  std::vector<at::Tensor> out;
  for (int64_t s = 0; s < slices.size(0); s += 16)
    out.push_back(
        batch_scores(model,
                     slices.narrow(0, s, std::min<int64_t>(16, slices.size(0) - s)).to(device))
            .cpu());
  return at::cat(out);
}
}  // namespace

torch::Tensor segment_file(SegModel& model, const std::string& image_path) {
  const auto v = prepare_volume(image_path, "", model.config.data.slices);
  return labels_on_image_grid(slice_scores(model, v.slices), v);
}

std::vector<CaseResult> evaluate_cases(SegModel& model, const std::vector<LabelledCase>& cases) {
  std::vector<int64_t> classes;
  for (size_t k = 1; k <= model.config.data.classes.size(); ++k)
    classes.push_back(static_cast<int64_t>(k));
  std::vector<CaseResult> out;
  for (const auto& c : cases) {
    throw_if_interrupted();  // SIGINT / SIGTERM: stop between cases
    const auto pred = segment_file(model, c.image_path);
    const auto truth = read_labels(c.label_path);
    detail::require_label_range(
        truth.data, static_cast<int64_t>(classes.size()), c.label_path,
        "the model's data.classes names " + std::to_string(classes.size()) + " classes");
    const auto& g = truth.geometry;
    const std::vector<double> spacing(g.spacing.rbegin(), g.spacing.rend());
    out.push_back({c.name, case_number(c.name), label_metrics(pred, truth.data, spacing, classes)});
  }
  return out;
}

}  // namespace drdm::seg
