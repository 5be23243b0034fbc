#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "drdm/io/dataset.h"
#include "drdm/io/image_io.h"
#include "test_util.h"

namespace fs = std::filesystem;
using drdm::AugmentOptions;
using drdm::DatasetOptions;
using drdm::Geometry;
using drdm::ImageDataset;

namespace {

using TempDir = drdm::test::TempDir;

/// Random image [1, 1, ...size] in [0.2, 1]: no slice is empty.
at::Tensor busy_image(std::vector<int64_t> size, uint64_t seed = 1) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<int64_t> shape{1, 1};
  shape.insert(shape.end(), size.begin(), size.end());
  return at::rand(shape, gen) * 0.8 + 0.2;
}

void write(const std::string& path, const at::Tensor& image, std::vector<double> itk_spacing = {}) {
  Geometry g = Geometry::identity(image.sizes().slice(2).vec());
  if (!itk_spacing.empty()) g.spacing = itk_spacing;
  drdm::write_image(path, image, g, drdm::PixelType::kFloat32);
}

DatasetOptions options_for(const std::string& folder, std::vector<int64_t> size = {16, 16}) {
  DatasetOptions o;
  o.folders = {folder};
  o.dims = static_cast<int64_t>(size.size());
  o.size = size;
  return o;
}

std::string error_of(const DatasetOptions& o) {
  try {
    ImageDataset d(o);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

AugmentOptions no_augment() {
  AugmentOptions a;
  a.rotation_deg = 0;
  a.translation = 0;
  a.flip_prob = 0;
  a.crop_min = a.crop_max = 1;
  return a;
}

}  // namespace

TEST(Dataset, ScansRecursivelyWithIncludeAndExclude) {
  TempDir tmp;
  write(tmp.path("a.nii.gz"), busy_image({12, 10}, 1));
  write(tmp.path("sub/b.mha"), busy_image({12, 10}, 2));
  write(tmp.path("sub/deep/c.nrrd"), busy_image({12, 10}, 3));
  drdm::write_image(tmp.path("sub/d.png"), busy_image({12, 10}, 4) * 255,
                    Geometry::identity({12, 10}), drdm::PixelType::kUInt8);
  write(tmp.path("labels/a.nii.gz"), busy_image({12, 10}, 5));
  write(tmp.path("skip_me.nii.gz"), busy_image({12, 10}, 6));
  std::ofstream(tmp.path("notes.txt")) << "not an image";
  std::ofstream(tmp.path("sub/c.raw.bak")) << "not an image";

  DatasetOptions o = options_for(tmp.dir());
  o.exclude = {"labels/*", "skip_*"};
  ImageDataset d(o);
  ASSERT_EQ(d.size(), 4);
  EXPECT_EQ(d.num_files(), 4);
  EXPECT_EQ(d.dims(), 2);
  std::set<std::string> names;
  for (int64_t i = 0; i < d.size(); ++i) {
    names.insert(fs::path(d.source(i)).lexically_relative(tmp.dir()).generic_string());
    EXPECT_EQ(d.sample(i).sizes(), (std::vector<int64_t>{1, 16, 16}));
    EXPECT_EQ(d.sample(i).scalar_type(), at::kFloat);
  }
  EXPECT_EQ(names,
            (std::set<std::string>{"a.nii.gz", "sub/b.mha", "sub/deep/c.nrrd", "sub/d.png"}));

  // Include narrows by file name, exclude by name too.
  o.include = {"*.nii.gz"};
  o.exclude = {"a.nii.gz"};
  ImageDataset only(o);
  ASSERT_EQ(only.size(), 1);
  EXPECT_NE(only.source(0).find("skip_me.nii.gz"), std::string::npos);
}

TEST(Dataset, SubsetSplitsEachFoldersSortedFiles) {
  TempDir tmp;
  for (int i = 0; i < 10; ++i)
    write(tmp.path("case" + std::to_string(i) + ".mha"), busy_image({12, 10}, 10 + i));
  auto names = [&](std::vector<double> subset) {
    DatasetOptions o = options_for(tmp.dir());
    o.subset = subset;
    ImageDataset d(o);
    std::vector<std::string> out;
    for (int64_t i = 0; i < d.size(); ++i) out.push_back(fs::path(d.source(i)).filename().string());
    return out;
  };
  const auto train = names({0.0, 0.7}), test = names({0.7, 1.0});
  EXPECT_EQ(train, (std::vector<std::string>{"case0.mha", "case1.mha", "case2.mha", "case3.mha",
                                             "case4.mha", "case5.mha", "case6.mha"}));
  EXPECT_EQ(test, (std::vector<std::string>{"case7.mha", "case8.mha", "case9.mha"}));
  EXPECT_EQ(names({0.0, 1.0}).size(), 10u);
  // A subset that holds no file of a folder is an error naming it.
  DatasetOptions o = options_for(tmp.dir());
  o.subset = {0.0, 0.05};
  try {
    ImageDataset d(o);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("data.subset"), std::string::npos) << e.what();
  }
}

