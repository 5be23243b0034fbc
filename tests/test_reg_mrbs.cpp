// MRBS: shapes, B-spline evaluation, smoothness, amplitude per level, det J > 0, seeding,
// rejection.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

#include "drdm/core/spatial.h"
#include "drdm/diffusion/velocity_sampler.h"
#include "drdm/reg/mrbs.h"

namespace {

namespace reg = drdm::reg;
using Sizes = std::vector<int64_t>;

double min_det(const at::Tensor& u) { return drdm::jacobian_determinant(u).min().item<double>(); }

reg::MrbsOptions one_level(int64_t points, double max) {
  reg::MrbsOptions o;
  o.levels = {{points, max}};
  return o;
}

TEST(Mrbs, ShapesIn2DAnd3D) {
  auto gen = drdm::make_generator(at::kCPU, 1);
  EXPECT_EQ(reg::mrbs_field({128, 128}, 2, gen).sizes(), (Sizes{2, 2, 128, 128}));
  EXPECT_EQ(reg::mrbs_field({64, 64, 64}, 1, gen, reg::mrbs_options_for({64, 64, 64})).sizes(),
            (Sizes{1, 3, 64, 64, 64}));
  EXPECT_EQ(reg::mrbs_field({16, 24, 32}, 2, gen, reg::mrbs_options_for({16, 24, 32})).sizes(),
            (Sizes{2, 3, 16, 24, 32}));
  EXPECT_EQ(reg::mrbs_unchecked({40, 50}, 1, gen, {}, at::kDouble).scalar_type(), at::kDouble);
  EXPECT_THROW(reg::mrbs_field({8, 8, 8, 8}, 1, gen), std::invalid_argument);
  // A single-slice volume: no displacement across the slice axis.
  const auto slice = reg::mrbs_field({1, 32, 32}, 2, gen, reg::mrbs_options_for({1, 32, 32}));
  EXPECT_EQ(slice.sizes(), (Sizes{2, 3, 1, 32, 32}));
  EXPECT_EQ(slice.select(1, 0).abs().max().item<double>(), 0.0);
  EXPECT_GT(slice.select(1, 1).abs().max().item<double>(), 0.0);
}

TEST(Mrbs, OptionsForSizeScaleTheDisplacements) {
  const auto o2 = reg::mrbs_options_for({128, 128});
  const auto o3 = reg::mrbs_options_for({64, 64, 64});
  ASSERT_EQ(o3.levels.size(), 3u);
  const double want2[] = {12.8, 6.4, 3.2}, want3[] = {6.4, 3.2, 1.6};
  const int64_t points[] = {4, 8, 16};
  for (size_t l = 0; l < 3; ++l) {
    EXPECT_EQ(o2.levels[l].control_points, points[l]);
    EXPECT_EQ(o3.levels[l].control_points, points[l]);
    EXPECT_DOUBLE_EQ(o2.levels[l].max_displacement, want2[l]);
    EXPECT_DOUBLE_EQ(o3.levels[l].max_displacement, want3[l]);
  }
  reg::MrbsOptions bad = one_level(1, 2.0);
  EXPECT_THROW(reg::validate(bad), std::invalid_argument);
  bad = one_level(4, -1.0);
  EXPECT_THROW(reg::validate(bad), std::invalid_argument);
  bad = {};
  bad.max_tries = 0;
  EXPECT_THROW(reg::validate(bad), std::invalid_argument);
}

TEST(Mrbs, BSplineEvaluation) {
  // Constants stay constant; weights are a partition of unity.
  const auto c = at::full({1, 2, 4, 5}, 3.0, at::kDouble);
  EXPECT_LT((reg::bspline_upsample(c, {17, 23}) - 3.0).abs().max().item<double>(), 1e-12);
  // A control point's value at its own voxel is (c[k-1] + 4 c[k] + c[k+1]) / 6 (cubic B-spline at a
  // knot); 4 points on 10 voxels sit at 0, 3, 6, 9.
  const auto c1 = at::tensor({1.0, -2.0, 5.0, 0.5}, at::kDouble).view({1, 1, 4});
  auto c2 = c1.view({1, 1, 4, 1}).expand({1, 1, 4, 2}).contiguous();
  const auto u = reg::bspline_upsample(c2, {10, 7});
  EXPECT_NEAR(u[0][0][3][4].item<double>(), (1.0 - 8.0 + 5.0) / 6, 1e-12);
  EXPECT_NEAR(u[0][0][6][0].item<double>(), (-2.0 + 20.0 + 0.5) / 6, 1e-12);
  EXPECT_NEAR(u[0][0][0][0].item<double>(), (1.0 + 4.0 - 2.0) / 6, 1e-12);  // clamped: c[-1] = c[0]
  // Between knots: t = 1.5 (voxel 4.5 is not a voxel; use 7 points on 13 voxels, knot spacing 2,
  // voxel 3).
  const auto c7 = at::tensor({0.0, 0.0, 6.0, 0.0, 0.0, 0.0, 0.0}, at::kDouble)
                      .view({1, 1, 7, 1})
                      .expand({1, 1, 7, 2});
  const auto u7 = reg::bspline_upsample(c7.contiguous(), {13, 2});
  EXPECT_NEAR(u7[0][0][3][1].item<double>(), 6.0 * 23.0 / 48.0, 1e-12);  // B3(0.5) = 23/48
  // The result stays within the coefficients' range (non-negative weights).
  const auto r = at::rand({2, 3, 5, 6, 4}, at::kDouble) * 2 - 1;
  const auto ur = reg::bspline_upsample(r, {20, 11, 9});
  EXPECT_LE(ur.max().item<double>(), r.max().item<double>() + 1e-12);
  EXPECT_GE(ur.min().item<double>(), r.min().item<double>() - 1e-12);
}

TEST(Mrbs, FieldsAreSmooth) {
  // Second differences of a cubic B-spline are bounded by max|u''| h^2 <= 4 max|c| ((n - 1) / (S -
  // 1))^2 per level: far below the amplitude (white noise would have them ~2-4x its amplitude).
  auto gen = drdm::make_generator(at::kCPU, 4);
  for (const Sizes size : {Sizes{128, 128}, Sizes{64, 64, 64}}) {
    const auto o = reg::mrbs_options_for(size);
    const auto u = reg::mrbs_unchecked(size, 3, gen, o);
    double bound = 0;
    for (const auto& l : o.levels) {
      const double h = (l.control_points - 1.0) / (size[0] - 1.0);
      bound += 4 * l.max_displacement * h * h;
    }
    const double amplitude = u.abs().max().item<double>();
    for (int64_t a = 2; a < u.dim(); ++a) {
      const int64_t n = u.size(a);
      const auto d2 = u.narrow(a, 2, n - 2) - 2 * u.narrow(a, 1, n - 2) + u.narrow(a, 0, n - 2);
      const double worst = d2.abs().max().item<double>();
      EXPECT_LE(worst, bound + 1e-4) << "axis " << a;
      EXPECT_LT(worst, 0.05 * amplitude) << "axis " << a << " amplitude " << amplitude;
    }
  }
}

TEST(Mrbs, EveryLevelReachesButNeverExceedsItsMaximum) {
  auto gen = drdm::make_generator(at::kCPU, 5);
  for (const auto& level : reg::MrbsOptions{}.levels) {
    const auto u = reg::mrbs_unchecked({128, 128}, 16, gen,
                                       one_level(level.control_points, level.max_displacement));
    const auto per_sample = std::get<0>(u.abs().flatten(1).max(1));
    EXPECT_LE(per_sample.max().item<double>(), level.max_displacement + 1e-4);
    EXPECT_GT(per_sample.max().item<double>(), 0.3 * level.max_displacement);
    EXPECT_GT(per_sample.min().item<double>(), 0.0);
  }
  const auto u3 = reg::mrbs_unchecked({32, 32, 32}, 4, gen, one_level(4, 3.2));
  EXPECT_LE(u3.abs().max().item<double>(), 3.2 + 1e-4);
  EXPECT_GT(u3.abs().max().item<double>(), 0.3 * 3.2);
}

TEST(Mrbs, EverySampleIsFoldFree) {
  auto gen = drdm::make_generator(at::kCPU, 6);
  const auto u2 = reg::mrbs_field({128, 128}, 16, gen);
  EXPECT_GT(min_det(u2), 0.0);
  const auto u3 = reg::mrbs_field({64, 64, 64}, 4, gen, reg::mrbs_options_for({64, 64, 64}));
  EXPECT_GT(min_det(u3), 0.0);
}

TEST(Mrbs, RejectionRedrawsFoldingSamples) {
  // This level folds in a good share of unchecked draws; the checked ones never do.
  const auto o = one_level(8, 9.0);
  auto g1 = drdm::make_generator(at::kCPU, 7);
  const auto raw = reg::mrbs_unchecked({64, 64}, 32, g1, o);
  const auto folds = drdm::jacobian_determinant(raw).flatten(1).min(1);
  const auto folded = std::get<0>(folds).le(0).sum().item<int64_t>();
  EXPECT_GT(folded, 0);
  EXPECT_LT(folded, 32);
  auto g2 = drdm::make_generator(at::kCPU, 7);
  const auto checked = reg::mrbs_field({64, 64}, 32, g2, o);
  EXPECT_GT(min_det(checked), 0.0);
  // The samples that did not fold are kept as drawn.
  const auto kept = std::get<0>(folds).gt(0).nonzero().flatten();
  EXPECT_TRUE(checked.index_select(0, kept).equal(raw.index_select(0, kept)));
}

TEST(Mrbs, HugeDisplacementsRunOutOfTries) {
  auto o = one_level(8, 200.0);
  o.max_tries = 3;
  auto gen = drdm::make_generator(at::kCPU, 8);
  try {
    reg::mrbs_field({32, 32}, 2, gen, o);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("max_tries = 3"), std::string::npos) << e.what();
  }
}

