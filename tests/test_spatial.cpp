// Tests for drdm/core/spatial.h: conventions pinned with analytic cases, invariants
// and finite differences.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <set>

#include "drdm/core/spatial.h"
#include "test_util.h"

namespace {

using drdm::compose;
using drdm::warp;
using drdm::test::ramp_image;

// Smooth random field [n, d, ...size] with max |u| about `amp` voxels:
// coarse Gaussian noise upsampled linearly.
at::Tensor smooth_field(at::IntArrayRef size, int64_t n, double amp, uint64_t seed,
                        at::ScalarType dtype = at::kFloat, int64_t control = 5) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t d = size.size();
  std::vector<int64_t> coarse{n, d};
  for (int64_t i = 0; i < d; ++i) coarse.push_back(control);
  auto c = at::randn(coarse, gen, at::TensorOptions().dtype(at::kDouble));
  auto f =
      d == 2 ? at::upsample_bilinear2d(c, size, true) : at::upsample_trilinear3d(c, size, true);
  f = f * (amp / f.abs().max().item<double>());
  return f.to(dtype);
}

// Smooth test image [1, 1, ...size] with an asymmetric pattern.
at::Tensor smooth_image(at::IntArrayRef size, at::ScalarType dtype = at::kFloat) {
  auto g = drdm::identity_grid(size, at::TensorOptions().dtype(at::kDouble));
  // Low frequencies (< 0.12 rad/voxel) keep linear-interpolation error, about
  // omega^2 / 8 of the amplitude per resampling, below 0.2 %.
  auto img = at::sin(g.select(1, 0) * 0.11 + 0.2) * at::cos(g.select(1, 1) * 0.07);
  if (size.size() == 3) img = img + 0.5 * at::sin(g.select(1, 2) * 0.09);
  return img.unsqueeze(1).to(dtype);
}

