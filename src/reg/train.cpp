// Registration training: synthetic pair banks, pretraining (Eq. 20) and
// unsupervised fine-tuning of VoxelMorph on the shared training engine.
#include "drdm/reg/train.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>

#include "core/out_of_memory.h"
#include "drdm/core/interrupt.h"
#include "drdm/core/log.h"
#include "drdm/core/module_state.h"
#include "drdm/core/spatial.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/optim.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/models.h"
#include "drdm/reg/losses.h"
#include "drdm/reg/pairs.h"
#include "engine/bank_files.h"
#include "engine/progress.h"
#include "io/files.h"

namespace drdm::reg {
namespace {

constexpr const char* kKind = "reg-voxelmorph";
constexpr const char* kBankKind = "reg-pair-bank";

nlohmann::json bank_identity(const std::string& kind, const at::Tensor& images,
                             const RegConfig& c) {
  const auto& s = c.synthetic;
  nlohmann::json id = {{"kind", kind},
                       {"images", images.size(0)},
                       {"size", c.data.size},
                       {"image_sum", images.to(at::kDouble).sum().item<double>()},
                       {"pairs_per_image", s.pairs_per_image},
                       {"seed", s.seed}};
  if (kind == "mrbs") {
    id["mrbs"] = nlohmann::json::parse(to_json(c)).at("synthetic").at("mrbs");
    id["mrbs_max_tries"] = s.mrbs_max_tries;
  } else {
    id["model"] = resolve_model_path(s.drdm_model);
    id["levels"] = s.drdm_levels;
  }
  return id;
}

PairBank generate_mrbs(const at::Tensor& images, const RegConfig& c, bool progress) {
  const int64_t M = images.size(0), K = c.synthetic.pairs_per_image;
  MrbsOptions options{c.synthetic.mrbs, c.synthetic.mrbs_max_tries};
  std::vector<at::Tensor> moving, fixed, target;
  detail::ProgressBar bar("mrbs pairs", M * K, 0, progress);
  for (int64_t i = 0; i < M * K; ++i) {
    throw_if_interrupted();  // SIGINT / SIGTERM: stop between pairs; nothing is written yet
    auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed(c.synthetic.seed, i, 11));
    const auto p = mrbs_pairs(images.narrow(0, i / K, 1), gen, options);
    moving.push_back(p.moving.to(at::kHalf)), fixed.push_back(p.fixed.to(at::kHalf)),
        target.push_back(p.target);
    bar.update(i + 1);
  }
  bar.finish();
  return {at::cat(moving), at::cat(fixed), at::cat(target)};
}

PairBank generate_drdm(const at::Tensor& images, const RegConfig& c, bool progress) {
  const auto device = resolve_device(c.pretrain.device);
  const auto& s = c.synthetic;
  DeformerOptions options;
  options.generation.batch = s.drdm_batch;
  options.generation.on_step = [](int64_t) {
    throw_if_interrupted();
  };  // after every recovery step
  Deformer deformer(s.drdm_model, device, options);
  const int64_t M = images.size(0), K = s.pairs_per_image;
  std::vector<at::Tensor> moving, fixed, target;
  detail::ProgressBar bar("drdm pairs", M * K, 0, progress);
  for (int64_t start = 0; start < M * K; start += s.drdm_batch) {
    throw_if_interrupted();  // SIGINT / SIGTERM: stop between batches; nothing is written yet
    const int64_t n = std::min(s.drdm_batch, M * K - start);
    std::vector<int64_t> index;
    std::vector<std::vector<int64_t>> levels;
    std::vector<uint64_t> seeds;
    for (int64_t i = start; i < start + n; ++i) {
      index.push_back(i / K);
      levels.push_back(s.drdm_levels[(i % K) % s.drdm_levels.size()]);
      seeds.push_back(
          derive_seed(s.seed, static_cast<uint64_t>(i / K), static_cast<uint64_t>(i % K)));
    }
    const auto batch = images.index_select(0, at::tensor(index, at::kLong)).to(device);
    const auto p = drdm_pairs(deformer, batch, levels, seeds);
    moving.push_back(p.moving.cpu().to(at::kHalf)), fixed.push_back(p.fixed.cpu().to(at::kHalf));
    target.push_back(p.target.cpu().to(at::kFloat));
    bar.update(start + n);
  }
  bar.finish();
  return {at::cat(moving), at::cat(fixed), at::cat(target)};
}

}  // namespace

