#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "drdm/io/image_io.h"
#include "drdm/seg/metrics.h"

// Suite name "seg_metrics" so that `ctest -R seg_metrics` selects these tests.

namespace fs = std::filesystem;
using drdm::seg::ClassMetrics;
using drdm::seg::label_metrics;

namespace {

constexpr double kTol = 1e-12;

/// A box of `label` at [lo, lo + extent) per axis in a zero map of `size`.
at::Tensor box(std::vector<int64_t> size, std::vector<int64_t> lo, std::vector<int64_t> extent,
               int64_t label = 1) {
  auto t = at::zeros(size, at::kLong);
  auto view = t;
  for (size_t a = 0; a < size.size(); ++a) view = view.narrow(a, lo[a], extent[a]);
  view.fill_(label);
  return t;
}

ClassMetrics one(const at::Tensor& pred, const at::Tensor& truth, std::vector<double> spacing) {
  return label_metrics(pred, truth, spacing, {1}).at(0);
}

/// Distance from every voxel to the nearest feature by trying all features.
at::Tensor brute_force_edt(const at::Tensor& features, const std::vector<double>& spacing) {
  const auto idx = features.nonzero();  // [K, d]
  const auto coords = at::stack(at::meshgrid(
                                    [&] {
                                      std::vector<at::Tensor> axes;
                                      for (int64_t a = 0; a < features.dim(); ++a)
                                        axes.push_back(at::arange(features.size(a), at::kDouble));
                                      return axes;
                                    }(),
                                    "ij"),
                                -1)
                          .reshape({-1, features.dim()});  // [N, d]
  const auto scale = at::tensor(spacing, at::kDouble);
  const auto diff = (coords.unsqueeze(1) - idx.to(at::kDouble).unsqueeze(0)) * scale;  // [N, K, d]
  return std::get<0>(diff.pow(2).sum(-1).sqrt().min(1)).reshape(features.sizes());
}

/// Surface by definition: foreground with a face neighbour outside or in the background.
at::Tensor brute_force_surface(const at::Tensor& mask) {
  auto m = mask.ne(0).contiguous();
  auto out = at::zeros_like(m);
  const auto n = m.numel();
  const auto sizes = m.sizes();
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int64_t> x(m.dim());
    for (int64_t a = m.dim() - 1, r = i; a >= 0; --a) {
      x[a] = r % sizes[a];
      r /= sizes[a];
    }
    if (!m.view(-1)[i].item<bool>()) continue;
    bool edge = false;
    for (int64_t a = 0; a < m.dim() && !edge; ++a)
      for (int64_t step : {-1, 1}) {
        auto y = x;
        y[a] += step;
        if (y[a] < 0 || y[a] >= sizes[a]) {
          edge = true;
          break;
        }
        at::Tensor v = m;
        for (auto c : y) v = v[c];
        if (!v.item<bool>()) {
          edge = true;
          break;
        }
      }
    out.view(-1)[i] = edge;
  }
  return out;
}

at::Tensor random_mask(std::vector<int64_t> size, double p, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::rand(size, gen).lt(p);
}

}  // namespace

// ---- analytic cases ---------------------------------------------------------

// Two 5x5 squares, the prediction offset by k = 2 voxels along W. By hand:
// overlap 5x3 -> Dice 0.6; each ring of 16 surface voxels lies at distances
// {0 x6, 1 x4, 2 x6} from the other ring (both directions alike) -> ASD 1,
// 95th percentile 2.
TEST(seg_metrics, OffsetSquares2D) {
  const auto truth = box({20, 20}, {5, 5}, {5, 5});
  const auto pred = box({20, 20}, {5, 7}, {5, 5});
  const auto m = one(pred, truth, {1.0, 1.0});
  EXPECT_NEAR(m.dice, 0.6, kTol);
  EXPECT_NEAR(m.sensitivity, 0.6, kTol);
  EXPECT_NEAR(m.precision, 0.6, kTol);
  EXPECT_NEAR(m.asd, 1.0, kTol);
  EXPECT_NEAR(m.hd95, 2.0, kTol);
  EXPECT_EQ(m.truth_voxels, 25);
  EXPECT_EQ(m.pred_voxels, 25);
  // Shifted along H instead: the same numbers (a wrong axis would not matter
  // here, but the anisotropic test below tells the axes apart).
  const auto m2 = one(box({20, 20}, {7, 5}, {5, 5}), truth, {1.0, 1.0});
  EXPECT_NEAR(m2.asd, 1.0, kTol);
  EXPECT_NEAR(m2.hd95, 2.0, kTol);
}