at::Tensor interior(const at::Tensor& t, int64_t margin) {
  auto out = t;
  for (int64_t dim = 2; dim < t.dim(); ++dim)
    out = out.narrow(dim, margin, t.size(dim) - 2 * margin);
  return out;
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

// ---------------------------------------------------------------- identity

TEST(IdentityGrid, HoldsVoxelIndicesPerAxis) {
  auto g = drdm::identity_grid({3, 4, 5});
  ASSERT_EQ(g.sizes(), at::IntArrayRef({1, 3, 3, 4, 5}));
  EXPECT_EQ(g[0][0][2][1][3].item<float>(), 2.0f);
  EXPECT_EQ(g[0][1][2][1][3].item<float>(), 1.0f);
  EXPECT_EQ(g[0][2][2][1][3].item<float>(), 3.0f);
  EXPECT_THROW(drdm::identity_grid({4}), std::exception);
}

TEST(Warp, ZeroFieldIsIdentity2DAnd3D) {
  for (std::vector<int64_t> size :
       {std::vector<int64_t>{17, 23}, std::vector<int64_t>{9, 11, 13}}) {
    auto img = smooth_image(size);
    auto zero = at::zeros_like(drdm::identity_grid(size));
    EXPECT_LT(max_abs(warp(img, zero) - img), 1e-5);
    EXPECT_TRUE(at::equal(warp(img, zero, drdm::Interpolation::kNearest), img));
  }
}

// The pull-back convention with the axis order: out(x) = I(x + u), so a
// constant +s along tensor axis i reads the voxel s further along that axis.
TEST(Warp, ConstantFieldShiftsAlongTheRightAxis2D) {
  const std::vector<int64_t> size{6, 9};
  auto img = ramp_image(size);
  for (int64_t axis = 0; axis < 2; ++axis) {
    auto u = at::zeros({1, 2, 6, 9});
    u.select(1, axis).fill_(2.0);
    auto out = warp(img, u);
    for (int64_t h = 0; h < 6; ++h)
      for (int64_t w = 0; w < 9; ++w) {
        const int64_t sh = h + (axis == 0 ? 2 : 0), sw = w + (axis == 1 ? 2 : 0);
        const float want = (sh < 6 && sw < 9) ? img[0][0][sh][sw].item<float>() : 0.0f;
        ASSERT_NEAR(out[0][0][h][w].item<float>(), want, 1e-3)
            << "axis " << axis << " at " << h << "," << w;
      }
  }
}

TEST(Warp, ConstantFieldShiftsAlongTheRightAxis3D) {
  const std::vector<int64_t> size{5, 6, 7};
  auto img = ramp_image(size);
  for (int64_t axis = 0; axis < 3; ++axis) {
    auto u = at::zeros({1, 3, 5, 6, 7});
    u.select(1, axis).fill_(-1.0);
    auto out = warp(img, u);
    auto expected = at::zeros_like(img);
    // out[x] = img[x - e_axis]; the first slice along `axis` falls outside.
    expected.narrow(2 + axis, 1, size[axis] - 1).copy_(img.narrow(2 + axis, 0, size[axis] - 1));
    EXPECT_LT(max_abs(out - expected), 1e-3) << "axis " << axis;
  }
}

TEST(Warp, FractionalShiftInterpolatesLinearly) {
  auto img = ramp_image({4, 8});  // I[h][w] = 8h + w, linear in w
  auto u = at::zeros({1, 2, 4, 8});
  u.select(1, 1).fill_(0.25);
  auto out = warp(img, u);
  EXPECT_NEAR(out[0][0][2][3].item<float>(), 16 + 3.25, 1e-4);
}

TEST(Warp, BorderPaddingReplicatesEdge) {
  auto img = ramp_image({4, 8});
  auto u = at::full({1, 2, 4, 8}, 100.0);
  auto out = warp(img, u, drdm::Interpolation::kLinear, drdm::Padding::kBorder);
  EXPECT_NEAR(out.min().item<float>(), 31.0, 1e-4);
  EXPECT_EQ(warp(img, u).abs().max().item<float>(), 0.0f);
}

TEST(Warp, BroadcastsFieldBatchOfOne) {
  auto img = at::cat({smooth_image({12, 14}), smooth_image({12, 14}) * 2}, 0);
  auto u = smooth_field({12, 14}, 1, 2.0, 3);
  auto out = warp(img, u);
  ASSERT_EQ(out.size(0), 2);
  EXPECT_LT(max_abs(out[1] - 2 * out[0]), 1e-5);
}

TEST(Warp, SingleSliceVolumeMatches2D) {
  auto img2 = smooth_image({15, 16});
  auto u2 = smooth_field({15, 16}, 1, 2.0, 5);
  auto img3 = img2.unsqueeze(2);  // [1, 1, 1, 15, 16]
  auto u3 = at::cat({at::full({1, 1, 1, 15, 16}, 0.7), u2.unsqueeze(2)}, 1);
  auto out3 = warp(img3, u3).squeeze(2);
  EXPECT_LT(max_abs(out3 - warp(img2, u2)), 1e-5);
}

TEST(Warp, RejectsBadInput) {
  auto img = smooth_image({8, 8});
  EXPECT_THROW(warp(img, at::zeros({1, 3, 8, 8})), std::exception);  // channels != d
  EXPECT_THROW(warp(img, at::zeros({1, 2, 8, 9})), std::exception);  // size mismatch
  EXPECT_THROW(warp(img, at::zeros({1, 2, 8, 8}, at::kLong)), std::exception);
  EXPECT_THROW(warp(img.to(at::kLong), at::zeros({1, 2, 8, 8})), std::exception);
  EXPECT_THROW(warp(img, at::zeros({1, 2, 8})), std::exception);
  EXPECT_THROW(warp(at::cat({img, img, img}), at::zeros({2, 2, 8, 8})), std::exception);
  try {
    warp(img, at::zeros({1, 2, 8, 9}));
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("spatial sizes differ"), std::string::npos) << e.what();
  }
}