PairBank synthetic_bank(const std::string& kind, const torch::Tensor& images, const RegConfig& c,
                        const std::string& dir, bool progress) {
  if (kind != "mrbs" && kind != "drdm")
    throw std::invalid_argument("unknown synthetic pairs '" + kind + "' (expected mrbs or drdm)");
  const auto identity = bank_identity(kind, images, c);
  const auto path = dir + "/bank.pt";
  if (detail::bank_published(dir, identity, kind + " pairs")) {
    auto ck = read_checkpoint(path, kBankKind);
    if (nlohmann::json::parse(ck.config).value("identity", nlohmann::json()) == identity) {
      log::info(kind + " pairs: reusing " + path);
      return {ck.model.at("moving"), ck.model.at("fixed"), ck.model.at("target"), 0};
    }
    log::info(kind + " pairs: " + path + " was made for other images or settings; rebuilding");
  }
  const auto begin = std::chrono::steady_clock::now();
  const auto what = "making " + std::to_string(images.size(0) * c.synthetic.pairs_per_image) + " " +
                    kind + " pairs (lower synthetic.pairs_per_image)";
  auto bank = detail::naming_out_of_memory(what, [&] {
    return kind == "mrbs" ? generate_mrbs(images, c, progress) : generate_drdm(images, c, progress);
  });
  bank.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  detail::make_dirs(dir);
  const nlohmann::json record = {
      {"identity", identity}, {"seconds", bank.seconds}, {"pairs", bank.target.size(0)}};
  detail::publish_bank(dir, record, [&](const std::string& bank_path) {
    save_checkpoint(bank_path, kBankKind, record.dump(), 0,
                    {{"moving", bank.moving}, {"fixed", bank.fixed}, {"target", bank.target}});
  });
  log::info(kind + " pairs: " + std::to_string(bank.target.size(0)) + " in " +
            detail::format_duration(bank.seconds) + " -> " + path);
  return bank;
}

namespace {

std::string run_config(const RegConfig& c, const std::string& phase, const std::string& init) {
  auto j = nlohmann::json::parse(to_json(c));
  j["run"] = {{"phase", phase}, {"init", init}};
  return j.dump(2);
}

/// A config embedded in a run's files, without its "run" record.
RegConfig embedded_config(const std::string& text, const std::string& source) {
  auto j = nlohmann::json::parse(text);
  j.erase("run");
  return parse_reg_config(j.dump(), source);
}

/// "pretrain-mrbs/model.pt" for the weights a grid pretrained in its own folder, any path else:
/// a rerun through another spelling of --output, or in a moved or copied folder, resumes.
std::string init_in_grid(const std::string& init) {
  const auto last = init.find_last_of('/');
  if (last == std::string::npos || init.substr(last + 1) != "model.pt") return init;
  const auto before = init.find_last_of('/', last == 0 ? 0 : last - 1);
  const auto folder = init.substr(before == std::string::npos ? 0 : before + 1);
  return folder.rfind("pretrain-", 0) == 0 ? folder : init;
}

/// What a run's weights depend on: not the step counts (a resume may extend
/// them), threads, device, logging, the test pairs or the grid, and for pretraining not the
/// fine-tuning settings (so that changing those reuses a finished pretraining).
std::string resume_identity(const std::string& text) {
  auto c = embedded_config(text, "checkpoint config");
  const RegConfig defaults;
  for (auto* t :
       {&c.pretrain, &c.finetune}) {  // how long, where and how verbosely: not what is learnt
    t->steps = 1, t->threads = 0, t->device = "auto", t->prefetch = 0;
    t->log_every = t->checkpoint_every = t->preview_every = 1;
  }
  c.data.test_pairs = 0, c.data.seed = 0;
  c.grid = defaults.grid;
  const auto run = nlohmann::json::parse(text).value("run", nlohmann::json());
  if (run.value("phase", "") == "pretrain") {
    c.finetune = defaults.finetune;
    c.similarity = defaults.similarity, c.ncc_window = defaults.ncc_window;
    c.finetune_lambda = defaults.finetune_lambda;
  }
  auto j = nlohmann::json::parse(to_json(c));
  j["run"] = run;
  if (run.contains("init")) j["run"]["init"] = init_in_grid(run.value("init", ""));
  return j.dump();
}

struct Pair {
  at::Tensor moving, fixed, target;
};

Pair synthetic_batch(const PairBank& bank, const TrainSection& t, int64_t step,
                     const at::Device& dev) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed(t.seed, step, 1));
  const auto idx = at::randint(bank.target.size(0), {t.batch_size}, gen, at::kLong);
  const auto take = [&](const at::Tensor& x) { return x.index_select(0, idx).to(dev, at::kFloat); };
  return {take(bank.moving), take(bank.fixed), take(bank.target)};
}

