// The forward process: schedules, field statistics, smoothness, both processes.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "drdm/core/spatial.h"
#include "drdm/diffusion/velocity_sampler.h"

namespace {

using drdm::SamplerOptions;
using drdm::VelocitySampler;

at::Tensor levels(std::vector<int64_t> t) { return at::tensor(t, at::kLong); }

double mean_norm(const at::Tensor& f) { return f.pow(2).sum(1).sqrt().mean().item<double>(); }

TEST(Schedule, MatchesThePaperFormulas) {
  SamplerOptions o;
  EXPECT_EQ(drdm::step_count(0, o), 0);
  EXPECT_EQ(drdm::step_count(1, o), 1);
  EXPECT_EQ(drdm::step_count(32, o), 8);  // 32^0.6 = 8 exactly
  for (int64_t t = 1; t <= 80; ++t) {
    EXPECT_EQ(drdm::step_count(t, o), static_cast<int64_t>(std::floor(std::pow(t, 0.6) + 1e-9)))
        << t;
    const auto m = static_cast<int64_t>(std::floor(std::pow(t, 1.3) / 1.5 + 1e-9));
    EXPECT_EQ(drdm::integrated_count(t, o), std::clamp<int64_t>(m, 1, 200)) << t;
  }
  EXPECT_EQ(drdm::step_count(80, o), 13);
  EXPECT_EQ(drdm::integrated_count(80, o), 198);
  o.integrated_max = 50;
  EXPECT_EQ(drdm::integrated_count(80, o), 50);
  // Schedules are monotone.
  for (int64_t t = 2; t <= 80; ++t) {
    EXPECT_GE(drdm::step_count(t, SamplerOptions{}), drdm::step_count(t - 1, SamplerOptions{}));
    EXPECT_GE(drdm::integrated_count(t, SamplerOptions{}),
              drdm::integrated_count(t - 1, SamplerOptions{}));
  }
}

TEST(Schedule, InvalidOptionsNameTheKey) {
  SamplerOptions o;
  o.levels = 7;  // 64 >> 6 = 1 control point
  try {
    drdm::validate(o);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("sampler.levels"), std::string::npos) << e.what();
  }
  o = {};
  o.sigma = std::nan("");
  EXPECT_THROW(drdm::validate(o), std::invalid_argument);
  EXPECT_THROW(drdm::parse_diffusion_process("markow"), std::invalid_argument);
  EXPECT_EQ(drdm::parse_diffusion_process("markov"), drdm::DiffusionProcess::kMarkov);
}

TEST(ComposePowerCounts, EqualsSingleSampleSelfComposition) {
  SamplerOptions o;
  o.sigma = 0.02;
  VelocitySampler s(o, {32, 32});
  auto gen = drdm::make_generator(torch::kCPU, 3);
  const auto v = s.velocity(4, gen);
  const std::vector<int64_t> counts{0, 1, 5, 13};
  const auto batched = drdm::compose_power(v, counts);
  for (int64_t b = 0; b < 4; ++b) {
    const auto single = drdm::compose_power(v.narrow(0, b, 1), counts[b]);
    EXPECT_LT((batched.narrow(0, b, 1) - single).abs().max().item<double>(), 1e-6) << counts[b];
  }
  EXPECT_EQ(batched[0].abs().max().item<double>(), 0.0);
  EXPECT_THROW(drdm::compose_power(v, std::vector<int64_t>{1, 2}), c10::Error);
  EXPECT_THROW(drdm::compose_power(v, std::vector<int64_t>{1, 2, -1, 0}), c10::Error);
}

TEST(VelocityField, MultiScaleStandardDeviation) {
  // One level: i.i.d. N(0, sigma^2) on the control grid.
  SamplerOptions o;
  o.levels = 1;
  o.sigma = 0.5;
  VelocitySampler s(o, {64, 64});
  auto gen = drdm::make_generator(torch::kCPU, 1);
  auto v = s.velocity(8, gen);
  EXPECT_NEAR(v.std().item<double>(), 0.5, 0.01);
  EXPECT_NEAR(v.mean().item<double>(), 0.0, 0.01);
  // Adding a coarser level of amplitude 2 sigma: at the coarse level's own
  // control points (every other point, aligned corners: 0, 2, ..., 62 map
  // exactly onto coarse points only at the ends) the variance grows; overall it
  // must lie between sigma^2 + (2 sigma)^2 / 2 (interpolation averages) and sigma^2 + (2 sigma)^2.
  o.levels = 2;
  VelocitySampler s2(o, {64, 64});
  auto v2 = s2.velocity(8, gen);
  const double var = v2.var().item<double>();
  EXPECT_GT(var, 0.25 + 1.0 * 0.44);  // bilinear interpolation keeps >= (2/3)^2 of the variance
  EXPECT_LT(var, 0.25 + 1.0 * 1.02);
}