// --------------------------------------------------------------- compose

TEST(Compose, ZeroIsNeutral) {
  auto a = smooth_field({20, 21}, 2, 3.0, 7);
  auto zero = at::zeros_like(a);
  EXPECT_LT(max_abs(compose(a, zero) - a), 1e-6);
  EXPECT_LT(max_abs(compose(zero, a) - a), 1e-5);
}

TEST(Compose, ConstantFieldsAdd) {
  auto a = at::zeros({1, 3, 6, 7, 8});
  auto b = at::zeros({1, 3, 6, 7, 8});
  a.select(1, 0).fill_(1.5);
  b.select(1, 2).fill_(-0.5);
  auto c = compose(a, b);
  EXPECT_LT(max_abs(c.select(1, 0) - 1.5), 1e-6);
  EXPECT_LT(max_abs(c.select(1, 2) + 0.5), 1e-6);
}

// DESIGN.md: warp(I, compose(a, b)) == warp(warp(I, b), a): b acts first.
TEST(Compose, MatchesSequentialWarping2D) {
  const std::vector<int64_t> size{64, 72};
  auto img = smooth_image(size, at::kDouble);
  auto a = smooth_field(size, 1, 3.0, 11, at::kDouble);
  auto b = smooth_field(size, 1, 3.0, 12, at::kDouble);
  auto seq = warp(warp(img, b), a);
  auto once = warp(img, compose(a, b));
  const double err = max_abs(interior(seq - once, 8));
  EXPECT_LT(err, 0.004 * max_abs(img));
  // The other order, and the naive sum a + b, are different deformations:
  // the test can tell them apart.
  EXPECT_GT(max_abs(interior(warp(img, compose(b, a)) - seq, 8)), 5 * err);
  EXPECT_GT(max_abs(interior(warp(img, a + b) - seq, 8)), 3 * err);
}

TEST(Compose, MatchesSequentialWarping3D) {
  const std::vector<int64_t> size{32, 28, 36};
  auto img = smooth_image(size, at::kDouble);
  auto a = smooth_field(size, 1, 2.0, 21, at::kDouble);
  auto b = smooth_field(size, 1, 2.0, 22, at::kDouble);
  auto seq = warp(warp(img, b), a);
  const double err = max_abs(interior(seq - warp(img, compose(a, b)), 6));
  EXPECT_LT(err, 0.004 * max_abs(img));
  EXPECT_GT(max_abs(interior(warp(img, compose(b, a)) - seq, 6)), 5 * err);
}

// ------------------------------------------------------- integration

TEST(Integration, ComposePowerOfConstantIsMultiple) {
  auto v = at::zeros({1, 2, 10, 12});
  v.select(1, 1).fill_(0.75);
  EXPECT_LT(max_abs(drdm::compose_power(v, 4).select(1, 1) - 3.0), 1e-5);
  EXPECT_EQ(max_abs(drdm::compose_power(v, 0)), 0.0);
  EXPECT_TRUE(at::equal(drdm::compose_power(v, 1), v));
  EXPECT_THROW(drdm::compose_power(v, -1), std::exception);
}

// For v(x) = a (x - c) along axis 0 the flow is analytic:
// exp(v)(x) = c + (x - c) e^a, so u = (x - c)(e^a - 1).
TEST(Integration, ScalingSquaringMatchesAnalyticExponential) {
  const double a = 0.1, c = 20.0;
  auto grid = drdm::identity_grid({41, 9}, at::TensorOptions().dtype(at::kDouble));
  auto v = at::zeros_like(grid);
  v.select(1, 0).copy_((grid.select(1, 0) - c) * a);
  auto u = drdm::integrate_scaling_squaring(v, 8);
  auto want = (grid.select(1, 0) - c) * std::expm1(a);
  // Interior only: near the ends the flow leaves the grid (border padding).
  auto err = (u.select(1, 0) - want).narrow(1, 8, 25);
  EXPECT_LT(max_abs(err), 1e-3);
  EXPECT_LT(max_abs(u.select(1, 1)), 1e-9);
  // Self-composition of v / n, n times, approximates the same flow.
  auto u2 = drdm::compose_power(v / 64.0, 64);
  EXPECT_LT(max_abs((u2.select(1, 0) - want).narrow(1, 8, 25)), 2e-2);
}

