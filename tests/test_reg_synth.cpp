// reg_synth library: losses against analytic values and brute force, pair
// direction (with negative controls), config errors, split and test pairs,
// scoring, and exact resume of a VoxelMorph run.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

#include "drdm/core/spatial.h"
#include "drdm/diffusion/generate.h"
#include "drdm/diffusion/velocity_sampler.h"
#include "drdm/engine/training_engine.h"
#include "drdm/io/image_io.h"
#include "drdm/io/models.h"
#include "drdm/reg/losses.h"
#include "drdm/reg/pairs.h"
#include "drdm/reg/synth.h"
#include "test_util.h"

namespace {

namespace reg = drdm::reg;

/// u(x) = A x on a grid of `size` (d = size.size()), [1, d, ...size].
at::Tensor linear_field(const at::Tensor& A, at::IntArrayRef size) {
  const auto grid = drdm::identity_grid(size);  // [1, d, ...S]
  return at::einsum("ij,bj...->bi...", {A, grid}).contiguous();
}

TEST(RegLosses, GradientLossOfALinearFieldIsTheMeanOfItsMatrix) {
  const auto A = at::tensor({0.3, -0.2, 0.05, 0.4}, at::kFloat).view({2, 2});
  const auto u = linear_field(A, {9, 7});
  EXPECT_NEAR(reg::gradient_loss(u, 1).item<double>(), A.abs().mean().item<double>(), 1e-6);
  EXPECT_NEAR(reg::gradient_loss(u, 2).item<double>(), A.square().mean().item<double>(), 1e-6);
  const auto B =
      at::tensor({0.1, 0.2, -0.3, 0.0, 0.5, -0.1, 0.2, 0.2, 0.7}, at::kFloat).view({3, 3});
  EXPECT_NEAR(reg::gradient_loss(linear_field(B, {5, 6, 7}), 1).item<double>(),
              B.abs().mean().item<double>(), 1e-6);
  EXPECT_THROW(reg::gradient_loss(u, 3), std::invalid_argument);
}

/// Brute force of the NCC formula in losses.h on a 2D image (zero padding).
double brute_ncc(const at::Tensor& a, const at::Tensor& b, int64_t w) {
  const auto A = a[0][0].to(at::kDouble), B = b[0][0].to(at::kDouble);
  const int64_t H = A.size(0), W = A.size(1), r = w / 2;
  const double n = double(w * w);
  double total = 0;
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
      for (int64_t dy = -r; dy <= r; ++dy)
        for (int64_t dx = -r; dx <= r; ++dx) {
          const int64_t yy = y + dy, xx = x + dx;
          if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
          const double p = A[yy][xx].item<double>(), q = B[yy][xx].item<double>();
          sa += p, sb += q, saa += p * p, sbb += q * q, sab += p * q;
        }
      const double cross = sab - sa * sb / n, va = saa - sa * sa / n, vb = sbb - sb * sb / n;
      total += cross * cross / (va * vb + 1e-5);
    }
  return -total / double(H * W);
}

TEST(RegLosses, NccMatchesBruteForceAndIsMinusOneForScaledImages) {
  at::manual_seed(3);
  const auto a = at::rand({1, 1, 7, 6}), b = at::rand({1, 1, 7, 6});
  EXPECT_NEAR(reg::ncc_loss(a, b, 3).item<double>(), brute_ncc(a, b, 3), 1e-5);
  EXPECT_NEAR(reg::ncc_loss(a, b, 5).item<double>(), brute_ncc(a, b, 5), 1e-5);
  const auto big = at::rand({1, 1, 24, 24});
  EXPECT_NEAR(reg::ncc_loss(big, 2 * big, 9).item<double>(), -1.0, 1e-3);
  EXPECT_GT(reg::ncc_loss(big, at::rand({1, 1, 24, 24}), 9).item<double>(),
            -0.2);  // unrelated images
  const auto vol = at::rand({1, 1, 12, 12, 12});
  EXPECT_NEAR(reg::ncc_loss(vol, 0.5 * vol, 5).item<double>(), -1.0, 1e-3);
  EXPECT_THROW(reg::ncc_loss(a, b, 4), std::invalid_argument);
}