// The same squares with anisotropic spacing (H, W). Nearest points change
// with the spacing, so the results are not simple multiples:
//  * (1, 3): distances {0 x6, 1 x2, 2, 3 x2, 6 x5} -> ASD 40/16 = 2.5, HD95 6;
//  * (3, 1): distances {0 x6, 1 x2, 2 x8}           -> ASD 18/16 = 1.125, HD95 2;
//  * (2, 2): everything doubles                      -> ASD 2, HD95 4.
TEST(seg_metrics, AnisotropicSpacing) {
  const auto truth = box({20, 20}, {5, 5}, {5, 5});
  const auto pred = box({20, 20}, {5, 7}, {5, 5});
  auto m = one(pred, truth, {1.0, 3.0});
  EXPECT_NEAR(m.asd, 2.5, kTol);
  EXPECT_NEAR(m.hd95, 6.0, kTol);
  EXPECT_NEAR(m.dice, 0.6, kTol);  // overlap measures do not depend on spacing
  m = one(pred, truth, {3.0, 1.0});
  EXPECT_NEAR(m.asd, 1.125, kTol);
  EXPECT_NEAR(m.hd95, 2.0, kTol);
  m = one(pred, truth, {2.0, 2.0});
  EXPECT_NEAR(m.asd, 2.0, kTol);
  EXPECT_NEAR(m.hd95, 4.0, kTol);
}

// A square predicted exactly plus one stray voxel 10 voxels away. pred->truth:
// 16 zeros and one 10 over 17 values: the 95th percentile at rank
// 0.95 * 16 = 15.2 interpolates 0 + 0.2 * 10 = 2. truth->pred: all 0.
TEST(seg_metrics, Hd95InterpolatesLinearly) {
  const auto truth = box({20, 20}, {5, 5}, {5, 5});
  auto pred = truth.clone();
  pred[7][19] = 1;
  const auto m = one(pred, truth, {1.0, 1.0});
  EXPECT_NEAR(m.hd95, 2.0, kTol);
  EXPECT_NEAR(m.asd, 10.0 / 33.0, kTol);
  EXPECT_NEAR(m.dice, 50.0 / 51.0, kTol);
  EXPECT_NEAR(m.sensitivity, 1.0, kTol);
  EXPECT_NEAR(m.precision, 25.0 / 26.0, kTol);
  // Not symmetric in the inputs for the directed parts, but HD95 and ASD are.
  const auto r = one(truth, pred, {1.0, 1.0});
  EXPECT_NEAR(r.hd95, m.hd95, kTol);
  EXPECT_NEAR(r.asd, m.asd, kTol);
  EXPECT_NEAR(r.sensitivity, m.precision, kTol);
}

TEST(seg_metrics, PercentileMatchesNumpy) {
  using drdm::seg::percentile;
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 50), 2.5);     // np.percentile([4,1,3,2], 50)
  EXPECT_NEAR(percentile({4, 1, 3, 2}, 95), 3.85, 1e-12);  // rank 2.85
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 0), 1.0);
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 100), 4.0);
  EXPECT_DOUBLE_EQ(percentile({7}, 95), 7.0);
  EXPECT_TRUE(std::isnan(percentile({}, 95)));
  EXPECT_THROW(percentile({1, 2}, 101), std::invalid_argument);
}

// Two 4x4x4 cubes offset by one slice along D, spacing (8, 1.5, 1.5), given as
// [1, 1, D, H, W]. Each surface (56 voxels) lies at {0 x36, 1.5 x4, 8 x16}
// from the other: ASD 134/56, HD95 8 (rank 52.25 among 56); Dice 2*48/128.
TEST(seg_metrics, OffsetCubes3D) {
  const auto truth = box({1, 1, 10, 8, 8}, {0, 0, 2, 2, 2}, {1, 1, 4, 4, 4});
  const auto pred = box({1, 1, 10, 8, 8}, {0, 0, 3, 2, 2}, {1, 1, 4, 4, 4});
  const auto m = one(pred, truth, {8.0, 1.5, 1.5});
  EXPECT_NEAR(m.dice, 0.75, kTol);
  EXPECT_NEAR(m.asd, 134.0 / 56.0, kTol);
  EXPECT_NEAR(m.hd95, 8.0, kTol);
  // [1, ...S] and [...S] give the same.
  const auto m1 = one(pred[0], truth[0], {8.0, 1.5, 1.5});
  const auto m0 = one(pred[0][0], truth[0][0], {8.0, 1.5, 1.5});
  EXPECT_EQ(m1.asd, m.asd);
  EXPECT_EQ(m0.hd95, m.hd95);
  const auto d = drdm::seg::surface_distances(pred, truth, {8.0, 1.5, 1.5});
  EXPECT_EQ(d.size(), 56u);
}