TEST(Integration, SmallVelocityGivesInvertibleField) {
  auto v = smooth_field({48, 48}, 1, 6.0, 31);
  auto u = drdm::integrate_scaling_squaring(v, 7);
  EXPECT_EQ(drdm::folding_ratio(u).item<float>(), 0.0f);
}

// ------------------------------------------------------------ Jacobian

TEST(Jacobian, IdentityIsOne) {
  auto det = drdm::jacobian_determinant(at::zeros({2, 3, 5, 6, 7}));
  ASSERT_EQ(det.sizes(), at::IntArrayRef({2, 1, 5, 6, 7}));
  EXPECT_LT(max_abs(det - 1), 1e-7);
}

TEST(Jacobian, UniformScaling) {
  for (std::vector<int64_t> size : {std::vector<int64_t>{9, 10}, std::vector<int64_t>{7, 8, 9}}) {
    const double s = 1.3;
    auto g = drdm::identity_grid(size, at::TensorOptions().dtype(at::kDouble));
    auto det = drdm::jacobian_determinant(g * (s - 1));
    EXPECT_LT(max_abs(det - std::pow(s, size.size())), 1e-9);
  }
}

TEST(Jacobian, ShearHasUnitDeterminant) {
  auto g = drdm::identity_grid({8, 9, 10}, at::TensorOptions().dtype(at::kDouble));
  auto u = at::zeros_like(g);
  u.select(1, 0).copy_(0.7 * g.select(1, 2));   // x0 += 0.7 x2
  u.select(1, 1).copy_(-0.4 * g.select(1, 0));  // x1 -= 0.4 x0
  EXPECT_LT(max_abs(drdm::jacobian_determinant(u) - 1), 1e-9);
}

// Quadratic displacement: central differences are exact inside, so
// det = 1 + 2 a x0 exactly away from the border.
TEST(Jacobian, QuadraticFieldInside) {
  const double a = 0.05;
  auto g = drdm::identity_grid({12, 7}, at::TensorOptions().dtype(at::kDouble));
  auto u = at::zeros_like(g);
  u.select(1, 0).copy_(a * g.select(1, 0).pow(2));
  auto det = drdm::jacobian_determinant(u).select(1, 0);
  auto want = 1 + 2 * a * g.select(1, 0);
  EXPECT_LT(max_abs((det - want).narrow(1, 1, 10)), 1e-9);
}

TEST(Jacobian, FoldingFieldIsDetected) {
  // x0 -> -x0 (a reflection): det = -1 everywhere.
  auto g = drdm::identity_grid({10, 11}, at::TensorOptions().dtype(at::kDouble));
  auto u = at::zeros_like(g);
  u.select(1, 0).copy_(-2 * g.select(1, 0) + 9);
  EXPECT_LT(max_abs(drdm::jacobian_determinant(u) + 1), 1e-9);
  EXPECT_EQ(drdm::folding_ratio(u).item<double>(), 1.0);
  // A local fold: a steep bump folds a band of voxels only.
  auto bump = at::zeros_like(g);
  bump.select(1, 1).copy_(-3.0 * at::tanh((g.select(1, 1) - 5) * 2));
  const double r = drdm::folding_ratio(bump).item<double>();
  EXPECT_GT(r, 0.0);
  EXPECT_LT(r, 0.5);
}

// ----------------------------------------------------------- magnitude

