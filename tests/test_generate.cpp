// Tests for drdm/diffusion/generate.h (Alg. 2 generate_fields, drdm::Deformer with
// deform() and pairs(), derive_seed) and the model-grid <-> input-grid
// mapping of drdm/io/dataset.h (GridFit, fit_grid, fit_image, field_to_input).
//
// Everything runs on tiny in-process models (32x32 grid, T = 10, control 16)
// so the suite stays fast. The recovery loop is checked analytically with a
// network whose output conv is zeroed and biased to a constant c: each pass
// then predicts exactly c, so each step composes an integer shift onto the
// field and the result after n steps is known voxel by voxel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "diffusion/recovery_compose.h"
#include "drdm/core/module_state.h"
#include "drdm/core/spatial.h"
#include "drdm/diffusion/generate.h"
#include "drdm/diffusion/inference.h"
#include "drdm/diffusion/network.h"
#include "drdm/diffusion/train_config.h"
#include "drdm/diffusion/trainer.h"
#include "drdm/diffusion/velocity_sampler.h"
#include "drdm/io/dataset.h"
#include "drdm/io/image_io.h"
#include "drdm/io/models.h"
#include "test_util.h"

namespace {

using drdm::Deformer;
using drdm::DeformerOptions;
using drdm::GenerationOptions;
using drdm::RecoveryNet;
using drdm::RecoverySchedule;
using drdm::TrainConfig;
using drdm::TrainedModel;

// Small convolutions on a shared 2-core machine: OpenMP spinning only slows
// them down (see test_network.cpp).
const bool kSingleThreaded = [] {
  at::set_num_threads(1);
  return true;
}();

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }
double max_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU, at::kDouble) - b.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

void expect_error_containing(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected an exception containing '" << needle << "'";
}

TrainConfig tiny_config(int64_t timesteps = 10, int64_t recursion = 1,
                        std::vector<int64_t> size = {32, 32}) {
  TrainConfig c;
  c.data.dims = static_cast<int64_t>(size.size());
  c.data.size = size;
  c.sampler.timesteps = timesteps;
  c.sampler.control = 16;
  c.sampler.levels = 2;
  // Larger than the paper's 0.005 so that T = 10 already gives fields of a
  // few voxels (warping semantics are then visible).
  c.sampler.sigma = 0.05;
  c.model.recursion = recursion;
  return c;
}

/// out_std > 0: the output conv gets N(0, out_std) weights and bias, so the
/// network predicts image-dependent displacements of order a voxel.
RecoveryNet make_net(const TrainConfig& c, uint64_t seed, double out_std = 0) {
  torch::manual_seed(seed);
  RecoveryNet net(drdm::network_options(c));
  if (out_std > 0) {
    auto s = drdm::module_state(*net);
    s["out.weight"] = at::randn(s.at("out.weight").sizes()) * out_std;
    s["out.bias"] = at::randn(s.at("out.bias").sizes()) * out_std;
    drdm::load_module_state(*net, s);
  }
  return net;
}

/// Output conv weight 0, bias c: every pass predicts the constant field c.
void set_constant_output(RecoveryNet& net, const std::vector<double>& c) {
  auto s = drdm::module_state(*net);
  s["out.weight"] = at::zeros(s.at("out.weight").sizes());
  s["out.bias"] = at::tensor(c, at::kDouble).to(at::kFloat);
  drdm::load_module_state(*net, s);
}

TrainedModel make_model(const TrainConfig& c, uint64_t seed, double out_std = 0) {
  return TrainedModel{make_net(c, seed, out_std), c, 0};
}

/// Smooth, asymmetric images [n, 1, ...size] in [0, 1], one per phase.
at::Tensor smooth_images(at::IntArrayRef size, int64_t n = 1) {
  std::vector<at::Tensor> out;
  const auto r = drdm::test::ramp_image(size);
  for (int64_t i = 0; i < n; ++i)
    out.push_back(at::sin(r / r.max() * (20.0 + 3.0 * i) + i) * 0.5 + 0.5);
  return at::cat(out, 0).contiguous();
}

/// phi0 shifted by the integer vector s with border clamping: out[.., x] =
/// phi0[.., clamp(x + s)] (2D).
at::Tensor shifted_clamped(const at::Tensor& phi0, int64_t s0, int64_t s1) {
  const int64_t h = phi0.size(2), w = phi0.size(3);
  auto i0 = at::clamp(at::arange(h, at::kLong) + s0, 0, h - 1);
  auto i1 = at::clamp(at::arange(w, at::kLong) + s1, 0, w - 1);
  return phi0.index_select(2, i0).index_select(3, i1);
}

// ======================================================== derive_seed

TEST(DeriveSeed, DeterministicAndDistinctPerCoordinate) {
  EXPECT_EQ(drdm::derive_seed(7, 1, 2, 3), drdm::derive_seed(7, 1, 2, 3));
  EXPECT_EQ(drdm::derive_seed(7, 4), drdm::derive_seed(7, 4, 0, 0));  // documented defaults
  std::set<uint64_t> seen;
  int64_t count = 0;
  for (uint64_t s : {0ull, 1ull, 2ull, 0xffffffffffffffffull})
    for (uint64_t a = 0; a < 6; ++a)
      for (uint64_t b = 0; b < 6; ++b)
        for (uint64_t c = 0; c < 6; ++c, ++count) seen.insert(drdm::derive_seed(s, a, b, c));
  EXPECT_EQ(static_cast<int64_t>(seen.size()), count) << "two coordinates gave the same seed";
  // Swapping coordinates changes the seed (each position is mixed differently).
  EXPECT_NE(drdm::derive_seed(3, 1, 2), drdm::derive_seed(3, 2, 1));
  EXPECT_NE(drdm::derive_seed(3, 0, 1), drdm::derive_seed(3, 0, 0, 1));
  // The derived seed is not the run seed nor the coordinate.
  EXPECT_NE(drdm::derive_seed(5, 0), 5u);
}

TEST(RecoverySchedule, NamesRoundTrip) {
  EXPECT_EQ(drdm::parse_recovery_schedule("level"), RecoverySchedule::kFromLevel);
  EXPECT_EQ(drdm::parse_recovery_schedule("all"), RecoverySchedule::kAllSteps);
  EXPECT_EQ(drdm::to_string(RecoverySchedule::kAllSteps), "all");
  EXPECT_EQ(drdm::to_string(RecoverySchedule::kFromLevel), "level");
  EXPECT_THROW(drdm::parse_recovery_schedule("All"), std::invalid_argument);
}

// ======================================================== generate_fields

TEST(GenerateFields, ReproducibleForTheSameSeedsAndDifferentOtherwise) {
  const auto c = tiny_config();
  auto net = make_net(c, 1, 0.05);
  const auto images = smooth_images({32, 32}, 2);
  const std::vector<int64_t> levels{4, 7};
  const auto a = drdm::generate_fields(net, c.sampler, images, levels, {11, 12});
  const auto b = drdm::generate_fields(net, c.sampler, images, levels, {11, 12});
  ASSERT_EQ(a.field.sizes(), (std::vector<int64_t>{2, 2, 32, 32}));
  ASSERT_EQ(a.initial.sizes(), a.field.sizes());
  EXPECT_TRUE(at::equal(a.field, b.field));
  EXPECT_TRUE(at::equal(a.initial, b.initial));
  const auto other = drdm::generate_fields(net, c.sampler, images, levels, {11, 13});
  EXPECT_TRUE(at::equal(other.initial[0], a.initial[0]));  // sample 0 keeps its seed
  EXPECT_GT(max_diff(other.initial[1], a.initial[1]), 0.1);
  EXPECT_GT(max_diff(other.field[1], a.field[1]), 0.1);
}

TEST(GenerateFields, RestoresTheTrainingFlag) {
  const auto c = tiny_config();
  auto net = make_net(c, 1);
  net->train(true);
  drdm::generate_fields(net, c.sampler, smooth_images({32, 32}), {2}, {1});
  EXPECT_TRUE(net->is_training());
  net->train(false);
  drdm::generate_fields(net, c.sampler, smooth_images({32, 32}), {2}, {1});
  EXPECT_FALSE(net->is_training());
}

TEST(GenerateFields, ReportsEveryRecoveryStepOfEverySample) {
  // on_step sums to sum(T') (recovery t = T'..1 per sample) or N * T (all steps).
  const auto c = tiny_config();  // T = 10
  auto net = make_net(c, 1);
  int64_t calls = 0, total = 0;
  drdm::GenerationOptions o;
  o.batch = 2;
  o.on_step = [&](int64_t n) {
    ++calls;
    total += n;
  };
  drdm::generate_fields(net, c.sampler, smooth_images({32, 32}, 3), {2, 5, 3}, {1, 2, 3}, o);
  EXPECT_EQ(total, 2 + 5 + 3);
  EXPECT_EQ(calls, 5 + 3);  // chunk {2, 5}: 5 steps; chunk {3}: 3 steps
  calls = total = 0;
  o.schedule = drdm::RecoverySchedule::kAllSteps;
  drdm::generate_fields(net, c.sampler, smooth_images({32, 32}, 3), {2, 5, 3}, {1, 2, 3}, o);
  EXPECT_EQ(total, 3 * 10);
}