// ---- empty masks ---------------------------------------------------------------

TEST(seg_metrics, EmptyMaskRules) {
  // class 1 in both, 2 only predicted, 3 only in the truth, 4 nowhere.
  auto truth = box({12, 12}, {1, 1}, {3, 3}, 1) + box({12, 12}, {6, 6}, {4, 4}, 3);
  auto pred = box({12, 12}, {1, 1}, {3, 3}, 1) + box({12, 12}, {6, 1}, {2, 2}, 2);
  const auto m = label_metrics(pred, truth, {1.0, 1.0}, {1, 2, 3, 4});
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0].dice, 1.0);
  EXPECT_EQ(m[0].asd, 0.0);
  EXPECT_EQ(m[0].hd95, 0.0);
  // truth empty, prediction not
  EXPECT_EQ(m[1].dice, 0.0);
  EXPECT_TRUE(std::isnan(m[1].sensitivity));
  EXPECT_EQ(m[1].precision, 0.0);
  EXPECT_TRUE(std::isnan(m[1].asd));
  EXPECT_TRUE(std::isnan(m[1].hd95));
  EXPECT_EQ(m[1].pred_voxels, 4);
  EXPECT_EQ(m[1].truth_voxels, 0);
  // prediction empty, truth not
  EXPECT_EQ(m[2].dice, 0.0);
  EXPECT_EQ(m[2].sensitivity, 0.0);
  EXPECT_TRUE(std::isnan(m[2].precision));
  EXPECT_TRUE(std::isnan(m[2].asd));
  EXPECT_TRUE(std::isnan(m[2].hd95));
  EXPECT_EQ(m[2].truth_voxels, 16);
  // both empty
  EXPECT_EQ(m[3].dice, 1.0);
  EXPECT_EQ(m[3].sensitivity, 1.0);
  EXPECT_EQ(m[3].precision, 1.0);
  EXPECT_EQ(m[3].asd, 0.0);
  EXPECT_EQ(m[3].hd95, 0.0);
  EXPECT_EQ(m[3].truth_voxels + m[3].pred_voxels, 0);
  EXPECT_TRUE(label_metrics(pred, truth, {1.0, 1.0}, {}).empty());
}

// ---- distance transform and surfaces -------------------------------------------

TEST(seg_metrics, DistanceTransformMatchesBruteForce) {
  const std::vector<std::pair<std::vector<int64_t>, std::vector<double>>> cases = {
      {{7, 9, 6}, {2.5, 1.0, 0.7}},
      {{6, 5, 8}, {1.0, 1.0, 1.0}},
      {{11, 13}, {0.3, 1.7}},
      {{17}, {2.0}}};
  uint64_t seed = 1;
  for (const auto& [size, spacing] : cases)
    for (double p : {0.02, 0.1, 0.5}) {
      auto features = random_mask(size, p, seed++);
      features.view(-1)[0] = true;  // at least one
      const auto ours = drdm::seg::distance_transform(features, spacing);
      ASSERT_EQ(ours.scalar_type(), at::kDouble);
      ASSERT_EQ(ours.sizes(), features.sizes());
      const double err = (ours - brute_force_edt(features, spacing)).abs().max().item<double>();
      EXPECT_LT(err, 1e-9) << "size " << at::IntArrayRef(size) << " p " << p;
    }
  // A single feature in a corner: distance to the far corner.
  auto corner = at::zeros({4, 5, 6}, at::kByte);
  corner[0][0][0] = 1;
  const auto d = drdm::seg::distance_transform(corner, {2.0, 3.0, 0.5});
  EXPECT_NEAR(d[3][4][5].item<double>(), std::sqrt(36.0 + 144.0 + 6.25), 1e-12);
  // No features: +inf everywhere.
  const auto none = drdm::seg::distance_transform(at::zeros({3, 4}, at::kLong), {1.0, 1.0});
  EXPECT_TRUE(none.isinf().all().item<bool>());
}