TEST(Magnitude, PercentOfImageSizePerAxis) {
  auto u = at::zeros({1, 2, 20, 50});
  u.select(1, 0).fill_(3.0);   // 15% of 20
  u.select(1, 1).fill_(10.0);  // 20% of 50
  auto m = drdm::magnitude_pct(u);
  EXPECT_NEAR(m.max().item<float>(), 25.0, 1e-4);
  auto s = drdm::field_stats(u);
  EXPECT_NEAR(s.max_magnitude_pct[0], 25.0, 1e-4);
  EXPECT_NEAR(s.mean_magnitude_pct[0], 25.0, 1e-4);
  EXPECT_EQ(s.folding_ratio[0], 0.0);
  EXPECT_NEAR(s.min_jacobian[0], 1.0, 1e-6);
}

// -------------------------------------------------------------- resize

// A linear field u = c * x (voxels) is the same physical map on any grid of
// the same field of view, so resizing must give c * x' exactly.
TEST(ResizeField, AffineFieldIsPreserved) {
  const double c = 0.05;
  auto g_old = drdm::identity_grid({17, 33}, at::TensorOptions().dtype(at::kDouble));
  auto g_new = drdm::identity_grid({33, 65}, at::TensorOptions().dtype(at::kDouble));
  auto r = drdm::resize_field(g_old * c, {33, 65});
  EXPECT_LT(max_abs(r - g_new * c), 1e-9);
  auto g3 = drdm::identity_grid({9, 9, 9}, at::TensorOptions().dtype(at::kDouble));
  auto r3 = drdm::resize_field(g3 * c, {5, 17, 9});
  EXPECT_LT(
      max_abs(r3 - drdm::identity_grid({5, 17, 9}, at::TensorOptions().dtype(at::kDouble)) * c),
      1e-9);
  EXPECT_THROW(drdm::resize_field(g3, {5, 5}), std::exception);
}

TEST(ResizeField, WarpCommutesWithResizing) {
  // Warping a resized image with the resized field ~ resizing the warped image.
  auto img = smooth_image({40, 48}, at::kDouble);
  auto u = smooth_field({40, 48}, 1, 2.0, 41, at::kDouble);
  auto big_img = at::upsample_bilinear2d(img, {79, 95}, true);
  auto big = warp(big_img, drdm::resize_field(u, {79, 95}));
  auto small = at::upsample_bilinear2d(warp(img, u), {79, 95}, true);
  EXPECT_LT(max_abs(interior(big - small, 10)), 0.004);
}

// -------------------------------------------------------------- labels

TEST(WarpLabels, NeverInventsAClass) {
  const std::vector<int64_t> size{40, 44};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  // Blocky labels with classes {0, 2, 5}: class 1, 3, 4 must never appear.
  auto coarse = at::randint(0, 3, {1, 1, 5, 5}, gen, at::TensorOptions().dtype(at::kLong));
  auto lut = at::tensor(std::vector<int64_t>{0, 2, 5});
  auto labels = at::upsample_nearest2d(lut.index({coarse}).to(at::kFloat), size).to(at::kLong);
  auto u = smooth_field(size, 1, 4.0, 6);
  for (auto mode : {drdm::LabelInterpolation::kNearest, drdm::LabelInterpolation::kSoft}) {
    auto out = drdm::warp_labels(labels, u, mode);
    ASSERT_EQ(out.scalar_type(), at::kLong);
    auto values = std::get<0>(at::_unique(out));
    for (int64_t i = 0; i < values.numel(); ++i) {
      const auto v = values[i].item<int64_t>();
      EXPECT_TRUE(v == 0 || v == 2 || v == 5) << "class " << v << " appeared";
    }
    // Mostly unchanged under a small deformation.
    EXPECT_GT(out.eq(labels).to(at::kFloat).mean().item<float>(), 0.6);
  }
}