TEST(RegLosses, NccGradientMatchesFiniteDifferences) {
  at::manual_seed(4);
  auto a = at::rand({1, 1, 9, 8}, at::kDouble).requires_grad_(true);
  const auto b = at::rand({1, 1, 9, 8}, at::kDouble);
  reg::ncc_loss(a, b, 5).backward();
  const auto grad = a.grad();
  const double h = 1e-6;
  for (int64_t k : {0, 13, 37, 71}) {
    at::NoGradGuard no_grad;
    auto p = a.detach().clone(), m = a.detach().clone();
    p.view(-1)[k] += h, m.view(-1)[k] -= h;
    const double numeric =
        (reg::ncc_loss(p, b, 5).item<double>() - reg::ncc_loss(m, b, 5).item<double>()) / (2 * h);
    EXPECT_NEAR(grad.view(-1)[k].item<double>(), numeric, 1e-6 + 1e-4 * std::abs(numeric)) << k;
  }
}

TEST(RegLosses, SupervisedLossIsMsePlusWeightedL1Gradient) {
  const auto target = at::zeros({1, 2, 8, 8});
  const auto A = at::tensor({0.1, 0.0, 0.0, -0.3}, at::kFloat).view({2, 2});
  const auto pred = linear_field(A, {8, 8});
  const double mse = pred.square().mean().item<double>();
  EXPECT_NEAR(reg::supervised_loss(target, pred, 2.0).item<double>(), mse + 2.0 * 0.1, 1e-5);
  EXPECT_NEAR(reg::supervised_loss(pred, pred, 0.0).item<double>(), 0.0, 1e-9);
}

/// Mean |a - b| away from a border margin.
double interior_error(const at::Tensor& a, const at::Tensor& b, int64_t m) {
  auto d = (a - b).abs();
  for (int64_t ax = 2; ax < d.dim(); ++ax) d = d.narrow(ax, m, d.size(ax) - 2 * m);
  return d.mean().item<double>();
}

at::Tensor smooth_images(int64_t n, at::IntArrayRef size) {
  at::manual_seed(5);
  std::vector<int64_t> coarse{n, 1};
  for (size_t i = 0; i < size.size(); ++i) coarse.push_back(6);
  auto x = at::rand(coarse);
  return size.size() == 2 ? at::upsample_bicubic2d(x, size, true).clamp(0, 1)
                          : at::upsample_trilinear3d(x, size, true);
}

TEST(RegPairs, MrbsTargetMapsMovingOntoFixedAndItsNegationDoesNot) {
  const auto images = smooth_images(2, {48, 48});
  auto gen = drdm::make_generator(at::kCPU, 9);
  const auto p = reg::mrbs_pairs(images, gen, reg::mrbs_options_for({48, 48}));
  EXPECT_EQ(p.target.sizes(), (std::vector<int64_t>{2, 2, 48, 48}));
  const double ok = interior_error(drdm::warp(p.moving, p.target), p.fixed, 4);
  const double base = interior_error(p.moving, p.fixed, 4);
  EXPECT_LT(ok, 1e-6);
  EXPECT_GT(base, 0.01);
  EXPECT_GT(interior_error(drdm::warp(p.moving, -p.target), p.fixed, 4), 0.5 * base);  // wrong sign
  EXPECT_GT(interior_error(drdm::warp(p.fixed, p.target), p.moving, 4), 0.5 * base);  // wrong roles
}

TEST(RegPairs, DrdmTargetMapsMovingOntoFixedAndItsNegationDoesNot) {
  drdm::Deformer deformer(drdm::resolve_model_path("cardiac2d"), at::kCPU);
  const auto images = smooth_images(2, {64, 64});
  const auto p = reg::drdm_pairs(deformer, images, {{2, 10}}, {1, 2});
  const double base = interior_error(p.moving, p.fixed, 4);
  ASSERT_GT(base, 1e-3) << "the synthetic field must move the image";
  EXPECT_LT(interior_error(drdm::warp(p.moving, p.target), p.fixed, 4), 0.2 * base);
  EXPECT_GT(interior_error(drdm::warp(p.moving, -p.target), p.fixed, 4), 0.6 * base);
  EXPECT_THROW(reg::drdm_pairs(deformer, images, {{5}}, {1, 2}), std::invalid_argument);
}