TEST(seg_metrics, SurfaceMatchesDefinition) {
  // A 3x3x3 cube: all but its centre.
  EXPECT_EQ(drdm::seg::surface(box({5, 5, 5}, {1, 1, 1}, {3, 3, 3})).sum().item<int64_t>(), 26);
  // A full image: its border only (outside counts as background).
  EXPECT_EQ(drdm::seg::surface(at::ones({4, 5}, at::kLong)).sum().item<int64_t>(), 4 * 5 - 2 * 3);
  // Diagonal neighbours do not count: a plus-shaped 2D blob keeps its centre.
  auto plus = box({5, 5}, {1, 2}, {3, 1}) + box({5, 5}, {2, 1}, {1, 3});
  plus = plus.clamp_max(1);
  EXPECT_FALSE(drdm::seg::surface(plus)[2][2].item<bool>());
  for (uint64_t seed : {3, 4, 5}) {
    const auto mask = random_mask({6, 7, 5}, 0.7, seed);
    EXPECT_TRUE(at::equal(drdm::seg::surface(mask), brute_force_surface(mask))) << seed;
  }
}

TEST(seg_metrics, SurfaceDistancesMatchBruteForce) {
  const std::vector<double> spacing{2.0, 0.9, 1.3};
  const auto a = random_mask({6, 8, 7}, 0.5, 11), b = random_mask({6, 8, 7}, 0.5, 12);
  const auto sa = brute_force_surface(a), sb = brute_force_surface(b);
  const auto expected = brute_force_edt(sb, spacing).masked_select(sa);
  const auto ours = drdm::seg::surface_distances(a, b, spacing);
  ASSERT_EQ(static_cast<int64_t>(ours.size()), expected.numel());
  for (size_t i = 0; i < ours.size(); ++i) EXPECT_NEAR(ours[i], expected[i].item<double>(), 1e-9);
  // Whole-metric check: pooled mean and 95th percentiles from the brute force.
  const auto back = brute_force_edt(sa, spacing).masked_select(sb);
  const auto pooled = at::cat({expected, back});
  const auto m = drdm::seg::mask_metrics(a, b, spacing);
  EXPECT_NEAR(m.asd, pooled.mean().item<double>(), 1e-9);
  const double q1 = at::quantile(expected, 0.95).item<double>(),
               q2 = at::quantile(back, 0.95).item<double>();
  EXPECT_NEAR(m.hd95, std::max(q1, q2), 1e-9);
}

// ---- input handling ---------------------------------------------------------------

TEST(seg_metrics, AcceptsOtherIntegerTypesAndLayouts) {
  const auto truth = box({20, 20}, {5, 5}, {5, 5});
  const auto pred = box({20, 20}, {5, 7}, {5, 5});
  // int32, and a transposed (non-contiguous) view of the transposed maps.
  const auto m = one(pred.t().contiguous().t().to(at::kInt),
                     truth.t().contiguous().t().to(at::kByte), {1.0, 3.0});
  EXPECT_NEAR(m.asd, 2.5, kTol);
  EXPECT_NEAR(m.dice, 0.6, kTol);
}

TEST(seg_metrics, BadInputThrows) {
  const auto a = at::zeros({5, 6}, at::kLong), b = at::zeros({5, 7}, at::kLong);
  auto message_of = [](auto&& f) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("<no exception>");
  };
  const auto mismatch = message_of([&] { label_metrics(a, b, {1.0, 1.0}, {1}); });
  EXPECT_NE(mismatch.find("[5, 6]"), std::string::npos) << mismatch;
  EXPECT_NE(mismatch.find("[5, 7]"), std::string::npos) << mismatch;
  // float labels
  const auto dtype = message_of([&] { label_metrics(a.to(at::kFloat), a, {1.0, 1.0}, {1}); });
  EXPECT_NE(dtype.find("integer"), std::string::npos) << dtype;
  EXPECT_THROW(label_metrics(a.to(at::kBool), a, {1.0, 1.0}, {1}), std::invalid_argument);
  // wrong number of dims: 1D maps, a non-1 leading axis, fewer axes than spacing entries
  EXPECT_THROW(label_metrics(at::zeros({6}, at::kLong), at::zeros({6}, at::kLong), {1.0}, {1}),
               std::invalid_argument);
  EXPECT_THROW(label_metrics(at::zeros({2, 5, 6}, at::kLong), at::zeros({2, 5, 6}, at::kLong),
                             {1.0, 1.0}, {1}),
               std::invalid_argument);
  EXPECT_THROW(label_metrics(a, a, {1.0, 1.0, 1.0}, {1}), std::invalid_argument);
  EXPECT_THROW(label_metrics(at::zeros({1, 1, 1, 5, 6}, at::kLong),
                             at::zeros({1, 1, 1, 5, 6}, at::kLong), {1.0, 1.0}, {1}),
               std::invalid_argument);
  // spacing
  EXPECT_THROW(label_metrics(a, a, {1.0}, {1}), std::invalid_argument);
  EXPECT_THROW(label_metrics(a, a, {1.0, 0.0}, {1}), std::invalid_argument);
  EXPECT_THROW(label_metrics(a, a, {-1.0, 1.0}, {1}), std::invalid_argument);
  EXPECT_THROW(label_metrics(a, a, {std::nan(""), 1.0}, {1}), std::invalid_argument);
  EXPECT_THROW(drdm::seg::distance_transform(a, {1.0, 1.0, 1.0}), std::invalid_argument);
  EXPECT_THROW(drdm::seg::distance_transform(a.to(at::kFloat), {1.0, 1.0}), std::invalid_argument);
  EXPECT_THROW(drdm::seg::surface_distances(a, b, {1.0, 1.0}), std::invalid_argument);
}

