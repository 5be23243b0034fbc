#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "drdm/core/spatial.h"
#include "drdm/diffusion/losses.h"

namespace {

using drdm::angle_loss;
using drdm::distance_loss;
using drdm::folding_loss;
using drdm::recovery_loss;
using drdm::smoothness_loss;

double val(const at::Tensor& t) { return t.item<double>(); }

std::vector<int64_t> field_shape(int64_t n, std::vector<int64_t> size) {
  std::vector<int64_t> shape{n, static_cast<int64_t>(size.size())};
  shape.insert(shape.end(), size.begin(), size.end());
  return shape;
}

/// Field equal to the constant vector c everywhere: [n, d, ...size].
at::Tensor constant_field(int64_t n, std::vector<int64_t> size, std::vector<double> c,
                          at::ScalarType dtype = at::kFloat) {
  auto f = at::zeros(field_shape(n, size), at::TensorOptions().dtype(dtype));
  for (size_t i = 0; i < c.size(); ++i) f.select(1, static_cast<int64_t>(i)).fill_(c[i]);
  return f;
}

/// Linear field u(x) = A x (A row-major d x d): u_c = sum_j A_cj x_j, [1, d, ...size].
at::Tensor linear_field(std::vector<int64_t> size, std::vector<double> A,
                        at::ScalarType dtype = at::kFloat) {
  const int64_t d = static_cast<int64_t>(size.size());
  auto grid = drdm::identity_grid(size, at::TensorOptions().dtype(dtype));
  auto f = at::zeros_like(grid);
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < d; ++j)
      f.select(1, c).add_(grid.select(1, j) * A[static_cast<size_t>(c * d + j)]);
  return f;
}

/// Smooth random field: per channel, a sum of three plane waves with random
/// amplitude (up to `amp`), wave vector (|k_j| <= 0.8 rad/voxel) and phase.
at::Tensor smooth_field(int64_t n, std::vector<int64_t> size, double amp, unsigned seed,
                        at::ScalarType dtype = at::kDouble) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  const int64_t d = static_cast<int64_t>(size.size());
  auto grid = drdm::identity_grid(size, at::TensorOptions().dtype(dtype));
  auto f = at::zeros(field_shape(n, size), at::TensorOptions().dtype(dtype));
  for (int64_t b = 0; b < n; ++b)
    for (int64_t c = 0; c < d; ++c)
      for (int w = 0; w < 3; ++w) {
        auto phase = at::full_like(grid.select(1, 0), u(rng) * M_PI);
        for (int64_t j = 0; j < d; ++j) phase = phase + grid.select(1, j) * (0.8 * u(rng));
        f[b][c].add_((amp / 3.0 * u(rng)) * at::sin(phase)[0]);
      }
  return f;
}

// ---------------------------------------------------------------------------
// 1. Exact inverse, no recovery, wrong-way recovery.

void check_constant_shift(std::vector<int64_t> size, std::vector<double> c) {
  const double eps = 1e-3;
  double n2 = 0;
  for (double ci : c) n2 += ci * ci;
  const double norm = std::sqrt(n2);
  auto psi = constant_field(2, size, c);
  std::vector<double> minus_c;
  for (double ci : c) minus_c.push_back(-ci);

  // Perfect recovery: compose(psi, -psi) == 0.
  auto inverse = constant_field(2, size, minus_c);
  EXPECT_LT(val(distance_loss(psi, inverse, eps)), 1e-6);
  EXPECT_NEAR(val(angle_loss(psi, inverse, eps)), -n2 / (n2 + eps), 1e-6);
  EXPECT_NEAR(val(angle_loss(psi, inverse, eps)), -1.0, 1e-3);

  // No recovery: distance ||psi|| / (||psi|| + eps), cosine 0.
  auto zero = at::zeros_like(psi);
  EXPECT_NEAR(val(distance_loss(psi, zero, eps)), norm / (norm + eps), 1e-6);
  EXPECT_EQ(val(angle_loss(psi, zero, eps)), 0.0);

  // Wrong way: psi_hat = psi doubles the displacement, cosine +1.
  EXPECT_NEAR(val(distance_loss(psi, psi, eps)), 2 * norm / (norm + eps), 1e-6);
  EXPECT_NEAR(val(distance_loss(psi, psi, eps)), 2.0, 2e-3);
  EXPECT_NEAR(val(angle_loss(psi, psi, eps)), n2 / (n2 + eps), 1e-6);
  EXPECT_NEAR(val(angle_loss(psi, psi, eps)), 1.0, 1e-3);
}