TEST(GenerateFields, InitialIsTheSamplersFieldForThePerSampleSeeds) {
  const auto c = tiny_config();
  auto net = make_net(c, 2);
  const auto images = smooth_images({32, 32}, 3);
  const std::vector<int64_t> levels{1, 6, 10};
  const std::vector<uint64_t> seeds{101, 7, 55};
  const auto g = drdm::generate_fields(net, c.sampler, images, levels, seeds);
  drdm::VelocitySampler sampler(c.sampler, {32, 32}, torch::kCPU);
  std::vector<at::Generator> gens;
  for (auto s : seeds) gens.push_back(drdm::make_generator(torch::kCPU, s));
  const auto ref = sampler.sample_field(at::tensor(levels, at::kLong), gens);
  EXPECT_TRUE(at::equal(g.initial, ref)) << max_diff(g.initial, ref);
  EXPECT_GT(max_abs(ref), 0.5) << "start fields too small for the tests below to mean anything";
}

TEST(GenerateFields, UntrainedNetworkKeepsTheStartField) {
  // The untrained output conv is N(0, 1e-5) with zero bias: each step
  // predicts ~1e-5 voxels, so the recovered field is the start field.
  const auto c = tiny_config();
  auto net = make_net(c, 3);
  const auto g = drdm::generate_fields(net, c.sampler, smooth_images({32, 32}, 2), {10, 3}, {1, 2});
  EXPECT_GT(max_abs(g.initial), 0.5);
  EXPECT_LT(max_diff(g.field, g.initial), 1e-2);
}

TEST(GenerateFields, SampleDoesNotDependOnItsBatchOrChunking) {
  const auto c = tiny_config();
  auto net = make_net(c, 4, 0.02);
  const auto images = smooth_images({32, 32}, 3);
  const std::vector<int64_t> levels{2, 9, 5};
  const std::vector<uint64_t> seeds{21, 22, 23};
  std::vector<drdm::GeneratedFields> alones;
  for (int64_t i = 0; i < 3; ++i)
    alones.push_back(drdm::generate_fields(net, c.sampler, images.narrow(0, i, 1),
                                           {levels[static_cast<size_t>(i)]},
                                           {seeds[static_cast<size_t>(i)]}));
  for (int64_t chunk : {1, 2, 16}) {
    GenerationOptions o;
    o.batch = chunk;
    const auto all = drdm::generate_fields(net, c.sampler, images, levels, seeds, o);
    for (int64_t i = 0; i < 3; ++i) {
      const auto& alone = alones[static_cast<size_t>(i)];
      SCOPED_TRACE("chunk " + std::to_string(chunk) + ", sample " + std::to_string(i));
      EXPECT_TRUE(at::equal(all.initial[i], alone.initial[0]))
          << max_diff(all.initial[i], alone.initial[0]);
      if (chunk == 1) {
        // Every pass runs this sample alone: the same arithmetic.
        EXPECT_TRUE(at::equal(all.field[i], alone.field[0]))
            << max_diff(all.field[i], alone.field[0]);
      } else {
        // CPU convolutions over batches of different sizes round differently
        // (~3e-6 per pass), and the steps amplify that.
        EXPECT_LT(max_diff(all.field[i], alone.field[0]), 1e-3 * (1 + max_abs(alone.field)));
      }
    }
  }
  // The network changed the fields (else the check above would be the previous test).
  const auto g = drdm::generate_fields(net, c.sampler, images, levels, seeds);
  EXPECT_GT(max_diff(g.field, g.initial), 0.1);
}

TEST(GenerateFields, ConstantPredictionGivesAnalyticShifts) {
  // Each pass predicts c = (1, -1) voxels. With recursion K the network
  // returns compose(c, compose(c, ...)) = K c (constant fields compose
  // exactly under border padding), and step n of Alg. 2 gives
  //   phi_n(x) = K c + phi_{n-1}(clamp(x + K c)) = n K c + phi_0(clamp(x + n K c))
  // (one-directional clamps nest). kFromLevel runs T' steps, kAllSteps T.
  for (int64_t k : {1, 2}) {
    const auto c = tiny_config(10, k);
    auto net = make_net(c, 5);
    set_constant_output(net, {1.0, -1.0});
    const auto images = smooth_images({32, 32}, 3);
    const std::vector<int64_t> levels{3, 1, 10};
    for (auto schedule : {RecoverySchedule::kFromLevel, RecoverySchedule::kAllSteps}) {
      GenerationOptions o;
      o.schedule = schedule;
      o.batch = 2;  // mixed levels across chunks
      const auto g = drdm::generate_fields(net, c.sampler, images, levels, {1, 2, 3}, o);
      for (int64_t i = 0; i < 3; ++i) {
        const int64_t steps =
            schedule == RecoverySchedule::kAllSteps ? 10 : levels[static_cast<size_t>(i)];
        const int64_t s = steps * k;
        auto expected = shifted_clamped(g.initial.narrow(0, i, 1), s, -s).clone();
        expected.select(1, 0).add_(static_cast<double>(s));
        expected.select(1, 1).sub_(static_cast<double>(s));
        SCOPED_TRACE("K " + std::to_string(k) + ", " + drdm::to_string(schedule) + ", sample " +
                     std::to_string(i));
        EXPECT_LT(max_diff(g.field.narrow(0, i, 1), expected), 1e-3);
        // One step more or fewer is clearly different.
        auto off_by_one = shifted_clamped(g.initial.narrow(0, i, 1), s + k, -s - k).clone();
        off_by_one.select(1, 0).add_(static_cast<double>(s + k));
        off_by_one.select(1, 1).sub_(static_cast<double>(s + k));
        EXPECT_GT(max_diff(g.field.narrow(0, i, 1), off_by_one), 0.5);
      }
    }
  }
}

TEST(GenerateFields, WarpsTheOriginalImageEveryStep) {
  // With a network that reads the image, step t sees warp(I_0, phi): a batch
  // whose start field is identical but whose image differs gives a different
  // result, and a two-level run is the one-level run continued (the same
  // step sequence from the same start: level 2 = two steps).
  const auto c = tiny_config();
  auto net = make_net(c, 6, 0.05);
  const auto images = smooth_images({32, 32}, 2);
  const auto a = drdm::generate_fields(net, c.sampler, images.narrow(0, 0, 1), {3}, {9});
  const auto b = drdm::generate_fields(net, c.sampler, images.narrow(0, 1, 1), {3}, {9});
  EXPECT_TRUE(at::equal(a.initial, b.initial));
  EXPECT_GT(max_diff(a.field, b.field), 1e-2);
  // Replay Alg. 2 by hand for level 3.
  at::NoGradGuard no_grad;
  auto phi = a.initial.clone();
  const auto img = images.narrow(0, 0, 1);
  for (int64_t t = 3; t >= 1; --t) {
    const auto psi = net->forward(drdm::warp(img, phi), at::full({1}, t, at::kLong));
    phi = drdm::compose(psi, phi);
  }
  EXPECT_LT(max_diff(phi, a.field), 1e-5 * (1 + max_abs(phi)));
}

TEST(GenerateFields, RejectsBadArguments) {
  const auto c = tiny_config();
  auto net = make_net(c, 7);
  const auto img = smooth_images({32, 32}, 2);
  expect_error_containing(
      [&] {
        drdm::generate_fields(net, c.sampler, img, {0, 3}, {1, 2});
      },
      "levels");
  expect_error_containing(
      [&] {
        drdm::generate_fields(net, c.sampler, img, {3, 11}, {1, 2});
      },
      "levels");
  expect_error_containing(
      [&] {
        drdm::generate_fields(net, c.sampler, img, {3}, {1, 2});
      },
      "levels");
  expect_error_containing(
      [&] {
        drdm::generate_fields(net, c.sampler, img, {3, 3}, {1});
      },
      "seeds");
  GenerationOptions o;
  o.batch = 0;
  expect_error_containing(
      [&] {
        drdm::generate_fields(net, c.sampler, img, {3, 3}, {1, 2}, o);
      },
      "batch");
  expect_error_containing(
      [&] {
        drdm::generate_fields(net, c.sampler, at::rand({2, 1, 32, 32, 8}), {3, 3}, {1, 2});
      },
      "images");
  // Level T itself is accepted.
  EXPECT_NO_THROW(drdm::generate_fields(net, c.sampler, img, {10, 1}, {1, 2}));
}

// ======================================================== GridFit / field_to_input

/// Linear field u_i(m) = sum_j A_ij m_j + b_i on the model grid [1, d, ...size].
at::Tensor linear_field(const std::vector<int64_t>& size, const std::vector<std::vector<double>>& a,
                        const std::vector<double>& b) {
  const auto grid =
      drdm::identity_grid(size, at::TensorOptions().dtype(at::kDouble));  // [1, d, ...]
  const auto d = size.size();
  std::vector<at::Tensor> comps;
  for (size_t i = 0; i < d; ++i) {
    at::Tensor u = at::full_like(grid.select(1, 0), b[i]);
    for (size_t j = 0; j < d; ++j) u = u + a[i][j] * grid.select(1, static_cast<int64_t>(j));
    comps.push_back(u);
  }
  return at::stack(comps, 1).to(at::kFloat);
}

