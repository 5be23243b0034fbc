// Tests for drdm/core/random_field.h.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "drdm/core/random_field.h"
#include "drdm/core/spatial.h"

namespace {

double max_norm(const at::Tensor& u) { return u.pow(2).sum(1).sqrt().max().item<double>(); }

TEST(RandomField, ShapeAndReproducibility) {
  auto a = drdm::random_smooth_field({40, 48}, 3, 11);
  ASSERT_EQ(a.sizes(), at::IntArrayRef({3, 2, 40, 48}));
  EXPECT_EQ(a.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(a, drdm::random_smooth_field({40, 48}, 3, 11)));
  EXPECT_GT((a - drdm::random_smooth_field({40, 48}, 3, 12)).abs().max().item<double>(), 0.1);
  // Samples of one batch differ from each other.
  EXPECT_GT((a[0] - a[1]).abs().max().item<double>(), 0.1);
}

TEST(RandomField, VelocityAmplitudeIsExact) {
  drdm::RandomFieldOptions o;
  o.amplitude = 3.5;
  o.squarings = 0;
  auto v = drdm::random_smooth_field({20, 24, 28}, 2, 5, o);
  EXPECT_NEAR(max_norm(v.narrow(0, 0, 1)), 3.5, 1e-4);
  EXPECT_NEAR(max_norm(v.narrow(0, 1, 1)), 3.5, 1e-4);
}

TEST(RandomField, IntegratedFieldIsSmoothAndInvertible) {
  drdm::RandomFieldOptions o;
  o.amplitude = 8.0;
  auto u = drdm::random_smooth_field({96, 96}, 4, 21, o);
  EXPECT_EQ(drdm::folding_ratio(u).max().item<double>(), 0.0);
  const double peak = max_norm(u);
  EXPECT_GT(peak, 4.0);  // integration keeps the scale of the velocity
  EXPECT_LT(peak, 16.0);
}

// Every axis moves by the same fraction of its length; singleton axes not at all.
TEST(RandomField, ThinAndSingletonAxes) {
  drdm::RandomFieldOptions o;
  o.amplitude = 6.0;
  o.squarings = 0;
  auto slab = drdm::random_smooth_field({4, 64, 64}, 1, 3, o);
  EXPECT_LE(slab.select(1, 0).abs().max().item<double>(), 6.0 * 3.0 / 63.0 + 1e-5);
  auto single = drdm::random_smooth_field({1, 32, 32}, 1, 3, o);
  EXPECT_EQ(single.select(1, 0).abs().max().item<double>(), 0.0);
  EXPECT_NEAR(max_norm(single), 6.0, 1e-4);
}

TEST(RandomField, RejectsBadOptions) {
  drdm::RandomFieldOptions o;
  o.control = 1;
  EXPECT_THROW(drdm::random_smooth_field({8, 8}, 1, 0, o), std::exception);
  EXPECT_THROW(drdm::random_smooth_field({8}, 1, 0), std::exception);
  EXPECT_THROW(drdm::random_smooth_field({8, 8}, 0, 0), std::exception);
  o = {};
  o.amplitude = -1;
  EXPECT_THROW(drdm::random_smooth_field({8, 8}, 1, 0, o), std::exception);
}

TEST(RandomField, SameFieldOnEveryDevice_CUDA) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto cpu = drdm::random_smooth_field({32, 32, 32}, 2, 9);
  auto gpu =
      drdm::random_smooth_field({32, 32, 32}, 2, 9, {}, at::TensorOptions().device(at::kCUDA));
  EXPECT_LT((gpu.cpu() - cpu).abs().max().item<double>(), 1e-3);
}

}  // namespace
