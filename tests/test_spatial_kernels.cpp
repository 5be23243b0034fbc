// Tests for the direct CPU sampling kernels (src/core/spatial_kernels.h) against
// the ATen path (at::grid_sampler on a normalised grid, align_corners=true):
// values, gradients, finite differences, dispatch.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/spatial_kernels.h"
#include "drdm/core/spatial.h"

namespace {

using drdm::Interpolation;
using drdm::Padding;
using drdm::detail::grid_sample_aten;
using drdm::detail::sample_direct;

// Restores the kernel setting at the end of a scope.
struct KernelSetting {
  explicit KernelSetting(bool enabled) : old(drdm::detail::set_spatial_kernels_enabled(enabled)) {}
  ~KernelSetting() { drdm::detail::set_spatial_kernels_enabled(old); }
  bool old;
};

at::TensorOptions opts(at::ScalarType type) { return at::TensorOptions().dtype(type); }

std::vector<int64_t> shape_of(int64_t n, int64_t c, at::IntArrayRef size) {
  std::vector<int64_t> s{n, c};
  s.insert(s.end(), size.begin(), size.end());
  return s;
}

// Random image [n, c, ...size], values in [-1, 1).
at::Tensor random_image(int64_t n, int64_t c, at::IntArrayRef size, at::Generator& gen,
                        at::ScalarType type = at::kFloat) {
  return at::rand(shape_of(n, c, size), gen, opts(at::kDouble)).mul(2).sub(1).to(type);
}

// Random field [n, d, ...size] in voxels, uniform in [-amp, amp): per voxel,
// not smooth, so that many samples fall outside the image.
at::Tensor random_field(int64_t n, at::IntArrayRef size, double amp, at::Generator& gen,
                        at::ScalarType type = at::kFloat) {
  const auto d = static_cast<int64_t>(size.size());
  return at::rand(shape_of(n, d, size), gen, opts(at::kDouble)).mul(2 * amp).sub(amp).to(type);
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

// [N|1, 1, ...S] mask of the voxels whose sampling coordinate along no axis of
// size > 1 lies within 1e-4 of a half-integer (a rounding tie for nearest).
at::Tensor away_from_ties(const at::Tensor& field) {
  const auto size = field.sizes().slice(2);
  auto coord = drdm::identity_grid(size, opts(at::kDouble)) + field.to(at::kDouble);
  auto frac = coord - coord.floor();
  auto tie = (frac - 0.5).abs().lt(1e-4);
  for (int64_t i = 0; i < field.size(1); ++i)
    if (size[i] == 1) tie.select(1, i).fill_(false);
  return tie.any(1, /*keepdim=*/true).logical_not();
}

const Interpolation kModes[] = {Interpolation::kLinear, Interpolation::kNearest};
const Padding kPaddings[] = {Padding::kZeros, Padding::kBorder};

std::string describe(Interpolation m, Padding p) {
  return std::string(m == Interpolation::kLinear ? "linear" : "nearest") + "/" +
         (p == Padding::kZeros ? "zeros" : "border");
}

// ours == ATen for every mode and padding (nearest: away from ties). The
// reference is ATen in float64 on the same values; float32 results may be off
// by float rounding of the coordinate (about 2^-24 of the largest size) times
// the image's slope, and 1e-5 relative at least.
void expect_agrees(const at::Tensor& input, const at::Tensor& field, const std::string& what) {
  double tol = 1e-10;
  if (input.scalar_type() == at::kFloat) {
    const auto sizes = field.sizes().slice(2);
    const double extent = static_cast<double>(*std::max_element(sizes.begin(), sizes.end()));
    tol = std::max(1e-5, 4 * std::ldexp(extent, -24));
  }
  for (auto m : kModes) {
    for (auto p : kPaddings) {
      const auto ours = sample_direct(input, field, m, p);
      const auto ref = grid_sample_aten(input.to(at::kDouble), field.to(at::kDouble), m, p);
      ASSERT_EQ(ours.sizes(), ref.sizes()) << what << " " << describe(m, p);
      ASSERT_EQ(ours.scalar_type(), input.scalar_type());
      auto diff = (ours.to(at::kDouble) - ref).abs();
      if (m == Interpolation::kNearest) diff = diff * away_from_ties(field);
      const double scale = 1.0 + max_abs(ref);
      EXPECT_LE(diff.max().item<double>(), tol * scale) << what << " " << describe(m, p);
      EXPECT_GT(max_abs(ref), 0.0) << what;  // not a trivially zero comparison
    }
  }
}

struct AgreeCase {
  std::vector<int64_t> size;
  int64_t in_batch, field_batch, channels;
};

std::string case_name(const AgreeCase& c) {
  std::string s = "size";
  for (auto n : c.size) s += " " + std::to_string(n);
  return s + ", batch " + std::to_string(c.in_batch) + "/" + std::to_string(c.field_batch) +
         ", channels " + std::to_string(c.channels);
}

TEST(SpatialKernels, AgreeWithAtenOnRandomFields) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const std::vector<AgreeCase> cases{
      {{7, 9}, 1, 1, 1},    {{7, 9}, 2, 2, 3},    {{7, 9}, 3, 1, 2},      {{7, 9}, 1, 3, 2},
      {{1, 9}, 2, 2, 1},    {{8, 1}, 1, 1, 2},    {{5, 300}, 1, 1, 2},    {{5, 6, 7}, 1, 1, 1},
      {{5, 6, 7}, 2, 2, 3}, {{5, 6, 7}, 3, 1, 2}, {{5, 6, 7}, 1, 3, 3},   {{1, 6, 7}, 1, 1, 2},
      {{5, 1, 7}, 2, 1, 1}, {{5, 6, 1}, 1, 1, 3}, {{3, 4, 140}, 1, 1, 2},
  };
  for (const auto& c : cases) {
    for (auto type : {at::kFloat, at::kDouble}) {
      const auto input = random_image(c.in_batch, c.channels, c.size, gen, type);
      const auto field = random_field(c.field_batch, c.size, 4.0, gen, type);
      expect_agrees(input, field, case_name(c));
    }
  }
}

TEST(SpatialKernels, AgreeOnNonContiguousInputAndField) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(12);
  // 2D: the input a transposed view, the field every other column of a wider one.
  auto input2 = random_image(2, 3, {9, 7}, gen).transpose(2, 3);
  auto field2 = random_field(2, {7, 18}, 3.0, gen).slice(3, 0, 18, 2);
  ASSERT_FALSE(input2.is_contiguous());
  ASSERT_FALSE(field2.is_contiguous());
  expect_agrees(input2, field2, "2D views");
  // 3D: channels-last input, field with channels permuted and one sample sliced out.
  auto input3 = random_image(1, 2, {5, 6, 7}, gen).contiguous(at::MemoryFormat::ChannelsLast3d);
  ASSERT_FALSE(input3.is_contiguous());
  auto field3 = random_field(3, {5, 6, 7}, 3.0, gen)
                    .contiguous(at::MemoryFormat::ChannelsLast3d)
                    .slice(0, 1, 2);
  ASSERT_FALSE(field3.is_contiguous());
  expect_agrees(input3, field3, "3D views");
  expect_agrees(input3.expand({3, 2, 5, 6, 7}), random_field(1, {5, 6, 7}, 3.0, gen), "expanded");
}