TEST(Losses, ConstantShiftExactInverse2D) { check_constant_shift({5, 6}, {1.5, -0.5}); }
TEST(Losses, ConstantShiftExactInverse3D) { check_constant_shift({4, 5, 6}, {0.7, -1.2, 2.0}); }

TEST(Losses, EpsIsInVoxels) {
  // A step of 1e-3 voxels with eps = 1e-3 counts half: ||psi|| / (||psi|| + eps).
  auto psi = constant_field(1, {4, 4}, {1e-3, 0.0}, at::kDouble);
  EXPECT_NEAR(val(distance_loss(psi, at::zeros_like(psi), 1e-3)), 0.5, 1e-12);
}

// ---------------------------------------------------------------------------
// 2. Smoothness on analytic fields.

TEST(Losses, SmoothnessOfLinearFieldIsMeanAbsMatrixInImageUnits) {
  // u_i = sum_j A_ij x_j; component i is measured in units of S_i.
  const std::vector<double> A2{0.3, -1.2, 0.05, 2.0};
  const std::vector<double> S2{6, 9};
  double m2 = 0;
  for (int i = 0; i < 4; ++i) m2 += std::abs(A2[i]) / S2[i / 2] / 4.0;
  EXPECT_NEAR(val(smoothness_loss(linear_field({6, 9}, A2))), m2, 1e-6);

  const std::vector<double> A3{0.3, -1.2, 0.05, 2.0, -0.4, 0.0, 0.7, 0.1, -0.9};
  const std::vector<double> S3{4, 5, 7};
  double m3 = 0;
  for (int i = 0; i < 9; ++i) m3 += std::abs(A3[i]) / S3[i / 3] / 9.0;
  EXPECT_NEAR(val(smoothness_loss(linear_field({4, 5, 7}, A3))), m3, 1e-6);
}

TEST(Losses, SmoothnessOfConstantFieldIsZero) {
  EXPECT_EQ(val(smoothness_loss(constant_field(2, {5, 6}, {1.5, -3.0}))), 0.0);
  EXPECT_EQ(val(smoothness_loss(constant_field(1, {3, 4, 5}, {1.0, 2.0, 3.0}))), 0.0);
}

TEST(Losses, SmoothnessAveragesOverVoxelsChannelsAxes) {
  // u = (x0^2, 0) on 5 x 4: along axis 0 channel 0 differs by 1, 3, 5, 7
  // (mean 4, in units of the axis size 5: 0.8), channel 1 by 0; along axis 1
  // nothing changes: ((0.8 + 0) / 2 + 0) / 2 = 0.2.
  auto grid = drdm::identity_grid({5, 4}, at::TensorOptions().dtype(at::kDouble));
  auto u = at::zeros_like(grid);
  u.select(1, 0).copy_(grid.select(1, 0).pow(2));
  EXPECT_NEAR(val(smoothness_loss(u)), 0.2, 1e-12);
}