TEST(VelocityField, ControlToImageIsTheCentralHalf) {
  // A constant control field c (control voxels) becomes c * (2S - 1) / (control - 1) image voxels.
  SamplerOptions o;
  o.control = 16;
  VelocitySampler s(o, {20, 30});
  auto c = at::ones({1, 2, 16, 16});
  c.select(1, 0).fill_(1.5);
  c.select(1, 1).fill_(-0.5);
  const auto f = s.to_image(c);
  ASSERT_EQ(f.sizes(), (std::vector<int64_t>{1, 2, 20, 30}));
  EXPECT_NEAR(f.select(1, 0).mean().item<double>(), 1.5 * 39.0 / 15.0, 1e-4);
  EXPECT_NEAR(f.select(1, 1).mean().item<double>(), -0.5 * 59.0 / 15.0, 1e-4);
  // A linear control field x -> a * x maps to the same physical linear field:
  // the image is the central half of the control grid's field of view, so
  // the field at image voxel j is a * (control position of that voxel) scaled to image voxels.
  auto lin = drdm::identity_grid({16, 16}).select(1, 0).unsqueeze(1).repeat({1, 2, 1, 1}) * 0.1;
  const auto fl = s.to_image(lin);
  // Image voxel j (axis 0) sits at big-grid index j + 10 of 40, control position (j + 10) * 15
  // / 39.
  for (int64_t j : {0, 7, 19}) {
    const double control_pos = (j + 10) * 15.0 / 39.0;
    EXPECT_NEAR(fl[0][0][j][4].item<double>(), 0.1 * control_pos * 39.0 / 15.0, 1e-3) << j;
  }
}

TEST(VelocityField, ToImageIsResizeFieldCentreCroppedBitForBit) {
  // to_image resamples one sample at a time and scales after the crop (memory);
  // the values must be exactly those of resize_field to twice the image, cropped.
  at::manual_seed(7);
  struct Case {
    std::vector<int64_t> image;
    int64_t control, batch;
  };
  for (const auto& c :
       {Case{{20, 30}, 16, 3}, Case{{64, 64}, 64, 2}, Case{{128, 128}, 64, 1},
        Case{{16, 24, 32}, 16, 2}, Case{{32, 32, 32}, 32, 3}, Case{{24, 24, 24}, 24, 1}}) {
    SamplerOptions o;
    o.control = c.control;
    VelocitySampler s(o, c.image);
    const auto d = static_cast<int64_t>(c.image.size());
    std::vector<int64_t> shape{c.batch, d}, doubled;
    for (int64_t i = 0; i < d; ++i) {
      shape.push_back(c.control);
      doubled.push_back(2 * c.image[i]);
    }
    const auto field = at::randn(shape) * 3.0;
    auto want = drdm::resize_field(field, doubled);
    for (int64_t i = 0; i < d; ++i) want = want.narrow(2 + i, c.image[i] / 2, c.image[i]);
    const auto got = s.to_image(field);
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_TRUE(at::equal(got, want.contiguous())) << "image " << at::IntArrayRef(c.image);
  }
}