TEST(SpatialKernels, IdentityFieldSamplesExactly) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(13);
  for (auto size : {std::vector<int64_t>{7, 9}, std::vector<int64_t>{5, 6, 7}}) {
    for (auto type : {at::kFloat, at::kDouble}) {
      const auto input = random_image(2, 3, size, gen, type);
      const auto zero = at::zeros(shape_of(1, size.size(), size), opts(type));
      for (auto m : kModes)
        for (auto p : kPaddings)
          EXPECT_TRUE(at::equal(sample_direct(input, zero, m, p), input)) << describe(m, p);
    }
  }
}

TEST(SpatialKernels, IntegerShiftsMoveVoxels) {
  // u = (1, -2): out[y, x] = in[y + 1, x - 2]; outside: 0 (zeros) or the edge (border).
  auto input = at::arange(20, opts(at::kFloat)).view({1, 1, 4, 5});
  auto field = at::stack({at::full({4, 5}, 1.0), at::full({4, 5}, -2.0)}).unsqueeze(0);
  auto zeros = sample_direct(input, field, Interpolation::kLinear, Padding::kZeros);
  auto border = sample_direct(input, field, Interpolation::kLinear, Padding::kBorder);
  EXPECT_EQ(zeros[0][0][0][2].item<float>(), 5.0f);    // in[1][0]
  EXPECT_EQ(zeros[0][0][2][4].item<float>(), 17.0f);   // in[3][2]
  EXPECT_EQ(zeros[0][0][3][4].item<float>(), 0.0f);    // y = 4 is outside
  EXPECT_EQ(zeros[0][0][1][1].item<float>(), 0.0f);    // x = -1 is outside
  EXPECT_EQ(border[0][0][3][4].item<float>(), 17.0f);  // y clipped to 3
  EXPECT_EQ(border[0][0][1][1].item<float>(), 10.0f);  // x clipped to 0
  auto half = sample_direct(input, field * 0.5, Interpolation::kLinear, Padding::kZeros);
  EXPECT_FLOAT_EQ(half[0][0][1][2].item<float>(), 0.5f * (6 + 11));  // in[1.5][1]
  EXPECT_FLOAT_EQ(half[0][0][3][3].item<float>(), 0.5f * 17);        // in[3.5][2]: half outside
}

