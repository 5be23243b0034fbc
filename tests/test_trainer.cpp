// Training: config parsing, a real (tiny) training run, bit-exact resume, NaN stop, model loading.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "drdm/core/module_state.h"
#include "drdm/core/spatial.h"
#include "drdm/diffusion/inference.h"
#include "drdm/diffusion/train_config.h"
#include "drdm/diffusion/trainer.h"
#include "drdm/engine/distributed.h"
#include "drdm/engine/optim.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/image_io.h"
#include "test_util.h"

namespace {

using drdm::TrainConfig;
using drdm::test::TempDir;

std::string error_of(const std::string& json, const std::vector<std::string>& overrides = {}) {
  try {
    drdm::parse_train_config(json, "test.json", overrides);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(TrainConfig, DefaultsAreThePapers) {
  const auto c = drdm::parse_train_config("{}", "empty");
  EXPECT_EQ(c.train.batch_size, 64);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-4);
  EXPECT_EQ(c.sampler.timesteps, 80);
  EXPECT_DOUBLE_EQ(c.sampler.alpha, 0.6);
  EXPECT_DOUBLE_EQ(c.loss.regularisation, 10.0);
  EXPECT_EQ(c.model.recursion, 2);
  EXPECT_EQ(c.sampler.process, drdm::DiffusionProcess::kStationary);
}

TEST(TrainConfig, RoundTripsThroughJson) {
  auto c =
      drdm::parse_train_config(R"({"name": "x", "data": {"size": [32, 48], "folders": ["a", "b"]},
                                        "sampler": {"process": "markov", "sigma": 0.01},
                                        "train": {"seed": 7, "steps": 12}})",
                               "test.json");
  const auto again = drdm::parse_train_config(drdm::to_json(c), "resolved");
  EXPECT_EQ(drdm::to_json(again), drdm::to_json(c));
  EXPECT_EQ(again.sampler.process, drdm::DiffusionProcess::kMarkov);
  EXPECT_EQ(again.data.size, (std::vector<int64_t>{32, 48}));
  EXPECT_EQ(again.train.seed, 7u);
  EXPECT_EQ(drdm::network_options(again).timesteps, 80);
}

