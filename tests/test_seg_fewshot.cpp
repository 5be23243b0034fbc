// Few-shot segmentation: U-Net, losses, config checks, subjects, slices, predict, evaluate, a grid
// smoke run.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/utils.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "drdm/core/module_state.h"
#include "drdm/core/stats.h"
#include "drdm/io/image_io.h"
#include "drdm/seg/fewshot.h"
#include "test_util.h"

namespace {

using drdm::test::TempDir;
namespace seg = drdm::seg;

seg::UNetOptions unet_options(int64_t dims, int64_t in, int64_t classes,
                              std::vector<int64_t> widths) {
  return seg::UNetOptions().dims(dims).in_channels(in).classes(classes).widths(std::move(widths));
}

TEST(UNet, ShapesIn2DAnd3D) {
  seg::UNet net2(unet_options(2, 1, 4, {8, 16, 32}));
  EXPECT_EQ(net2->forward(at::rand({2, 1, 32, 24})).sizes(), (std::vector<int64_t>{2, 4, 32, 24}));
  seg::UNet net3(unet_options(3, 2, 3, {4, 8}));
  EXPECT_EQ(net3->forward(at::rand({1, 2, 8, 12, 16})).sizes(),
            (std::vector<int64_t>{1, 3, 8, 12, 16}));
  EXPECT_THROW(net2->forward(at::rand({1, 1, 30, 32})),
               std::invalid_argument);  // not divisible by 4
  EXPECT_THROW(net2->forward(at::rand({1, 2, 32, 32})), std::invalid_argument);  // channels
}

TEST(UNet, CloneIsADeepCopyAndNamesAreStable) {
  torch::manual_seed(4);
  torch::NoGradGuard no_grad;
  seg::UNet net(unet_options(2, 1, 3, {4, 8}));
  const auto state = drdm::module_state(*net);
  for (const char* key : {"enc0.conv1.weight", "enc0.conv2.bias", "enc1.conv1.weight", "up0.weight",
                          "dec0.conv1.weight", "dec0.conv2.bias", "head.weight", "head.bias"})
    EXPECT_EQ(state.count(key), 1u) << key;
  EXPECT_EQ(state.size(), 16u);
  const auto copy = std::dynamic_pointer_cast<seg::UNetImpl>(net->clone());
  ASSERT_TRUE(copy);
  const auto x = at::rand({1, 1, 16, 16});
  const auto y = net->forward(x);
  EXPECT_TRUE(at::equal(y, copy->forward(x)));
  drdm::module_state(*copy).at("head.bias").add_(1);
  EXPECT_TRUE(at::equal(y, net->forward(x)));
  EXPECT_FALSE(at::equal(y, copy->forward(x)));
}

TEST(UNet, ParameterCountMatchesTheLayerShapes) {
  // widths {2, 4}, 1 -> 2 channels, 2D, counted by hand: enc0 (1->2, 2->2 3x3) 20 + 38;
  // enc1 (2->4, 4->4) 76 + 148; up (4->2, 2x2) 34; dec0 (4->2, 2->2) 74 + 38; head (2->2, 1x1) 6.
  EXPECT_EQ(drdm::parameter_count(*seg::UNet(unet_options(2, 1, 2, {2, 4}))), 434);
  EXPECT_EQ(seg::unet_parameter_count(unet_options(2, 1, 2, {2, 4})), 434);
  for (const seg::UNetOptions& o :
       {unet_options(2, 1, 4, {16, 32, 64, 128}), unet_options(3, 1, 3, {8, 16, 32})})
    EXPECT_EQ(drdm::parameter_count(*seg::UNet(o)), seg::unet_parameter_count(o));
}

TEST(UNet, LossesReachZeroOnPerfectLogitsAndNameUnknownOnes) {
  const auto labels = at::randint(0, 3, {2, 1, 8, 8}, at::kLong);
  const auto perfect =
      (at::one_hot(labels.squeeze(1), 3).permute({0, 3, 1, 2}).to(at::kFloat) * 2 - 1) * 30;
  EXPECT_LT(seg::bce_loss(perfect, labels).item<double>(), 1e-6);
  EXPECT_LT(seg::dice_ce_loss(perfect, labels).item<double>(), 1e-4);
  EXPECT_GT(seg::bce_loss(-perfect, labels).item<double>(), 10);
  EXPECT_THROW(seg::segmentation_loss("focal", perfect, labels), std::invalid_argument);
  EXPECT_THROW(seg::bce_loss(perfect, labels.narrow(2, 0, 4)), std::invalid_argument);
}

std::string config_error(const std::string& json) {
  try {
    seg::parse_seg_config(json, "seg.json");
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(SegConfig, BadKeysAndValuesNameThemselves) {
  const std::string data = R"("data": {"images": "i", "labels": "l"})";
  EXPECT_EQ(config_error("{" + data + "}"), "");
  EXPECT_NE(config_error("{" + data + R"(, "grid": {"augmentations": ["mixup"]}})")
                .find("unknown augmentation 'mixup'"),
            std::string::npos);
  EXPECT_NE(config_error("{" + data + R"(, "grid": {"subjects": [0]}})").find("grid.subjects"),
            std::string::npos);
  EXPECT_NE(config_error("{" + data + R"(, "grid": {"subjects": []}})").find("grid.subjects"),
            std::string::npos);
  EXPECT_NE(config_error("{" + data + R"(, "bigaug": {"gamma_min": 5}})").find("bigaug.gamma"),
            std::string::npos);
  EXPECT_NE(
      config_error("{" + data + R"(, "unet": {"widht": [4]}})").find("did you mean 'unet.widths'"),
      std::string::npos);
  // 70 levels: 2^(levels - 1) would shift past 63 bits (undefined before the bound).
  std::string widths = "1";
  for (int i = 1; i < 70; ++i) widths += ", 1";
  EXPECT_NE(
      config_error("{" + data + R"(, "unet": {"widths": [)" + widths + "]}}").find("unet.widths"),
      std::string::npos);
  // Absurd widths are refused by the config, not by the allocator (issue 26, item 12).
  EXPECT_NE(
      config_error("{" + data + R"(, "unet": {"widths": [100000, 200000]}})").find("[1, 4096]"),
      std::string::npos);
  EXPECT_NE(config_error(R"({"data": {"images": "i", "labels": "l", "test_mod": [5, 12]}})")
                .find("data.test_mod"),
            std::string::npos);
  EXPECT_NE(config_error(R"({"data": {"images": "i", "labels": "l", "size": [100, 100]}})")
                .find("divisible by 8"),
            std::string::npos);
  const auto c = seg::parse_seg_config("{" + data + "}", "seg.json");
  EXPECT_EQ(seg::to_json(seg::parse_seg_config(seg::to_json(c), "again")), seg::to_json(c));
  EXPECT_EQ(c.unet.classes(), 4);
  // The bank cap: fields per slice shrink for big subsets, never below 1.
  auto capped = seg::parse_seg_config(
      "{" + data + R"(, "drdm": {"fields_per_slice": 16, "max_fields": 1600}})", "s");
  EXPECT_EQ(seg::bank_fields_per_slice(capped, 100), 16);
  EXPECT_EQ(seg::bank_fields_per_slice(capped, 300), 5);
  EXPECT_EQ(seg::bank_fields_per_slice(capped, 5000), 1);
  EXPECT_EQ(seg::bank_fields_per_slice(c, 5000), 16);
}

/// A labelled volume (slices x 40 x 48): a bright disc (3) in a ring (2), a blob (1), at a
/// subject-dependent place.
void write_case(const TempDir& dir, const std::string& name, int64_t shift, int64_t slices = 2) {
  const auto yy = at::arange(40, at::kFloat).view({1, 40, 1}),
             xx = at::arange(48, at::kFloat).view({1, 1, 48});
  const auto r =
      at::sqrt((yy - 20 - shift).pow(2) + (xx - 24 - shift).pow(2)).expand({slices, 40, 48});
  auto labels = at::zeros({slices, 40, 48}, at::kLong);
  labels.masked_fill_(r < 11, 2);
  labels.masked_fill_(r < 7, 3);
  labels.masked_fill_(
      (at::abs(yy - 20).expand_as(r) < 4) & (at::abs(xx - 38 - shift / 2).expand_as(r) < 3), 1);
  auto image = labels.to(at::kFloat) * 60 + 20 + at::rand({slices, 40, 48}) * 10;
  drdm::Geometry g{{48, 40, slices}, {1.5, 1.25, 8.0}, {10, -5, 3}, {1, 0, 0, 0, 1, 0, 0, 0, 1}};
  drdm::write_image(dir.path("images/" + name + ".nii.gz"), image.unsqueeze(0).unsqueeze(0), g,
                    drdm::PixelType::kUInt16);
  drdm::write_labels(dir.path("labels/" + name + ".nii.gz"), labels.unsqueeze(0).unsqueeze(0), g);
}

class TinyData : public ::testing::Test {
 protected:
  void SetUp() override {
    // Pool (mod 20 in 1..9): subjects 1, 2 (group 0), 21 (group 1); test (10..18): 10, 30.
    for (int s : {1, 2, 21, 10, 30})
      for (int f : {1, 2})
        write_case(data_,
                   "patient" + std::to_string(1000 + s).substr(1) + "_frame0" + std::to_string(f),
                   s % 5 - 2);
  }
  seg::SegConfig config(const std::vector<std::string>& sets = {}) const {
    std::vector<std::string> all = {"data.images=" + data_.dir() + "/images",
                                    "data.labels=" + data_.dir() + "/labels",
                                    "data.size=[32,32]",
                                    "unet.widths=[4,8]",
                                    "train.steps=3",
                                    "train.batch_size=4",
                                    "train.log_every=1",
                                    "train.device=cpu",
                                    "train.checkpoint_every=2",
                                    "grid.subjects=[1]",
                                    "drdm.levels=[3]",
                                    "drdm.fields_per_slice=2"};
    all.insert(all.end(), sets.begin(), sets.end());
    return seg::parse_seg_config("{}", "tiny", all);
  }
  TempDir data_{"drdm-test-seg-data"}, out_{"drdm-test-seg-out"};
};

TEST_F(TinyData, SplitAndBalancedSubjects) {
  const auto split = seg::split_subjects(config().data);
  ASSERT_EQ(split.pool.size(), 3u);
  ASSERT_EQ(split.test.size(), 2u);
  EXPECT_EQ(split.test[0].number, 10);
  EXPECT_EQ(split.pool[0].cases.size(), 2u);
  const auto two = seg::choose_subjects(split.pool, 2, 0);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_NE(two[0].group, two[1].group);  // one per group before a second from any group
  EXPECT_EQ(seg::choose_subjects(split.pool, 2, 0)[0].number, two[0].number);  // deterministic
  EXPECT_THROW(seg::choose_subjects(split.pool, 0, 0), std::invalid_argument);
  EXPECT_THROW(seg::choose_subjects(split.pool, 4, 0), std::invalid_argument);
}

TEST_F(TinyData, ValidationSubjectsComeFromThePoolNeverFromTest) {
  const auto all = seg::split_subjects(config().data);
  const auto split = seg::split_subjects(config({"data.validation_subjects=2"}).data);
  ASSERT_EQ(split.validation.size(), 2u);
  ASSERT_EQ(split.pool.size(), 1u);
  EXPECT_NE(split.validation[0].group, split.validation[1].group);  // balanced over groups
  std::set<int64_t> pool, test, held;
  for (const auto& s : all.pool) pool.insert(s.number);
  for (const auto& s : split.test) test.insert(s.number);
  for (const auto& s : split.validation) held.insert(s.number);
  for (auto n : held) {
    EXPECT_TRUE(pool.count(n)) << n;   // from the labelled pool
    EXPECT_FALSE(test.count(n)) << n;  // never a test subject
    EXPECT_NE(split.pool[0].number, n);
  }
  EXPECT_EQ(split.test.size(), all.test.size());
  // The same subjects whatever else the config says; none left to train on is an error.
  EXPECT_EQ(seg::split_subjects(config({"data.validation_subjects=2", "train.seed=7"}).data)
                .validation[0]
                .number,
            split.validation[0].number);
  EXPECT_THROW(seg::split_subjects(config({"data.validation_subjects=3"}).data),
               std::invalid_argument);
}

TEST_F(TinyData, ValidationChoosesTheRunsStepAndNeedsSubjects) {
  auto c = config({"train.steps=4", "train.validate_every=2", "data.validation_subjects=1"});
  const auto split = seg::split_subjects(c.data);
  const auto slices = seg::load_slices(split.pool[0].cases, c.data.slices);
  EXPECT_THROW(seg::train_segmentation(c, "none", slices, {}, out_.path("x"), false),
               std::invalid_argument);  // validate_every without validation subjects
  const auto val = seg::load_slices(split.validation[0].cases, c.data.slices);
  const auto r = seg::train_segmentation(c, "none", slices, {}, out_.path("run"), false, val);
  EXPECT_EQ(r.model, out_.path("run") + "/best.pt");
  EXPECT_TRUE(r.chosen_step == 0 || r.chosen_step == 2 || r.chosen_step == 4) << r.chosen_step;
  auto best = seg::load_seg_model(r.model);
  EXPECT_NEAR(seg::validation_dice(best.net, val, 3), r.best_validation, 1e-9);
  EXPECT_GE(r.best_validation, 0.0);
  EXPECT_LE(r.best_validation, 1.0);
}

// train.init_from starts from a model's weights: the run's validation at
// step 0 scores exactly that model.
TEST_F(TinyData, InitFromStartsFromTheGivenWeights) {
  auto c = config({"train.steps=2", "train.validate_every=1", "data.validation_subjects=1"});
  const auto split = seg::split_subjects(c.data);
  const auto slices = seg::load_slices(split.pool[0].cases, c.data.slices);
  const auto val = seg::load_slices(split.validation[0].cases, c.data.slices);
  const auto first = seg::train_segmentation(c, "none", slices, {}, out_.path("a"), false, val);
  auto first_model = seg::load_seg_model(first.model);
  const auto start = seg::validation_dice(first_model.net, val, 3);
  auto again = config({"train.steps=2", "train.validate_every=1", "data.validation_subjects=1",
                       "train.seed=5", "train.init_from=" + first.model});
  seg::train_segmentation(again, "none", slices, {}, out_.path("b"), false, val);
  std::ifstream in(out_.path("b") + "/validation.json");
  ASSERT_TRUE(in) << "validation.json";
  const auto history = nlohmann::json::parse(in).at("history");
  EXPECT_EQ(history.at(0).at("step"), 0);
  EXPECT_NEAR(history.at(0).at("score").get<double>(), start, 1e-9);
  EXPECT_THROW(seg::train_segmentation(config({"train.init_from=" + out_.path("none.pt")}), "none",
                                       slices, {}, out_.path("c"), false),
               std::runtime_error);
}

TEST_F(TinyData, RotateFlipTrainsOnSquareGridsOnly) {
  try {
    config({"data.rotate_flip=true", "data.size=[32,48]"});
    ADD_FAILURE() << "a non-square grid with rotate_flip was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("data.rotate_flip"), std::string::npos) << e.what();
  }
  const auto c = config({"data.rotate_flip=true", "train.steps=2"});
  const auto split = seg::split_subjects(c.data);
  const auto slices = seg::load_slices(split.pool[0].cases, c.data.slices);
  const auto r = seg::train_segmentation(c, "bigaug", slices, {}, out_.path("rf"), false);
  EXPECT_EQ(r.steps, 2);
  EXPECT_TRUE(std::isfinite(r.last_loss));
}

// The same physical volume stored with its x axis reversed and x, y swapped:
// the prediction must be the same labels at the same physical points.
TEST_F(TinyData, PredictDoesNotDependOnHowTheAxesAreStored) {
  const auto c = config({"train.steps=3"});
  const auto split = seg::split_subjects(c.data);
  const auto slices = seg::load_slices(split.pool[0].cases, c.data.slices);
  auto model = seg::load_seg_model(
      seg::train_segmentation(c, "none", slices, {}, out_.path("r"), false).model);
  const auto src = data_.dir() + "/images/patient010_frame01.nii.gz";
  const auto image = drdm::read_image(src);
  const auto& g = image.geometry;  // ITK axes x (48), y (40), z
  // New ITK axis 0 = old y, new axis 1 = old x reversed; z unchanged.
  drdm::Geometry h = g;
  h.size = {g.size[1], g.size[0], g.size[2]};
  h.spacing = {g.spacing[1], g.spacing[0], g.spacing[2]};
  const double ex[3] = {g.direction[0], g.direction[3], g.direction[6]},
               ey[3] = {g.direction[1], g.direction[4], g.direction[7]};
  for (int r = 0; r < 3; ++r) {
    h.direction[r * 3 + 0] = ey[r];
    h.direction[r * 3 + 1] = -ex[r];
    h.origin[r] = g.origin[r] + ex[r] * g.spacing[0] * double(g.size[0] - 1);
  }
  // Tensor [1, 1, z, y, x] -> [1, 1, z, x', y] with x' = x reversed.
  const auto stored = image.data.flip({4}).transpose(3, 4).contiguous();
  drdm::write_image(out_.path("o/turned.nii.gz"), stored, h, drdm::PixelType::kFloat32);
  const auto a = seg::segment_file(model, src);
  const auto b = seg::segment_file(model, out_.path("o/turned.nii.gz"));
  ASSERT_EQ(b.sizes(), stored.sizes());
  EXPECT_TRUE(at::equal(b, a.flip({4}).transpose(3, 4))) << "labels moved with the storage order";
  // Canonical orientation of the two grids is the same grid.
  const auto ra = seg::canonical_orientation(g), rb = seg::canonical_orientation(h);
  EXPECT_EQ(ra.spacing, rb.spacing);
  EXPECT_TRUE(at::equal(seg::to_canonical(image.data, ra), seg::to_canonical(stored, rb)));
  EXPECT_TRUE(at::equal(seg::from_canonical(seg::to_canonical(stored, rb), rb), stored));
}

// A model trained with rotate_flip predicts from the mean of the 8 turned and
// mirrored views, so a slice turned by a quarter turn gets the turned labels.
TEST_F(TinyData, RotateFlipModelsPredictTurnedSlicesAsTurnedLabels) {
  const auto c = config({"data.rotate_flip=true", "train.steps=150", "train.lr=0.01"});
  const auto split = seg::split_subjects(c.data);
  const auto slices = seg::load_slices(split.pool[0].cases, c.data.slices);
  auto model = seg::load_seg_model(
      seg::train_segmentation(c, "none", slices, {}, out_.path("r"), false).model);
  // A square slice on the network's own grid, so the fit is the same for every turn.
  at::manual_seed(3);
  const auto yy = at::arange(32, at::kFloat).view({32, 1}), xx = at::arange(32, at::kFloat);
  const auto r = at::sqrt((yy - 13).pow(2) + (xx - 17).pow(2));  // rings as in the training cases
  const auto rings = r.lt(11).to(at::kFloat) * 60 + r.lt(7).to(at::kFloat) * 60;
  const auto image = (rings + 20 + at::rand({32, 32}) * 10).expand({2, 32, 32}).contiguous();
  const drdm::Geometry g{{32, 32, 2}, {1, 1, 1}, {0, 0, 0}, {1, 0, 0, 0, 1, 0, 0, 0, 1}};
  const auto stored = image.unsqueeze(0).unsqueeze(0);
  drdm::write_image(out_.path("t/a.nii.gz"), stored, g, drdm::PixelType::kFloat32);
  drdm::write_image(out_.path("t/b.nii.gz"), at::rot90(stored, 1, {3, 4}).contiguous(), g,
                    drdm::PixelType::kFloat32);
  const auto a = seg::segment_file(model, out_.path("t/a.nii.gz"));
  const auto b = seg::segment_file(model, out_.path("t/b.nii.gz"));
  // The labels must vary, or any network would pass.
  const auto share = at::eq(a, a.max()).to(at::kDouble).mean().item<double>();
  ASSERT_GT(share, 0.02) << "the prediction is one label";
  ASSERT_LT(share, 0.98) << "the prediction is one label";
  // Equal up to the order in which the 8 views are summed (a one-view network,
  // trained for 2 steps, is nowhere near this equivariant).
  const double differ = at::ne(b, at::rot90(a, 1, {3, 4})).to(at::kDouble).mean().item<double>();
  EXPECT_LT(differ, 0.005) << "share of voxels whose label did not turn with the slice";
}

TEST_F(TinyData, SlicesGoToTheNetworkGridAndBack) {
  const auto c = config();
  const auto v =
      seg::prepare_volume(data_.dir() + "/images/patient001_frame01.nii.gz",
                          data_.dir() + "/labels/patient001_frame01.nii.gz", c.data.slices);
  ASSERT_EQ(v.slices.sizes(), (std::vector<int64_t>{2, 1, 32, 32}));
  EXPECT_LE(v.slices.max().item<double>(), 1.0);
  EXPECT_EQ(std::get<0>(at::_unique(v.labels)).numel(), 4);  // no new class from the fit
  // Perfect scores on the network grid come back as the original labels (up to the resampling at
  // edges).
  const auto truth = drdm::read_labels(data_.dir() + "/labels/patient001_frame01.nii.gz").data;
  const auto scores = at::one_hot(v.labels.squeeze(1), 4).permute({0, 3, 1, 2}).to(at::kFloat);
  const auto back = seg::labels_on_image_grid(scores, v);
  ASSERT_EQ(back.sizes(), truth.sizes());
  EXPECT_GT((back == truth).to(at::kFloat).mean().item<double>(), 0.95);
  // Labels on another grid are an error naming both files.
  write_case(data_, "other", 0, 3);
  try {
    seg::prepare_volume(data_.dir() + "/images/patient001_frame01.nii.gz",
                        data_.dir() + "/labels/other.nii.gz", c.data.slices);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("other.nii.gz"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("patient001_frame01"), std::string::npos) << e.what();
  }
}

TEST_F(TinyData, TrainPredictKeepsGeometryEvaluateScores) {
  const auto c = config({"train.steps=2"});
  const auto split = seg::split_subjects(c.data);
  const auto slices = seg::load_slices(split.pool[0].cases, c.data.slices);
  EXPECT_THROW(seg::train_segmentation(c, "cutout", slices, {}, out_.path("x"), false),
               std::invalid_argument);
  EXPECT_THROW(seg::train_segmentation(c, "drdm", slices, {}, out_.path("x"), false),
               std::invalid_argument);
  const auto model_path =
      seg::train_segmentation(c, "bigaug", slices, {}, out_.path("run"), false).model;
  auto model = seg::load_seg_model(model_path);
  const auto written = seg::predict_files(model, data_.dir() + "/images", out_.path("pred/x"));
  ASSERT_EQ(written.size(), 10u);
  const auto in = drdm::read_image_info(data_.dir() + "/images/patient010_frame01.nii.gz").geometry;
  const auto out = drdm::read_image_info(out_.dir() + "/pred/x/patient010_frame01.nii.gz").geometry;
  EXPECT_EQ(out.size, in.size);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(out.spacing[i], in.spacing[i], 1e-6);
    EXPECT_NEAR(out.origin[i], in.origin[i], 1e-6);
  }
  // Truth against itself is perfect; a missing truth file is named.
  const auto self =
      seg::evaluate_folders(data_.dir() + "/labels", data_.dir() + "/labels", {1, 2, 3});
  ASSERT_EQ(self.size(), 10u);
  EXPECT_DOUBLE_EQ(self[0].classes[2].dice, 1.0);
  EXPECT_THROW(seg::evaluate_folders(out_.dir() + "/pred", data_.dir() + "/images_missing", {1}),
               std::runtime_error);
  EXPECT_THROW(seg::load_seg_model(out_.dir() + "/nothing.pt"), std::runtime_error);
}

// Label maps outside 0..K or on another spacing are named, not scored (issue 26, items 4 and 5).
TEST_F(TinyData, LabelsOutsideTheClassesOrOffTheImageGridAreNamed) {
  const auto c = config();
  const auto labels = data_.dir() + "/labels/patient010_frame01.nii.gz";
  auto bad = drdm::read_labels(labels);
  bad.data[0][0][0][0][0] = 7;
  drdm::write_labels(labels, bad.data, bad.geometry);
  const auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const auto evaluate = message([&] {
    seg::evaluate_folders(data_.dir() + "/labels", data_.dir() + "/labels", {1, 2, 3});
  });
  EXPECT_NE(evaluate.find("patient010_frame01.nii.gz' holds the label 7"), std::string::npos)
      << evaluate;
  EXPECT_EQ(seg::evaluate_folders(data_.dir() + "/labels", data_.dir() + "/labels", {1, 7}).size(),
            10u);
  EXPECT_NE(message([&] { seg::run_grid(c, out_.path("grid"), false); }).find("label 7"),
            std::string::npos);
  EXPECT_FALSE(std::ifstream(out_.dir() + "/grid/config.json").good());  // refused before any write
  bad.geometry.spacing = {2.0, 2.0, 8.0};
  bad.data[0][0][0][0][0] = 0;
  drdm::write_labels(labels, bad.data, bad.geometry);
  const auto grid = message([&] {
    seg::prepare_volume(data_.dir() + "/images/patient010_frame01.nii.gz", labels, c.data.slices);
  });
  EXPECT_NE(grid.find("spacing 2x2x8 vs 1.5x1.25x8"), std::string::npos) << grid;
}

TEST_F(TinyData, GridSmokeRunWritesItsReportAndSkipsFinishedRuns) {
  const auto c = config();
  seg::run_grid(c, out_.path("grid"), false);
  for (const char* f : {"results.json", "results.md", "predictions.png", "banks/n1-s0/bank.pt",
                        "runs/drdm-n1-s0/model.pt", "runs/none-n1-s0/test_metrics.json"})
    EXPECT_TRUE(std::ifstream(out_.dir() + "/grid/" + f).good()) << f;
  std::ifstream md(out_.dir() + "/grid/results.md");
  std::stringstream text;
  text << md.rdbuf();
  EXPECT_NE(text.str().find("| 1 | drdm |"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("drdm vs bigaug"), std::string::npos);
  // A rerun trains nothing: the finished runs' metrics are reused as they are.
  std::ifstream before(out_.dir() + "/grid/runs/none-n1-s0/test_metrics.json");
  std::stringstream b;
  b << before.rdbuf();
  std::remove((out_.dir() + "/grid/runs/none-n1-s0/checkpoint.pt").c_str());
  seg::run_grid(c, out_.path("grid"), false);
  std::ifstream after(out_.dir() + "/grid/runs/none-n1-s0/test_metrics.json");
  std::stringstream a;
  a << after.rdbuf();
  EXPECT_EQ(a.str(), b.str());
  EXPECT_FALSE(std::ifstream(out_.dir() + "/grid/runs/none-n1-s0/checkpoint.pt").good());
}

TEST(Stats, WilcoxonExactAndNormalCases) {
  // n = 5, all differences positive: W+ = 15, P(W+ >= 15) = 1/32, two-sided 1/16.
  EXPECT_DOUBLE_EQ(drdm::wilcoxon_signed_rank({2, 3, 4, 5, 6}, {1, 1, 1, 1, 1}), 0.0625);
  // n = 6, the smallest |d| negative: W+ = 20; sums >= 20 of subsets of {1..6}: 2 of 64 -> 4/64.
  EXPECT_DOUBLE_EQ(drdm::wilcoxon_signed_rank({0, 3, 4, 5, 6, 7}, {1, 1, 1, 1, 1, 1}), 0.0625);
  EXPECT_DOUBLE_EQ(drdm::wilcoxon_signed_rank({1, 2}, {1, 2}), 1.0);  // no differences
  const std::vector<double> x = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7,
                                 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3},
                            y = {2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0,
                                 4, 5, 2, 3, 5, 3, 6, 0, 2, 8, 7, 4, 7, 1};
  const double p = drdm::wilcoxon_signed_rank(x, y);
  EXPECT_DOUBLE_EQ(drdm::wilcoxon_signed_rank(y, x), p);  // symmetric
  EXPECT_GT(p, 0.05);
  EXPECT_LT(drdm::wilcoxon_signed_rank({10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                        23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35},
                                       std::vector<double>(26, 0.0)),
            1e-4);
  EXPECT_NEAR(drdm::mean_of({1, 2, std::nan("")}), 1.5, 1e-12);
  EXPECT_NEAR(drdm::std_of({1, 2, 3}), 1.0, 1e-12);
}

}  // namespace