TEST(SpatialKernels, NearestRoundsHalfToEven) {
  // x + 0.5: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4 (std::nearbyint, as ATen).
  auto input = at::arange(6, opts(at::kFloat)).view({1, 1, 1, 6});
  auto field = at::stack({at::zeros({1, 6}), at::full({1, 6}, 0.5)}).unsqueeze(0);
  auto out = sample_direct(input, field, Interpolation::kNearest, Padding::kZeros);
  EXPECT_TRUE(at::equal(out.flatten(), at::tensor({0.0f, 2.0f, 2.0f, 4.0f, 4.0f, 0.0f})))
      << out;  // 5.5 -> 6 is outside
  auto border = sample_direct(input, field, Interpolation::kNearest, Padding::kBorder);
  EXPECT_EQ(border.flatten()[5].item<float>(), 5.0f);
}

// Gradients of sum(out * w) for input and field, by the given sampler.
template <typename F>
std::pair<at::Tensor, at::Tensor> gradients(F sampler, const at::Tensor& input,
                                            const at::Tensor& field, const at::Tensor& w) {
  auto x = input.detach().clone().requires_grad_(true);
  auto u = field.detach().clone().requires_grad_(true);
  (sampler(x, u) * w).sum().backward();
  return {x.grad(), u.grad()};
}

void expect_gradients_agree(const at::Tensor& input, const at::Tensor& field, at::Generator& gen,
                            const std::string& what) {
  const double tol = input.scalar_type() == at::kDouble ? 1e-9 : 2e-4;
  for (auto m : kModes) {
    for (auto p : kPaddings) {
      const auto out = grid_sample_aten(input, field, m, p);
      const auto w = at::randn(out.sizes(), gen, opts(at::kDouble)).to(input.scalar_type());
      auto ours =
          gradients([&](auto& x, auto& u) { return sample_direct(x, u, m, p); }, input, field, w);
      auto ref = gradients([&](auto& x, auto& u) { return grid_sample_aten(x, u, m, p); }, input,
                           field, w);
      const std::string tag = what + " " + describe(m, p);
      ASSERT_TRUE(ours.first.defined() && ours.second.defined()) << tag;
      ASSERT_EQ(ours.first.sizes(), input.sizes()) << tag;
      ASSERT_EQ(ours.second.sizes(), field.sizes()) << tag;
      EXPECT_LE(max_abs(ours.first - ref.first), tol * (1 + max_abs(ref.first))) << tag;
      EXPECT_LE(max_abs(ours.second - ref.second), tol * (1 + max_abs(ref.second))) << tag;
      EXPECT_GT(max_abs(ref.first), 0.0) << tag;
      if (m == Interpolation::kLinear) EXPECT_GT(max_abs(ref.second), 0.0) << tag;
    }
  }
}