// docs/configs.md shows each section's keys as the parser's key table makes them.
TEST(TrainConfig, DocsShowTheKeyTable) {
  std::ifstream in(std::string(DRDM_SOURCE_DIR) + "/docs/configs.md");
  ASSERT_TRUE(in) << "docs/configs.md";
  const std::string docs((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* section : {"", "data", "augment", "sampler", "model", "loss", "train"}) {
    const std::string table = drdm::train_config_reference(section);
    EXPECT_NE(docs.find(table), std::string::npos)
        << "docs/configs.md: the table of section '" << section << "' should read:\n"
        << table;
  }
}

TEST(TrainConfig, UnknownKeysAreErrorsNamingTheKey) {
  auto e = error_of(R"({"train": {"batchsize": 4}})");
  EXPECT_NE(e.find("unknown config key 'train.batchsize'"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'train.batch_size'"), std::string::npos) << e;
  EXPECT_NE(e.find("test.json"), std::string::npos) << e;
  e = error_of(R"({"trian": {}})");
  EXPECT_NE(e.find("'trian'"), std::string::npos) << e;
  e = error_of("{}", {"sampler.sigmaa=0.1"});
  EXPECT_NE(e.find("sampler.sigmaa"), std::string::npos) << e;
}

TEST(TrainConfig, WrongTypesAndRangesNameTheKey) {
  auto e = error_of(R"({"train": {"steps": "ten"}})");
  EXPECT_NE(e.find("'train.steps' must be an integer"), std::string::npos) << e;
  e = error_of(R"({"train": {"steps": 10.5}})");
  EXPECT_NE(e.find("train.steps"), std::string::npos) << e;
  e = error_of(R"({"data": {"size": [60, 64]}})");
  EXPECT_NE(e.find("data.size"), std::string::npos) << e;
  e = error_of(R"({"data": {"dims": 3}})");  // size still has 2 entries
  EXPECT_NE(e.find("data.size"), std::string::npos) << e;
  e = error_of(R"({"data": {"fit": "crop"}})");
  EXPECT_NE(e.find("data.fit"), std::string::npos) << e;
  e = error_of(R"({"sampler": {"process": "markow"}})");
  EXPECT_NE(e.find("sampler.process"), std::string::npos) << e;
  e = error_of(R"({"sampler": {"levels": 9}})");
  EXPECT_NE(e.find("sampler.levels"), std::string::npos) << e;
  e = error_of(R"({"train": {"lr": -1}})");
  EXPECT_NE(e.find("train.lr"), std::string::npos) << e;
  e = error_of(R"({"train": {"mixed_precision": "fp16"}})");
  EXPECT_NE(e.find("train.mixed_precision"), std::string::npos) << e;
  e = error_of(R"({"train": {"steps": 10,}})");
  EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;
  EXPECT_NE(error_of("[1, 2]").find("JSON object"), std::string::npos);
  EXPECT_THROW(drdm::load_train_config("/nonexistent/config.json"), std::invalid_argument);
}

TEST(TrainConfig, OverridesApplyAfterTheFile) {
  const auto c = drdm::parse_train_config(
      R"({"train": {"steps": 10}})", "test.json",
      {"train.steps=25", "train.device=cpu", "data.size=[16,16]", "sampler.process=markov"});
  EXPECT_EQ(c.train.steps, 25);
  EXPECT_EQ(c.train.device, "cpu");
  EXPECT_EQ(c.data.size, (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(c.sampler.process, drdm::DiffusionProcess::kMarkov);
  EXPECT_NE(error_of("{}", {"train.steps"}).find("section.key=value"), std::string::npos);
}

TEST(TrainConfig, DuplicateKeysAreErrorsNamingTheKey) {
  auto e = error_of(R"({"train": {"steps": 2, "steps": 3}})");
  EXPECT_NE(e.find("test.json: duplicate key 'train.steps'"), std::string::npos) << e;
  e = error_of(R"({"data": {"dims": 2}, "train": {}, "data": {}})");
  EXPECT_NE(e.find("duplicate key 'data'"), std::string::npos) << e;
  e = error_of(R"({"data": {"folders": [{"a": 1, "a": 2}]}})");  // inside a list too
  EXPECT_NE(e.find("duplicate key"), std::string::npos) << e;
  e = error_of("{}", {R"(data={"dims": 2, "dims": 3})"});
  EXPECT_NE(e.find("duplicate key 'dims'"), std::string::npos) << e;
  EXPECT_EQ(error_of(R"({"train": {"steps": 2}, "data": {"dims": 2}})"), "");
}

TEST(TrainConfig, IntegerKeysTakeExactIntegers) {
  // 16.5 in a list of integers used to become 16, 2^64 - 1 used to become -1.
  auto e = error_of(R"({"data": {"size": [16.5, 16]}})");
  EXPECT_NE(
      e.find(
          "config key 'data.size' must be a list whose entries are each an integer, got [16.5,16]"),
      std::string::npos)
      << e;
  e = error_of(R"({"train": {"seed": 18446744073709551615}})");
  EXPECT_NE(e.find("'train.seed'"), std::string::npos) << e;
  EXPECT_EQ(drdm::parse_train_config(R"({"data": {"size": [16, 24]}})", "t").data.size,
            (std::vector<int64_t>{16, 24}));
}

TEST(TrainConfig, ErrorsInOverridesNameTheSetNotTheFile) {
  auto e = error_of(R"({"train": {"steps": 10}})", {"train.lr=0.01", "train.steps=-5"});
  EXPECT_EQ(e.rfind("--set train.steps=-5: config key 'train.steps' must be >= 1", 0), 0u) << e;
  e = error_of("{}", {"sampler.levels=9"});
  EXPECT_EQ(e.rfind("--set sampler.levels=9: config key 'sampler.levels'", 0), 0u) << e;
  e = error_of("{}", {R"(data={"dims": 3})"});  // a whole section set: its keys are blamed on it
  EXPECT_EQ(e.rfind("--set data={\"dims\": 3}: config key 'data.size'", 0), 0u) << e;
  // An error in the file stays the file's, even with overrides of other keys.
  e = error_of(R"({"train": {"steps": -5}})", {"train.lr=0.01"});
  EXPECT_EQ(e.rfind("test.json: config key 'train.steps'", 0), 0u) << e;
}

// A tiny but real training set: smooth random 16x16 "anatomy" images.
class TinyTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 6; ++i) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(100 + i);
      auto img = at::upsample_bilinear2d(at::rand({1, 1, 5, 5}, gen), {16, 16}, true) + 0.1;
      drdm::write_image(data_.path("images/case" + std::to_string(i) + ".mha"), img,
                        drdm::Geometry::identity({16, 16}), drdm::PixelType::kFloat32);
    }
  }
  TrainConfig config(int64_t steps, std::vector<std::string> extra = {}) const {
    std::vector<std::string> o{"data.folders=[\"" + data_.dir() + "/images\"]",
                               "data.size=[16,16]",
                               "data.min_foreground=0",
                               "sampler.control=16",
                               "sampler.levels=2",
                               "sampler.sigma=0.02",
                               "sampler.integrated_max=20",
                               "train.batch_size=2",
                               "train.steps=" + std::to_string(steps),
                               "train.lr=0.001",
                               "train.checkpoint_every=2",
                               "train.preview_every=2",
                               "train.log_every=1",
                               "train.device=cpu",
                               "train.seed=3",
                               "train.threads=1"};
    o.insert(o.end(), extra.begin(), extra.end());
    return drdm::parse_train_config("{}", "tiny", o);
  }
  static int64_t lines(const std::string& path) {
    std::ifstream in(path);
    std::string l;
    int64_t n = 0;
    while (std::getline(in, l)) ++n;
    return n;
  }
  TempDir data_{"drdm-test-train-data"};
  TempDir out_{"drdm-test-train-out"};
};

TEST_F(TinyTraining, TrainsWritesAllOutputsAndLoads) {
  const auto dir = out_.path("run");
  const auto s = drdm::train(config(4), dir, /*resume=*/false, /*progress=*/false);
  EXPECT_EQ(s.steps, 4);
  EXPECT_TRUE(std::isfinite(s.last_loss));
  for (const auto* f : {"/config.json", "/checkpoint.pt", "/model.pt", "/metrics.jsonl",
                        "/previews/step_000002.png", "/previews/step_000004.png"})
    EXPECT_TRUE(std::ifstream(dir + f).good()) << f;
  EXPECT_EQ(lines(dir + "/metrics.jsonl"), 4);
  // The resolved config parses back to the same config.
  EXPECT_EQ(drdm::to_json(drdm::load_train_config(dir + "/config.json")), drdm::to_json(config(4)));
  // model.pt loads into a network that gives the trained network's predictions.
  auto m = drdm::load_model(dir + "/model.pt");
  EXPECT_EQ(m.step, 4);
  EXPECT_EQ(m.config.data.size, (std::vector<int64_t>{16, 16}));
  EXPECT_FALSE(m.net->is_training());
  auto ck = drdm::load_model(dir + "/checkpoint.pt");
  const auto x = at::rand({1, 1, 16, 16});
  const auto t = at::full({1}, 10, at::kLong);
  EXPECT_TRUE(at::equal(m.net->forward(x, t), ck.net->forward(x, t)));
  // Training moved the weights away from the near-identity initialisation.
  EXPECT_GT(m.net->forward(x, t).abs().max().item<double>(), 1e-3);
  // The preview is a real picture (RGB, two 4-panel halves per row).
  const auto png = drdm::read_image(dir + "/previews/step_000004.png");
  EXPECT_GT(png.geometry.size[0], png.geometry.size[1]);
}

TEST_F(TinyTraining, ResumeIsBitExactOnCpu) {
  const auto straight = out_.path("straight"), split = out_.path("split");
  drdm::train(config(4), straight, false, false);
  drdm::train(config(2), split, false, false);
  // A second process would start here: resume reads only the checkpoint.
  const auto s = drdm::train(config(4), split, /*resume=*/true, false);
  EXPECT_EQ(s.first_step, 2);
  auto a = drdm::load_model(straight + "/checkpoint.pt");
  auto b = drdm::load_model(split + "/checkpoint.pt");
  const auto sa = drdm::module_state(*a.net), sb = drdm::module_state(*b.net);
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& [k, v] : sa) EXPECT_TRUE(at::equal(v, sb.at(k))) << k;
  EXPECT_EQ(lines(split + "/metrics.jsonl"), 4);
  // The same run without resume but a different seed differs (the test can fail).
  const auto other = out_.path("other");
  drdm::train(config(4, {"train.seed=4"}), other, false, false);
  auto c = drdm::load_model(other + "/checkpoint.pt");
  bool all_equal = true;
  for (const auto& [k, v] : drdm::module_state(*c.net))
    all_equal = all_equal && at::equal(v, sa.at(k));
  EXPECT_FALSE(all_equal);
}

