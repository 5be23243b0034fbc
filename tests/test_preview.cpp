// Tests for drdm/io/preview.h.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "drdm/core/spatial.h"
#include "drdm/io/preview.h"
#include "test_util.h"

namespace {

using drdm::test::ramp_image;

TEST(Preview, TwoDimensionalMontage) {
  auto img = ramp_image({40, 50});
  auto zero = at::zeros({1, 2, 40, 50});
  auto rgb = drdm::render_warp_preview(img, img, zero);
  ASSERT_EQ(rgb.scalar_type(), at::kByte);
  ASSERT_EQ(rgb.dim(), 3);
  EXPECT_EQ(rgb.size(0), 3);
  // Four panels of 50 columns and three 4-pixel gaps, enlarged 4x (long side 50 -> >= 192).
  EXPECT_EQ(rgb.size(2), 4 * (4 * 50 + 3 * 4));
  EXPECT_EQ(rgb.size(1), 4 * 40);
  // With a zero field the warped panel equals the input panel.
  const int64_t w = 4 * 50, gap = 4 * 4;
  EXPECT_TRUE(at::equal(rgb.narrow(2, 0, w), rgb.narrow(2, w + gap, w)));
}

TEST(Preview, DeformationShowsInTheWarpedPanels) {
  auto img = ramp_image({40, 50});
  auto u = at::zeros({1, 2, 40, 50});
  u.select(1, 1).fill_(3.0);
  auto warped = drdm::warp(img, u);
  auto rgb = drdm::render_warp_preview(img, warped, u);
  const int64_t w = 4 * 50, gap = 4 * 4;
  EXPECT_FALSE(at::equal(rgb.narrow(2, 0, w), rgb.narrow(2, w + gap, w)));
}

TEST(Preview, ThreeDimensionalRowsStayNarrowForThinSlabs) {
  auto img = ramp_image({6, 120, 100});
  auto zero = at::zeros({1, 3, 6, 120, 100});
  auto rgb = drdm::render_warp_preview(img, img, zero);
  // Three rows (axial, coronal, sagittal); enlargement follows the long side
  // (120 -> 2x), so the width stays that of four 2x panels of <= 120 columns.
  EXPECT_LE(rgb.size(2), 2 * (4 * 120 + 3 * 4));
  EXPECT_GT(rgb.size(1), 2 * 120);
}

TEST(Preview, RejectsMismatchedInputs) {
  auto img = ramp_image({20, 20});
  EXPECT_THROW(drdm::render_warp_preview(img, img, at::zeros({1, 2, 20, 21})), std::exception);
  EXPECT_THROW(drdm::render_warp_preview(img, img, at::zeros({1, 3, 20, 20})), std::exception);
  EXPECT_THROW(drdm::render_warp_preview(img.squeeze(0), img, at::zeros({1, 2, 20, 20})),
               std::exception);
}

}  // namespace