TEST(SpatialKernels, GradientsAgreeWithAten) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(14);
  const std::vector<AgreeCase> cases{
      {{7, 9}, 1, 1, 1},    {{7, 9}, 2, 2, 3},    {{7, 9}, 3, 1, 2},      {{7, 9}, 1, 3, 2},
      {{1, 9}, 1, 1, 2},    {{5, 6, 7}, 1, 1, 2}, {{5, 6, 7}, 2, 2, 3},   {{5, 6, 7}, 3, 1, 1},
      {{5, 6, 7}, 1, 3, 2}, {{5, 1, 7}, 1, 1, 3}, {{3, 4, 140}, 2, 1, 1},
  };
  for (const auto& c : cases) {
    for (auto type : {at::kDouble, at::kFloat}) {
      const auto input = random_image(c.in_batch, c.channels, c.size, gen, type);
      const auto field = random_field(c.field_batch, c.size, 3.0, gen, type);
      expect_gradients_agree(input, field, gen, case_name(c));
    }
  }
}

TEST(SpatialKernels, GradientsAgreeOnLargeBroadcastVolumes) {
  // Large enough for several threads (per-thread input-gradient buffers).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(15);
  for (auto nb : {std::pair<int64_t, int64_t>{1, 1}, {1, 2}, {2, 1}, {3, 3}}) {
    const auto input = random_image(nb.first, 3, {16, 18, 20}, gen, at::kDouble);
    const auto field = random_field(nb.second, {16, 18, 20}, 2.5, gen, at::kDouble);
    expect_gradients_agree(input, field, gen, "large " + std::to_string(nb.first));
  }
}

TEST(SpatialKernels, InputGradientOfBroadcastInputUnderContention) {
  // One input, four fields all sampling near the same voxel: every thread adds
  // into the same few input voxels (per-thread buffers must keep all of it).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(24);
  const std::vector<int64_t> size{24, 28, 32};
  const auto input = random_image(1, 2, size, gen, at::kDouble);
  const auto grid = drdm::identity_grid(size, opts(at::kDouble));
  const auto target = at::tensor({7.3, 8.6, 9.2}, opts(at::kDouble)).view({1, 3, 1, 1, 1});
  const auto field = (target - grid + random_field(4, size, 0.4, gen, at::kDouble)).contiguous();
  const auto w = at::randn({4, 2, 24, 28, 32}, gen, opts(at::kDouble));
  auto ours = gradients(
      [](auto& x, auto& u) { return sample_direct(x, u, Interpolation::kLinear, Padding::kZeros); },
      input, field, w);
  auto ref = gradients(
      [](auto& x, auto& u) {
        return grid_sample_aten(x, u, Interpolation::kLinear, Padding::kZeros);
      },
      input, field, w);
  EXPECT_LT(max_abs(ours.first - ref.first), 1e-9 * (1 + max_abs(ref.first)));
  EXPECT_LT(max_abs(ours.second - ref.second), 1e-9 * (1 + max_abs(ref.second)));
}

// Central differences of sum(sample(x, u) * w) at a few random entries of t.
void expect_finite_differences(const at::Tensor& input, const at::Tensor& field, Padding p,
                               bool wrt_field, at::Generator& gen) {
  const auto w = at::randn(grid_sample_aten(input, field, Interpolation::kLinear, p).sizes(), gen,
                           opts(at::kDouble));
  auto f = [&](const at::Tensor& x, const at::Tensor& u) {
    return (sample_direct(x, u, Interpolation::kLinear, p) * w).sum().item<double>();
  };
  auto grads =
      gradients([&](auto& x, auto& u) { return sample_direct(x, u, Interpolation::kLinear, p); },
                input, field, w);
  const auto& t = wrt_field ? field : input;
  const auto grad = (wrt_field ? grads.second : grads.first).flatten();
  const double eps = 1e-6;
  for (int k = 0; k < 10; ++k) {
    const int64_t i = at::randint(t.numel(), {1}, gen, opts(at::kLong)).item<int64_t>();
    auto plus = t.clone(), minus = t.clone();
    plus.view(-1)[i] += eps;
    minus.view(-1)[i] -= eps;
    const double numeric = wrt_field ? (f(input, plus) - f(input, minus)) / (2 * eps)
                                     : (f(plus, field) - f(minus, field)) / (2 * eps);
    EXPECT_NEAR(grad[i].item<double>(), numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
        << (wrt_field ? "field" : "input") << " entry " << i;
  }
}

TEST(SpatialKernels, GradientsMatchFiniteDifferences) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(16);
  for (auto size : {std::vector<int64_t>{7, 9}, std::vector<int64_t>{5, 6, 7}}) {
    const auto input = random_image(2, 2, size, gen, at::kDouble);
    // Mostly inside, some samples outside or clipped.
    const auto field = random_field(2, size, 2.0, gen, at::kDouble);
    for (auto p : kPaddings) {
      expect_finite_differences(input, field, p, /*wrt_field=*/true, gen);
      expect_finite_differences(input, field, p, /*wrt_field=*/false, gen);
    }
  }
}