// A time limit stops at the first logging step past it, with that step's
// checkpoint (not a checkpoint_every multiple), and resuming from there
// reaches the uninterrupted run's weights bit for bit.
TEST_F(TinyTraining, TimeLimitStopsWithACheckpointThatResumesExactly) {
  const auto straight = out_.path("straight"), limited = out_.path("limited");
  const std::vector<std::string> every{"train.checkpoint_every=4", "train.log_every=1"};
  drdm::train(config(4, every), straight, false, false);
  const auto s = drdm::train(config(4, every), limited, false, false, /*max_seconds=*/1e-9);
  EXPECT_EQ(s.steps, 1);
  EXPECT_EQ(drdm::load_model(limited + "/checkpoint.pt").step, 1);
  EXPECT_EQ(lines(limited + "/metrics.jsonl"), 1);
  const auto r = drdm::train(config(4, every), limited, /*resume=*/true, false);
  EXPECT_EQ(r.first_step, 1);
  EXPECT_EQ(r.steps, 4);
  const auto sa = drdm::module_state(*drdm::load_model(straight + "/checkpoint.pt").net);
  const auto sb = drdm::module_state(*drdm::load_model(limited + "/checkpoint.pt").net);
  for (const auto& [k, v] : sa) EXPECT_TRUE(at::equal(v, sb.at(k))) << k;
}