TEST(Dataset, VolumesAreSlicedAndEmptySlicesSkipped) {
  TempDir tmp;
  at::Tensor vol = busy_image({5, 8, 6});  // tensor [D, H, W]
  vol.select(2, 2).zero_();                // an empty slice along D
  write(tmp.path("v.nii.gz"), vol);
  write(tmp.path("flat.nii.gz"), busy_image({1, 8, 6}));  // one slice: a 2D image

  DatasetOptions o = options_for(tmp.dir());
  ImageDataset d(o);
  ASSERT_EQ(d.size(), 4 + 1);
  std::vector<std::string> sources;
  for (int64_t i = 0; i < d.size(); ++i)
    sources.push_back(fs::path(d.source(i)).filename().string());
  EXPECT_EQ(sources, (std::vector<std::string>{"flat.nii.gz", "v.nii.gz#0", "v.nii.gz#1",
                                               "v.nii.gz#3", "v.nii.gz#4"}));

  o.slice_axis = 2;  // along W: 6 slices of [D, H], none empty
  EXPECT_EQ(ImageDataset(o).size(), 6 + 1);
  o.slice_axis = 1;
  EXPECT_EQ(ImageDataset(o).size(), 8 + 1);

  o.min_foreground = 0;
  o.slice_axis = 0;
  EXPECT_EQ(ImageDataset(o).size(), 5 + 1);

  // 3D: one sample per volume; a 2D image is an error naming the file.
  DatasetOptions o3 = options_for(tmp.dir(), {8, 8, 8});
  o3.include = {"v.nii.gz"};
  ImageDataset d3(o3);
  ASSERT_EQ(d3.size(), 1);
  EXPECT_EQ(d3.sample(0).sizes(), (std::vector<int64_t>{1, 8, 8, 8}));
  o3.include = {"*.nii.gz"};
  EXPECT_NE(error_of(o3).find("flat.nii.gz"), std::string::npos) << error_of(o3);
}

TEST(Preprocess, RectangleLandsAsCentredBand) {
  // 2:1 physical rectangle (H = 32, W = 64, 1 mm) into 32 x 32: a band of 16 rows.
  at::Tensor img = at::ones({1, 32, 64});
  img[0][0][0] = 0;
  at::Tensor out = drdm::preprocess_image(img, {1.0, 1.0}, {32, 32}, 0, 100);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 32, 32}));
  EXPECT_EQ(out.slice(1, 0, 8).abs().max().item<float>(), 0.f);
  EXPECT_EQ(out.slice(1, 24, 32).abs().max().item<float>(), 0.f);
  EXPECT_GT(out.slice(1, 9, 23).min().item<float>(), 0.99f);
  EXPECT_LE(out.max().item<float>(), 1.f);

  // Same rectangle in voxels but spacing (H 2 mm, W 1 mm): physically square, fills the target.
  at::Tensor square = drdm::preprocess_image(img, {2.0, 1.0}, {32, 32}, 0, 100);
  EXPECT_GT(square.slice(1, 1, 31).slice(2, 1, 31).min().item<float>(), 0.99f);
}