TEST(SpatialKernels, GradientFlowsOnlyWhereAsked) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
  const auto input = random_image(1, 2, {6, 7}, gen);
  const auto field = random_field(1, {6, 7}, 2.0, gen).requires_grad_(true);
  auto out = sample_direct(input, field, Interpolation::kLinear, Padding::kBorder);
  EXPECT_TRUE(out.requires_grad());
  out.sum().backward();
  EXPECT_TRUE(field.grad().defined());
  EXPECT_FALSE(input.grad().defined());
  at::NoGradGuard no_grad;
  EXPECT_FALSE(
      sample_direct(input, field, Interpolation::kLinear, Padding::kZeros).requires_grad());
}

TEST(SpatialKernels, NearestGivesFieldZeroGradient) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(18);
  const auto input = random_image(1, 2, {6, 7}, gen).requires_grad_(true);
  const auto field = random_field(1, {6, 7}, 2.0, gen).requires_grad_(true);
  sample_direct(input, field, Interpolation::kNearest, Padding::kZeros).sum().backward();
  ASSERT_TRUE(field.grad().defined());
  EXPECT_EQ(max_abs(field.grad()), 0.0);
  EXPECT_GT(max_abs(input.grad()), 0.0);
}

TEST(SpatialKernels, ThreadCountDoesNotChangeResults) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(19);
  const auto input = random_image(1, 3, {24, 26, 28}, gen);
  const auto field = random_field(1, {24, 26, 28}, 3.0, gen);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = sample_direct(input, field, Interpolation::kLinear, Padding::kZeros);
  at::set_num_threads(std::max(2, threads));
  const auto many = sample_direct(input, field, Interpolation::kLinear, Padding::kZeros);
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(one, many));
}

TEST(SpatialKernels, Applicability) {
  auto f = at::zeros({1, 2, 4, 5});
  EXPECT_TRUE(drdm::detail::sample_direct_applicable(at::zeros({2, 3, 4, 5}), f));
  EXPECT_TRUE(drdm::detail::sample_direct_applicable(at::zeros({1, 3, 4, 5}, opts(at::kDouble)),
                                                     f.to(at::kDouble).expand({3, 2, 4, 5})));
  EXPECT_FALSE(
      drdm::detail::sample_direct_applicable(at::zeros({2, 3, 4, 5}, opts(at::kDouble)), f));
  EXPECT_FALSE(drdm::detail::sample_direct_applicable(at::zeros({2, 3, 4, 5}, opts(at::kBFloat16)),
                                                      f.to(at::kBFloat16)));
  EXPECT_FALSE(drdm::detail::sample_direct_applicable(at::zeros({2, 3, 4, 6}), f));
  EXPECT_FALSE(
      drdm::detail::sample_direct_applicable(at::zeros({2, 3, 0, 5}), at::zeros({1, 2, 0, 5})));
  EXPECT_THROW(sample_direct(at::zeros({2, 3, 4, 6}), f, Interpolation::kLinear, Padding::kZeros),
               std::exception);
}