TEST(Stationary, MagnitudeGrowsWithTheSchedule) {
  SamplerOptions o;
  VelocitySampler s(o, {64, 64});
  std::vector<double> phi_mag, psi_mag;
  for (int64_t t : {1, 10, 40, 80}) {
    auto gen = drdm::make_generator(torch::kCPU, 7);  // same velocity at every t
    const auto f = s.sample(levels(std::vector<int64_t>(2, t)), gen);
    ASSERT_EQ(f.psi.sizes(), (std::vector<int64_t>{2, 2, 64, 64}));
    ASSERT_EQ(f.phi.sizes(), (std::vector<int64_t>{2, 2, 64, 64}));
    phi_mag.push_back(mean_norm(f.phi));
    psi_mag.push_back(mean_norm(f.psi));
  }
  for (size_t i = 1; i < phi_mag.size(); ++i) {  // t = 1, 10, 40, 80
    EXPECT_GT(phi_mag[i], phi_mag[i - 1]);
    EXPECT_GE(psi_mag[i], psi_mag[i - 1]);
  }
  // Large flows cross the finest scale's structure, so phi grows less than
  // linearly in m_t; it still grows several-fold from t = 10 to t = 80.
  EXPECT_GT(phi_mag[3] / phi_mag[1], 5.0);
}

TEST(Stationary, SmallSmoothFieldsFollowTheScheduleLinearly) {
  // A smooth (coarse, one level) and small velocity: composing it n times is
  // n times the velocity, so magnitudes follow n_t and m_t.
  SamplerOptions o;
  o.control = 8;
  o.levels = 1;
  o.sigma = 1e-4;
  VelocitySampler s(o, {64, 64});
  auto mags = [&](int64_t t) {
    auto gen = drdm::make_generator(torch::kCPU, 7);
    const auto f = s.sample(levels(std::vector<int64_t>(4, t)), gen);
    return std::make_pair(mean_norm(f.psi), mean_norm(f.phi));
  };
  const auto [psi1, phi1] = mags(1);
  const auto [psi10, phi10] = mags(10);
  const auto [psi80, phi80] = mags(80);
  EXPECT_NEAR(psi80 / psi1, 13.0, 0.05);
  EXPECT_NEAR(psi10 / psi1, 3.0, 0.02);
  EXPECT_NEAR(phi80 / phi10, 198.0 / drdm::integrated_count(10, o), 0.3);  // m_10 = 13
}

TEST(Stationary, SmallLevelsAreSmoothAndInvertible) {
  VelocitySampler s(SamplerOptions{}, {64, 64});
  auto gen = drdm::make_generator(torch::kCPU, 11);
  const auto f = s.sample(levels({1, 5, 10, 20}), gen);
  EXPECT_EQ(drdm::folding_ratio(f.phi).max().item<double>(), 0.0);
  EXPECT_EQ(drdm::folding_ratio(f.psi).max().item<double>(), 0.0);
  // Smooth: neighbouring displacements differ by a small fraction of the displacement.
  const auto diff = (f.phi.narrow(2, 1, 63) - f.phi.narrow(2, 0, 63)).abs().mean().item<double>();
  EXPECT_LT(diff, 0.2 * f.phi.abs().mean().item<double>());
}

TEST(Stationary, PerSampleLevelsAndDeterminism) {
  VelocitySampler s(SamplerOptions{}, {32, 48});
  auto g1 = drdm::make_generator(torch::kCPU, 5);
  auto g2 = drdm::make_generator(torch::kCPU, 5);
  const auto a = s.sample(levels({2, 70}), g1);
  const auto b = s.sample(levels({2, 70}), g2);
  EXPECT_TRUE(at::equal(a.phi, b.phi));
  EXPECT_TRUE(at::equal(a.psi, b.psi));
  EXPECT_GT(mean_norm(a.phi.narrow(0, 1, 1)), 5 * mean_norm(a.phi.narrow(0, 0, 1)));
  auto g3 = drdm::make_generator(torch::kCPU, 6);
  EXPECT_FALSE(at::equal(s.sample(levels({2, 70}), g3).phi, a.phi));
  EXPECT_THROW(s.sample(levels({0}), g1), c10::Error);
  EXPECT_THROW(s.sample(levels({81}), g1), c10::Error);
}

TEST(Stationary, PerturbationIsFivePercent) {
  // phi at t = 1 is the perturbed velocity itself (m_1 = 1), psi at t = 1 is v:
  // their difference is the perturbation, 5% of an independent velocity.
  VelocitySampler s(SamplerOptions{}, {64, 64});
  auto gen = drdm::make_generator(torch::kCPU, 2);
  const auto f = s.sample(levels(std::vector<int64_t>(8, 1)), gen);
  const double ratio = (f.phi - f.psi).pow(2).mean().sqrt().item<double>() /
                       f.psi.pow(2).mean().sqrt().item<double>();
  EXPECT_NEAR(ratio, 0.05, 0.01);
}