// ---------------------------------------------------------------------------
// 3. Folding, and the authors' bug.
//
// The authors' penalty (Diffusion/losses.py, Grad._eq_diffs / _eval_detJ),
// re-expressed here from its description: _eq_diffs returns, for each axis i,
// TWO copies of the forward difference along axis i (one zero-padded at the
// front, one at the back), in the order [d0_back, d0_fwd, d1_back, d1_fwd,
// ...]; _eval_detJ then takes entries 0, 1 (and 2 in 3D) of that list as if
// they were the derivatives along axes 0, 1 (, 2). So the "Jacobian" uses the
// derivative along axis 0 twice (shifted by one voxel), never sees the last
// axis, and has no identity: it is det(grad u), not det(I + grad u). Its rows
// are nearly equal for any smooth field, so the determinant is ~0 and
// relu(-det) never penalises a fold.
std::vector<at::Tensor> flawed_eq_diffs(const at::Tensor& y) {
  std::vector<at::Tensor> df;
  for (int64_t dim = 2; dim < y.dim(); ++dim) {
    const int64_t n = y.size(dim);
    auto dy = y.narrow(dim, 1, n - 1) - y.narrow(dim, 0, n - 1);
    auto zero = at::zeros_like(y.narrow(dim, 0, 1));
    df.push_back(at::cat({zero, dy}, dim));  // padded at the front
    df.push_back(at::cat({dy, zero}, dim));  // padded at the back
  }
  return df;
}

double flawed_folding(const at::Tensor& u) {
  auto df = flawed_eq_diffs(u);
  auto g = [&](int r, int64_t c) { return df[static_cast<size_t>(r)].select(1, c); };
  at::Tensor det;
  if (u.size(1) == 2) {
    det = g(0, 0) * g(1, 1) - g(0, 1) * g(1, 0);
  } else {
    det = g(0, 0) * g(1, 1) * g(2, 2) + g(0, 1) * g(1, 2) * g(2, 0) + g(0, 2) * g(1, 0) * g(2, 1) -
          g(0, 2) * g(1, 1) * g(2, 0) - g(0, 0) * g(1, 2) * g(2, 1) - g(0, 1) * g(1, 0) * g(2, 2);
  }
  return val(at::relu(-det).mean());  // (their code further multiplies by detj_weight = 2)
}

// This is the test that would have caught the authors' bug: a field that
// folds must be penalised by its analytic amount. Their formula scores 0 on
// every one of these folds; ours gives the exact value.
TEST(Losses, FoldingPenaltyCatchesFoldsTheAuthorsFormulaMisses) {
  // u = diag(-2, 0) x: x -> (-x0, x1), a mirror: det(I + grad u) = -1 everywhere.
  auto mirror2 = linear_field({6, 7}, {-2.0, 0.0, 0.0, 0.0});
  EXPECT_NEAR(val(folding_loss(mirror2)), 1.0, 1e-6);
  EXPECT_EQ(flawed_folding(mirror2), 0.0);

  // u = diag(-3, 0.5) x: det = (1 - 3)(1 + 0.5) = -3.
  auto stretch_mirror = linear_field({6, 7}, {-3.0, 0.0, 0.0, 0.5});
  EXPECT_NEAR(val(folding_loss(stretch_mirror)), 3.0, 1e-5);
  EXPECT_EQ(flawed_folding(stretch_mirror), 0.0);

  // A fold in a region only: u0 = -2 x0 on the columns x1 < 3 of 7, else 0;
  // u1 = 0. det = 1 + d u0/d x0 = -1 there, +1 elsewhere: penalty 3/7.
  auto region = at::zeros({1, 2, 6, 7}, at::kFloat);
  auto grid = drdm::identity_grid({6, 7});
  region.select(1, 0).narrow(2, 0, 3).copy_(grid.select(1, 0).narrow(2, 0, 3) * -2.0);
  EXPECT_NEAR(val(folding_loss(region)), 3.0 / 7.0, 1e-6);
  EXPECT_EQ(flawed_folding(region), 0.0);

  // 3D mirrors, along the first and along the last axis (which the flawed
  // formula never differentiates along).
  auto mirror3_first = linear_field({4, 5, 6}, {-2, 0, 0, 0, 0, 0, 0, 0, 0});
  auto mirror3_last = linear_field({4, 5, 6}, {0, 0, 0, 0, 0, 0, 0, 0, -2});
  EXPECT_NEAR(val(folding_loss(mirror3_first)), 1.0, 1e-6);
  EXPECT_NEAR(val(folding_loss(mirror3_last)), 1.0, 1e-6);
  EXPECT_EQ(flawed_folding(mirror3_first), 0.0);
  EXPECT_EQ(flawed_folding(mirror3_last), 0.0);

  // Non-folding fields: exactly zero penalty.
  EXPECT_EQ(val(folding_loss(at::zeros({2, 2, 6, 7}))), 0.0);
  EXPECT_EQ(val(folding_loss(at::zeros({1, 3, 4, 5, 6}))), 0.0);
  auto gentle2 = smooth_field(2, {16, 17}, 0.4, 11, at::kFloat);
  auto gentle3 = smooth_field(1, {6, 7, 8}, 0.4, 12, at::kFloat);
  ASSERT_GT(val(drdm::jacobian_determinant(gentle2).min()), 0.0);
  ASSERT_GT(val(drdm::jacobian_determinant(gentle3).min()), 0.0);
  EXPECT_EQ(val(folding_loss(gentle2)), 0.0);
  EXPECT_EQ(val(folding_loss(gentle3)), 0.0);
}