TEST(Preprocess, StretchFillsTheGridWhateverTheAspect) {
  // data.fit = "stretch" (the authors' loaders): the 2:1 rectangle of
  // RectangleLandsAsCentredBand fills all 32 x 32, no zero band.
  at::Tensor img = at::ones({1, 32, 64});
  img[0][31][63] = 0;
  at::Tensor out = drdm::preprocess_image(img, {1.0, 1.0}, {32, 32}, 0, 100, /*stretch=*/true);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 32, 32}));
  EXPECT_GT(out.slice(1, 0, 30).min().item<float>(), 0.99f);

  // The dataset honours DatasetOptions::fit: an 8 x 32 image into 16 x 16.
  TempDir tmp;
  write(tmp.path("wide.nii.gz"), busy_image({8, 32}));
  DatasetOptions o = options_for(tmp.dir());
  ImageDataset kept(o);
  EXPECT_EQ(kept.sample(0).slice(1, 0, 3).abs().max().item<float>(), 0.f);  // padding rows
  o.fit = "stretch";
  ImageDataset stretched(o);
  // Every row and column holds image (normalised, so some values are 1), none is padding.
  EXPECT_GT(stretched.sample(0)[0].amax(1).min().item<float>(), 0.5f);
  EXPECT_GT(stretched.sample(0)[0].amax(0).min().item<float>(), 0.5f);
}

TEST(Preprocess, BrightSquareStaysSquareWithAnisotropicSpacing) {
  // 20 x 40 voxels, spacing H 2 mm, W 1 mm: a 40 x 40 mm field with a 20 x 20 mm square.
  at::Tensor img = at::zeros({1, 20, 40});
  img.slice(1, 5, 15).slice(2, 10, 30).fill_(1);
  at::Tensor out = drdm::preprocess_image(img, {2.0, 1.0}, {40, 40}, 0, 100);
  at::Tensor bright = out[0] > 0.5;
  at::Tensor rows = at::nonzero(bright.any(1)).view(-1), cols = at::nonzero(bright.any(0)).view(-1);
  const int64_t height = rows.max().item<int64_t>() - rows.min().item<int64_t>() + 1;
  const int64_t width = cols.max().item<int64_t>() - cols.min().item<int64_t>() + 1;
  EXPECT_NEAR(height, 20, 1);
  EXPECT_EQ(width, 20);
  EXPECT_NEAR((rows.max().item<int64_t>() + rows.min().item<int64_t>()) / 2.0, 19.5, 1.0);
  EXPECT_NEAR((cols.max().item<int64_t>() + cols.min().item<int64_t>()) / 2.0, 19.5, 1.0);

  // 3D: D spacing 4 mm, the 8 x 32 x 32 volume is a 32 mm cube that fills 16^3 (no padding).
  at::Tensor vol = at::ones({1, 8, 32, 32});
  vol[0][0][0][0] = 0;
  at::Tensor v = drdm::preprocess_image(vol, {4.0, 1.0, 1.0}, {16, 16, 16}, 0, 100);
  ASSERT_EQ(v.sizes(), (std::vector<int64_t>{1, 16, 16, 16}));
  EXPECT_GT(v.slice(1, 1, 15).slice(2, 1, 15).slice(3, 1, 15).min().item<float>(), 0.99f);
  // A 2:1 volume lands as a centred slab.
  at::Tensor slab = drdm::preprocess_image(vol, {2.0, 1.0, 1.0}, {16, 16, 16}, 0, 100);
  EXPECT_EQ(slab.slice(1, 0, 4).abs().max().item<float>(), 0.f);
  EXPECT_EQ(slab.slice(1, 12, 16).abs().max().item<float>(), 0.f);
  EXPECT_GT(slab.slice(1, 5, 11).slice(2, 1, 15).slice(3, 1, 15).min().item<float>(), 0.99f);
}