TEST(Markov, ComposesIndependentSteps) {
  SamplerOptions o;
  o.process = drdm::DiffusionProcess::kMarkov;
  VelocitySampler s(o, {32, 32});
  // t = 3: phi = compose(psi_3, compose(psi_2, psi_1)) with psi_tau = v_tau^(n_tau),
  // the v_tau drawn in order from the generator; psi is the last step.
  auto gen = drdm::make_generator(torch::kCPU, 9);
  const auto f = s.sample(levels({3}), gen);
  auto ref = drdm::make_generator(torch::kCPU, 9);
  const auto v1 = s.velocity(1, ref), v2 = s.velocity(1, ref), v3 = s.velocity(1, ref);
  const auto p1 = drdm::compose_power(v1, drdm::step_count(1, o));
  const auto p2 = drdm::compose_power(v2, drdm::step_count(2, o));
  const auto p3 = drdm::compose_power(v3, drdm::step_count(3, o));
  const auto phi = s.to_image(drdm::compose(p3, drdm::compose(p2, p1)));
  EXPECT_LT((f.phi - phi).abs().max().item<double>(), 1e-5);
  EXPECT_LT((f.psi - s.to_image(p3)).abs().max().item<double>(), 1e-5);
  // Independent steps are uncorrelated.
  const auto a = v1.flatten(), b = v2.flatten();
  const double corr = ((a * b).mean() / (a.std() * b.std())).item<double>();
  EXPECT_LT(std::abs(corr), 0.05);
  // Markov fields grow with t too, and a batch with mixed t works.
  auto g = drdm::make_generator(torch::kCPU, 4);
  const auto mixed = s.sample(levels({1, 40}), g);
  EXPECT_GT(mean_norm(mixed.phi.narrow(0, 1, 1)), 3 * mean_norm(mixed.phi.narrow(0, 0, 1)));
  // At t = 1 the image field is the step itself.
  EXPECT_LT((mixed.phi.narrow(0, 0, 1) - mixed.psi.narrow(0, 0, 1)).abs().max().item<double>(),
            1e-4);
}

TEST(Sampler, ThreeDimensional) {
  SamplerOptions o;
  o.control = 16;
  o.levels = 3;
  VelocitySampler s(o, {16, 24, 20});
  auto gen = drdm::make_generator(torch::kCPU, 1);
  const auto f = s.sample(levels({10, 60}), gen);
  ASSERT_EQ(f.phi.sizes(), (std::vector<int64_t>{2, 3, 16, 24, 20}));
  EXPECT_EQ(drdm::folding_ratio(f.psi).max().item<double>(), 0.0);
  EXPECT_GT(mean_norm(f.phi.narrow(0, 1, 1)), mean_norm(f.phi.narrow(0, 0, 1)));
}

TEST(Sampler, RowsOfTheBatchAreTheBatchsRows) {
  // A data-parallel rank's share: sample_rows(t, gen, first, count) is rows
  // [first, first + count) of sample(t, gen), for both processes and with
  // the perturbation (a second draw), while the other rows are never built.
  for (const auto process : {drdm::DiffusionProcess::kStationary, drdm::DiffusionProcess::kMarkov,
                             drdm::DiffusionProcess::kAuthors}) {
    SamplerOptions o;
    o.process = process;
    o.control = 16;
    o.timesteps = 12;
    VelocitySampler s(o, {24, 20});
    const auto t = levels({3, 12, 1, 7, 9, 5});
    auto g1 = drdm::make_generator(21);
    const auto all = s.sample(t, g1);
    for (const auto& [first, count] :
         std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {3, 3}, {2, 2}, {5, 1}}) {
      auto g2 = drdm::make_generator(21);
      const auto part = s.sample_rows(t, g2, first, count);
      EXPECT_LT((part.phi - all.phi.narrow(0, first, count)).abs().max().item<double>(), 1e-5);
      EXPECT_LT((part.psi - all.psi.narrow(0, first, count)).abs().max().item<double>(), 1e-5);
    }
  }
  auto g = drdm::make_generator(1);
  VelocitySampler s(SamplerOptions{}, {16, 16});
  EXPECT_THROW(s.sample_rows(levels({1, 2}), g, 1, 2), c10::Error);
}