// ---------------------------------------------------------------------------
// 4. Gradients against central finite differences (double precision).

using ScalarFn = std::function<at::Tensor(const at::Tensor&)>;

void check_gradient(const ScalarFn& f, const at::Tensor& x0, unsigned seed, const char* what) {
  auto x = x0.detach().clone().requires_grad_(true);
  auto loss = f(x);
  ASSERT_EQ(loss.dim(), 0) << what;
  loss.backward();
  auto grad = x.grad().contiguous();
  ASSERT_TRUE(grad.defined()) << what;

  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> pick(0, x0.numel() - 1);
  const double h = 1e-6;
  int nonzero = 0;
  for (int k = 0; k < 8; ++k) {
    const int64_t i = pick(rng);
    auto xp = x0.detach().clone().contiguous();
    auto xm = xp.clone();
    xp.view(-1)[i] += h;
    xm.view(-1)[i] -= h;
    const double fd = (val(f(xp)) - val(f(xm))) / (2 * h);
    const double ad = grad.view(-1)[i].item<double>();
    EXPECT_NEAR(ad, fd, 1e-5 * std::max(std::abs(fd), std::abs(ad)) + 1e-9)
        << what << " entry " << i;
    if (std::abs(fd) > 1e-6) ++nonzero;
  }
  EXPECT_GE(nonzero, 4) << what << ": too few informative entries checked";
}

/// psi_hat that folds on part of the grid: u0 = k(x_last) x0 with k from -1.9
/// to -0.3 across the last axis (det ~ 1 + k), plus gentle ramps on every
/// other (channel, axis) pair (so that no forward difference is near 0) and
/// small smooth noise.
at::Tensor partly_folding_field(std::vector<int64_t> size, unsigned seed) {
  const int64_t d = static_cast<int64_t>(size.size());
  auto grid = drdm::identity_grid(size, at::TensorOptions().dtype(at::kDouble));
  auto k = at::linspace(-1.9, -0.3, size.back(), at::kDouble);
  std::vector<int64_t> kshape(static_cast<size_t>(d + 2), 1);
  kshape.back() = size.back();
  auto u = smooth_field(1, size, 0.03, seed);
  u.select(1, 0).add_((grid * k.view(kshape)).select(1, 0));
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < d; ++j)
      if (c != 0 || j != 0) u.select(1, c).add_(grid.select(1, j) * (0.1 + 0.04 * c + 0.02 * j));
  return u;
}

/// No value may sit within `margin` of a kink of relu(-det) or |diff|.
void expect_away_from_kinks(const at::Tensor& u, double margin) {
  auto det = drdm::jacobian_determinant(u);
  ASSERT_GT(val(det.abs().min()), margin);
  ASSERT_LT(val(det.min()), 0.0);  // some folding: relu active
  ASSERT_GT(val(det.max()), 0.0);  // and some not
  for (int64_t dim = 2; dim < u.dim(); ++dim) {
    const int64_t n = u.size(dim);
    auto diff = u.narrow(dim, 1, n - 1) - u.narrow(dim, 0, n - 1);
    ASSERT_GT(val(diff.abs().min()), margin);
  }
}