TEST(Preprocess, ClipsToPercentilesAndNormalises) {
  // 0..100: numpy-style percentiles 0.5 -> 0.5 and 99.5 -> 99.5.
  at::Tensor ramp = at::arange(101, at::kFloat).view({1, 1, 101});
  at::Tensor out = drdm::preprocess_image(ramp, {1.0, 1.0}, {1, 101}, 0.5, 99.5);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 1, 101}));
  EXPECT_EQ(out[0][0][0].item<float>(), 0.f);
  EXPECT_EQ(out[0][0][100].item<float>(), 1.f);
  EXPECT_NEAR(out[0][0][50].item<float>(), 0.5f, 1e-6);
  EXPECT_NEAR(out[0][0][10].item<float>(), 9.5f / 99.f, 1e-6);

  // One huge outlier does not squash the rest.
  at::Tensor img = at::arange(10000, at::kFloat).view({1, 100, 100});
  img[0][0][0] = 1e6;
  at::Tensor n = drdm::preprocess_image(img, {1.0, 1.0}, {100, 100}, 0.5, 99.5);
  EXPECT_EQ(n.min().item<float>(), 0.f);
  EXPECT_EQ(n.max().item<float>(), 1.f);
  EXPECT_EQ(n[0][0][0].item<float>(), 1.f);
  EXPECT_NEAR(n[0][50][0].item<float>(), 0.5f, 0.01f);

  // A constant image becomes zeros; wrong input is refused.
  EXPECT_EQ(drdm::preprocess_image(at::full({1, 4, 4}, 7.f), {1.0, 1.0}, {4, 4}, 0.5, 99.5)
                .abs()
                .max()
                .item<float>(),
            0.f);
  EXPECT_THROW(drdm::preprocess_image(at::ones({4, 4}), {1.0, 1.0}, {4, 4}, 0.5, 99.5), c10::Error);
  EXPECT_THROW(drdm::preprocess_image(at::ones({1, 4, 4}), {1.0}, {4, 4}, 0.5, 99.5), c10::Error);
  EXPECT_THROW(drdm::preprocess_image(at::ones({1, 4, 4}), {1.0, 1.0}, {4, 4}, 60, 40), c10::Error);
}

TEST(Dataset, TrainingBatchIsDeterministicPerStep) {
  TempDir tmp;
  for (int i = 0; i < 3; ++i)
    write(tmp.path("img" + std::to_string(i) + ".nii.gz"), busy_image({4, 20, 24}, i + 1));
  ImageDataset d(options_for(tmp.dir(), {16, 16}));
  ASSERT_EQ(d.size(), 12);
  AugmentOptions a;
  at::Tensor b1 = d.training_batch(6, 42, 3, a);
  ASSERT_EQ(b1.sizes(), (std::vector<int64_t>{6, 1, 16, 16}));
  EXPECT_EQ(b1.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(b1, d.training_batch(6, 42, 3, a)));
  EXPECT_FALSE(at::equal(b1, d.training_batch(6, 42, 4, a)));
  EXPECT_FALSE(at::equal(b1, d.training_batch(6, 43, 3, a)));
  EXPECT_GE(b1.min().item<float>(), 0.f);
  EXPECT_LE(b1.max().item<float>(), 1.f);
  // Without augmentation the batch is made of cached samples.
  at::Tensor plain = d.training_batch(4, 7, 0, no_augment());
  for (int64_t i = 0; i < 4; ++i) {
    bool found = false;
    for (int64_t j = 0; j < d.size() && !found; ++j) found = at::equal(plain[i], d.sample(j));
    EXPECT_TRUE(found);
  }
}

TEST(Dataset, PrefetcherMatchesTrainingBatch) {
  TempDir tmp;
  for (int i = 0; i < 2; ++i)
    write(tmp.path("img" + std::to_string(i) + ".nii.gz"), busy_image({3, 20, 20}, i + 7));
  ImageDataset d(options_for(tmp.dir(), {16, 16}));
  AugmentOptions a;
  {
    drdm::BatchPrefetcher p(d, 4, 99, 5, a, 2, 2);
    for (int64_t step = 5; step <= 8; ++step) {
      EXPECT_EQ(p.next_step(), step);
      EXPECT_TRUE(at::equal(p.next(), d.training_batch(4, 99, step, a))) << "step " << step;
    }
  }
  {
    drdm::BatchPrefetcher p(d, 4, 99, 0, a, 3, 1);  // destroyed with work pending
    EXPECT_TRUE(at::equal(p.next(), d.training_batch(4, 99, 0, a)));
  }
}