std::string config_text(const std::string& extra = "") {
  return R"({"data": {"images": "i", "labels": "l", "size": [32, 32]},
             "pretrain": {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "log_every": 1},
             "finetune": {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "log_every": 1})" +
         extra + "}";
}

void expect_config_error(const std::string& text, const std::vector<std::string>& sets,
                         const std::string& key) {
  try {
    reg::parse_reg_config(text, "test.json", sets);
    ADD_FAILURE() << "no error for " << key;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    // An error in a --set value is blamed on that --set, anything else on the file.
    const std::string source = sets.empty() ? "test.json" : "--set " + sets.front();
    EXPECT_NE(std::string(e.what()).find(source), std::string::npos) << e.what();
  }
}

TEST(RegConfig, ParsesRoundTripsAndNamesBadKeys) {
  const auto c = reg::parse_reg_config(config_text(), "test.json");
  EXPECT_EQ(c.voxelmorph.dims(), 2);
  EXPECT_EQ(c.pretrain.steps, 4);
  // Fine-tuning clips its gradients unless told otherwise; pretraining does not.
  EXPECT_EQ(c.finetune.grad_clip, 5.0);
  EXPECT_EQ(c.pretrain.grad_clip, 0.0);
  EXPECT_EQ(reg::parse_reg_config(config_text(), "t", {"finetune.grad_clip=0"}).finetune.grad_clip,
            0.0);
  expect_config_error(config_text(), {"finetune.grad_clip=-1"}, "finetune.grad_clip");
  EXPECT_EQ(reg::to_json(reg::parse_reg_config(reg::to_json(c), "again")), reg::to_json(c));
  expect_config_error(config_text(), {"finetune.similarity=\"l1\""}, "finetune.similarity");
  expect_config_error(config_text(), {"pretrain.lr=0"}, "pretrain.lr");
  expect_config_error(config_text(), {"data.size=[40, 40]"}, "data.size");
  expect_config_error(config_text(), {"grid.pretrain=[\"affine\"]"}, "grid.pretrain");
  expect_config_error(config_text(), {"synthetic.mrbs=[[1, 2.0]]"}, "synthetic.mrbs");
  // Too many control points to be an int64 (its conversion was undefined before the bound).
  expect_config_error(config_text(), {"synthetic.mrbs=[[1e30, 2.0]]"}, "synthetic.mrbs");
  expect_config_error(config_text(), {"finetune.ncc_window=8"}, "finetune.ncc_window");
  // Absurd sizes are refused by the config before any work (issue 26, items 9 and 12).
  expect_config_error(config_text(), {"voxelmorph.encoder=[100000, 16]"}, "voxelmorph.encoder");
  expect_config_error(config_text(), {"synthetic.pairs_per_image=100000000"},
                      "synthetic.pairs_per_image");
  // VoxelMorph's own checks are blamed on the --set too, naming the key once (item 17).
  expect_config_error(config_text(), {"voxelmorph.integration_steps=-1"},
                      "'voxelmorph.integration_steps'");
  expect_config_error(config_text(", \"pretrian\": {}"), {}, "pretrian");
}

TEST(RegData, TestPairsAreOrderedDistinctAndSeeded) {
  const auto all = reg::test_pairs(4, 0, 0);
  EXPECT_EQ(all.size(), 12u);
  const auto some = reg::test_pairs(10, 20, 7);
  EXPECT_EQ(some.size(), 20u);
  EXPECT_EQ(some, reg::test_pairs(10, 20, 7));
  EXPECT_NE(some, reg::test_pairs(10, 20, 8));
  std::set<std::pair<int64_t, int64_t>> unique(some.begin(), some.end());
  EXPECT_EQ(unique.size(), some.size());
  for (const auto& [m, f] : some) EXPECT_NE(m, f);
}