void check_all_gradients(std::vector<int64_t> size, unsigned seed) {
  auto psi = smooth_field(1, size, 1.5, seed);
  auto psi_hat = partly_folding_field(size, seed + 100);
  expect_away_from_kinks(psi_hat, 1e-4);
  auto smooth_hat = smooth_field(1, size, 1.0, seed + 200);

  check_gradient([&](const at::Tensor& x) { return distance_loss(psi, x); }, smooth_hat, seed,
                 "distance_loss");
  check_gradient([&](const at::Tensor& x) { return angle_loss(psi, x); }, smooth_hat, seed + 1,
                 "angle_loss");
  check_gradient([&](const at::Tensor& x) { return distance_loss(psi, x); }, psi_hat, seed + 2,
                 "distance_loss (folding psi_hat)");
  check_gradient([&](const at::Tensor& x) { return angle_loss(psi, x); }, psi_hat, seed + 3,
                 "angle_loss (folding psi_hat)");
  check_gradient([](const at::Tensor& x) { return smoothness_loss(x); }, psi_hat, seed + 4,
                 "smoothness_loss");
  check_gradient([](const at::Tensor& x) { return folding_loss(x); }, psi_hat, seed + 5,
                 "folding_loss");
  check_gradient([&](const at::Tensor& x) { return recovery_loss(psi, x).total; }, psi_hat,
                 seed + 6, "recovery_loss");
}

TEST(Losses, GradientsMatchFiniteDifferences2D) { check_all_gradients({6, 7}, 1); }
TEST(Losses, GradientsMatchFiniteDifferences3D) { check_all_gradients({4, 5, 6}, 2); }

TEST(Losses, GradientIsFiniteAtPerfectRecovery) {
  auto psi = constant_field(1, {5, 6}, {1.0, -0.5}, at::kDouble);
  auto psi_hat = (-psi).requires_grad_(true);
  recovery_loss(psi, psi_hat).total.backward();
  EXPECT_TRUE(at::isfinite(psi_hat.grad()).all().item<bool>());
}

// ---------------------------------------------------------------------------
// 5. Bad input.