TEST(Augment, FlipsAndIdentityAreExact) {
  at::Tensor batch = busy_image({12, 10}).repeat({3, 1, 1, 1});
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  AugmentOptions a = no_augment();
  EXPECT_TRUE(at::equal(drdm::augment_batch(batch, a, gen), batch));
  a.flip_prob = 1;
  EXPECT_TRUE(at::equal(drdm::augment_batch(batch, a, gen), at::flip(batch, {2, 3})));
  AugmentOptions off;
  off.enabled = false;
  EXPECT_TRUE(at::equal(drdm::augment_batch(batch, off, gen), batch));
  // 3D flips too.
  at::Tensor vol = busy_image({5, 6, 7}).repeat({2, 1, 1, 1, 1});
  EXPECT_TRUE(at::equal(drdm::augment_batch(vol, a, gen), at::flip(vol, {2, 3, 4})));
  // A crop range [1, 1] with a zero-length other range stays the identity up to rounding.
  AugmentOptions tiny = no_augment();
  tiny.crop_min = tiny.crop_max = 1;
  tiny.translation = 1e-12;
  EXPECT_LT((drdm::augment_batch(batch, tiny, gen) - batch).abs().max().item<float>(), 1e-6f);
}

namespace {

/// A batch whose channel k holds the centred voxel coordinate along spatial
/// axis k (plus an offset so that the zero padding stands out). Linear
/// interpolation reproduces it exactly, so out(y) - offset is the sampled point.
at::Tensor coordinate_batch(int64_t n, std::vector<int64_t> size, double offset) {
  const auto d = static_cast<int64_t>(size.size());
  std::vector<at::Tensor> ch;
  for (int64_t k = 0; k < d; ++k) {
    std::vector<int64_t> shape(d, 1);
    shape[k] = size[k];
    at::Tensor c = at::arange(size[k], at::kFloat) - (size[k] - 1) / 2.0 + offset;
    ch.push_back(c.view(shape).expand(size));
  }
  std::vector<int64_t> repeats(d + 2, 1);
  repeats[0] = n;
  return at::stack(ch).unsqueeze(0).repeat(repeats).contiguous();
}

/// Voxels within `radius` of the centre (centred coordinates), as a mask [...S].
at::Tensor central_disc(const at::Tensor& coords_minus_offset, double radius) {
  return coords_minus_offset[0].pow(2).sum(0) <= radius * radius;
}

}  // namespace

TEST(Augment, TranslationIsAShiftWithinRange) {
  const double offset = 100;
  at::Tensor batch = coordinate_batch(8, {33, 25}, offset);  // non-square grid
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  AugmentOptions a = no_augment();
  a.translation = 0.125;
  at::Tensor out = drdm::augment_batch(batch, a, gen);
  at::Tensor mask = central_disc(batch - offset, 8);  // stays inside for any shift
  double moved = 0;
  for (int64_t i = 0; i < 8; ++i) {
    for (int64_t k = 0; k < 2; ++k) {
      at::Tensor diff = (out[i][k] - batch[i][k]).masked_select(mask);
      const double shift = diff.mean().item<double>();
      EXPECT_LT((diff - shift).abs().max().item<double>(), 1e-3);  // a pure shift
      EXPECT_LE(std::abs(shift), 0.125 * (batch.size(2 + k) - 1) + 1e-3);
      moved += std::abs(shift);
    }
  }
  EXPECT_GT(moved, 1.0);
}