TEST(WarpLabels, IntegerShiftIsExact) {
  auto labels = at::randint(0, 4, {1, 1, 6, 7, 8}, at::TensorOptions().dtype(at::kLong));
  auto u = at::zeros({1, 3, 6, 7, 8});
  u.select(1, 2).fill_(1.0);
  for (auto mode : {drdm::LabelInterpolation::kNearest, drdm::LabelInterpolation::kSoft}) {
    auto out = drdm::warp_labels(labels, u, mode);
    EXPECT_TRUE(at::equal(out.narrow(4, 0, 7), labels.narrow(4, 1, 7)));
    EXPECT_EQ(out.narrow(4, 7, 1).abs().max().item<int64_t>(), 0);  // outside -> background
  }
}

TEST(WarpLabels, SoftRefusesLabelsItCannotOneHotEncode) {
  // kSoft one-hot encodes labels 0..255 (src/core/soft_labels.h); nearest takes any integer.
  auto u = at::zeros({1, 2, 8, 8});
  auto labels = at::zeros({1, 1, 8, 8}, at::kLong);
  labels[0][0][2][3] = 255;  // the largest label allowed
  EXPECT_TRUE(at::equal(drdm::warp_labels(labels, u, drdm::LabelInterpolation::kSoft), labels));
  for (int64_t bad : {int64_t{-1}, int64_t{256}, int64_t{70000}}) {
    labels[0][0][2][3] = bad;
    try {  // 70000 would be a 70001-channel one-hot map: refused before any allocation
      drdm::warp_labels(labels, u, drdm::LabelInterpolation::kSoft);
      FAIL() << "label " << bad << " accepted";
    } catch (const std::invalid_argument& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.rfind("warp_labels: ", 0), 0u) << m;
      EXPECT_NE(m.find(std::to_string(bad)), std::string::npos) << m;
      EXPECT_NE(m.find("nearest"), std::string::npos) << m;
    }
    EXPECT_EQ(drdm::warp_labels(labels, u, drdm::LabelInterpolation::kNearest)[0][0][2][3]
                  .item<int64_t>(),
              bad);
  }
}

TEST(WarpLabels, OneHotFloatIsWarpedPerChannel) {
  auto labels = at::randint(0, 3, {1, 1, 10, 10}, at::TensorOptions().dtype(at::kLong));
  auto one_hot = at::one_hot(labels.squeeze(1), 3).permute({0, 3, 1, 2}).to(at::kFloat);
  auto u = smooth_field({10, 10}, 1, 1.0, 8);
  auto soft = drdm::warp_labels(one_hot, u, drdm::LabelInterpolation::kSoft);
  EXPECT_EQ(soft.sizes(), one_hot.sizes());
  // Same decision as the class-map path: argmax, background where less than
  // half of the interpolation weight lies inside the image.
  auto expected = soft.argmax(1, true).masked_fill_(soft.sum(1, true).lt(0.5), 0);
  EXPECT_TRUE(at::equal(expected, drdm::warp_labels(labels, u, drdm::LabelInterpolation::kSoft)));
  EXPECT_THROW(drdm::warp_labels(at::zeros({1, 2, 10, 10}, at::kLong), u), std::exception);
}

// ---------------------------------------------- finite-difference checks

