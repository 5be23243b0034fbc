// Tests for drdm/seg/bigaug.h. Expected values come from closed forms
// (Gaussian, pow, rotation matrices) computed here, not from the library.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "drdm/core/spatial.h"
#include "drdm/seg/bigaug.h"

namespace {

using drdm::seg::BigAugOptions;
using drdm::seg::BigAugSample;
using T = BigAugSample;
constexpr double kPi = 3.14159265358979323846;

at::Generator generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// One sample that runs only the listed transforms.
BigAugSample only(std::initializer_list<int> transforms) {
  BigAugSample s;
  for (int t : transforms) s.applied[t] = true;
  return s;
}

std::vector<int64_t> shape_of(at::IntArrayRef size, int64_t n = 1, int64_t c = 1) {
  std::vector<int64_t> shape{n, c};
  shape.insert(shape.end(), size.begin(), size.end());
  return shape;
}

// [1, 1, ...size] isotropic Gaussian blob of width `sigma` centred at `centre`.
at::Tensor blob(at::IntArrayRef size, const std::vector<double>& centre, double sigma) {
  auto grid = drdm::identity_grid(size, at::kDouble);
  auto r2 = at::zeros_like(grid.select(1, 0));
  for (size_t i = 0; i < centre.size(); ++i)
    r2 += (grid.select(1, static_cast<int64_t>(i)) - centre[i]).pow(2);
  return at::exp(-0.5 * r2 / (sigma * sigma)).unsqueeze(1).to(at::kFloat);
}

// Intensity-weighted centroid of a [1, 1, ...S] image, in voxels.
std::vector<double> centroid(const at::Tensor& image) {
  auto w = image.to(at::kDouble).clamp_min(0).squeeze(1);
  auto grid = drdm::identity_grid(image.sizes().slice(2), at::kDouble);
  std::vector<double> out;
  for (int64_t i = 0; i < grid.size(1); ++i)
    out.push_back(((grid.select(1, i) * w).sum() / w.sum()).item<double>());
  return out;
}

std::vector<double> centre_of(at::IntArrayRef size) {
  std::vector<double> c;
  for (auto s : size) c.push_back(0.5 * static_cast<double>(s - 1));
  return c;
}

// Labels [n, 1, ...size]: nested boxes of classes `classes` (first = background).
at::Tensor box_labels(at::IntArrayRef size, int64_t n, const std::vector<int64_t>& classes) {
  auto l = at::full(shape_of(size, n), classes[0], at::kLong);
  for (size_t k = 1; k < classes.size(); ++k) {
    auto view = l;
    for (int64_t i = 0; i < static_cast<int64_t>(size.size()); ++i) {
      const int64_t margin =
          static_cast<int64_t>(k) * size[i] / (2 * static_cast<int64_t>(classes.size()) + 1);
      view = view.narrow(2 + i, margin + static_cast<int64_t>(k),
                         size[i] - 2 * margin - static_cast<int64_t>(k));
    }
    view.fill_(classes[k]);
  }
  return l;
}

std::set<int64_t> values(const at::Tensor& labels) {
  auto u = std::get<0>(at::_unique(labels.flatten()));
  std::set<int64_t> out;
  for (int64_t i = 0; i < u.numel(); ++i) out.insert(u[i].item<int64_t>());
  return out;
}

// ---------------------------------------------------------------- blur

TEST(BigAugBlur, DeltaImpulseMatchesAnalyticGaussian) {
  const double sigma = 1.2;
  auto x = at::zeros({2, 1, 21, 21});
  x.select(2, 10).select(2, 10).fill_(1.0);
  auto y = drdm::seg::gaussian_blur(x, {sigma, 0.0});
  EXPECT_TRUE(at::equal(y[1], x[1]));  // sigma 0: untouched
  EXPECT_NEAR(y[0].sum().item<double>(), 1.0, 1e-5);
  const double centre = y[0][0][10][10].item<double>();
  for (int a = -3; a <= 3; ++a)
    for (int b = -3; b <= 3; ++b)
      EXPECT_NEAR(y[0][0][10 + a][10 + b].item<double>() / centre,
                  std::exp(-(a * a + b * b) / (2 * sigma * sigma)), 1e-5)
          << a << "," << b;
  // Centre value of a sampled Gaussian normalised on [-ceil(4 sigma), ceil(4 sigma)]^2.
  double z = 0;
  for (int t = -5; t <= 5; ++t) z += std::exp(-t * t / (2 * sigma * sigma));
  EXPECT_NEAR(centre, 1.0 / (z * z), 1e-6);
}

TEST(BigAugBlur, DeltaImpulse3DAndVarianceDrops) {
  const double sigma = 0.8;
  auto x = at::zeros({1, 1, 11, 13, 15});
  x.index_put_({0, 0, 5, 6, 7}, 1.0);
  auto y = drdm::seg::gaussian_blur(x, {sigma});
  const double c = y[0][0][5][6][7].item<double>();
  EXPECT_NEAR(y[0][0][6][7][8].item<double>() / c, std::exp(-3 / (2 * sigma * sigma)), 1e-5);
  EXPECT_NEAR(y[0][0][5][6][9].item<double>() / c, std::exp(-4 / (2 * sigma * sigma)), 1e-5);
  auto gen = generator(3);
  auto noise = at::rand({1, 2, 40, 40}, gen);
  auto smooth = drdm::seg::gaussian_blur(noise, {1.0});
  EXPECT_LT(smooth.var().item<double>(), 0.3 * noise.var().item<double>());
  EXPECT_NEAR(smooth.mean().item<double>(), noise.mean().item<double>(), 5e-3);
}

// ---------------------------------------------------------------- sharpen

TEST(BigAugSharpen, IncreasesEdgeContrastAndKeepsFlatRegions) {
  // A unit step: with alpha 30 the pair across the edge differs by more than the step.
  auto x = at::zeros({1, 1, 8, 32});
  x.narrow(3, 16, 16).fill_(1.0);
  auto row = drdm::seg::gaussian_sharpen(x, {30.0}, 1.0, 0.5)[0][0][4];
  EXPECT_GT(row[16].item<double>() - row[15].item<double>(), 1.2);
  EXPECT_LT(row[15].item<double>(), -0.05);  // undershoot ...
  EXPECT_GT(row[16].item<double>(), 1.05);   // ... and overshoot at the edge
  EXPECT_NEAR(row[2].item<double>(), 0.0, 1e-5);
  EXPECT_NEAR(row[29].item<double>(), 1.0, 1e-5);
  // A soft edge (tanh, width 2 voxels): even the smallest alpha steepens it.
  auto j = at::arange(32, at::kDouble);
  auto soft = (0.5 * (1 + at::tanh((j - 15.5) / 2)))
                  .to(at::kFloat)
                  .view({1, 1, 1, 32})
                  .expand({1, 1, 8, 32});
  auto steepest = [](const at::Tensor& r) {
    return (r.narrow(0, 1, 31) - r.narrow(0, 0, 31)).max().item<double>();
  };
  const double before = steepest(soft[0][0][4]);
  // (slopes 0.245 -> 0.263 and 0.381, by an independent NumPy evaluation of the formula)
  for (auto [alpha, gain] : {std::pair{10.0, 1.05}, std::pair{30.0, 1.4}})
    EXPECT_GT(steepest(drdm::seg::gaussian_sharpen(soft.contiguous(), {alpha}, 1.0, 0.5)[0][0][4]),
              gain * before)
        << alpha;
  // The documented formula, spelled out with the blur alone.
  auto gen = generator(4);
  auto img = at::rand({2, 1, 20, 24}, gen);
  auto b = drdm::seg::gaussian_blur(img, {1.0, 1.0});
  auto bb = drdm::seg::gaussian_blur(b, {0.5, 0.5});
  auto expect = b + (b - bb) * at::tensor({12.0f, 25.0f}).view({2, 1, 1, 1});
  EXPECT_TRUE(
      at::allclose(drdm::seg::gaussian_sharpen(img, {12.0, 25.0}, 1.0, 0.5), expect, 1e-5, 1e-5));
}

// ---------------------------------------------------------------- intensity

TEST(BigAugIntensity, NoiseStdMatchesRequest) {
  auto x = at::full({3, 1, 128, 128}, 0.5f);
  std::vector<BigAugSample> s{only({T::kNoise}), only({T::kNoise}), only({})};
  s[0].noise_std = 0.05;
  s[1].noise_std = 0.2;
  auto gen = generator(5);
  auto y = drdm::seg::bigaug_apply(x, {}, s, {}, gen).first - x;
  EXPECT_NEAR(y[0].std().item<double>(), 0.05, 0.05 * 0.03);
  EXPECT_NEAR(y[1].std().item<double>(), 0.2, 0.2 * 0.03);
  EXPECT_NEAR(y[0].mean().item<double>(), 0.0, 0.002);
  EXPECT_EQ(y[2].abs().max().item<double>(), 0.0);
}

TEST(BigAugIntensity, BrightnessShiftsTheMeanExactly) {
  auto gen = generator(6);
  auto x = at::rand({2, 2, 16, 16}, gen);
  std::vector<BigAugSample> s{only({T::kBrightness}), only({T::kBrightness})};
  s[0].brightness_shift = 0.07;
  s[1].brightness_shift = -0.1;
  auto y = drdm::seg::bigaug_apply(x, {}, s, {}, gen).first;
  EXPECT_NEAR((y[0] - x[0]).mean().item<double>(), 0.07, 1e-6);
  EXPECT_NEAR((y[1] - x[1]).max().item<double>(), -0.1, 1e-6);
  EXPECT_NEAR((y[1] - x[1]).min().item<double>(), -0.1, 1e-6);
}

TEST(BigAugIntensity, GammaOnARampMatchesPow) {
  auto ramp = at::linspace(0.2, 0.9, 64, at::kDouble).view({1, 1, 8, 8});
  auto x = at::cat({ramp, ramp * 2 - 0.1, at::full_like(ramp, 0.3)}, 1).to(at::kFloat);
  const double gamma = 2.3;
  auto y = drdm::seg::gamma_contrast(x, {gamma});
  auto r = at::linspace(0.0, 1.0, 64, at::kDouble);
  auto c0 = r.pow(gamma) * 0.7 + 0.2;  // range [0.2, 0.9]
  auto c1 = r.pow(gamma) * 1.4 + 0.3;  // range [0.3, 1.7]
  EXPECT_TRUE(at::allclose(y[0][0].flatten().to(at::kDouble), c0, 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(y[0][1].flatten().to(at::kDouble), c1, 1e-5, 1e-5));
  EXPECT_TRUE(at::equal(y[0][2], x[0][2]));  // a constant channel stays
}

TEST(BigAugIntensity, ScaleAndShiftExact) {
  auto gen = generator(7);
  auto x = at::rand({1, 1, 9, 10, 11}, gen);
  std::vector<BigAugSample> s{only({T::kIntensity})};
  s[0].scale = 1.07;
  s[0].shift = -0.04;
  auto y = drdm::seg::bigaug_apply(x, {}, s, {}, gen).first;
  EXPECT_TRUE(at::allclose(y, x * 1.07 - 0.04, 0, 1e-6));
}

// ---------------------------------------------------------------- spatial

at::Tensor warp_one(const at::Tensor& image, const BigAugSample& s) {
  auto gen = generator(0);
  return drdm::seg::bigaug_apply(image, {}, {s}, {}, gen).first;
}

void expect_point(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "axis " << i;
}

TEST(BigAugSpatial, Rotation2DMovesAPointAsTheMatrixSays) {
  const std::vector<int64_t> size{64, 80};
  const auto c = centre_of(size);
  for (double deg : {30.0, -75.0}) {
    auto s = only({T::kRotation});
    s.angles_deg[0] = deg;
    const double a = deg * kPi / 180;
    auto y = warp_one(blob(size, {c[0] + 12, c[1] + 3}, 2.0), s);
    // content at c + (12, 3) goes to c + R (12, 3), R = [[cos, -sin], [sin, cos]].
    expect_point(
        centroid(y),
        {c[0] + 12 * std::cos(a) - 3 * std::sin(a), c[1] + 12 * std::sin(a) + 3 * std::cos(a)},
        0.05);
  }
}

TEST(BigAugSpatial, Rotation3DAboutEachAxis) {
  const std::vector<int64_t> size{33, 35, 37};
  const auto c = centre_of(size);
  const double deg = 40, a = deg * kPi / 180, co = 10 * std::cos(a), si = 10 * std::sin(a);
  struct Case {
    int axis;
    std::vector<double> from, to;
  };
  const std::vector<Case> cases{
      {0, {0, 10, 0}, {0, co, si}},   // about axis 0: axis 1 towards axis 2
      {1, {10, 0, 0}, {co, 0, si}},   // about axis 1: axis 0 towards axis 2
      {2, {10, 0, 0}, {co, si, 0}}};  // about axis 2: axis 0 towards axis 1
  for (const auto& k : cases) {
    auto s = only({T::kRotation});
    s.angles_deg[static_cast<size_t>(k.axis)] = deg;
    std::vector<double> from, to;
    for (int i = 0; i < 3; ++i) from.push_back(c[i] + k.from[i]), to.push_back(c[i] + k.to[i]);
    SCOPED_TRACE(k.axis);
    expect_point(centroid(warp_one(blob(size, from, 1.5), s)), to, 0.05);
  }
}

TEST(BigAugSpatial, ScalingMovesAPointAsTheZoomSays) {
  const std::vector<int64_t> size{64, 64};
  const auto c = centre_of(size);
  for (double zoom : {1.4, 0.6}) {
    auto s = only({T::kScaling});
    s.zoom = zoom;
    auto y = warp_one(blob(size, {c[0] + 8, c[1] - 6}, 2.0), s);
    expect_point(centroid(y), {c[0] + 8 * zoom, c[1] - 6 * zoom}, 0.05);
  }
  // Rotation and scaling together: p -> c + zoom R (p - c), one resampling.
  auto s = only({T::kRotation, T::kScaling});
  s.zoom = 1.25;
  s.angles_deg[0] = 90;
  auto y = warp_one(blob(size, {c[0] + 8, c[1]}, 2.0), s);
  expect_point(centroid(y), {c[0], c[1] + 10}, 0.05);
  // 3D scaling is isotropic.
  const std::vector<int64_t> s3{31, 33, 35};
  const auto c3 = centre_of(s3);
  auto z = only({T::kScaling});
  z.zoom = 1.3;
  expect_point(centroid(warp_one(blob(s3, {c3[0] + 5, c3[1] - 4, c3[2] + 6}, 1.5), z)),
               {c3[0] + 6.5, c3[1] - 5.2, c3[2] + 7.8}, 0.05);
}

TEST(BigAugSpatial, ElasticIsSmoothAndInvertible) {
  auto gen = generator(8);
  auto u = drdm::seg::elastic_field({96, 96}, {7.5, 3.0, 0.0}, 7, gen);
  ASSERT_EQ(u.sizes(), at::IntArrayRef({3, 2, 96, 96}));
  EXPECT_EQ(u[2].abs().max().item<double>(), 0.0);
  EXPECT_GT(drdm::jacobian_determinant(u).min().item<double>(), 0.0);
  for (int b = 0; b < 2; ++b) {
    const double m = b == 0 ? 7.5 : 3.0;
    const double peak = u[b].pow(2).sum(0).sqrt().max().item<double>();
    EXPECT_GT(peak, 0.5 * m);
    EXPECT_LT(peak, 1.5 * m);
    // Smooth: second differences are tiny next to the displacement itself
    // (about 0.012 m here; linear interpolation of the same knots gives
    // kinks of about 0.05 m, white noise 2-4 m).
    for (int64_t dim = 1; dim <= 2; ++dim) {
      auto f = u[b];
      auto d2 = f.narrow(dim, 2, 94) - 2 * f.narrow(dim, 1, 94) + f.narrow(dim, 0, 94);
      EXPECT_LT(d2.abs().max().item<double>(), 0.025 * m) << "axis " << dim;
    }
  }
  auto v = drdm::seg::elastic_field({20, 28, 24}, {6.0, 6.0}, 7, gen);
  EXPECT_GT(drdm::jacobian_determinant(v).min().item<double>(), 0.0);
  auto w = drdm::seg::elastic_field({1, 32, 32}, {5.0}, 7, gen);
  EXPECT_EQ(w.select(1, 0).abs().max().item<double>(), 0.0);
  EXPECT_GT(w.abs().max().item<double>(), 2.0);
}

TEST(BigAugSpatial, DrawnFieldsHavePositiveJacobian) {
  BigAugOptions o;
  o.p = 1;
  auto gen = generator(9);
  for (auto size : {std::vector<int64_t>{64, 72}, std::vector<int64_t>{24, 28, 32}}) {
    auto s = drdm::seg::draw_samples(4, static_cast<int64_t>(size.size()), o, gen);
    auto u = drdm::seg::spatial_field(size, s, o, gen);
    EXPECT_GT(drdm::jacobian_determinant(u).min().item<double>(), 0.0);
  }
}

// ---------------------------------------------------------------- labels

TEST(BigAugLabels, NeverTakeAValueAbsentFromTheInput) {
  BigAugOptions o;
  o.p = 1;
  for (auto size : {std::vector<int64_t>{48, 40}, std::vector<int64_t>{20, 24, 28}}) {
    auto labels = box_labels(size, 3, {0, 2, 5, 7});
    auto images = labels.to(at::kFloat) / 7;
    auto gen = generator(10);
    auto out = drdm::seg::bigaug(images, labels, o, gen).second;
    const auto got = values(out), allowed = values(labels);
    for (auto v : got) EXPECT_TRUE(allowed.count(v)) << "invented class " << v;
    EXPECT_GE(got.size(), 3u);
  }
}

// Spatial transforms only: a one-hot image warped linearly and the labels by
// nearest neighbour agree almost everywhere.
TEST(BigAugLabels, SpatialOnlyAgreesWithWarpedOneHot) {
  BigAugOptions o;
  o.p = 1;
  for (auto size : {std::vector<int64_t>{64, 72}, std::vector<int64_t>{28, 32, 30}}) {
    const int64_t d = static_cast<int64_t>(size.size());
    auto labels = box_labels(size, 4, {0, 1, 2, 3});
    auto dims = std::vector<int64_t>{0, d + 1};
    for (int64_t i = 1; i <= d; ++i) dims.push_back(i);
    auto one_hot = at::one_hot(labels.squeeze(1), 4).permute(dims).to(at::kFloat);
    auto gen = generator(11);
    auto s = drdm::seg::draw_samples(4, d, o, gen);
    for (auto& x : s)
      for (int t = T::kBlur; t <= T::kIntensity; ++t) x.applied[t] = false;
    auto [img, lab] = drdm::seg::bigaug_apply(one_hot, labels, s, o, gen);
    const double agree = img.argmax(1, true).eq(lab).to(at::kDouble).mean().item<double>();
    EXPECT_GT(agree, 0.95) << "d = " << d;
    EXPECT_FALSE(at::equal(lab, labels));
  }
}

// ACDC at 128^2: a myocardium ring about 5 voxels wide around the LV. Scaled
// by the range's 0.4 it is 2 voxels wide: nearest-neighbour resampling must
// keep it, closed, with the area zoom^2 predicts, and agree with the image.
TEST(BigAugLabels, StrongScalingKeepsTheThinMyocardiumRing) {
  const int64_t n = 128;
  const auto yy = at::arange(n, at::kDouble).view({n, 1}),
             xx = at::arange(n, at::kDouble).view({1, n});
  const auto r = at::sqrt((yy - 63.5).square() + (xx - 63.5).square());
  auto labels = at::zeros({n, n}, at::kLong);
  labels.masked_fill_(r < 22, 2);  // MYO: 17 <= r < 22
  labels.masked_fill_(r < 17, 3);  // LV
  labels = labels.view({1, 1, n, n});
  const auto image = labels.to(at::kFloat) / 3;
  BigAugOptions o;
  for (double zoom : {0.4, 0.55, 1.6}) {
    BigAugSample s;
    s.applied[T::kScaling] = true;
    s.zoom = zoom;
    auto gen = generator(3);
    const auto [img, lab] = drdm::seg::bigaug_apply(image, labels, {s}, o, gen);
    for (int64_t k : {2, 3}) {
      const double before = (labels == k).sum().item<double>(),
                   after = (lab == k).sum().item<double>();
      EXPECT_NEAR(after / before, zoom * zoom, 0.15 * zoom * zoom)
          << "class " << k << " zoom " << zoom;
    }
    // Closed ring: every ray from the centre meets the myocardium.
    const auto myo = (lab[0][0] == 2);
    int rays_hit = 0;
    for (int a = 0; a < 360; a += 5) {
      bool hit = false;
      for (double t = 0; t < 64 && !hit; t += 0.25) {
        const auto y = static_cast<int64_t>(std::lround(63.5 + t * std::sin(a * M_PI / 180)));
        const auto x = static_cast<int64_t>(std::lround(63.5 + t * std::cos(a * M_PI / 180)));
        if (y >= 0 && y < n && x >= 0 && x < n) hit = myo[y][x].item<bool>();
      }
      rays_hit += hit;
    }
    EXPECT_EQ(rays_hit, 72) << "zoom " << zoom;
    // The labels sit where the linearly warped image says each class is.
    const auto from_image = (img * 3).round().to(at::kLong);
    const auto mismatch =
        (from_image != lab).sum().item<double>() / ((lab > 0).sum().item<double>());
    EXPECT_LT(mismatch, 0.15) << "zoom " << zoom;
  }
}

TEST(BigAugLabels, IntensityOnlyLeavesLabelsBitForBit) {
  BigAugOptions o;
  o.p = 1;
  auto labels = box_labels({40, 44}, 3, {0, 1, 2});
  auto gen = generator(12);
  auto images = at::rand({3, 2, 40, 44}, gen);
  auto s = drdm::seg::draw_samples(3, 2, o, gen);
  for (auto& x : s)
    x.applied[T::kRotation] = x.applied[T::kScaling] = x.applied[T::kElastic] = false;
  auto [img, lab] = drdm::seg::bigaug_apply(images, labels, s, o, gen);
  EXPECT_TRUE(at::equal(lab, labels));
  EXPECT_GT((img - images).abs().max().item<double>(), 0.05);
}

// ---------------------------------------------------------------- whole pipeline

TEST(BigAug, PZeroIsTheIdentity) {
  BigAugOptions o;
  o.p = 0;
  auto gen = generator(13);
  auto images = at::rand({2, 1, 12, 14, 16}, gen);
  auto labels = box_labels({12, 14, 16}, 2, {0, 1});
  auto [img, lab] = drdm::seg::bigaug(images, labels, o, gen);
  EXPECT_TRUE(at::equal(img, images));
  EXPECT_TRUE(at::equal(lab, labels));
  EXPECT_NE(img.data_ptr(), images.data_ptr());  // copies
  EXPECT_NE(lab.data_ptr(), labels.data_ptr());
}

TEST(BigAug, POneAppliesAll) {
  BigAugOptions o;
  o.p = 1;
  auto gen = generator(14);
  for (const auto& s : drdm::seg::draw_samples(16, 3, o, gen))
    for (int t = 0; t < T::kCount; ++t) EXPECT_TRUE(s.applied[t]) << t;
  o.p = 0.5;
  int on = 0, total = 0;
  for (const auto& s : drdm::seg::draw_samples(200, 2, o, gen))
    for (int t = 0; t < T::kCount; ++t) on += s.applied[t], ++total;
  EXPECT_NEAR(static_cast<double>(on) / total, 0.5, 0.05);
  // Every transform left a trace: compare with the sample run without it.
  o.p = 1;
  auto images = blob({48, 48}, {20, 26}, 6.0) * 0.8 + 0.1;
  auto base = drdm::seg::draw_samples(1, 2, o, gen);
  // Clear effects, whatever was drawn.
  base[0].noise_std = base[0].brightness_shift = base[0].shift = 0.05;
  base[0].gamma = 2;
  base[0].scale = 1.05;
  base[0].angles_deg[0] = 15;
  base[0].zoom = 1.3;
  auto g1 = generator(15);
  auto all = drdm::seg::bigaug_apply(images, {}, base, o, g1).first;
  for (int t = 0; t < T::kCount; ++t) {
    auto fewer = base;
    fewer[0].applied[t] = false;
    auto g2 = generator(15);
    auto y = drdm::seg::bigaug_apply(images, {}, fewer, o, g2).first;
    EXPECT_GT((y - all).abs().max().item<double>(), 1e-3) << "transform " << t;
  }
}

TEST(BigAug, DrawnParametersStayInTheirRanges) {
  BigAugOptions o;
  auto gen = generator(16);
  for (const auto& s : drdm::seg::draw_samples(100, 2, o, gen)) {
    EXPECT_TRUE(s.blur_sigma >= 0.25 && s.blur_sigma <= 1.5);
    EXPECT_TRUE(s.sharpen_alpha >= 10 && s.sharpen_alpha <= 30);
    EXPECT_TRUE(s.noise_std >= 0 && s.noise_std <= o.noise_std_max);
    EXPECT_TRUE(std::abs(s.brightness_shift) <= 0.1);
    EXPECT_TRUE(s.gamma >= 0.5 && s.gamma <= 4.5);
    EXPECT_TRUE(s.scale >= 0.9 && s.scale <= 1.1 && std::abs(s.shift) <= 0.1);
    EXPECT_TRUE(std::abs(s.angles_deg[0]) <= 20 && s.angles_deg[1] == 0 && s.angles_deg[2] == 0);
    EXPECT_TRUE(s.zoom >= 0.4 && s.zoom <= 1.6);
    EXPECT_TRUE(s.elastic_magnitude >= o.elastic_magnitude_min &&
                s.elastic_magnitude <= o.elastic_magnitude_max);
  }
}

TEST(BigAug, SameSeedSameOutputOtherSeedDiffers) {
  BigAugOptions o;
  auto labels = box_labels({24, 26, 28}, 3, {0, 1, 2});
  auto images = labels.to(at::kFloat) * 0.4 + 0.1;
  auto g1 = generator(17), g2 = generator(17), g3 = generator(18);
  auto a = drdm::seg::bigaug(images, labels, o, g1);
  auto b = drdm::seg::bigaug(images, labels, o, g2);
  auto c = drdm::seg::bigaug(images, labels, o, g3);
  EXPECT_TRUE(at::equal(a.first, b.first));
  EXPECT_TRUE(at::equal(a.second, b.second));
  EXPECT_FALSE(at::equal(a.first, c.first));
  // The generator advanced: a second call differs from the first.
  EXPECT_FALSE(at::equal(drdm::seg::bigaug(images, labels, o, g1).first, a.first));
}

TEST(BigAug, ShapesAndTypes2DAnd3D) {
  BigAugOptions o;
  o.p = 1;
  auto gen = generator(19);
  for (auto size : {std::vector<int64_t>{32, 40}, std::vector<int64_t>{12, 20, 24},
                    std::vector<int64_t>{1, 24, 24}}) {
    auto images = at::rand(shape_of(size, 2, 3), gen);
    auto labels = box_labels(size, 2, {0, 1});
    auto [img, lab] = drdm::seg::bigaug(images, labels, o, gen);
    EXPECT_EQ(img.sizes(), images.sizes());
    EXPECT_EQ(img.scalar_type(), at::kFloat);
    EXPECT_EQ(lab.sizes(), labels.sizes());
    EXPECT_EQ(lab.scalar_type(), at::kLong);
    EXPECT_TRUE(at::isfinite(img).all().item<bool>());
  }
  auto [img, lab] = drdm::seg::bigaug(at::rand({2, 1, 16, 16}, gen).to(at::kDouble), {}, o, gen);
  EXPECT_EQ(img.scalar_type(), at::kDouble);
  EXPECT_FALSE(lab.defined());
  EXPECT_THROW(drdm::seg::bigaug(at::rand({2, 16, 16}), {}, o, gen), std::exception);
  EXPECT_THROW(
      drdm::seg::bigaug(at::rand({2, 1, 16, 16}), at::zeros({2, 1, 16, 15}, at::kLong), o, gen),
      std::exception);
}

TEST(BigAug, ValidateNamesTheKey) {
  EXPECT_NO_THROW(drdm::seg::validate(BigAugOptions{}));
  using Set = std::function<void(BigAugOptions&)>;
  const std::vector<std::pair<std::string, Set>> cases{
      {"bigaug.p", [](BigAugOptions& o) { o.p = 1.5; }},
      {"bigaug.p", [](BigAugOptions& o) { o.p = std::nan(""); }},
      {"bigaug.blur_sigma_min", [](BigAugOptions& o) { o.blur_sigma_min = -0.1; }},
      {"bigaug.blur_sigma_min", [](BigAugOptions& o) { o.blur_sigma_min = 2.0; }},
      {"bigaug.blur_sigma_max", [](BigAugOptions& o) { o.blur_sigma_max = 50; }},
      {"bigaug.sharpen_alpha_min", [](BigAugOptions& o) { o.sharpen_alpha_min = 40; }},
      {"bigaug.sharpen_alpha_max", [](BigAugOptions& o) { o.sharpen_alpha_max = -1; }},
      {"bigaug.sharpen_sigma1", [](BigAugOptions& o) { o.sharpen_sigma1 = 0; }},
      {"bigaug.sharpen_sigma2", [](BigAugOptions& o) { o.sharpen_sigma2 = -1; }},
      {"bigaug.noise_std_min", [](BigAugOptions& o) { o.noise_std_min = 0.5; }},
      {"bigaug.noise_std_max", [](BigAugOptions& o) { o.noise_std_max = INFINITY; }},
      {"bigaug.brightness", [](BigAugOptions& o) { o.brightness = -0.1; }},
      {"bigaug.gamma_min", [](BigAugOptions& o) { o.gamma_min = 0; }},
      {"bigaug.gamma_min", [](BigAugOptions& o) { o.gamma_min = 5; }},
      {"bigaug.gamma_max", [](BigAugOptions& o) { o.gamma_max = -2; }},
      {"bigaug.scale_min", [](BigAugOptions& o) { o.scale_min = 0; }},
      {"bigaug.scale_max", [](BigAugOptions& o) { o.scale_max = 0.5; }},
      {"bigaug.shift", [](BigAugOptions& o) { o.shift = -1; }},
      {"bigaug.rotation_deg", [](BigAugOptions& o) { o.rotation_deg = 200; }},
      {"bigaug.scaling_min", [](BigAugOptions& o) { o.scaling_min = -0.4; }},
      {"bigaug.scaling_min", [](BigAugOptions& o) { o.scaling_min = 2; }},
      {"bigaug.scaling_max", [](BigAugOptions& o) { o.scaling_max = 0; }},
      {"bigaug.elastic_control_points", [](BigAugOptions& o) { o.elastic_control_points = 3; }},
      {"bigaug.elastic_magnitude_min", [](BigAugOptions& o) { o.elastic_magnitude_min = 9; }},
      {"bigaug.elastic_magnitude_max", [](BigAugOptions& o) { o.elastic_magnitude_max = -1; }},
  };
  for (const auto& [key, set] : cases) {
    BigAugOptions o;
    set(o);
    try {
      drdm::seg::validate(o);
      ADD_FAILURE() << "no error for " << key;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << key << " vs " << e.what();
    }
    auto gen = generator(0);
    EXPECT_THROW(drdm::seg::bigaug(at::rand({1, 1, 8, 8}), {}, o, gen), std::invalid_argument)
        << key;
  }
}

// Device-agnostic: a CUDA batch with the same CPU generator gives the CPU result.
TEST(BigAug, CudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  BigAugOptions o;
  o.p = 1;
  auto labels = box_labels({24, 28, 32}, 2, {0, 1, 2});
  auto images = labels.to(at::kFloat) * 0.4 + 0.1;
  auto g1 = generator(20), g2 = generator(20);
  auto cpu = drdm::seg::bigaug(images, labels, o, g1);
  auto gpu = drdm::seg::bigaug(images.cuda(), labels.cuda(), o, g2);
  EXPECT_TRUE(gpu.first.is_cuda());
  EXPECT_LT((gpu.first.cpu() - cpu.first).abs().max().item<double>(), 1e-3);
  EXPECT_GT(gpu.second.cpu().eq(cpu.second).to(at::kDouble).mean().item<double>(), 0.999);
}

}  // namespace