/// n 2D cases in dir/images + dir/labels: a disc (label 1) whose centre moves by case.
void write_cases(const drdm::test::TempDir& dir, int64_t n, int64_t side) {
  const auto grid = drdm::identity_grid({side, side});
  for (int64_t i = 0; i < n; ++i) {
    const double cy = side / 2.0 + (i % 3) - 1, cx = side / 2.0 + (i % 2) * 2 - 1;
    const auto r2 = (grid[0][0] - cy).square() + (grid[0][1] - cx).square();
    const auto labels = (r2 < (side / 4.0) * (side / 4.0)).to(at::kLong).view({1, 1, side, side});
    const auto image = labels.to(at::kFloat) * 100 + 20 + grid[0][1].view({1, 1, side, side});
    const auto name = "case" + std::to_string(100 + i) + ".nii.gz";
    const auto geo = drdm::Geometry::identity({side, side});
    drdm::write_image(dir.path("images/" + name), image, geo);
    drdm::write_labels(dir.path("labels/" + name), labels, geo);
  }
}

reg::RegConfig small_config(const drdm::test::TempDir& dir) {
  auto c = reg::parse_reg_config(config_text(), "test.json");
  c.data.images = dir.path("images"), c.data.labels = dir.path("labels");
  c.data.classes = {"disc"};
  c.synthetic.pairs_per_image = 1;
  c.synthetic.mrbs = reg::mrbs_options_for({32, 32}).levels;
  c.pretrain.device = c.finetune.device = "cpu";
  return c;
}

TEST(RegData, SplitTakesTheFirstFractionOfTheSortedFilesThenFilters) {
  drdm::test::TempDir dir;
  write_cases(dir, 10, 32);
  auto c = small_config(dir);
  auto split = reg::split_cases(c.data);
  ASSERT_EQ(split.train.size(), 7u);
  ASSERT_EQ(split.test.size(), 3u);
  EXPECT_EQ(split.train.front().name, "case100");
  EXPECT_EQ(split.test.front().name, "case107");
  c.data.include = {"case10[0-2]*", "case10[7-9]*"};
  split = reg::split_cases(c.data);
  EXPECT_EQ(split.train.size(), 3u);
  EXPECT_EQ(split.test.size(), 3u);
  c.data.include = {"case100*"};
  EXPECT_THROW(reg::split_cases(c.data), std::runtime_error);
}

TEST(RegData, ValidationImagesAreTheLastTrainingImagesNeverTestImages) {
  drdm::test::TempDir dir;
  write_cases(dir, 10, 32);
  auto c = small_config(dir);
  c.data.validation_images = 2;
  const auto split = reg::split_cases(c.data);
  ASSERT_EQ(split.train.size(), 5u);
  ASSERT_EQ(split.validation.size(), 2u);
  ASSERT_EQ(split.test.size(), 3u);
  EXPECT_EQ(split.validation.front().name, "case105");
  EXPECT_EQ(split.validation.back().name, "case106");
  EXPECT_EQ(split.test.front().name, "case107");  // the test part does not change
  c.data.validation_images = 6;                   // leaves 1 to train on
  EXPECT_THROW(reg::split_cases(c.data), std::runtime_error);
}

TEST(RegScore, ValidationDiceOfTheIdentityIsTheOverlapBeforeRegistration) {
  drdm::test::TempDir dir;
  write_cases(dir, 2, 32);  // case101's disc is case100's moved by (+1, +2)
  const auto c = small_config(dir);
  reg::RegValidation v;
  for (const char* name : {"case100", "case101"})
    v.volumes.push_back(reg::load_volume(dir.path(std::string("images/") + name + ".nii.gz"),
                                         dir.path(std::string("labels/") + name + ".nii.gz"),
                                         c.data));
  v.pairs = {{0, 1}};
  reg::RegModel identity{reg::VoxelMorph(c.voxelmorph), c, 0, true};
  const double none = reg::validation_dice(identity, v, 1);
  EXPECT_NEAR(
      none,
      reg::score_pair(v.volumes[0], v.volumes[1], at::zeros({1, 2, 32, 32}), 1).classes[0].dice,
      1e-12);
  EXPECT_LT(none, 0.95);
}