/// Ordered pairs of distinct training images, drawn from (seed, step).
Pair real_batch(const at::Tensor& images, const TrainSection& t, int64_t step,
                const at::Device& dev) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(stream_seed(t.seed, step, 1));
  const int64_t M = images.size(0);
  const auto a = at::randint(M, {t.batch_size}, gen, at::kLong);
  const auto b = (a + 1 + at::randint(M - 1, {t.batch_size}, gen, at::kLong)).remainder(M);
  return {images.index_select(0, a).to(dev), images.index_select(0, b).to(dev), {}};
}

void check_training_inputs(const std::string& phase, const PairBank& bank,
                           const at::Tensor& images) {
  if (phase == "pretrain" && (!bank.target.defined() || bank.target.size(0) == 0))
    throw std::invalid_argument("pretraining needs a bank of synthetic pairs");
  if (phase == "finetune" && (!images.defined() || images.size(0) < 2))
    throw std::invalid_argument("fine-tuning needs at least 2 training images");
  if (phase != "pretrain" && phase != "finetune")
    throw std::invalid_argument("unknown phase '" + phase + "' (expected pretrain or finetune)");
}

}  // namespace

RunSummary train_registration(const RegConfig& c, const std::string& phase, const PairBank& bank,
                              const torch::Tensor& images, const std::string& init_weights,
                              const std::string& output_dir, bool progress,
                              const RegValidate& validate) {
  check_training_inputs(phase, bank, images);
  const auto& t = phase == "pretrain" ? c.pretrain : c.finetune;
  const auto device = resolve_device(t.device);
  if (t.threads > 0) at::set_num_threads(static_cast<int>(t.threads));
  at::manual_seed(t.seed);
  VoxelMorph net(c.voxelmorph);
  const auto init = init_weights.empty() ? t.init_from : init_weights;
  if (!init.empty())
    load_module_state(*net, read_checkpoint(resolve_model_path(init), kKind).model);
  net->to(device);
  net->train(true);
  Adam adam(net->parameters());
  dist::world().agree(true, "starting the " + phase + " run");  // every rank sees the same files
  auto spec = run_spec(t, output_dir, kKind, run_config(c, phase, init), resume_identity,
                       detail::file_exists(output_dir + "/checkpoint.pt"), progress);
  spec.label = phase, spec.lr_key = phase + ".lr", spec.steps_key = phase + ".steps";
  if (t.validate_every > 0 && !validate)
    throw std::invalid_argument(phase + ".validate_every = " + std::to_string(t.validate_every) +
                                " needs validation images: set data.validation_images (or " +
                                phase + ".validate_every = 0)");
  if (validate) {
    spec.validate = [&] {
      RegModel model{net, c, 0, false};
      return validate(model);
    };
    spec.validation_name = phase + " validation DSC";
  }
  TrainingRun run(
      spec, [&] { return module_state(*net); },
      [&](const TensorMap& m) { load_module_state(*net, m); }, adam);
  run.start();
  const auto step = [&](int64_t s) -> StepResult {
    const bool pre = phase == "pretrain";
    const auto global =
        pre ? synthetic_batch(bank, t, s, device) : real_batch(images, t, s, device);
    const auto rows = [&](const at::Tensor& x) {
      return x.defined() ? dist::my_rows(x, phase + ".batch_size") : x;
    };
    const Pair batch{rows(global.moving), rows(global.fixed), rows(global.target)};
    const auto out = net->forward_full(batch.moving, batch.fixed);
    if (pre)
      return descend(adam, supervised_loss(batch.target, out.displacement, c.pretrain_lambda), t,
                     s);
    const auto [sim, smooth] =
        unsupervised_terms(c.similarity, warp(batch.moving, out.displacement), batch.fixed,
                           out.preintegration, c.ncc_window);
    auto r = descend(adam, sim + c.finetune_lambda * smooth, t, s);
    r.metrics.push_back({c.similarity, sim.item<double>()});
    r.metrics.push_back({"smoothness", smooth.item<double>()});
    return r;
  };
  return run.run(step);
}

RegModel load_reg_model(const std::string& name_or_path, const torch::Device& device) {
  const auto path = resolve_model_path(name_or_path);
  auto ck = read_checkpoint(path, kKind);
  auto config = embedded_config(ck.config, path + " (embedded config)");
  RegModel m{VoxelMorph(config.voxelmorph), std::move(config), ck.step, false};
  load_module_state(*m.net, ck.model);
  m.net->to(device);
  m.net->train(false);
  return m;
}

}  // namespace drdm::reg