void expect_error_naming(const std::function<void()>& f, const std::string& name) {
  try {
    f();
    ADD_FAILURE() << name << ": expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
}

TEST(Losses, RejectsBadInput) {
  auto f2 = at::zeros({1, 2, 5, 6});
  auto f3 = at::zeros({1, 3, 4, 5, 6});
  auto other_grid = at::zeros({1, 2, 5, 7});
  auto wrong_channels = at::zeros({1, 3, 5, 6});
  auto too_few_axes = at::zeros({1, 1, 5});
  auto integer = at::zeros({1, 2, 5, 6}, at::kLong);

  expect_error_naming([&] { distance_loss(f2, other_grid); }, "distance_loss");
  expect_error_naming([&] { distance_loss(f2, f3); }, "distance_loss");
  expect_error_naming([&] { angle_loss(f2, other_grid); }, "angle_loss");
  expect_error_naming([&] { angle_loss(wrong_channels, wrong_channels); }, "angle_loss");
  expect_error_naming([&] { recovery_loss(f2, other_grid); }, "recovery_loss");
  expect_error_naming([&] { recovery_loss(integer, integer); }, "recovery_loss");
  expect_error_naming([&] { distance_loss(f2, f2.to(at::kDouble)); }, "distance_loss");
  expect_error_naming([&] { smoothness_loss(wrong_channels); }, "smoothness_loss");
  expect_error_naming([&] { smoothness_loss(too_few_axes); }, "smoothness_loss");
  expect_error_naming([&] { smoothness_loss(at::Tensor()); }, "smoothness_loss");
  expect_error_naming([&] { folding_loss(at::zeros({1, 2, 4, 5, 6})); }, "folding_loss");
  expect_error_naming([&] { folding_loss(integer); }, "folding_loss");
  expect_error_naming([&] { distance_loss(f2, f2, 0.0); }, "distance_loss");
}

// ---------------------------------------------------------------------------
// 6. recovery_loss = weighted sum of its terms.

TEST(Losses, RecoveryLossIsTheWeightedSumOfItsTerms) {
  auto psi = smooth_field(2, {8, 9}, 1.5, 21, at::kFloat);
  auto psi_hat = smooth_field(2, {8, 9}, 1.0, 22, at::kFloat);
  psi_hat.select(1, 0).add_(linear_field({8, 9}, {-1.5, 0, 0, 0}).select(1, 0));  // some folding

  drdm::LossWeights w;
  w.distance = 2.0;
  w.angle = 3.0;
  w.regularisation = 0.5;
  w.eps = 0.25;
  auto t = recovery_loss(psi, psi_hat, w);
  for (const auto* term : {&t.total, &t.distance, &t.angle, &t.smoothness, &t.folding}) {
    ASSERT_TRUE(term->defined());
    EXPECT_EQ(term->dim(), 0);
  }
  EXPECT_NEAR(val(t.distance), val(distance_loss(psi, psi_hat, 0.25)), 1e-6);
  EXPECT_NEAR(val(t.angle), val(angle_loss(psi, psi_hat, 0.25)), 1e-6);
  EXPECT_NEAR(val(t.smoothness), val(smoothness_loss(psi_hat)), 1e-6);
  EXPECT_NEAR(val(t.folding), val(folding_loss(psi_hat)), 1e-6);
  EXPECT_GT(val(t.folding), 0.0);
  EXPECT_NEAR(
      val(t.total),
      2.0 * val(t.distance) + 3.0 * val(t.angle) + 0.5 * (val(t.smoothness) + val(t.folding)),
      1e-5);

  // Defaults: lambda = (1, 1, 10), eps = 1e-3.
  auto d = recovery_loss(psi, psi_hat);
  EXPECT_NEAR(val(d.distance), val(distance_loss(psi, psi_hat)), 1e-6);
  EXPECT_NEAR(val(d.total),
              val(d.distance) + val(d.angle) + 10.0 * (val(d.smoothness) + val(d.folding)), 1e-5);

  // A zero weight removes its term.
  drdm::LossWeights only_distance;
  only_distance.angle = 0.0;
  only_distance.regularisation = 0.0;
  EXPECT_NEAR(val(recovery_loss(psi, psi_hat, only_distance).total), val(d.distance), 1e-6);
}

// ---------------------------------------------------------------------------
// Same results on CUDA as on the CPU (when a GPU is present).

TEST(Losses, CudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto psi = smooth_field(2, {8, 9, 10}, 1.5, 31, at::kFloat);
  auto psi_hat = smooth_field(2, {8, 9, 10}, 1.0, 32, at::kFloat);
  psi_hat.select(1, 2).add_(linear_field({8, 9, 10}, {0, 0, 0, 0, 0, 0, 0, 0, -1.5}).select(1, 2));
  auto cpu = recovery_loss(psi, psi_hat);
  auto gpu_hat = psi_hat.to(at::kCUDA).requires_grad_(true);
  auto gpu = recovery_loss(psi.to(at::kCUDA), gpu_hat);
  EXPECT_TRUE(gpu.total.is_cuda());
  EXPECT_NEAR(val(gpu.total.cpu()), val(cpu.total), 1e-4 * std::abs(val(cpu.total)));
  EXPECT_NEAR(val(gpu.distance.cpu()), val(cpu.distance), 1e-5);
  EXPECT_NEAR(val(gpu.angle.cpu()), val(cpu.angle), 1e-5);
  EXPECT_NEAR(val(gpu.smoothness.cpu()), val(cpu.smoothness), 1e-5);
  EXPECT_NEAR(val(gpu.folding.cpu()), val(cpu.folding), 1e-5);
  gpu.total.backward();
  EXPECT_TRUE(at::isfinite(gpu_hat.grad()).all().item<bool>());
}

}  // namespace