TEST_F(TinyTraining, ResumeRefusesAnotherConfigOrNoCheckpoint) {
  const auto dir = out_.path("run");
  EXPECT_THROW(drdm::train(config(2), dir, /*resume=*/true, false), std::runtime_error);
  drdm::train(config(2), dir, false, false);
  try {
    drdm::train(config(4, {"train.lr=0.01"}), dir, true, false);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("config differs"), std::string::npos) << e.what();
  }
}

TEST_F(TinyTraining, NeverOverwritesARunOrTrainsItBackwards) {
  const auto dir = out_.path("run");
  drdm::train(config(2), dir, false, false);
  const auto text = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  const auto config_json = text(dir + "/config.json"), checkpoint = text(dir + "/checkpoint.pt");
  // Without resume: refused (it used to restart at step 0 over the finished run).
  try {
    drdm::train(config(4), dir, /*resume=*/false, false);
    FAIL() << "expected a refusal";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
  }
  // Resume with fewer steps than the checkpoint: refused, naming both numbers.
  try {
    drdm::train(config(1), dir, /*resume=*/true, false);
    FAIL() << "expected a refusal";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("train.steps = 1 is below the 2 steps"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(text(dir + "/config.json"), config_json);
  EXPECT_EQ(text(dir + "/checkpoint.pt"), checkpoint);
  // The same step count is fine (nothing to do), more continues.
  EXPECT_EQ(drdm::train(config(2), dir, true, false).first_step, 2);
  EXPECT_EQ(drdm::train(config(3), dir, true, false).steps, 3);
}

TEST_F(TinyTraining, ADataErrorLeavesNoFolderBehind) {
  const auto dir = out_.path("never");
  EXPECT_ANY_THROW(drdm::train(
      config(2, {"data.folders=[\"" + out_.path("no-such-folder") + "\"]"}), dir, false, false));
  EXPECT_FALSE(std::ifstream(dir + "/config.json").good());
  struct stat st {};
  EXPECT_NE(::stat(dir.c_str(), &st), 0) << dir << " was left behind";
}

TEST_F(TinyTraining, NonFiniteLossStopsAndKeepsTheLastGoodCheckpoint) {
  const auto dir = out_.path("run");
  // A huge learning rate blows the weights up within a few steps (set past the config, which
  // refuses rates above 10).
  auto c = config(40, {"train.checkpoint_every=1", "train.preview_every=0"});
  c.train.lr = 1e30;
  try {
    drdm::train(c, dir, false, false);
    FAIL() << "expected the run to stop";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("the loss became"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("checkpoint"), std::string::npos) << e.what();
  }
  // Read without its config (whose rate the config parser refuses).
  const auto ck = drdm::read_checkpoint(dir + "/checkpoint.pt", "drdm");
  EXPECT_LT(ck.step, 40);
  for (const auto& [k, v] : ck.model) EXPECT_TRUE(at::isfinite(v).all().item<bool>()) << k;
}

TEST_F(TinyTraining, BadInputsAreClearErrors) {
  // No folder given / an empty folder.
  auto c = config(2);
  c.data.folders.clear();
  EXPECT_THROW(drdm::train(c, out_.path("a"), false, false), std::invalid_argument);
  c = config(2, {"data.folders=[\"" + out_.path("empty") + "\"]"});
  EXPECT_ANY_THROW(drdm::train(c, out_.path("b"), false, false));
  // bf16 autocast also runs on the CPU (issue 21): finite, and the model stays float32.
  const auto bf16 = drdm::train(config(2, {"train.mixed_precision=bf16", "train.device=cpu"}),
                                out_.path("c"), false, false);
  EXPECT_TRUE(std::isfinite(bf16.last_loss));
  const auto m = drdm::load_model(out_.path("c") + "/model.pt", torch::Device(torch::kCPU));
  for (const auto& p : m.net->parameters()) EXPECT_EQ(p.scalar_type(), at::kFloat);
  if (!at::hasCUDA()) EXPECT_THROW(drdm::resolve_device("cuda"), std::invalid_argument);
  EXPECT_THROW(drdm::resolve_device("tpu"), std::invalid_argument);
  // Missing and corrupt model files name the file.
  try {
    drdm::load_model(out_.path("missing.pt"));
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.pt"), std::string::npos);
  }
  const auto junk = out_.path("junk.pt");
  std::ofstream(junk) << "not a checkpoint";
  try {
    drdm::load_model(junk);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("junk.pt"), std::string::npos) << e.what();
  }
}

TEST(LearningRate, SchedulesFollowTheirFormulas) {
  auto c =
      drdm::parse_train_config(R"({"train": {"lr": 0.001, "lr_decay": 0.99, "steps": 1000}})", "t");
  EXPECT_DOUBLE_EQ(drdm::learning_rate(c.train, 0), 0.001);
  EXPECT_NEAR(drdm::learning_rate(c.train, 100), 0.001 * std::pow(0.99, 100), 1e-15);
  c = drdm::parse_train_config(
      R"({"train": {"lr": 0.001, "lr_schedule": "cosine", "warmup_steps": 100, "lr_min": 0.0001, "steps": 1100}})",
      "t");
  // Linear warm-up: step s (0-based) uses lr * (s + 1) / warmup.
  EXPECT_DOUBLE_EQ(drdm::learning_rate(c.train, 0), 0.001 / 100);
  EXPECT_DOUBLE_EQ(drdm::learning_rate(c.train, 49), 0.001 / 2);
  // Cosine from lr at the end of warm-up to lr_min at the last step; halfway = the mean.
  EXPECT_DOUBLE_EQ(drdm::learning_rate(c.train, 100), 0.001);
  EXPECT_NEAR(drdm::learning_rate(c.train, 600), 0.00055, 1e-12);
  EXPECT_NEAR(drdm::learning_rate(c.train, 1100), 0.0001, 1e-12);
  for (int64_t s = 100; s < 1100; ++s)
    EXPECT_LE(drdm::learning_rate(c.train, s + 1), drdm::learning_rate(c.train, s)) << s;
  c = drdm::parse_train_config(
      R"({"train": {"lr": 0.002, "lr_schedule": "constant", "warmup_steps": 4}})", "t");
  EXPECT_DOUBLE_EQ(drdm::learning_rate(c.train, 1), 0.001);
  EXPECT_DOUBLE_EQ(drdm::learning_rate(c.train, 500), 0.002);
  // Bad schedule keys name the key.
  EXPECT_NE(error_of(R"({"train": {"lr_schedule": "linear"}})").find("train.lr_schedule"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"train": {"warmup_steps": 5}})").find("train.warmup_steps"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"train": {"lr_schedule": "cosine", "lr_min": 1}})").find("train.lr_min"),
            std::string::npos);
}