// ---- process "authors": the authors' forward process (issue 22) ----
// Their code: Diffusion/diffuser.py of jianqingzheng/def_diff_rec. The numbers
// below were measured from it by scripts/forward_parity.py (--fixture and the
// table in docs/results/forward-parity.md).

SamplerOptions authors_options() {
  SamplerOptions o;
  o.process = drdm::DiffusionProcess::kAuthors;
  o.sigma = 4e-5 * 64;  // their v_scale (a fraction of the control grid) in control voxels
  o.perturbation = 0.08;
  return o;
}

TEST(Authors, ParsesAndPrints) {
  EXPECT_EQ(drdm::parse_diffusion_process("authors"), drdm::DiffusionProcess::kAuthors);
  EXPECT_EQ(drdm::to_string(drdm::DiffusionProcess::kAuthors), "authors");
  EXPECT_EQ(drdm::to_string(drdm::DiffusionProcess::kStationary), "stationary");
  EXPECT_EQ(drdm::to_string(drdm::DiffusionProcess::kMarkov), "markov");
}

TEST(Authors, ToImageScalesWithTheGrid) {
  // Their conversion: (S / control)^2 image voxels per control voxel, so doubling the image
  // quadruples the displacement in voxels (doubles it in % of the image); the geometric
  // conversion keeps it in % of the image.
  auto c = at::ones({1, 2, 16, 16});
  c.select(1, 0).fill_(1.5);
  c.select(1, 1).fill_(-0.5);
  for (int64_t size : {32, 64}) {
    SamplerOptions o = authors_options();
    o.control = 16;
    const auto f = VelocitySampler(o, {size, size}).to_image(c);
    const double r = static_cast<double>(size) / 16.0;
    EXPECT_NEAR(f.select(1, 0).mean().item<double>(), 1.5 * r * r, 1e-4) << size;
    EXPECT_NEAR(f.select(1, 1).mean().item<double>(), -0.5 * r * r, 1e-4) << size;
    o.process = drdm::DiffusionProcess::kStationary;
    const auto g = VelocitySampler(o, {size, size}).to_image(c);
    EXPECT_NEAR(g.select(1, 0).mean().item<double>(), 1.5 * (2.0 * size - 1) / 15.0, 1e-4) << size;
  }
  // 3D, non-cubic: channel i times (S_i / control)^2.
  SamplerOptions o = authors_options();
  o.control = 8;
  o.levels = 3;
  const auto f3 = VelocitySampler(o, {8, 16, 24}).to_image(at::ones({1, 3, 8, 8, 8}));
  for (int64_t i = 0; i < 3; ++i) {
    const double r = (8.0 * (i + 1)) / 8.0;
    EXPECT_NEAR(f3.select(1, i).mean().item<double>(), r * r, 1e-4) << i;
  }
}

TEST(Authors, ToImageResamplesWithoutAlignedCorners) {
  // A linear control field a * x (axis 0) resampled to twice the image with
  // align_corners = false: image voxel j is big-grid voxel j + S/2, which reads
  // control position (j + S/2 + 0.5) * control / (2 S) - 0.5.
  SamplerOptions o = authors_options();
  o.control = 16;
  const int64_t size = 40;
  VelocitySampler s(o, {size, size});
  const auto lin =
      drdm::identity_grid({16, 16}).select(1, 0).unsqueeze(1).repeat({1, 2, 1, 1}) * 0.1;
  const auto f = s.to_image(lin);
  const double scale = (size / 16.0) * (size / 16.0);
  for (int64_t j : {0, 7, 21, 39}) {
    const double pos = (j + size / 2 + 0.5) * 16.0 / (2.0 * size) - 0.5;
    EXPECT_NEAR(f[0][0][j][5].item<double>(), 0.1 * pos * scale, 1e-4) << j;
  }
}