// Compares d(sum(w * f(x)))/dx from autograd with central differences at a
// few random entries of x (double precision).
void expect_gradient_matches(const std::function<at::Tensor(const at::Tensor&)>& f, at::Tensor x,
                             uint64_t seed, double tol = 1e-5) {
  x = x.detach().to(at::kDouble).requires_grad_(true);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto out0 = f(x);
  auto weights = at::randn(out0.sizes(), gen, at::TensorOptions().dtype(at::kDouble));
  (out0 * weights).sum().backward();
  auto grad = x.grad().clone();
  at::NoGradGuard no_grad;
  auto flat = x.detach().flatten();
  const double eps = 1e-6;
  for (int k = 0; k < 12; ++k) {
    const int64_t i =
        at::randint(flat.numel(), {1}, gen, at::TensorOptions().dtype(at::kLong)).item<int64_t>();
    auto xp = flat.clone(), xm = flat.clone();
    xp[i] += eps;
    xm[i] -= eps;
    const double fp = (f(xp.view(x.sizes())) * weights).sum().item<double>();
    const double fm = (f(xm.view(x.sizes())) * weights).sum().item<double>();
    const double numeric = (fp - fm) / (2 * eps);
    const double analytic = grad.flatten()[i].item<double>();
    EXPECT_NEAR(analytic, numeric, tol * std::max(1.0, std::abs(numeric))) << "entry " << i;
  }
}

TEST(Gradients, WarpWrtFieldAndImage) {
  auto img = smooth_image({12, 13}, at::kDouble);
  auto u = smooth_field({12, 13}, 1, 2.0, 51, at::kDouble) + 0.123;  // off-grid samples
  expect_gradient_matches([&](const at::Tensor& x) { return warp(img, x); }, u, 1);
  expect_gradient_matches([&](const at::Tensor& x) { return warp(x, u); }, img, 2);
  auto img3 = smooth_image({6, 7, 8}, at::kDouble);
  auto u3 = smooth_field({6, 7, 8}, 1, 1.5, 52, at::kDouble) + 0.123;
  expect_gradient_matches([&](const at::Tensor& x) { return warp(img3, x); }, u3, 3);
}

TEST(Gradients, ComposeWrtBothFields) {
  auto a = smooth_field({10, 11}, 1, 2.0, 61, at::kDouble) + 0.1;
  auto b = smooth_field({10, 11}, 1, 2.0, 62, at::kDouble);
  expect_gradient_matches([&](const at::Tensor& x) { return compose(x, b); }, a, 4);
  expect_gradient_matches([&](const at::Tensor& x) { return compose(a, x); }, b, 5);
}

TEST(Gradients, JacobianDeterminant) {
  auto u = smooth_field({5, 6, 7}, 1, 1.0, 71, at::kDouble);
  expect_gradient_matches([](const at::Tensor& x) { return drdm::jacobian_determinant(x); }, u, 6,
                          1e-6);
}

// ------------------------------------------------- CPU vs CUDA agreement

TEST(Spatial, CpuAndCudaAgree_CUDA) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto img = smooth_image({24, 26, 28});
  auto a = smooth_field({24, 26, 28}, 2, 3.0, 81);
  auto b = smooth_field({24, 26, 28}, 2, 3.0, 82);
  auto cuda = [](const at::Tensor& t) { return t.to(at::kCUDA); };
  EXPECT_LT(max_abs(warp(cuda(img), cuda(a)).cpu() - warp(img, a)), 1e-4);
  EXPECT_LT(max_abs(compose(cuda(a), cuda(b)).cpu() - compose(a, b)), 1e-4);
  EXPECT_LT(max_abs(drdm::integrate_scaling_squaring(cuda(a), 6).cpu() -
                    drdm::integrate_scaling_squaring(a, 6)),
            1e-3);
  EXPECT_LT(max_abs(drdm::jacobian_determinant(cuda(a)).cpu() - drdm::jacobian_determinant(a)),
            1e-4);
  auto labels = at::randint(0, 4, {2, 1, 24, 26, 28}, at::TensorOptions().dtype(at::kLong));
  auto l_cpu = drdm::warp_labels(labels, a, drdm::LabelInterpolation::kSoft);
  auto l_gpu = drdm::warp_labels(cuda(labels), cuda(a), drdm::LabelInterpolation::kSoft).cpu();
  EXPECT_GT(l_cpu.eq(l_gpu).to(at::kFloat).mean().item<float>(), 0.999);
  EXPECT_THROW(warp(cuda(img), a), std::exception);  // device mismatch is an error
}

}  // namespace