// ---- a real ACDC label map -----------------------------------------------------

TEST(seg_metrics, AcdcSanity) {
  const auto path = fs::path(DRDM_TEST_DATA_DIR) / "acdc/labels/patient001_frame01.nii.gz";
  if (!fs::exists(path)) GTEST_SKIP() << "no test data at " << path;
  const auto image = drdm::read_labels(path.string());
  const auto truth = image.data;  // [1, 1, D, H, W]
  ASSERT_EQ(truth.dim(), 5);
  const std::vector<double> spacing{10.0, 1.25, 1.5625};  // anisotropic on purpose
  const std::vector<int64_t> classes{1, 2, 3};

  for (const auto& m : label_metrics(truth, truth, spacing, classes)) {
    EXPECT_GT(m.truth_voxels, 0);
    EXPECT_EQ(m.dice, 1.0);
    EXPECT_EQ(m.asd, 0.0);
    EXPECT_EQ(m.hd95, 0.0);
  }

  // Shifted by one voxel along W (the labels stay clear of the border): every
  // surface voxel has its shifted twin on the other surface, so all distances
  // are at most one W spacing.
  const int64_t W = truth.size(-1);
  ASSERT_EQ(truth.narrow(-1, W - 1, 1).count_nonzero().item<int64_t>(), 0);
  auto shifted = at::zeros_like(truth);
  shifted.narrow(-1, 1, W - 1).copy_(truth.narrow(-1, 0, W - 1));
  const auto fwd = label_metrics(shifted, truth, spacing, classes);
  const auto bwd = label_metrics(truth, shifted, spacing, classes);
  for (size_t c = 0; c < classes.size(); ++c) {
    EXPECT_GT(fwd[c].asd, 0.0);
    EXPECT_LE(fwd[c].asd, spacing[2] + 1e-12);
    EXPECT_LE(fwd[c].hd95, spacing[2] + 1e-12);
    EXPECT_LT(fwd[c].dice, 1.0);
    EXPECT_EQ(fwd[c].dice, bwd[c].dice);
    EXPECT_NEAR(fwd[c].asd, bwd[c].asd, 1e-12);
    EXPECT_EQ(fwd[c].hd95, bwd[c].hd95);
    EXPECT_EQ(fwd[c].sensitivity, bwd[c].precision);
  }

  // Eroded (each class loses its surface voxels): a subset of the truth, so
  // precision 1 and sensitivity < 1; every truth surface voxel is off the
  // eroded surface, so each distance, hence ASD and HD95, is >= the smallest spacing.
  auto eroded = truth.clone();
  for (int64_t c : classes)
    eroded.masked_fill_(drdm::seg::surface(truth[0][0].eq(c)), 0);  // [D, H, W]
  const auto er = label_metrics(eroded, truth, spacing, classes);
  const auto re = label_metrics(truth, eroded, spacing, classes);
  for (size_t c = 0; c < classes.size(); ++c) {
    ASSERT_GT(er[c].pred_voxels, 0) << classes[c];
    EXPECT_LT(er[c].pred_voxels, er[c].truth_voxels);
    EXPECT_EQ(er[c].precision, 1.0);
    EXPECT_LT(er[c].sensitivity, 1.0);
    EXPECT_NEAR(er[c].dice,
                2.0 * er[c].pred_voxels / double(er[c].pred_voxels + er[c].truth_voxels), 1e-15);
    EXPECT_GE(er[c].asd, 1.25 - 1e-12);
    EXPECT_GE(er[c].hd95, 1.25 - 1e-12);
    EXPECT_EQ(er[c].dice, re[c].dice);
    EXPECT_NEAR(er[c].asd, re[c].asd, 1e-12);
    EXPECT_EQ(er[c].hd95, re[c].hd95);
  }
}