TEST(Authors, VelocityUpsamplesLikeTheirCode) {
  // Their coarse levels are upsampled with F.interpolate's default, align_corners = false.
  SamplerOptions o = authors_options();
  o.control = 8;
  o.levels = 2;
  o.sigma = 0.1;
  VelocitySampler s(o, {16, 16});
  auto g1 = drdm::make_generator(5), g2 = drdm::make_generator(5);
  const auto v = s.velocity(3, g1);
  const auto fine = at::randn({3, 2, 8, 8}, g2) * 0.1;
  const auto coarse = at::randn({3, 2, 4, 4}, g2) * 0.2;
  const auto want = fine + at::upsample_bilinear2d(coarse, {8, 8}, /*align_corners=*/false);
  EXPECT_LT((v - want).abs().max().item<double>(), 1e-7);
  // ... which differs from the aligned-corners upsampling of the default process.
  const auto aligned = fine + at::upsample_bilinear2d(coarse, {8, 8}, /*align_corners=*/true);
  EXPECT_GT((v - aligned).abs().max().item<double>(), 1e-3);
}

TEST(Authors, PerturbationIsWarpedByTheVelocity) {
  // At t = 1 (m_1 = n_1 = 1): psi = v and phi = v(x) + w(x + v(x)) = compose(v, w), with
  // w = 0.08 * the second velocity drawn (their dvf + stn(noise, dvf)).
  SamplerOptions o = authors_options();
  o.control = 16;
  o.sigma = 0.05;  // large enough that warping w by v is visible
  VelocitySampler s(o, {32, 32});
  auto gen = drdm::make_generator(8), ref = drdm::make_generator(8);
  const auto f = s.sample(levels({1, 1, 1}), gen);
  const auto v = s.velocity(3, ref);
  const auto w = s.velocity(3, ref) * 0.08;
  EXPECT_LT((f.psi - s.to_image(v)).abs().max().item<double>(), 1e-6);
  EXPECT_LT((f.phi - s.to_image(drdm::compose(v, w))).abs().max().item<double>(), 1e-6);
  // Hand-made: v shifts by 2 control voxels along axis 1, w = (0, 0.1 x_1): away from the
  // border compose(v, w) = (0, 2 + 0.1 (x_1 + 2)), the added perturbation (0, 2 + 0.1 x_1).
  auto shift = at::zeros({1, 2, 16, 16});
  shift.select(1, 1).fill_(2.0);
  const auto ramp = drdm::identity_grid({16, 16}) * at::tensor({0.0f, 0.1f}).view({1, 2, 1, 1});
  const auto warped = drdm::compose(shift, ramp);
  for (int64_t x1 : {0, 5, 13})
    EXPECT_NEAR(warped[0][1][7][x1].item<double>(), 2.0 + 0.1 * (x1 + 2), 1e-5) << x1;
  EXPECT_NEAR(warped[0][0][7][5].item<double>(), 0.0, 1e-6);
}

TEST(Authors, ReproducesTheirFieldsForTheSameSeed) {
  // Both draw from PyTorch's CPU generator in the same order, so a seed gives their fields.
  // Values from scripts/forward_parity.py --fixture (their code, 128^2, t = 10, 2 draws,
  // torch.manual_seed(0)), in image voxels.
  auto probe = drdm::make_generator(0);
  const auto first = at::randn({4}, probe);
  const std::vector<double> stream{1.540996, -0.293429, -2.178789, 0.568431};
  for (int64_t i = 0; i < 4; ++i)
    if (std::abs(first[i].item<double>() - stream[static_cast<size_t>(i)]) > 1e-5)
      GTEST_SKIP()
          << "PyTorch's CPU random stream changed: rerun scripts/forward_parity.py --fixture";
  VelocitySampler s(authors_options(), {128, 128});
  auto gen = drdm::make_generator(0);
  const auto f = s.sample(levels({10, 10}), gen);
  struct Probe {
    int64_t b, i, j;
    double phi0, phi1, psi0, psi1;
  };
  for (const auto& p : {Probe{0, 0, 0, -1.0911, -0.52091, -0.24587, -0.10516},
                        Probe{0, 64, 64, -0.33186, -0.22964, -0.07115, -0.05095},
                        Probe{1, 10, 100, 0.1996, 1.52685, 0.05149, 0.34018},
                        Probe{1, 127, 31, -0.08239, -0.12463, -0.02645, -0.02793}}) {
    const auto value = [&](const at::Tensor& field, int64_t c) {
      return field[p.b][c][p.i][p.j].item<double>();
    };
    SCOPED_TRACE(std::to_string(p.b) + " " + std::to_string(p.i) + " " + std::to_string(p.j));
    EXPECT_NEAR(value(f.phi, 0), p.phi0, 2e-4);
    EXPECT_NEAR(value(f.phi, 1), p.phi1, 2e-4);
    EXPECT_NEAR(value(f.psi, 0), p.psi0, 2e-4);
    EXPECT_NEAR(value(f.psi, 1), p.psi1, 2e-4);
  }
}