// Pretraining on pairs whose known field is a uniform shift learns that
// shift within a few dozen steps, in 2D and in 3D.
TEST(RegTrain, PretrainingLearnsAKnownShiftIn2DAnd3D) {
  drdm::test::TempDir dir;
  for (auto size : {std::vector<int64_t>{32, 32}, std::vector<int64_t>{16, 16, 16}}) {
    const int64_t d = static_cast<int64_t>(size.size());
    auto c = small_config(dir);
    c.data.size = size;
    c.voxelmorph.dims(d);
    // lr 1e-3: at 3e-3 the 3D network diverges (loss 1.2 -> 10 in 60 steps).
    c.pretrain.steps = 120, c.pretrain.batch_size = 2, c.pretrain.lr = 1e-3;
    c.pretrain.lr_schedule = "constant", c.pretrain.checkpoint_every = 120;
    c.pretrain.log_every = 20;
    const auto moving = smooth_images(4, size);
    std::vector<float> s = {1.5f, -1.0f, 0.5f};
    std::vector<int64_t> shape{4, d};
    shape.insert(shape.end(), size.begin(), size.end());
    std::vector<int64_t> view(static_cast<size_t>(d + 2), 1);
    view[1] = d;
    const auto shift = at::tensor(std::vector<float>(s.begin(), s.begin() + d)).view(view);
    reg::PairBank bank{moving, drdm::warp(moving, shift.expand(shape)),
                       shift.expand(shape).clone()};
    const auto run = reg::train_registration(c, "pretrain", bank, {}, "",
                                             dir.path("shift" + std::to_string(d)), false);
    const auto path = run.model;
    EXPECT_LT(run.last_loss, 0.15) << d << "D";
    auto model = reg::load_reg_model(path);
    at::NoGradGuard no_grad;
    const auto u = model.net->forward(moving.narrow(0, 0, 1), bank.fixed.narrow(0, 0, 1));
    for (int64_t a = 0; a < d; ++a) {
      auto inner = u[0][a];
      for (int64_t k = 0; k < d; ++k) inner = inner.narrow(k, size[k] / 4, size[k] / 2);
      EXPECT_NEAR(inner.mean().item<double>(), s[static_cast<size_t>(a)], 0.35)
          << d << "D, axis " << a;
    }
  }
}

TEST(RegScore, TheKnownShiftRegistersTheDiscExactly) {
  drdm::test::TempDir dir;
  write_cases(dir, 2, 32);  // case101's disc is case100's moved by (+1, +2)
  const auto c = small_config(dir);
  const auto moving = reg::load_volume(dir.path("images/case100.nii.gz"),
                                       dir.path("labels/case100.nii.gz"), c.data);
  const auto fixed = reg::load_volume(dir.path("images/case101.nii.gz"),
                                      dir.path("labels/case101.nii.gz"), c.data);
  const auto shift =
      at::tensor({-1.0f, -2.0f}).view({1, 2, 1, 1}).expand({1, 2, 32, 32}).contiguous();
  const auto right = reg::score_pair(moving, fixed, shift, 1);
  EXPECT_DOUBLE_EQ(right.classes[0].dice, 1.0);
  EXPECT_DOUBLE_EQ(right.folding, 0.0);
  const auto none = reg::score_pair(moving, fixed, at::zeros({1, 2, 32, 32}), 1);
  EXPECT_LT(none.classes[0].dice, 0.95);
  EXPECT_LT(reg::score_pair(moving, fixed, -shift, 1).classes[0].dice,
            none.classes[0].dice);  // wrong sign
  const auto bad = reg::load_volume(dir.path("images/case100.nii.gz"), "", c.data);
  EXPECT_THROW(reg::score_pair(bad, fixed, shift, 1), std::invalid_argument);
  EXPECT_THROW(reg::load_volume(dir.path("images/case100.nii.gz"),
                                dir.path("labels/missing.nii.gz"), c.data),
               std::runtime_error);
}