TEST_F(TinyTraining, InitFromStartsFromTheWeightsWithAFreshOptimiser) {
  const auto first = out_.path("first");
  drdm::train(config(2), first, false, false);
  // Zero steps of training would be no test: compare step-0 predictions instead.
  // A run initialised from `first` and trained with lr -> ~0 keeps its weights.
  const auto tuned = out_.path("tuned");
  drdm::train(config(1, {"train.init_from=\"" + first + "/model.pt\"", "train.lr=1e-30"}), tuned,
              false, false);
  auto a = drdm::load_model(first + "/model.pt");
  auto b = drdm::load_model(tuned + "/checkpoint.pt");
  EXPECT_EQ(b.step, 1);  // a fresh schedule: steps count from 0
  const auto x = at::rand({2, 1, 16, 16});
  const auto t = at::full({2}, 30, at::kLong);
  EXPECT_TRUE(at::allclose(a.net->forward(x, t), b.net->forward(x, t), 1e-5, 1e-6));
  // Without init_from the same run starts elsewhere (the test can fail).
  const auto fresh = out_.path("fresh");
  drdm::train(config(1, {"train.lr=1e-30"}), fresh, false, false);
  auto c = drdm::load_model(fresh + "/model.pt");
  EXPECT_FALSE(at::allclose(a.net->forward(x, t), c.net->forward(x, t), 1e-5, 1e-6));
  // A network of another shape is refused with both shapes named.
  try {
    drdm::train(config(1, {"train.init_from=\"" + first + "/model.pt\"", "model.recursion=1"}),
                out_.path("bad"), false, false);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("train.init_from"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("K = 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(drdm::train(config(1, {"train.init_from=\"" + out_.path("none.pt") + "\""}),
                           out_.path("bad2"), false, false),
               std::runtime_error);
}