double mean_of(const std::vector<double>& v) {
  double sum = 0;
  for (auto x : v) sum += x;
  return sum / static_cast<double>(v.size());
}

TEST(Authors, ReproducesTheirStartFieldStatistics) {
  // Their code at 256^2, T' = 45 (m = 93, n = 9), 16 draws, seed 0 (scripts/forward_parity.py
  // --fixture): phi mean magnitude 10.40 % (one draw's s.d. 1.3 %), folding 11.6 % (s.d. 2.4 %),
  // psi mean 1.085 %. Another seed here, so the tolerances are ~3.5 s.d. of a 16-draw mean.
  VelocitySampler s(authors_options(), {256, 256});
  auto gen = drdm::make_generator(22);
  const auto f = s.sample(levels(std::vector<int64_t>(16, 45)), gen);
  const auto phi = drdm::field_stats(f.phi), psi = drdm::field_stats(f.psi);
  EXPECT_NEAR(mean_of(phi.mean_magnitude_pct), 10.40, 1.2);
  EXPECT_NEAR(mean_of(phi.folding_ratio), 0.116, 0.025);
  EXPECT_NEAR(mean_of(psi.mean_magnitude_pct), 1.085, 0.12);
  EXPECT_EQ(mean_of(psi.folding_ratio), 0.0);
  // Our default process at the same grid and level: similar magnitudes, almost no folding.
  VelocitySampler ours(SamplerOptions{}, {256, 256});
  auto g2 = drdm::make_generator(22);
  const auto mine = drdm::field_stats(ours.sample_field(levels(std::vector<int64_t>(16, 45)), g2));
  EXPECT_NEAR(mean_of(mine.mean_magnitude_pct), 9.46, 1.2);
  EXPECT_LT(mean_of(mine.folding_ratio), 0.005);
}

TEST(Sampler, CudaMatchesItsOwnSeeds_CUDA) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  VelocitySampler s(SamplerOptions{}, {64, 64}, torch::Device(torch::kCUDA));
  auto g1 = drdm::make_generator(torch::Device(torch::kCUDA), 3);
  auto g2 = drdm::make_generator(torch::Device(torch::kCUDA), 3);
  const auto t = levels({5, 50});
  const auto a = s.sample(t, g1), b = s.sample(t, g2);
  EXPECT_TRUE(a.phi.is_cuda());
  EXPECT_TRUE(at::equal(a.phi, b.phi));
  // The statistics match the CPU's: same schedule, same magnitude growth.
  VelocitySampler c(SamplerOptions{}, {64, 64});
  auto g3 = drdm::make_generator(torch::kCPU, 3);
  const auto cpu = c.sample(t, g3);
  EXPECT_NEAR(mean_norm(a.phi.cpu()) / mean_norm(cpu.phi), 1.0, 0.5);
}

TEST(Sampler, TheSeedsGeneratorGivesTheSameFieldOnTheGpu_CUDA) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  // make_generator(seed) draws on the CPU: the GPU sampler then differs from
  // the CPU one by float rounding in the upsampling and integration alone.
  for (const std::vector<int64_t>& size :
       {std::vector<int64_t>{64, 48}, std::vector<int64_t>{24, 32, 20}}) {
    VelocitySampler gpu(SamplerOptions{}, size, torch::Device(torch::kCUDA)),
        cpu(SamplerOptions{}, size);
    auto g1 = drdm::make_generator(11), g2 = drdm::make_generator(11);
    const auto t = levels({3, 40, 80});
    const auto a = gpu.sample(t, g1), b = cpu.sample(t, g2);
    EXPECT_TRUE(a.phi.is_cuda());
    EXPECT_LT((a.phi.cpu() - b.phi).abs().max().item<double>(),
              1e-3 * (1 + b.phi.abs().max().item<double>()));
    EXPECT_LT((a.psi.cpu() - b.psi).abs().max().item<double>(),
              1e-3 * (1 + b.psi.abs().max().item<double>()));
  }
}

}  // namespace