TEST(Mrbs, SameSeedSameFields) {
  auto a = drdm::make_generator(at::kCPU, 9), b = drdm::make_generator(at::kCPU, 9),
       c = drdm::make_generator(at::kCPU, 10);
  const auto o = reg::mrbs_options_for({64, 48});
  const auto ua = reg::mrbs_field({64, 48}, 3, a, o);
  EXPECT_TRUE(ua.equal(reg::mrbs_field({64, 48}, 3, b, o)));
  EXPECT_FALSE(ua.equal(reg::mrbs_field({64, 48}, 3, c, o)));
  EXPECT_FALSE(ua.equal(reg::mrbs_field({64, 48}, 3, a, o)));  // the generator moves on
}

TEST(Mrbs, RunsOnCuda_CUDA) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto g1 = drdm::make_generator(at::kCUDA, 3), g2 = drdm::make_generator(at::kCUDA, 3);
  const auto o = reg::mrbs_options_for({64, 64, 64});
  const auto u = reg::mrbs_field({64, 64, 64}, 2, g1, o, at::kCUDA);
  EXPECT_TRUE(u.is_cuda());
  EXPECT_GT(min_det(u), 0.0);
  EXPECT_TRUE(u.equal(reg::mrbs_field({64, 64, 64}, 2, g2, o, at::kCUDA)));
  // The B-spline evaluation agrees with the CPU's.
  const auto c = at::rand({1, 3, 4, 5, 6});
  EXPECT_LT(
      (reg::bspline_upsample(c.cuda(), {20, 21, 22}).cpu() - reg::bspline_upsample(c, {20, 21, 22}))
          .abs()
          .max()
          .item<double>(),
      1e-5);
  auto cpu_gen = drdm::make_generator(at::kCPU, 3);
  EXPECT_THROW(reg::mrbs_field({16, 16}, 1, cpu_gen, {}, at::kCUDA), std::invalid_argument);
}

}  // namespace