TEST(SpatialKernels, SettingSelectsThePath) {
  const char* env = std::getenv("DRDM_SPATIAL_KERNELS");
  const bool by_env = !(env && std::strcmp(env, "aten") == 0);
  EXPECT_EQ(drdm::detail::spatial_kernels_enabled(), by_env);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20);
  const auto image = random_image(2, 1, {5, 6, 7}, gen);
  const auto a = random_field(2, {5, 6, 7}, 2.0, gen);
  const auto b = random_field(2, {5, 6, 7}, 2.0, gen);
  for (bool on : {true, false}) {
    KernelSetting setting(on);
    auto sampler = [&](const at::Tensor& x, const at::Tensor& u, Interpolation m, Padding p) {
      return on ? sample_direct(x, u, m, p) : grid_sample_aten(x, u, m, p);
    };
    EXPECT_TRUE(at::equal(drdm::warp(image, a),
                          sampler(image, a, Interpolation::kLinear, Padding::kZeros)));
    EXPECT_TRUE(at::equal(drdm::warp(image, a, Interpolation::kNearest, Padding::kBorder),
                          sampler(image, a, Interpolation::kNearest, Padding::kBorder)));
    EXPECT_TRUE(at::equal(drdm::compose(a, b),
                          a + sampler(b, a, Interpolation::kLinear, Padding::kBorder)));
    auto phi = a + sampler(a, a, Interpolation::kLinear, Padding::kBorder);
    phi = a + sampler(phi, a, Interpolation::kLinear, Padding::kBorder);
    EXPECT_TRUE(at::equal(drdm::compose_power(a, 3), phi));
    EXPECT_TRUE(at::equal(drdm::compose_power(a, std::vector<int64_t>{3, 3}), phi));
  }
}

TEST(SpatialKernels, ComposeDirectAddsTheField) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
  const std::vector<std::vector<int64_t>> sizes{{7, 9}, {5, 6, 7}, {6, 1}, {4, 5, 1}, {3, 4, 131}};
  for (const auto& size : sizes) {
    for (auto type : {at::kFloat, at::kDouble}) {
      for (auto nb : {std::pair<int64_t, int64_t>{2, 2}, {1, 3}, {3, 1}}) {
        const auto a = random_field(nb.first, size, 3.0, gen, type);
        const auto b = random_field(nb.second, size, 3.0, gen, type);
        const auto expected = a + sample_direct(b, a, Interpolation::kLinear, Padding::kBorder);
        EXPECT_TRUE(at::equal(drdm::detail::compose_direct(a, b), expected)) << size.size();
        const auto ref =
            a.to(at::kDouble) + grid_sample_aten(b.to(at::kDouble), a.to(at::kDouble),
                                                 Interpolation::kLinear, Padding::kBorder);
        EXPECT_LT(max_abs(drdm::detail::compose_direct(a, b).to(at::kDouble) - ref), 1e-4);
      }
    }
  }
}

TEST(SpatialKernels, AtenPathStillDifferentiable) {
  KernelSetting aten(false);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(21);
  const auto image = random_image(1, 1, {6, 7}, gen, at::kDouble).requires_grad_(true);
  const auto field = random_field(1, {6, 7}, 1.5, gen, at::kDouble).requires_grad_(true);
  drdm::warp(image, field).sum().backward();
  EXPECT_GT(max_abs(image.grad()), 0.0);
  EXPECT_GT(max_abs(field.grad()), 0.0);
}

TEST(SpatialKernels, ComposePowerMatchesAtenPath) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(22);
  const auto v = random_field(3, {9, 10, 11}, 0.8, gen, at::kDouble);
  const std::vector<int64_t> counts{0, 1, 6};
  at::Tensor ours_n, ours_counts;
  {
    KernelSetting on(true);
    ours_n = drdm::compose_power(v, 6);
    ours_counts = drdm::compose_power(v, counts);
  }
  KernelSetting off(false);
  EXPECT_LT(max_abs(ours_n - drdm::compose_power(v, 6)), 1e-9);
  EXPECT_LT(max_abs(ours_counts - drdm::compose_power(v, counts)), 1e-9);
  EXPECT_EQ(max_abs(ours_counts[0]), 0.0);
}

}  // namespace