TEST_F(TinyTraining, TrainsOnCudaWithAndWithoutBf16_CUDA) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (const std::string precision : {"none", "bf16"}) {
    const auto dir = out_.path("cuda_" + precision);
    const auto s = drdm::train(
        config(3, {"train.device=cuda", "train.mixed_precision=" + precision}), dir, false, false);
    EXPECT_TRUE(std::isfinite(s.last_loss)) << precision;
    auto m = drdm::load_model(dir + "/model.pt", torch::Device(torch::kCUDA));
    const auto y = m.net->forward(at::rand({1, 1, 16, 16}, at::kCUDA), at::full({1}, 5, at::kLong));
    EXPECT_TRUE(y.is_cuda());
    EXPECT_TRUE(at::isfinite(y).all().item<bool>());
  }
}

TEST(Adam, FollowsThePapersUpdate) {
  // Kingma & Ba, Alg. 1, written out in doubles for two steps with known gradients.
  auto p = at::tensor({1.0, -2.0, 0.5}, at::kDouble).requires_grad_();
  drdm::Adam adam({p});
  const std::vector<std::vector<double>> grads{{0.5, -0.1, 0.0}, {-0.2, -0.3, 4.0}};
  std::vector<double> expect{1.0, -2.0, 0.5}, m(3, 0.0), v(3, 0.0);
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  for (int step = 1; step <= 2; ++step) {
    p.mutable_grad() = at::tensor(grads[step - 1], at::kDouble);
    adam.step(lr);
    for (int i = 0; i < 3; ++i) {
      const double g = grads[step - 1][i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double mh = m[i] / (1 - std::pow(b1, step)), vh = v[i] / (1 - std::pow(b2, step));
      expect[i] -= lr * mh / (std::sqrt(vh) + eps);
    }
    for (int i = 0; i < 3; ++i)
      EXPECT_NEAR(p[i].item<double>(), expect[i], 1e-12) << "step " << step << " i " << i;
  }
  EXPECT_EQ(adam.steps(), 2);
  adam.zero_grad();
  EXPECT_FALSE(p.grad().defined());
  // State round trip, and a wrong state is refused.
  drdm::Adam other({at::zeros({3}, at::kDouble).requires_grad_()});
  other.load_state(adam.steps(), adam.exp_avg(), adam.exp_avg_sq());
  EXPECT_TRUE(at::equal(other.exp_avg()[0], adam.exp_avg()[0]));
  EXPECT_THROW(other.load_state(1, {at::zeros({4}, at::kDouble)}, {at::zeros({4}, at::kDouble)}),
               c10::Error);
}

// Global-norm clipping: gradients (3, 4) and (12) have norm 13; clipped to 6.5
// they halve. Below the bound nothing changes.
TEST(Adam, GradientClippingScalesTheGlobalNormDown) {
  auto a = at::zeros({2}, at::kDouble).requires_grad_(),
       b = at::zeros({1}, at::kDouble).requires_grad_();
  drdm::Adam adam({a, b});
  a.mutable_grad() = at::tensor({3.0, 4.0}, at::kDouble);
  b.mutable_grad() = at::tensor({12.0}, at::kDouble);
  EXPECT_NEAR(drdm::clip_gradients(adam, 6.5), 13.0, 1e-12);
  EXPECT_NEAR(a.grad()[0].item<double>(), 1.5, 1e-12);
  EXPECT_NEAR(a.grad()[1].item<double>(), 2.0, 1e-12);
  EXPECT_NEAR(b.grad()[0].item<double>(), 6.0, 1e-12);
  EXPECT_NEAR(drdm::clip_gradients(adam, 100.0), 6.5, 1e-12);
  EXPECT_NEAR(b.grad()[0].item<double>(), 6.0, 1e-12);
  // descend logs the norm before clipping: loss 50 w^2 at w = 1 has gradient 100.
  auto w = at::ones({1}, at::kDouble).requires_grad_();
  drdm::Adam one({w});
  drdm::TrainSection t;
  t.lr_schedule = "constant", t.lr = 0.1, t.grad_clip = 1.0;
  const auto r = drdm::descend(one, 50 * w.square().sum(), t, 0);
  ASSERT_EQ(r.metrics.size(), 2u);
  EXPECT_EQ(r.metrics[1].name, "grad_norm");
  EXPECT_NEAR(r.metrics[1].value, 100.0, 1e-9);
  EXPECT_NEAR(w.grad()[0].item<double>(), 1.0, 1e-12);
}

TEST(CheckRecovery, UntrainedNetworkRecoversNothing) {
  // An untrained network predicts ~0: the error after one step is the error
  // of no step (ratio 1), whatever t.
  drdm::NetworkOptions no;
  drdm::RecoveryNet net(no);
  drdm::SamplerOptions so;
  so.control = 16;
  so.levels = 2;
  drdm::VelocitySampler sampler(so, {16, 16});
  const auto images = at::rand({3, 1, 16, 16});
  const auto checks = drdm::check_recovery(net, sampler, images, {5, 40}, 2, 0, 2);
  ASSERT_EQ(checks.size(), 2u);
  for (const auto& c : checks) {
    EXPECT_EQ(c.samples, 6);
    EXPECT_GT(c.no_step_error, 0.0);
    EXPECT_NEAR(c.ratio, 1.0, 1e-3);
  }
  EXPECT_GT(checks[1].no_step_error, checks[0].no_step_error);
}

}  // namespace