/// The documented model coordinate of input voxel x along axis i.
double model_coord(const drdm::GridFit& f, size_t i, double x) {
  return static_cast<double>(f.pad_before[i]) +
         (x + 0.5) * static_cast<double>(f.fitted[i]) / static_cast<double>(f.input_size[i]) - 0.5;
}

TEST(GridFit, KeepsTheAspectRatioAndCentres) {
  // 40 x 20 voxels of 1 x 3 mm = 40 x 60 mm into 32 x 32: 60 mm fills 32
  // voxels, 40 mm gets round(32 * 40 / 60) = 21, centred after (32 - 21) / 2.
  const auto f = drdm::fit_grid({40, 20}, {1.0, 3.0}, {32, 32});
  EXPECT_EQ(f.input_size, (std::vector<int64_t>{40, 20}));
  EXPECT_EQ(f.model_size, (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(f.fitted, (std::vector<int64_t>{21, 32}));
  EXPECT_EQ(f.pad_before, (std::vector<int64_t>{5, 0}));
  // Model already the input's size, isotropic: the identity placement.
  const auto same = drdm::fit_grid({32, 48}, {0.7, 0.7}, {32, 48});
  EXPECT_EQ(same.fitted, (std::vector<int64_t>{32, 48}));
  EXPECT_EQ(same.pad_before, (std::vector<int64_t>{0, 0}));
  // 3D: 10 x 20 x 30 voxels of 2 x 1 x 1 mm (20 x 20 x 30 mm) into 16^3.
  const auto f3 = drdm::fit_grid({10, 20, 30}, {2.0, 1.0, 1.0}, {16, 16, 16});
  EXPECT_EQ(f3.fitted, (std::vector<int64_t>{11, 11, 16}));
  EXPECT_EQ(f3.pad_before, (std::vector<int64_t>{2, 2, 0}));
  for (size_t i = 0; i < 2; ++i)
    for (double x : {0.0, 3.5, 19.0})
      EXPECT_NEAR(f.to_model(static_cast<int64_t>(i), x), model_coord(f, i, x), 1e-12);
  // The input's centre maps to the fitted region's centre.
  EXPECT_NEAR(f.to_model(0, 19.5), 5 + 21 / 2.0 - 0.5, 1e-12);
  EXPECT_THROW(drdm::fit_grid({40, 20}, {1.0, 0.0}, {32, 32}), std::exception);
  EXPECT_THROW(drdm::fit_grid({40, 20}, {1.0}, {32, 32}), std::exception);
}

TEST(GridFit, FitImageOfNormalisedImageIsPreprocessImage) {
  torch::manual_seed(3);
  struct Case {
    std::vector<int64_t> input;
    std::vector<double> spacing;
    std::vector<int64_t> model;
  };
  const std::vector<Case> cases{{{40, 20}, {1.0, 3.0}, {32, 32}},
                                {{20, 50}, {1.0, 1.0}, {32, 32}},
                                {{64, 64}, {1.0, 1.0}, {32, 32}},
                                {{32, 32}, {1.0, 1.0}, {32, 32}},
                                {{10, 20, 30}, {2.0, 1.0, 1.0}, {16, 16, 16}}};
  for (const auto& k : cases) {
    std::vector<int64_t> shape{1};
    shape.insert(shape.end(), k.input.begin(), k.input.end());
    const auto x = at::rand(shape) * 300.0 - 50.0;
    const auto fit = drdm::fit_grid(k.input, k.spacing, k.model);
    const auto mine = drdm::fit_image(drdm::normalise_intensity(x, 0.5, 99.5), fit);
    const auto ref = drdm::preprocess_image(x, k.spacing, k.model, 0.5, 99.5);
    ASSERT_EQ(mine.sizes(), ref.sizes());
    EXPECT_TRUE(at::equal(mine, ref)) << max_diff(mine, ref);
    // Outside [pad_before, pad_before + fitted) it is zero padding; the
    // fitted block itself is not.
    for (size_t i = 0; i < k.model.size(); ++i) {
      const auto ax = static_cast<int64_t>(i) + 1;
      const int64_t p = fit.pad_before[i], f = fit.fitted[i], m = k.model[i];
      if (p > 0) EXPECT_EQ(max_abs(ref.narrow(ax, 0, p)), 0.0);
      if (p + f < m) EXPECT_EQ(max_abs(ref.narrow(ax, p + f, m - p - f)), 0.0);
      EXPECT_GT(max_abs(ref.narrow(ax, p, 1)), 0.0);
      EXPECT_GT(max_abs(ref.narrow(ax, p + f - 1, 1)), 0.0);
    }
  }
}

TEST(FieldToInput, ConstantFieldIsRescaledPerAxis) {
  const auto f = drdm::fit_grid({40, 20}, {1.0, 3.0}, {32, 32});
  auto u = at::zeros({2, 2, 32, 32});
  u.select(1, 0).fill_(1.5);
  u.select(1, 1).fill_(-2.0);
  u[1] *= -0.5;
  const auto v = drdm::field_to_input(u, f);
  ASSERT_EQ(v.sizes(), (std::vector<int64_t>{2, 2, 40, 20}));
  // One model voxel is input_size / fitted input voxels.
  EXPECT_LT(max_diff(v[0][0], at::full({40, 20}, 1.5 * 40.0 / 21.0)), 1e-5);
  EXPECT_LT(max_diff(v[0][1], at::full({40, 20}, -2.0 * 20.0 / 32.0)), 1e-5);
  EXPECT_LT(max_diff(v[1][0], at::full({40, 20}, -0.75 * 40.0 / 21.0)), 1e-5);
  EXPECT_LT(max_diff(v[1][1], at::full({40, 20}, 1.0 * 20.0 / 32.0)), 1e-5);
}

TEST(RecoveryCompose, AuthorsProcessReadsTheFieldAsZeroOutsideTheGrid) {
  // psi_hat: a shift of +3 voxels along W on an 8 x 8 grid; phi: 1 voxel along H.
  auto psi = at::zeros({1, 2, 8, 8});
  psi.select(1, 1).fill_(3.0);
  auto phi = at::zeros({1, 2, 8, 8});
  phi.select(1, 0).fill_(1.0);
  const auto border = drdm::detail::recovery_compose(psi, phi, /*zero_padding=*/false);
  EXPECT_TRUE(at::equal(border, drdm::compose(psi, phi)));
  EXPECT_LT(max_diff(border.select(1, 0), at::ones({1, 8, 8})), 1e-6);  // border: phi kept
  const auto zeros = drdm::detail::recovery_compose(psi, phi, /*zero_padding=*/true);
  // x + 3 lies inside for columns 0..4, outside (phi read as 0) for 5..7.
  EXPECT_LT(max_diff(zeros.select(1, 0).narrow(2, 0, 5), at::ones({1, 8, 5})), 1e-6);
  EXPECT_LT(max_abs(zeros.select(1, 0).narrow(2, 5, 3)), 1e-6);
  EXPECT_LT(max_diff(zeros.select(1, 1), at::full({1, 8, 8}, 3.0)), 1e-6);  // psi_hat itself
}

TEST(FieldToInput, StretchedFitRescalesEachAxisByItsSize) {
  // data.fit = "stretch": both axes fill the grid whatever the spacing, so one
  // model voxel is input_size / model_size input voxels along each axis.
  const auto f = drdm::fit_grid({40, 20}, {1.0, 3.0}, {32, 32}, /*stretch=*/true);
  EXPECT_EQ(f.fitted, (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(f.pad_before, (std::vector<int64_t>{0, 0}));
  EXPECT_NEAR(f.to_model(0, -0.5), -0.5, 1e-12);  // the input's edges are the grid's edges
  EXPECT_NEAR(f.to_model(1, 19.5), 31.5, 1e-12);
  auto u = at::zeros({1, 2, 32, 32});
  u.select(1, 0).fill_(1.5);
  u.select(1, 1).fill_(-2.0);
  const auto v = drdm::field_to_input(u, f);
  ASSERT_EQ(v.sizes(), (std::vector<int64_t>{1, 2, 40, 20}));
  EXPECT_LT(max_diff(v[0][0], at::full({40, 20}, 1.5 * 40.0 / 32.0)), 1e-5);
  EXPECT_LT(max_diff(v[0][1], at::full({40, 20}, -2.0 * 20.0 / 32.0)), 1e-5);
}

TEST(FieldToInput, LinearFieldMapsToTheTransformedLinearField) {
  // Input voxel x sits at model coordinate m(x) = p + (x + 0.5) s - 0.5 with
  // s = fitted / input. The model point m + u(m) is input coordinate
  // x + u(m) / s, so the input displacement is u_i(m(x)) / s_i. Linear
  // interpolation reproduces a linear field exactly; outside the model grid
  // the field is read at the clamped coordinate (border padding).
  struct Case {
    std::vector<int64_t> input;
    std::vector<double> spacing;
    std::vector<int64_t> model;
  };
  const std::vector<Case> cases{
      {{40, 20}, {1.0, 3.0}, {32, 32}},  // shrink one axis, stretch the other
      {{64, 64}, {1.0, 1.0}, {32, 32}},  // m(0) = -0.25: clamped
      {{12, 20}, {2.0, 1.0}, {32, 24}},  // upsampling, non-square model
      {{10, 20, 30}, {2.0, 1.0, 1.0}, {16, 16, 16}}};
  for (const auto& k : cases) {
    const auto d = k.model.size();
    std::vector<std::vector<double>> a(d, std::vector<double>(d));
    std::vector<double> b(d);
    for (size_t i = 0; i < d; ++i) {
      b[i] = 0.7 - 0.4 * static_cast<double>(i);
      for (size_t j = 0; j < d; ++j)
        a[i][j] = 0.05 * static_cast<double>(1 + i) - 0.03 * static_cast<double>(j);
    }
    const auto u = linear_field(k.model, a, b);
    const auto fit = drdm::fit_grid(k.input, k.spacing, k.model);
    const auto v = drdm::field_to_input(u, fit);
    // Expected, built from 1-D coordinate tables.
    std::vector<at::Tensor> m;
    for (size_t i = 0; i < d; ++i) {
      std::vector<double> c;
      for (int64_t x = 0; x < k.input[i]; ++x)
        c.push_back(std::clamp(model_coord(fit, i, static_cast<double>(x)), 0.0,
                               static_cast<double>(k.model[i] - 1)));
      m.push_back(at::tensor(c, at::kDouble));
    }
    const auto mesh = at::meshgrid(m, "ij");
    std::vector<at::Tensor> comps;
    for (size_t i = 0; i < d; ++i) {
      at::Tensor e = at::full_like(mesh[0], b[i]);
      for (size_t j = 0; j < d; ++j) e = e + a[i][j] * mesh[j];
      comps.push_back(e * (static_cast<double>(k.input[i]) / static_cast<double>(fit.fitted[i])));
    }
    const auto expected = at::stack(comps, 0).unsqueeze(0);
    ASSERT_EQ(v.sizes(), expected.sizes());
    EXPECT_LT(max_diff(v, expected), 1e-4) << "input " << at::IntArrayRef(k.input);
  }
}

TEST(FieldToInput, IdentityFitGivesTheSameField) {
  torch::manual_seed(4);
  const auto u = at::randn({2, 2, 32, 24}) * 3.0;
  const auto v = drdm::field_to_input(u, drdm::fit_grid({32, 24}, {1.2, 1.2}, {32, 24}));
  EXPECT_LT(max_diff(u, v), 1e-4);
  const auto u3 = at::randn({1, 3, 8, 16, 8});
  EXPECT_LT(
      max_diff(u3, drdm::field_to_input(u3, drdm::fit_grid({8, 16, 8}, {1, 1, 1}, {8, 16, 8}))),
      1e-4);
}

TEST(FieldToInput, RejectsAFieldOfTheWrongGrid) {
  const auto f = drdm::fit_grid({40, 20}, {1.0, 3.0}, {32, 32});
  EXPECT_THROW(drdm::field_to_input(at::zeros({1, 2, 40, 20}), f), std::exception);
  EXPECT_THROW(drdm::field_to_input(at::zeros({1, 3, 32, 32}), f), std::exception);
}

TEST(FieldToInput, WarpCommutesWithFitting) {
  // warp(fit_image(I), u) == fit_image(warp(I, field_to_input(u))) where the
  // resampling is exact: with a linear image and a linear field every
  // interpolation (fit_image's bilinear upsampling, grid_sample, the field
  // resampling) reproduces linear functions exactly, so away from the
  // borders (zero padding, edge clamping) the two agree to float rounding.
  const std::vector<int64_t> input{20, 24}, model{32, 32};
  const std::vector<double> spacing{1.5, 1.0};  // 30 x 24 mm: axis 0 fills 32, axis 1 gets 26
  const auto fit = drdm::fit_grid(input, spacing, model);
  ASSERT_EQ(fit.fitted, (std::vector<int64_t>{32, 26}));
  const auto grid =
      drdm::identity_grid(input, at::TensorOptions().dtype(at::kFloat));  // [1, 2, 20, 24]
  const auto image =
      (0.2 + 0.025 * grid.select(1, 0) + 0.012 * grid.select(1, 1)).unsqueeze(1);  // [1, 1, ...]
  const auto u = linear_field(model, {{0.04, -0.02}, {0.03, 0.05}}, {-0.6, -0.8});
  const auto u_in = drdm::field_to_input(u, fit);
  const auto lhs = drdm::warp(drdm::fit_image(image[0], fit).unsqueeze(0), u);
  const auto rhs = drdm::fit_image(drdm::warp(image, u_in)[0], fit).unsqueeze(0);
  // Model voxels whose input coordinate lies 3 input voxels inside (|u_in| <= 1.6).
  ASSERT_LT(max_abs(u_in), 1.7);
  auto mask = at::ones({32, 32}, at::kBool);
  for (size_t i = 0; i < 2; ++i) {
    std::vector<uint8_t> ok;
    for (int64_t m = 0; m < 32; ++m) {
      const double x = (static_cast<double>(m - fit.pad_before[i]) + 0.5) *
                           static_cast<double>(input[i]) / static_cast<double>(fit.fitted[i]) -
                       0.5;
      ok.push_back(x >= 3.0 && x <= static_cast<double>(input[i]) - 4.0);
    }
    auto t = at::tensor(std::vector<int64_t>(ok.begin(), ok.end()), at::kLong).to(at::kBool);
    mask = mask & (i == 0 ? t.view({32, 1}) : t.view({1, 32}));
  }
  ASSERT_GT(mask.sum().item<int64_t>(), 200);
  const auto err = (lhs - rhs).abs()[0][0].masked_select(mask);
  EXPECT_LT(err.max().item<double>(), 1e-4);
  // Control: forgetting the per-axis rescaling (model voxels used as input
  // voxels) is caught by this check.
  auto unscaled = u_in.clone();
  for (int64_t i = 0; i < 2; ++i)
    unscaled.select(1, i).mul_(static_cast<double>(fit.fitted[static_cast<size_t>(i)]) /
                               static_cast<double>(input[static_cast<size_t>(i)]));
  const auto wrong = drdm::fit_image(drdm::warp(image, unscaled)[0], fit).unsqueeze(0);
  EXPECT_GT((lhs - wrong).abs()[0][0].masked_select(mask).max().item<double>(), 5e-3);
}

// ======================================================== Deformer

TEST(Deformer, OutputsHaveTheInputsSizeAndWarpByTheirFields) {
  const auto c = tiny_config();
  Deformer deformer(make_model(c, 8), torch::kCPU);
  EXPECT_EQ(deformer.dims(), 2);
  EXPECT_EQ(deformer.model_size(), (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(deformer.timesteps(), 10);
  EXPECT_EQ(deformer.device(), torch::Device(torch::kCPU));
  // Two channels, arbitrary intensities, non-square, anisotropic.
  const auto base = smooth_images({40, 20}, 2) * 900.0 - 100.0;
  const auto images = at::cat({base, base * 0.5}, 1);  // [2, 2, 40, 20]
  const auto out = deformer.deform_with_seeds(images, {}, {8}, {3, 4}, {1.0, 3.0});
  ASSERT_EQ(out.images.sizes(), images.sizes());
  EXPECT_FALSE(out.labels.defined());
  ASSERT_EQ(out.fields.sizes(), (std::vector<int64_t>{2, 2, 40, 20}));
  ASSERT_EQ(out.model_fields.sizes(), (std::vector<int64_t>{2, 2, 32, 32}));
  EXPECT_EQ(out.images.device(), images.device());
  EXPECT_EQ(out.images.scalar_type(), at::kFloat);
  EXPECT_GT(max_abs(out.fields), 0.5);
  // images = warp(images, fields), every channel by the same field;
  // fields = the model fields brought back.
  EXPECT_LT(max_diff(out.images, drdm::warp(images, out.fields)), 1e-3);
  const auto fit = drdm::fit_grid({40, 20}, {1.0, 3.0}, {32, 32});
  EXPECT_LT(max_diff(out.fields, drdm::field_to_input(out.model_fields, fit)), 1e-5);
  // The model fields are Alg. 2 on the preprocessed images with these seeds.
  auto net = make_net(c, 8);
  std::vector<at::Tensor> pre;
  for (int64_t b = 0; b < 2; ++b)
    pre.push_back(drdm::preprocess_image(images[b].narrow(0, 0, 1), {1.0, 3.0}, {32, 32},
                                         c.data.clip_low_pct, c.data.clip_high_pct));
  const auto g = drdm::generate_fields(net, c.sampler, at::stack(pre, 0), {8, 8}, {3, 4});
  EXPECT_LT(max_diff(out.model_fields, g.field), 1e-5);
}

TEST(Deformer, ReproducibleAndSeededPerSample) {
  const auto c = tiny_config();
  Deformer deformer(make_model(c, 9, 0.05), torch::kCPU);
  const auto images = smooth_images({32, 32}, 2);
  const auto a = deformer.deform(images, {}, {5, 9}, 77);
  const auto b = deformer.deform(images, {}, {5, 9}, 77);
  EXPECT_TRUE(at::equal(a.fields, b.fields));
  EXPECT_TRUE(at::equal(a.images, b.images));
  const auto explicit_seeds = deformer.deform_with_seeds(
      images, {}, {5, 9},
      std::vector<uint64_t>{drdm::derive_seed(77, 0), drdm::derive_seed(77, 1)});
  EXPECT_TRUE(at::equal(a.fields, explicit_seeds.fields));
  const auto other = deformer.deform(images, {}, {5, 9}, 78);
  EXPECT_GT(max_diff(a.fields, other.fields), 0.1);
  // One level for all == that level given per sample.
  const auto one = deformer.deform(images, {}, {6}, 5);
  const auto each = deformer.deform(images, {}, {6, 6}, 5);
  EXPECT_TRUE(at::equal(one.fields, each.fields));
  expect_error_containing([&] { deformer.deform(images, {}, {5, 9, 3}, 5); }, "levels");
  expect_error_containing(
      [&] { deformer.deform_with_seeds(images, {}, {5}, std::vector<uint64_t>{1}); }, "seeds");
}

TEST(Deformer, NearestLabelsComeFromTheRoundedSourceVoxel) {
  // Labels = the ramp (every voxel its own class): the class at output voxel
  // x names the input voxel it was read from, which must be the nearest one
  // to x + u(x); outside the image it is class 0.
  const auto c = tiny_config();
  Deformer deformer(make_model(c, 10), torch::kCPU);
  const int64_t h = 24, w = 40;
  const auto labels = drdm::test::ramp_image({h, w}).to(at::kLong);
  const auto out = deformer.deform(smooth_images({h, w}), labels, {10}, 5, {2.0, 1.0});
  ASSERT_EQ(out.labels.scalar_type(), at::kLong);
  ASSERT_EQ(out.labels.sizes(), labels.sizes());
  EXPECT_GT(max_abs(out.fields), 1.0);
  const auto grid = drdm::identity_grid({h, w}, at::TensorOptions().dtype(at::kDouble));
  const auto src = (grid + out.fields.to(at::kDouble))[0];  // [2, h, w]
  const auto lab = out.labels[0][0];
  const auto li = lab.div(w, "floor").to(at::kDouble), lj = lab.remainder(w).to(at::kDouble);
  const auto inside = (src[0] > -0.5 + 1e-3) & (src[0] < h - 0.5 - 1e-3) & (src[1] > -0.5 + 1e-3) &
                      (src[1] < w - 0.5 - 1e-3);
  // Away from rounding ties.
  const auto frac = [](const at::Tensor& t) { return (t - t.round()).abs(); };
  const auto clear = (frac(src[0]) < 0.499) & (frac(src[1]) < 0.499);
  const auto sel = inside & clear;
  ASSERT_GT(sel.sum().item<int64_t>(), h * w / 2);
  EXPECT_LE(((li - src[0]).abs().masked_select(sel)).max().item<double>(), 0.5 + 1e-4);
  EXPECT_LE(((lj - src[1]).abs().masked_select(sel)).max().item<double>(), 0.5 + 1e-4);
  const auto outside = ~inside;
  if (outside.any().item<bool>())
    EXPECT_EQ(lab.masked_select(outside).abs().max().item<int64_t>(), 0);
}

TEST(Deformer, LabelsNeverGainClassesAndOneHotIsSupported) {
  const auto c = tiny_config();
  const int64_t h = 32, w = 28;
  // Classes {0, 2, 5}: blocks, so that interpolation between 2 and 5 could invent 3 or 4.
  auto labels = at::zeros({2, 1, h, w}, at::kLong);
  labels.narrow(2, 8, 12).narrow(3, 4, 10).fill_(2);
  labels.narrow(2, 14, 14).narrow(3, 12, 12).fill_(5);
  labels[1] = labels[1].flip({1});
  const auto images = smooth_images({h, w}, 2);
  for (auto interp : {drdm::LabelInterpolation::kNearest, drdm::LabelInterpolation::kSoft}) {
    DeformerOptions o;
    o.label_interpolation = interp;
    Deformer deformer(make_model(c, 11), torch::kCPU, o);
    const auto out = deformer.deform(images, labels, {10}, 3);
    ASSERT_EQ(out.labels.scalar_type(), at::kLong);
    ASSERT_EQ(out.labels.sizes(), labels.sizes());
    const auto u = std::get<0>(at::_unique(out.labels));
    for (int64_t i = 0; i < u.numel(); ++i) {
      const auto v = u[i].item<int64_t>();
      EXPECT_TRUE(v == 0 || v == 2 || v == 5) << "new class " << v;
    }
    EXPECT_FALSE(at::equal(out.labels, labels));  // it did deform them
  }
  // One-hot float labels [N, K, ...]: nearest keeps them one-hot, and their
  // argmax is the class-map result.
  Deformer deformer(make_model(c, 11), torch::kCPU);
  const auto onehot =
      at::one_hot(labels.squeeze(1), 6).permute({0, 3, 1, 2}).to(at::kFloat).contiguous();
  const auto a = deformer.deform(images, onehot, {10}, 3);
  const auto b = deformer.deform(images, labels, {10}, 3);
  ASSERT_EQ(a.labels.sizes(), onehot.sizes());
  EXPECT_TRUE(a.labels.is_floating_point());
  EXPECT_TRUE(at::equal(a.fields, b.fields));  // the labels do not change the field
  const auto sum = a.labels.sum(1);
  EXPECT_TRUE(((sum == 0) | (sum == 1)).all().item<bool>());
  EXPECT_TRUE(((a.labels == 0) | (a.labels == 1)).all().item<bool>());
  EXPECT_TRUE(at::equal(a.labels.argmax(1, true), b.labels));
}

TEST(Deformer, RejectsBadInputsWithClearMessages) {
  const auto c = tiny_config();
  Deformer deformer(make_model(c, 12), torch::kCPU);
  const auto images = smooth_images({32, 32}, 2);
  expect_error_containing(
      [&] {
        deformer.deform(images, at::zeros({2, 1, 32, 30}, at::kLong), {3}, 1);
      },
      "do not match");
  expect_error_containing(
      [&] {
        deformer.deform(images, at::zeros({1, 1, 32, 32}, at::kLong), {3}, 1);
      },
      "do not match");
  expect_error_containing(
      [&] {
        deformer.deform(images, at::zeros({2, 2, 32, 32}, at::kLong), {3}, 1);
      },
      "one channel");
  auto nan = images.clone();
  nan[1][0][5][5] = std::nan("");
  expect_error_containing([&] { deformer.deform(nan, {}, {3}, 1); }, "NaN");
  auto inf = images.clone();
  inf[0][0][0][0] = INFINITY;
  expect_error_containing([&] { deformer.deform(inf, {}, {3}, 1); }, "NaN or Inf");
  expect_error_containing([&] { deformer.deform(images, {}, {11}, 1); }, "levels");
  expect_error_containing([&] { deformer.deform(images, {}, {3}, 1, {1.0}); }, "spacings");
  expect_error_containing(
      [&] {
        deformer.deform(at::rand({2, 1, 32}), {}, {3}, 1);
      },
      "expected images");
  // A 2D batch cannot go through a 3D model.
  Deformer d3(make_model(tiny_config(10, 1, {16, 16, 16}), 1), torch::kCPU);
  EXPECT_EQ(d3.dims(), 3);
  expect_error_containing([&] { d3.deform(images, {}, {3}, 1); }, "3D model");
}

TEST(Deformer, VolumeThroughA3DModel) {
  const auto c = tiny_config(4, 1, {16, 16, 16});
  Deformer deformer(make_model(c, 17), torch::kCPU);
  const std::vector<double> spacing{2.0, 1.0, 1.0};
  const auto volume = smooth_images({10, 20, 12}) * 7.0;
  const auto labels = (volume > 3.5).to(at::kLong);
  const auto out = deformer.deform(volume, labels, {4}, 8, spacing);
  ASSERT_EQ(out.fields.sizes(), (std::vector<int64_t>{1, 3, 10, 20, 12}));
  ASSERT_EQ(out.model_fields.sizes(), (std::vector<int64_t>{1, 3, 16, 16, 16}));
  ASSERT_EQ(out.labels.sizes(), labels.sizes());
  EXPECT_GT(max_abs(out.fields.select(1, 0)), 0.1);  // all three components move
  EXPECT_GT(max_abs(out.fields.select(1, 2)), 0.1);
  const auto fit = drdm::fit_grid({10, 20, 12}, spacing, {16, 16, 16});
  EXPECT_LT(max_diff(out.fields, drdm::field_to_input(out.model_fields, fit)), 1e-5);
  EXPECT_LT(max_diff(out.images, drdm::warp(volume, out.fields)), 1e-4);
  EXPECT_TRUE(at::equal(out.labels, drdm::warp_labels(labels, out.fields)));
}

TEST(Deformer, VolumeThroughA2DModelIsDeformedSliceBySlice) {
  const auto c = tiny_config();
  // One network pass per slice (generation.batch = 1), as when the slice is
  // deformed alone: the same arithmetic, so the fields must agree exactly.
  // (In larger passes CPU convolutions round differently, ~3e-6 per pass,
  // which this randomly weighted network amplifies over the steps.)
  DeformerOptions one;
  one.generation.batch = 1;
  one.slice_mode = drdm::SliceMode::kIndependent;
  Deformer deformer(make_model(c, 13, 0.05), torch::kCPU, one);
  EXPECT_EQ(deformer.slice_axis(), 0);
  // Three slices with the same value set (flips of one image), clipped so
  // that the lowest and highest few percent are exactly the extremes: the
  // 0.5 / 99.5 percentiles of the volume then equal each slice's own, and
  // the volume's intensity scale is each slice's.
  const int64_t h = 20, w = 24;
  const auto s0 = smooth_images({h, w}).clamp(0.1, 0.9) * 500.0;
  ASSERT_GT((s0 == 50.0).to(at::kFloat).mean().item<double>(), 0.02);
  ASSERT_GT((s0 == 450.0).to(at::kFloat).mean().item<double>(), 0.02);
  const auto volume =
      at::stack({s0, s0.flip({3}), s0.flip({2})}, 2).contiguous();  // [1, 1, 3, h, w]
  const auto labels = (volume > 250.0).to(at::kLong);
  const std::vector<double> spacing{4.0, 1.0, 1.5};
  const uint64_t seed = 1234;
  const auto out =
      deformer.deform_with_seeds(volume, labels, {7}, std::vector<uint64_t>{seed}, spacing);
  ASSERT_EQ(out.fields.sizes(), (std::vector<int64_t>{1, 3, 3, h, w}));
  ASSERT_EQ(out.images.sizes(), volume.sizes());
  ASSERT_EQ(out.labels.sizes(), labels.sizes());
  ASSERT_EQ(out.model_fields.sizes(), (std::vector<int64_t>{3, 2, 32, 32}));
  EXPECT_EQ(max_abs(out.fields.select(1, 0)), 0.0);  // no through-plane motion
  for (int64_t k = 0; k < 3; ++k) {
    SCOPED_TRACE("slice " + std::to_string(k));
    const auto slice = volume.select(2, k);
    const auto alone = deformer.deform_with_seeds(
        slice, labels.select(2, k), {7},
        std::vector<uint64_t>{drdm::derive_seed(seed, static_cast<uint64_t>(k))},
        {spacing[1], spacing[2]});
    EXPECT_TRUE(at::equal(out.model_fields[k], alone.model_fields[0]))
        << max_diff(out.model_fields[k], alone.model_fields[0]);
    EXPECT_LT(max_diff(out.fields.select(2, k).narrow(1, 1, 2), alone.fields), 1e-5);
    // A 3D warp with zero through-plane motion reads the slice itself.
    EXPECT_LT(max_diff(out.images.select(2, k), alone.images), 1e-3);
    // Labels agree except where a source coordinate sits on a rounding tie.
    EXPECT_LE((out.labels.select(2, k) != alone.labels).sum().item<int64_t>(), 1);
  }
  // The slices got different fields (per-slice seeds).
  EXPECT_GT(max_diff(out.model_fields[0], out.model_fields[1]), 0.1);

  // Slicing along W instead (option): the W component is 0.
  DeformerOptions o;
  o.slice_axis = 2;
  o.slice_mode = drdm::SliceMode::kIndependent;
  Deformer along_w(make_model(c, 13, 0.05), torch::kCPU, o);
  EXPECT_EQ(along_w.slice_axis(), 2);
  const auto vol_w = smooth_images({16, 20, 3}) * 10.0;
  const auto out_w = along_w.deform(vol_w, {}, {5}, 9);
  ASSERT_EQ(out_w.fields.sizes(), (std::vector<int64_t>{1, 3, 16, 20, 3}));
  EXPECT_EQ(out_w.model_fields.size(0), 3);
  EXPECT_EQ(max_abs(out_w.fields.select(1, 2)), 0.0);
  EXPECT_GT(max_abs(out_w.fields.select(1, 0)), 0.1);
}

TEST(Deformer, EmptySlicesOfAVolumeAreLeftUndeformed) {
  // A slice with less foreground than the model's data.min_foreground (the
  // rule that chose the training slices) gets the zero field; the others are
  // deformed as usual, with the same fields as without the empty slice.
  const auto c = tiny_config();
  DeformerOptions one;
  one.generation.batch = 1;
  one.slice_mode = drdm::SliceMode::kIndependent;
  Deformer deformer(make_model(c, 13, 0.05), torch::kCPU, one);
  const int64_t h = 20, w = 24;
  const auto s0 = smooth_images({h, w}) * 500.0 + 100.0;
  auto empty = at::zeros_like(s0);
  empty.index_put_({0, 0, 0, 0}, 1000.0);  // one bright voxel: 1/480 foreground, far below 0.05
  const auto volume = at::stack({s0, empty, s0.flip({3})}, 2).contiguous();  // [1, 1, 3, h, w]
  const auto out = deformer.deform(volume, {}, {7}, 5);
  EXPECT_EQ(max_abs(out.model_fields[1]), 0.0);
  EXPECT_EQ(max_abs(out.fields.select(2, 1)), 0.0);
  EXPECT_GT(max_abs(out.model_fields[0]), 0.1);
  EXPECT_GT(max_abs(out.model_fields[2]), 0.1);
  EXPECT_LT(max_diff(out.images.select(2, 1), volume.select(2, 1)),
            1e-3);  // identity up to grid rounding
}

TEST(Deformer, VolumeWithASizeOneAxisIsOne2DImage) {
  const auto c = tiny_config();
  Deformer deformer(make_model(c, 14, 0.05), torch::kCPU);
  const auto image = smooth_images({20, 24}) * 3.0;  // [1, 1, 20, 24]
  const auto plane =
      deformer.deform_with_seeds(image, {}, {6}, std::vector<uint64_t>{42}, {1.0, 2.0});
  // The single slice lies along H (axis 1), not the configured slice axis 0.
  const auto vol = image.unsqueeze(3);  // [1, 1, 20, 1, 24]
  const auto out =
      deformer.deform_with_seeds(vol, {}, {6}, std::vector<uint64_t>{42}, {1.0, 5.0, 2.0});
  ASSERT_EQ(out.fields.sizes(), (std::vector<int64_t>{1, 3, 20, 1, 24}));
  ASSERT_EQ(out.model_fields.size(0), 1);
  EXPECT_EQ(max_abs(out.fields.select(1, 1)), 0.0);
  // Same seed as the 2D image (not a derived per-slice seed): the same field.
  EXPECT_LT(max_diff(out.fields.select(3, 0).index_select(1, at::tensor({0, 2}, at::kLong)),
                     plane.fields),
            1e-5);
  EXPECT_LT(max_diff(out.images.select(3, 0), plane.images), 1e-4);
  // And along D.
  const auto out_d = deformer.deform_with_seeds(image.unsqueeze(2), {}, {6},
                                                std::vector<uint64_t>{42}, {9.0, 1.0, 2.0});
  EXPECT_EQ(max_abs(out_d.fields.select(1, 0)), 0.0);
  EXPECT_LT(max_diff(out_d.fields.select(2, 0).narrow(1, 1, 2), plane.fields), 1e-5);
}

// ======================================================== coherent volumes

TEST(SliceIncoherence, AnalyticFields) {
  const auto c = at::tensor({0.6, -0.8}, at::kDouble).view({1, 2, 1, 1, 1});  // |c| = 1
  // The same vector in every slice: 0.
  auto same = at::zeros({1, 3, 5, 4, 6}, at::kDouble);
  same.narrow(1, 1, 2).copy_(c.expand({1, 2, 5, 4, 6}));
  EXPECT_DOUBLE_EQ(drdm::slice_incoherence(same, 0), 0.0);
  // Alternating sign along D: every step changes by 2|c|, the mean |u| is |c|: 2.
  auto alternating = same.clone();
  alternating.select(2, 1).neg_();
  alternating.select(2, 3).neg_();
  EXPECT_NEAR(drdm::slice_incoherence(alternating, 0), 2.0, 1e-12);
  // Along W nothing changes in that field.
  EXPECT_NEAR(drdm::slice_incoherence(alternating, 2), 0.0, 1e-12);
  // u(z) = z c for z = 0..4: steps of |c|, mean |u| = 2|c|: 0.5.
  auto linear = at::zeros({1, 2, 5, 3}, at::kDouble);
  for (int64_t z = 0; z < 5; ++z)
    linear.select(2, z).copy_(c.view({1, 2, 1}).expand({1, 2, 3}) * double(z));
  EXPECT_NEAR(drdm::slice_incoherence(linear, 0), 0.5, 1e-12);
  EXPECT_EQ(drdm::slice_incoherence(at::zeros({1, 2, 4, 4}), 0), 0.0);
  EXPECT_THROW(drdm::slice_incoherence(linear, 2), c10::Error);
}

/// Three different slices [3, 1, 32, 32] of a smooth "volume".
at::Tensor three_slices() {
  const auto s = smooth_images({32, 32}, 3);
  return s.contiguous();
}

TEST(GenerateVolumeFields, SharedStartAndUnsmoothedStepsEqualPerSliceGeneration) {
  const auto c = tiny_config();
  auto net = make_net(c, 21, 0.05);
  const auto slices = three_slices();
  GenerationOptions one;
  one.batch = 1;  // the same arithmetic per slice as generate_fields below
  const auto f =
      drdm::generate_volume_fields(net, c.sampler, slices, 7, 99, {true, true, true}, 0.0, one);
  ASSERT_EQ(f.sizes(), (std::vector<int64_t>{3, 2, 32, 32}));
  for (int64_t k = 0; k < 3; ++k) {
    const auto alone =
        drdm::generate_fields(net, c.sampler, slices.narrow(0, k, 1), {7}, {99}, one);
    EXPECT_LT(max_diff(f[k], alone.field[0]), 1e-5) << k;
  }
  // Different slices recover differently without smoothing.
  EXPECT_GT(max_diff(f[0], f[1]), 1e-2);
}

TEST(GenerateVolumeFields, SmoothingAcrossSlicesMakesThemCoherent) {
  const auto c = tiny_config();
  auto net = make_net(c, 21, 0.05);
  const auto slices = smooth_images({32, 32}, 8);
  const std::vector<bool> all(8, true);
  auto incoherence = [&](double sigma) {
    const auto f = drdm::generate_volume_fields(net, c.sampler, slices, 8, 5, all, sigma);
    // [Z, 2, H, W] -> a volume field [1, 3, Z, H, W] with zero through-plane motion.
    const auto plane = f.movedim(0, 1).unsqueeze(0);
    return drdm::slice_incoherence(at::cat({at::zeros_like(plane.narrow(1, 0, 1)), plane}, 1), 0);
  };
  const double raw = incoherence(0), smooth = incoherence(2), flat = incoherence(1e6);
  EXPECT_GT(raw, 0.05);
  EXPECT_LT(smooth, 0.5 * raw);
  EXPECT_LT(flat, 1e-5);  // one shared step for all slices: the same field everywhere
}

TEST(GenerateVolumeFields, InvalidSlicesAreNotSeenAndBorrowTheirNeighboursSteps) {
  const auto c = tiny_config();
  auto net = make_net(c, 21, 0.05);
  auto slices = three_slices();
  slices[1].fill_(std::nan(""));  // fed to the network, this would make everything NaN
  const auto f =
      drdm::generate_volume_fields(net, c.sampler, slices, 6, 3, {true, false, true}, 1.0);
  EXPECT_TRUE(at::isfinite(f).all().item<bool>());
  auto untouched = make_net(c, 21);
  const auto start =
      drdm::generate_fields(untouched, c.sampler, slices.narrow(0, 0, 1), {6}, {3}).initial;
  EXPECT_GT(max_diff(f[1], start[0]), 1e-2);  // recovered with its neighbours' steps
  // No valid slice at all: the zero field.
  const auto none =
      drdm::generate_volume_fields(net, c.sampler, slices, 6, 3, {false, false, false}, 1.0);
  EXPECT_EQ(max_abs(none), 0.0);
  expect_error_containing(
      [&] { drdm::generate_volume_fields(net, c.sampler, slices, 6, 3, {true}, 1.0); },
      "valid flags");
  expect_error_containing(
      [&] {
        drdm::generate_volume_fields(net, c.sampler, slices, 0, 3, {true, true, true}, 1.0);
      },
      "level");
}

TEST(Deformer, VolumesThroughA2DModelAreCoherentByDefault) {
  const auto c = tiny_config();
  const auto volume = smooth_images({20, 24}, 6).transpose(0, 1).unsqueeze(1).contiguous() *
                      300.0;  // [1, 1, 6, 20, 24]
  Deformer coherent(make_model(c, 13, 0.05), torch::kCPU);
  DeformerOptions io;
  io.slice_mode = drdm::SliceMode::kIndependent;
  Deformer independent(make_model(c, 13, 0.05), torch::kCPU, io);
  EXPECT_EQ(coherent.options().slice_mode, drdm::SliceMode::kCoherent);
  const auto a = coherent.deform(volume, {}, {8}, 4);
  const auto b = independent.deform(volume, {}, {8}, 4);
  ASSERT_EQ(a.fields.sizes(), b.fields.sizes());
  EXPECT_EQ(max_abs(a.fields.select(1, 0)), 0.0);  // still no through-plane motion
  const double ia = drdm::slice_incoherence(a.fields, 0), ib = drdm::slice_incoherence(b.fields, 0);
  EXPECT_LT(ia, 0.25);
  EXPECT_GT(ib, 0.8);  // independent start fields: about sqrt(2)
  // Pairs go through the same path.
  const auto p = coherent.pairs(volume, {}, {8}, {5}, {4});
  EXPECT_LT(drdm::slice_incoherence(p.field, 0), 0.25);
  EXPECT_LT(drdm::slice_incoherence(p.moving_field, 0), 0.25);
}

TEST(Deformer, ShippedModelIsCoherentOnARealAcdcVolume) {
  const std::string image_path =
      std::string(DRDM_TEST_DATA_DIR) + "/acdc/images/patient001_frame01.nii.gz";
  if (!std::filesystem::exists(image_path)) GTEST_SKIP() << "no " << image_path;
  const auto image = drdm::read_image(image_path);
  std::vector<double> spacing(image.geometry.spacing.rbegin(), image.geometry.spacing.rend());
  Deformer coherent(std::string(drdm::kDefaultModelName), torch::kCPU);
  const auto f = coherent.deform(image.data, {}, {45}, 1, spacing).fields;
  // The criterion: mean over slices of ||u(z+1) - u(z)|| <= 0.25 mean ||u|| (independent:
  // ~1.4).
  EXPECT_LT(drdm::slice_incoherence(f, 0), 0.25);
  EXPECT_GT(f.norm(2, 1).mean().item<double>(), 0.5);  // and it did deform
}

TEST(Deformer, PairsComposeTheAugmentationAndTheSyntheticField) {
  const auto c = tiny_config();
  Deformer deformer(make_model(c, 15, 0.05), torch::kCPU);
  const int64_t h = 28, w = 36;
  const std::vector<double> spacing{1.2, 1.0};
  // A slowly varying image, so that two linear resamplings agree with one.
  const auto grid = drdm::identity_grid({h, w}, at::TensorOptions().dtype(at::kFloat));
  auto images = (at::sin(grid.select(1, 0) * 0.25) * at::cos(grid.select(1, 1) * 0.2) * 0.4 + 0.5)
                    .unsqueeze(1)
                    .repeat({2, 1, 1, 1});
  images[1] = images[1].flip({2}) * 2.0;
  const auto labels = (images > 0.5).to(at::kLong);
  const std::vector<uint64_t> seeds{5, 6};
  const auto p = deformer.pairs(images, labels, {6, 3}, {4, 8}, seeds, spacing);
  ASSERT_EQ(p.moving.sizes(), images.sizes());
  ASSERT_EQ(p.fixed.sizes(), images.sizes());
  ASSERT_EQ(p.field.sizes(), (std::vector<int64_t>{2, 2, h, w}));
  ASSERT_EQ(p.moving_field.sizes(), p.field.sizes());
  ASSERT_EQ(p.fixed_labels.sizes(), labels.sizes());
  EXPECT_GT(max_abs(p.field), 0.5);
  EXPECT_GT(max_abs(p.moving_field), 0.5);
  // As documented: moving = warp(I, aug), fixed = warp(I, compose(syn, aug)).
  const auto total = drdm::compose(p.field, p.moving_field);
  EXPECT_LT(max_diff(p.moving, drdm::warp(images, p.moving_field)), 1e-5);
  EXPECT_LT(max_diff(p.fixed, drdm::warp(images, total)), 1e-5);
  EXPECT_TRUE(at::equal(p.moving_labels, drdm::warp_labels(labels, p.moving_field)));
  EXPECT_TRUE(at::equal(p.fixed_labels, drdm::warp_labels(labels, total)));
  // The registration target: fixed(x) = moving(x + field(x)) inside the
  // image (linear interpolation twice vs once: errors of order
  // h^2 / 8 * |I''| <= 0.4 * 0.25^2 / 8 * 2 ~ 0.006 per resampling).
  const auto via_moving = drdm::warp(p.moving, p.field);
  const auto id = drdm::identity_grid({h, w}, at::TensorOptions().dtype(at::kFloat));
  const auto src = id + total;
  const auto src1 = id + p.field;
  auto inside = (src.select(1, 0) > 2) & (src.select(1, 0) < h - 3) & (src.select(1, 1) > 2) &
                (src.select(1, 1) < w - 3) & (src1.select(1, 0) > 2) & (src1.select(1, 0) < h - 3) &
                (src1.select(1, 1) > 2) & (src1.select(1, 1) < w - 3);
  inside = inside.unsqueeze(1);
  ASSERT_GT(inside.sum().item<int64_t>(), h * w / 2);
  // Image 1 is scaled by 2: compare relative to each image's range.
  const auto scale = at::tensor({1.0f, 2.0f}).view({2, 1, 1, 1});
  const auto err = ((via_moving - p.fixed).abs() / scale).masked_select(inside);
  EXPECT_LT(err.max().item<double>(), 0.03);
  // The opposite composition order is measurably different.
  const auto wrong = drdm::warp(drdm::warp(images, p.field), p.moving_field);
  EXPECT_GT(((wrong - p.fixed).abs() / scale).masked_select(inside).max().item<double>(), 0.06);

  // Alg. 4 by hand: phi_aug = deform()'s field for the same seeds and
  // levels; phi_syn generated from the MOVING model image (warp of the
  // preprocessed image by phi_aug) with seeds derive_seed(seed, 1).
  const auto aug = deformer.deform_with_seeds(images, {}, {6, 3}, seeds, spacing);
  EXPECT_LT(max_diff(aug.fields, p.moving_field), 1e-5);
  auto net = make_net(c, 15, 0.05);
  std::vector<at::Tensor> pre;
  for (int64_t b = 0; b < 2; ++b)
    pre.push_back(drdm::preprocess_image(images[b], spacing, {32, 32}, c.data.clip_low_pct,
                                         c.data.clip_high_pct));
  const auto model_images = at::stack(pre, 0);
  const auto moving_model = drdm::warp(model_images, aug.model_fields);
  const std::vector<uint64_t> syn_seeds{drdm::derive_seed(5, 1), drdm::derive_seed(6, 1)};
  const auto syn = drdm::generate_fields(net, c.sampler, moving_model, {4, 8}, syn_seeds);
  const auto fit = drdm::fit_grid({h, w}, spacing, {32, 32});
  EXPECT_LT(max_diff(p.field, drdm::field_to_input(syn.field, fit)), 1e-4);
  // Generating phi_syn from the original image instead would differ.
  const auto from_original = drdm::generate_fields(net, c.sampler, model_images, {4, 8}, syn_seeds);
  EXPECT_GT(max_diff(p.field, drdm::field_to_input(from_original.field, fit)), 1e-2);
}

TEST(Deformer, ShippedModelLoadsFromItsPath) {
  const std::string path = std::string(DRDM_SOURCE_DIR) + "/models/cardiac2d/model.pt";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path;
  Deformer from_path(path, torch::kCPU);
  auto model = drdm::load_model(path, torch::kCPU);
  EXPECT_EQ(from_path.dims(), 2);
  EXPECT_EQ(from_path.model_size(), model.config.data.size);
  EXPECT_EQ(from_path.timesteps(), model.config.sampler.timesteps);
  EXPECT_EQ(from_path.slice_axis(), model.config.data.slice_axis);
  Deformer from_model(std::move(model), torch::kCPU);
  // A non-square anisotropic image (a bright disc on a ramp).
  const int64_t h = 50, w = 70;
  const auto g = drdm::identity_grid({h, w}, at::TensorOptions().dtype(at::kFloat));
  const auto r2 = (g.select(1, 0) - 25).pow(2) * 1.44 + (g.select(1, 1) - 35).pow(2);
  const auto image = ((r2 < 300).to(at::kFloat) * 200 + g.select(1, 1)).unsqueeze(1);
  const auto labels = (r2 < 300).to(at::kLong).unsqueeze(1);
  const auto a = from_path.deform(image, labels, {12}, 3, {1.2, 1.0});
  const auto b = from_model.deform(image, labels, {12}, 3, {1.2, 1.0});
  EXPECT_TRUE(at::equal(a.fields, b.fields));
  ASSERT_EQ(a.fields.sizes(), (std::vector<int64_t>{1, 2, h, w}));
  EXPECT_GT(max_abs(a.fields), 0.1);
  // The trained recovery keeps the generated field a diffeomorphism.
  EXPECT_LT(drdm::folding_ratio(a.fields).item<double>(), 0.01);
  EXPECT_LT(max_diff(a.images, drdm::warp(image, a.fields)), 1e-3);
}

// ======================================================== CUDA

TEST(GenerateFields, ReproducibleForTheSameSeeds_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto c = tiny_config();
  const torch::Device gpu(torch::kCUDA);
  auto net = make_net(c, 16, 0.02);
  net->to(gpu);
  const auto images = smooth_images({32, 32}, 3).to(gpu);
  const std::vector<int64_t> levels{2, 10, 6};
  const std::vector<uint64_t> seeds{4, 5, 6};
  const auto a = drdm::generate_fields(net, c.sampler, images, levels, seeds);
  const auto b = drdm::generate_fields(net, c.sampler, images, levels, seeds);
  EXPECT_EQ(a.field.device().type(), torch::kCUDA);
  EXPECT_TRUE(at::equal(a.initial, b.initial));
  EXPECT_LT(max_diff(a.field, b.field), 1e-5);
  drdm::VelocitySampler sampler(c.sampler, {32, 32}, gpu);
  std::vector<at::Generator> gens;
  for (auto s : seeds) gens.push_back(drdm::make_generator(s));
  EXPECT_TRUE(
      at::equal(a.initial, sampler.sample_field(at::tensor(levels, at::kLong).to(gpu), gens)));
  // The same seeds on the CPU give the same fields, up to float rounding.
  net->to(torch::kCPU);
  const auto on_cpu = drdm::generate_fields(net, c.sampler, images.cpu(), levels, seeds);
  EXPECT_LT(max_diff(a.initial.cpu(), on_cpu.initial), 1e-4 * (1 + max_abs(on_cpu.initial)));
  EXPECT_LT(max_diff(a.field.cpu(), on_cpu.field), 1e-2 * (1 + max_abs(on_cpu.field)));
  net->to(gpu);
  // Batch independence on the GPU too: the start field exactly; the result
  // up to rounding (cuDNN may pick other algorithms, with TF32, for another
  // batch size; a wrong seed or step would differ by voxels).
  const auto alone = drdm::generate_fields(net, c.sampler, images.narrow(0, 1, 1), {10}, {5});
  EXPECT_TRUE(at::equal(alone.initial[0], a.initial[1]));
  EXPECT_LT(max_diff(alone.field[0], a.field[1]), 2e-2 * (1 + max_abs(alone.field)));
  // A Deformer on the GPU returns results on the device the images came on.
  Deformer deformer(make_model(c, 16, 0.05), gpu);
  const auto out = deformer.deform(smooth_images({20, 24}, 2), {}, {4}, 1);
  EXPECT_EQ(out.images.device().type(), torch::kCPU);
  EXPECT_EQ(out.fields.device().type(), torch::kCPU);
  const auto again = deformer.deform(smooth_images({20, 24}, 2), {}, {4}, 1);
  EXPECT_LT(max_diff(out.fields, again.fields), 1e-5);
}

}  // namespace

// CUDA graphs (GenerationOptions::cuda_graphs): a replayed step is the eager
// step, through mixed levels (partial batches run eagerly), batches of
// another size (a new capture) and the all-steps schedule.
TEST(GenerateFields, CudaGraphsGiveTheEagerFields_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto c = tiny_config(10, 2);
  const torch::Device gpu(torch::kCUDA);
  auto net = make_net(c, 16, 0.02);
  net->to(gpu);
  const auto images = smooth_images({32, 32}, 5).to(gpu);
  const std::vector<int64_t> levels{7, 7, 3, 10, 10};
  const std::vector<uint64_t> seeds{1, 2, 3, 4, 5};
  for (auto schedule : {drdm::RecoverySchedule::kFromLevel, drdm::RecoverySchedule::kAllSteps}) {
    drdm::GenerationOptions eager;
    eager.batch = 2;
    eager.schedule = schedule;
    auto graphed = eager;
    graphed.cuda_graphs = true;
    const auto a = drdm::generate_fields(net, c.sampler, images, levels, seeds, eager);
    const auto b = drdm::generate_fields(net, c.sampler, images, levels, seeds, graphed);
    EXPECT_TRUE(at::equal(a.initial, b.initial));
    EXPECT_GT(max_abs(a.field - a.initial), 1e-3);  // the network moved the fields
    EXPECT_LT(max_diff(a.field, b.field), 1e-5 * (1 + max_abs(a.field)));
  }
}

// On the CPU the option is ignored (with a warning): the eager fields, exactly.
TEST(GenerateFields, CudaGraphsOptionIsIgnoredOnTheCpu) {
  const auto c = tiny_config();
  auto net = make_net(c, 16, 0.02);
  const auto images = smooth_images({32, 32}, 2);
  drdm::GenerationOptions graphed;
  graphed.cuda_graphs = true;
  const auto a = drdm::generate_fields(net, c.sampler, images, {4, 6}, {8, 9});
  const auto b = drdm::generate_fields(net, c.sampler, images, {4, 6}, {8, 9}, graphed);
  EXPECT_TRUE(at::equal(a.field, b.field));
}