TEST(Augment, RotationAndCropAreSimilarities) {
  const double offset = 100;
  for (std::vector<int64_t> size :
       {std::vector<int64_t>{31, 41}, std::vector<int64_t>{17, 19, 21}}) {
    const auto d = static_cast<int64_t>(size.size());
    at::Tensor batch = coordinate_batch(6, size, offset);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
    AugmentOptions a = no_augment();
    a.rotation_deg = 180;
    a.crop_min = 0.6;
    a.crop_max = 1.0;
    at::Tensor out = drdm::augment_batch(batch, a, gen);
    at::Tensor y = batch - offset;
    at::Tensor mask = central_disc(y, 7);  // any rotation of it stays inside
    double max_angle = 0;
    for (int64_t i = 0; i < 6; ++i) {
      // out(y) - offset = crop * R y: norms scale by one factor in [0.6, 1].
      at::Tensor x = out[i] - offset;
      at::Tensor ny = y[i].pow(2).sum(0).sqrt().masked_select(mask);
      at::Tensor nx = x.pow(2).sum(0).sqrt().masked_select(mask);
      at::Tensor far = ny > 3;
      at::Tensor ratio = (nx.masked_select(far) / ny.masked_select(far));
      const double crop = ratio.mean().item<double>();
      EXPECT_LT((ratio - crop).abs().max().item<double>(), 1e-3) << "sample " << i;
      EXPECT_GE(crop, 0.6 - 1e-3);
      EXPECT_LE(crop, 1.0 + 1e-3);
      // Angle between y and x (largest over the disc): rotations do happen.
      at::Tensor cosang = (x * y[i]).sum(0).masked_select(mask).masked_select(far) /
                          (nx.masked_select(far) * ny.masked_select(far));
      max_angle =
          std::max(max_angle, std::acos(std::clamp(cosang.min().item<double>(), -1.0, 1.0)));
    }
    EXPECT_GT(max_angle, 0.3) << d << "D";
  }
}

TEST(Dataset, ErrorsNameTheFolderOrFile) {
  TempDir tmp;
  const std::string missing = tmp.dir() + "/nope";
  EXPECT_NE(error_of(options_for(missing)).find(missing), std::string::npos);

  const std::string empty = tmp.path("empty/notes.txt");
  std::ofstream(empty) << "text";
  const std::string empty_dir = fs::path(empty).parent_path().string();
  EXPECT_NE(error_of(options_for(empty_dir)).find(empty_dir), std::string::npos);

  const std::string bad = tmp.path("bad/broken.nii.gz");
  write(tmp.path("bad/good.nii.gz"), busy_image({8, 8}));
  std::ofstream(bad, std::ios::binary) << "this is not a nifti file at all";
  const std::string e = error_of(options_for(fs::path(bad).parent_path().string()));
  EXPECT_NE(e.find("broken.nii.gz"), std::string::npos) << e;

  // All slices empty: no usable samples.
  const std::string dark = tmp.path("dark/zero.nii.gz");
  write(dark, at::zeros({1, 1, 8, 8}));
  EXPECT_NE(error_of(options_for(fs::path(dark).parent_path().string())).find("no usable"),
            std::string::npos);

  DatasetOptions o = options_for(tmp.dir());
  o.size = {16, 16, 16};
  EXPECT_FALSE(error_of(o).empty());
}

TEST(Dataset, RealMyopsSlices) {
  const std::string dir = std::string(DRDM_TEST_DATA_DIR) + "/myops";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) GTEST_SKIP() << "no " << dir;
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("101_", 0) == 0) files.push_back(e.path().string());
  if (files.empty()) GTEST_SKIP() << "no 101_* in " << dir;
  int64_t slices = 0;
  for (const auto& f : files) slices += drdm::read_image_info(f).geometry.tensor_size()[0];

  DatasetOptions o = options_for(dir, {64, 64});
  o.include = {"101_*.nii.gz"};
  o.min_foreground = 0;
  ImageDataset d(o);
  EXPECT_EQ(d.num_files(), static_cast<int64_t>(files.size()));
  EXPECT_EQ(d.size(), slices);
  for (int64_t i = 0; i < d.size(); ++i) {
    EXPECT_NE(d.source(i).find('#'), std::string::npos);
    EXPECT_GE(d.sample(i).min().item<float>(), 0.f);
    EXPECT_LE(d.sample(i).max().item<float>(), 1.f);
    EXPECT_GT(d.sample(i).max().item<float>(), 0.5f);
  }
  at::Tensor b = d.training_batch(4, 1, 0, AugmentOptions{});
  EXPECT_EQ(b.sizes(), (std::vector<int64_t>{4, 1, 64, 64}));
}