// Issue 26, item 10: LibTorch's pickle_save built the archive in memory, and an allocation that
// failed there threw again from PyTorchStreamWriter's destructor: std::terminate, rc 134. Under an
// address-space limit that holds the weights but not a second copy, a checkpoint is now written
// (streamed to the file), or refused with a message; the process never aborts.
TEST(Checkpoint, SavesUnderAMemoryLimitWithoutAborting) {
  TempDir out;
  const auto path = out.path("big.pt");
  const auto weights = at::ones({48 * 1024 * 1024});  // 192 MiB, made before the fork
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::ifstream statm("/proc/self/statm");
    uint64_t pages = 0;
    statm >> pages;
    const rlim_t limit = pages * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)) + (128ull << 20);
    const rlimit r{limit, limit};
    ::setrlimit(RLIMIT_AS, &r);
    try {
      drdm::save_checkpoint(path, "test", "{}", 0, {{"w", weights}});
      ::_exit(0);
    } catch (const std::exception& e) {
      const bool memory =
          std::string(e.what()).find("out of memory while writing") != std::string::npos;
      ::_exit(memory ? 2 : 3);
    }
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child was killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: refused for memory, 3: another error";
  if (WEXITSTATUS(status) == 0) {
    const auto back = drdm::read_checkpoint(path, "test");
    EXPECT_TRUE(back.model.at("w").equal(weights));
  }
}