TEST(RegTrain, PretrainingResumesExactly) {
  drdm::test::TempDir dir;
  write_cases(dir, 4, 32);
  auto c = small_config(dir);
  at::Tensor images =
      at::cat({reg::load_volume(dir.path("images/case100.nii.gz"), "", c.data).image,
               reg::load_volume(dir.path("images/case101.nii.gz"), "", c.data).image});
  const auto bank = reg::synthetic_bank("mrbs", images, c, dir.path("bank"), false);
  EXPECT_EQ(bank.target.size(0), 2);
  const auto straight =
      reg::train_registration(c, "pretrain", bank, {}, "", dir.path("a"), false).model;
  auto half = c;
  half.pretrain.steps = 2;
  reg::train_registration(half, "pretrain", bank, {}, "", dir.path("b"), false).model;
  const auto resumed =
      reg::train_registration(c, "pretrain", bank, {}, "", dir.path("b"), false).model;
  const auto a = drdm::read_checkpoint(straight), b = drdm::read_checkpoint(resumed);
  EXPECT_EQ(a.step, 4);
  EXPECT_EQ(b.step, 4);
  for (const auto& [name, t] : a.model) EXPECT_TRUE(at::equal(t, b.model.at(name))) << name;
  // A finished pretraining is reused when only fine-tuning or test settings change ...
  auto other = c;
  other.finetune.lr = 3e-4, other.similarity = "mse", other.data.test_pairs = 5;
  const auto again =
      reg::train_registration(other, "pretrain", bank, {}, "", dir.path("a"), false).model;
  EXPECT_TRUE(
      at::equal(drdm::read_checkpoint(again).model.at("flow.weight"), a.model.at("flow.weight")));
  // ... but not when a setting of pretraining itself changes.
  auto changed = c;
  changed.pretrain_lambda = 2.0;
  EXPECT_ANY_THROW(
      reg::train_registration(changed, "pretrain", bank, {}, "", dir.path("a"), false).model);
  // Fine-tuning from the pretrained weights moves them.
  const auto tuned =
      reg::train_registration(c, "finetune", {}, images, straight, dir.path("c"), false).model;
  const auto t = drdm::read_checkpoint(tuned);
  EXPECT_FALSE(at::equal(t.model.at("flow.weight"), a.model.at("flow.weight")));
  EXPECT_THROW(
      reg::train_registration(c, "finetune", {}, images.narrow(0, 0, 1), "", dir.path("d"), false)
          .model,
      std::invalid_argument);
}

TEST(RegTrain, UnsupervisedFineTuningLearnsAShiftWithEitherSimilarity) {
  drdm::test::TempDir dir;
  auto c = small_config(dir);
  c.finetune.steps = 80, c.finetune.batch_size = 2, c.finetune.lr = 2e-3,
  c.finetune.lr_schedule = "constant";
  c.finetune.checkpoint_every = 80, c.finetune.log_every = 10;
  // Two images: smooth blobs, the second the first moved by 2 voxels along W.
  const auto base = smooth_images(1, {32, 32});
  const auto moved = at::roll(base, {2}, {3});
  const auto images = at::cat({base, moved});
  for (const std::string sim : {"mse", "ncc"}) {
    c.similarity = sim;
    c.finetune_lambda = sim == "mse" ? 0.01 : 0.0;  // NCC: see docs/results/table3.md on its weight
    const auto path =
        reg::train_registration(c, "finetune", {}, images, "", dir.path(sim), false).model;
    auto model = reg::load_reg_model(path);
    at::NoGradGuard no_grad;
    const auto u = model.net->forward(base, moved);  // warp(base, u) ~ moved: u_W ~ -2 inside
    const double before = (base - moved).square().mean().item<double>();
    const double after = (drdm::warp(base, u) - moved)
                             .narrow(2, 4, 24)
                             .narrow(3, 4, 24)
                             .square()
                             .mean()
                             .item<double>();
    EXPECT_LT(after, 0.5 * before) << sim;
    const double shift = u[0][1].narrow(0, 8, 16).narrow(1, 8, 16).mean().item<double>();
    EXPECT_LT(shift, -0.25) << sim;  // the right direction (a sign error gives > 0)
    std::printf("%s: mean u_W %.3f, image error %.2g -> %.2g\n", sim.c_str(), shift, before, after);
  }
}

}  // namespace