namespace {

// A one-parameter run: w descends (w - 3)^2 from 0 while validation scores
// -(w - 1.5)^2, which rises, peaks as w passes 1.5, then falls.
struct ToyValidatedRun {
  at::Tensor w = at::zeros({1}).requires_grad_(true);
  drdm::Adam adam{{w}};
  drdm::RunSpec spec;
  explicit ToyValidatedRun(const std::string& dir, int64_t steps, bool resume) {
    spec.output_dir = dir, spec.kind = "toy", spec.config = "{}", spec.steps = steps;
    spec.checkpoint_every = 1000, spec.log_every = 1, spec.resume = resume, spec.progress = false;
    spec.validate_every = 2, spec.patience = 3;
    spec.validate = [this] {
      const double v = w.item<double>();
      return -(v - 1.5) * (v - 1.5);
    };
  }
  drdm::RunSummary run() {
    drdm::TrainingRun r(
        spec,
        [&] {
          return drdm::TensorMap{{"w", w.detach().clone()}};
        },
        [&](const drdm::TensorMap& m) {
          at::NoGradGuard g;
          w.copy_(m.at("w"));
        },
        adam);
    drdm::TrainSection t;
    t.lr = 0.1, t.lr_schedule = "constant";
    return r.run([&](int64_t s) { return drdm::descend(adam, (w - 3).square().sum(), t, s); });
  }
};

std::string text_of(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST(TrainingValidation, KeepsTheBestStepStopsOnPatienceAndResumesTheSameChoices) {
  TempDir dir;
  ToyValidatedRun whole(dir.path("whole"), 200, false);
  const auto s = whole.run();
  ASSERT_TRUE(s.stopped_early);
  // Checks every 2 steps; the run stops 3 checks after the best one.
  EXPECT_EQ(s.chosen_step % 2, 0);
  EXPECT_GT(s.chosen_step, 0);  // step 0 (w = 0) was scored, and beaten
  EXPECT_EQ(s.steps, s.chosen_step + 6);
  EXPECT_EQ(s.model, dir.path("whole") + "/best.pt");
  const auto best = drdm::read_checkpoint(s.model, "toy");
  EXPECT_EQ(best.step, s.chosen_step);
  const double wb = best.model.at("w").item<double>();
  EXPECT_NEAR(s.best_validation, -(wb - 1.5) * (wb - 1.5), 1e-12);
  EXPECT_GT(s.best_validation, -0.05);  // the peak was found: w passed close to 1.5
  // The last weights (model.pt) are further along, and scored worse.
  const double wl =
      drdm::read_checkpoint(dir.path("whole") + "/model.pt", "toy").model.at("w").item<double>();
  EXPECT_LT(-(wl - 1.5) * (wl - 1.5), s.best_validation);
  // Stopped at step 6 and resumed: the same history, choice and stop.
  {
    ToyValidatedRun first(dir.path("split"), 6, false);
    EXPECT_FALSE(first.run().stopped_early);
  }
  ToyValidatedRun rest(dir.path("split"), 200, true);
  const auto r = rest.run();
  EXPECT_EQ(r.chosen_step, s.chosen_step);
  EXPECT_EQ(r.steps, s.steps);
  EXPECT_EQ(text_of(dir.path("split") + "/validation.json"),
            text_of(dir.path("whole") + "/validation.json"));
}
