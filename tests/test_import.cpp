// The authors' published cardiac network imported into libdrdm
// (drdm/diffusion/import.h): the shipped model models/cardiac2d-paper/model.pt must
// reproduce the outputs of their own RecResACNet code with their weights,
// recorded once by scripts/make_import_golden.py in tests/data/import_golden.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "drdm/core/module_state.h"
#include "drdm/diffusion/import.h"
#include "drdm/diffusion/inference.h"
#include "drdm/diffusion/train_config.h"
#include "drdm/diffusion/trainer.h"
#include "drdm/engine/training_engine.h"
#include "test_util.h"

namespace {

using drdm::StateDict;
using nlohmann::json;

const std::string kSource = DRDM_SOURCE_DIR;
const std::string kGolden = kSource + "/tests/data/import_golden";
const std::string kModel = kSource + "/models/cardiac2d-paper/model.pt";
const std::string kConfig = kSource + "/configs/cardiac2d-paper-import.json";

// Largest |ours - theirs| accepted, in voxels of the 64 x 64 fixture (their
// fields reach about 2 voxels): float32 rounding of two differently ordered
// convolution implementations (measured: a few 1e-6).
constexpr double kTolerance = 1e-4;

json golden() {
  std::ifstream in(kGolden + "/golden.json");
  return json::parse(in);
}

at::Tensor read_f32(const json& entry) {
  std::ifstream in(kGolden + "/" + entry.at("file").get<std::string>(), std::ios::binary);
  std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const auto shape = entry.at("shape").get<std::vector<int64_t>>();
  auto t = at::empty(shape, at::kFloat);
  EXPECT_EQ(static_cast<size_t>(t.nbytes()), bytes.size()) << entry.dump();
  std::memcpy(t.data_ptr<float>(), bytes.data(), std::min<size_t>(bytes.size(), t.nbytes()));
  return t;  // little-endian float32: this project's targets are little-endian
}

drdm::NetworkOptions imported_options() {
  return drdm::network_options(drdm::load_train_config(kConfig));
}

// Max |our forward - their output| over the fixture's cases, for a network
// with `options` (recursion set per case) loaded with `state`.
double max_difference(const StateDict& state, drdm::NetworkOptions options, bool verbose = false) {
  at::NoGradGuard no_grad;
  const auto g = golden();
  const auto image = read_f32(g.at("image"));
  double worst = 0;
  for (const auto& c : g.at("cases")) {
    options.recursion = c.at("recursion").get<int64_t>();
    drdm::RecoveryNet net(options);
    drdm::load_module_state(*net, state);
    net->train(false);
    const auto t = at::tensor(c.at("t").get<std::vector<int64_t>>(), at::kLong);
    const auto theirs = read_f32(c);
    const auto ours = net->forward(image, t);
    const double d = (ours - theirs).abs().max().item<double>();
    if (verbose)
      std::cout << "  " << c.at("name").get<std::string>() << ": max |u| "
                << theirs.abs().max().item<double>() << " voxels, max |ours - theirs| " << d
                << "\n";
    worst = std::max(worst, d);
  }
  return worst;
}

StateDict shipped_state() { return drdm::read_checkpoint(kModel, "drdm").model; }

TEST(ImportGolden, ShippedModelReproducesTheAuthorsNetwork) {
  const auto m = drdm::load_model(kModel);
  const double d = max_difference(shipped_state(), m.net->options, /*verbose=*/true);
  std::cout << "max |ours - theirs| = " << d << " voxels (tolerance " << kTolerance << ")\n";
  EXPECT_LE(d, kTolerance);
}

TEST(ImportGolden, ParameterCountMatchesTheAuthors) {
  const auto m = drdm::load_model(kModel);
  // Their 443,435 scalars = 435,435 trainable + their 80 x 100 time table.
  EXPECT_EQ(drdm::parameter_count(*m.net), 435435);
  EXPECT_EQ(golden().at("state_dict_elements").get<int64_t>(), 443435);
  EXPECT_EQ(drdm::module_state(*m.net).at("time_table").sizes(), (at::IntArrayRef{81, 100}));
}

// A wrongly mapped network differs from theirs by far more than the tolerance.
void expect_detected(const std::string& what, const StateDict& state,
                     const drdm::NetworkOptions& options, double factor = 100) {
  const double d = max_difference(state, options);
  std::cout << "  " << what << ": max |ours - theirs| " << d << " voxels\n";
  EXPECT_GT(d, factor * kTolerance) << what;
}

// Every plausible mistake of a converter changes the output far beyond the tolerance.
TEST(ImportGolden, MisMappedLayersAreDetected) {
  const auto options = imported_options();
  const auto state = shipped_state();
  const auto swapped = [&](const std::string& a, const std::string& b) {
    auto s = state;
    std::swap(s.at(a), s.at(b));
    return s;
  };
  expect_detected("dilation 1 and 3 convs swapped",
                  swapped("dec3.0.conv_d1.weight", "dec3.0.conv_d3.weight"), options);
  expect_detected("blocks 1 and 2 swapped",
                  swapped("enc1.1.conv_in.weight", "enc1.2.conv_in.weight"), options);
  auto levels = state;  // te_mid and te5 (both 40 wide) exchanged
  for (const char* p : {".0.weight", ".0.bias", ".2.weight", ".2.bias"})
    std::swap(levels.at(std::string("te4") + p), levels.at(std::string("te6") + p));
  expect_detected("time MLPs te_mid and te5 swapped", levels, options);
  auto shifted = state;  // off by one in t
  shifted.at("time_table") = at::roll(state.at("time_table"), 1, 0);
  expect_detected("t off by one", shifted, options);
  auto flipped = state;  // output channels in the other axis order
  flipped.at("out.weight") = state.at("out.weight").flip(0);
  flipped.at("out.bias") = state.at("out.bias").flip(0);
  expect_detected("output channels swapped", flipped, options);
}

TEST(ImportGolden, EachAuthorsOptionMatters) {
  const auto state = shipped_state();
  auto o = imported_options();
  o.time_mlp_slope = 0.01;
  expect_detected("time_mlp_slope 0.01", state, o, 10);
  o = imported_options();
  o.output_units = drdm::OutputUnits::kVoxels;
  expect_detected("output_units voxels", state, o);
  o = imported_options();
  o.time_frequencies = drdm::TimeFrequencies::kStandard;  // the table is loaded: no effect
  EXPECT_LE(max_difference(state, o), kTolerance) << "time_frequencies";
}

// output_units = image_size scales channel i by S_i; output_clamp limits
// each pass to +-(S_i - 1) voxels (untrained output conv: weights ~1e-5).
TEST(Import, OutputUnitsAndClampPerAxis) {
  at::NoGradGuard no_grad;
  auto o = imported_options();
  o.recursion = 1;
  drdm::RecoveryNet net(o);
  net->train(false);
  auto bias = drdm::module_state(*net).at("out.bias");
  bias.copy_(at::tensor({0.1f, -0.1f}));
  const auto image = at::rand({1, 1, 16, 32});
  auto u = net->forward(image, at::tensor({3}, at::kLong));
  EXPECT_NEAR(u[0][0].mean().item<double>(), 1.6, 1e-3);   // 0.1 of 16
  EXPECT_NEAR(u[0][1].mean().item<double>(), -3.2, 1e-3);  // -0.1 of 32
  bias.copy_(at::tensor({5.0f, -5.0f}));
  u = net->forward(image, at::tensor({3}, at::kLong));
  EXPECT_TRUE(u[0][0].eq(15).all().item<bool>());
  EXPECT_TRUE(u[0][1].eq(-31).all().item<bool>());
}

TEST(Import, KeyMappingRoundTripsForEveryTensor) {
  const drdm::RecoveryNet net(imported_options());
  for (const auto& [key, value] : drdm::module_state(*net)) {
    const auto theirs = drdm::our_key_to_authors(key);
    EXPECT_EQ(drdm::authors_key_to_ours(theirs), key) << theirs;
  }
  EXPECT_EQ(drdm::authors_key_to_ours("b_mid.0.convs.1.weight"), "bottleneck.0.conv_d3.weight");
  EXPECT_EQ(drdm::authors_key_to_ours("b1.2.ln.bias"), "enc1.2.norm.bias");
  EXPECT_EQ(drdm::authors_key_to_ours("b_out.0.conv0.weight"), "dec3.0.conv_in.weight");
  EXPECT_EQ(drdm::authors_key_to_ours("te_mid.0.weight"), "te4.0.weight");
  EXPECT_EQ(drdm::authors_key_to_ours("te_out.2.bias"), "te7.2.bias");
  EXPECT_EQ(drdm::authors_key_to_ours("conv_out.weight"), "out.weight");
  EXPECT_EQ(drdm::authors_key_to_ours("time_embed.weight"), "time_table");
  EXPECT_THROW(drdm::authors_key_to_ours("b1.0.convs.2.weight"), std::invalid_argument);
  EXPECT_THROW(drdm::authors_key_to_ours("head.weight"), std::invalid_argument);
}

// Their state dict, made from a network of ours (their names, their T-row table).
StateDict as_authors(const drdm::RecoveryNet& net) {
  StateDict theirs;
  for (const auto& [key, value] : drdm::module_state(*net))
    theirs[drdm::our_key_to_authors(key)] = value.clone();
  auto& table = theirs.at("time_embed.weight");
  table = table.narrow(0, 0, table.size(0) - 1).clone();
  return theirs;
}

std::string conversion_error(const StateDict& theirs, const drdm::NetworkOptions& options) {
  try {
    drdm::convert_authors_state(theirs, options);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(Import, ConversionIsStrictAndNamesTheKey) {
  const auto options = imported_options();
  const drdm::RecoveryNet net(options);
  auto theirs = as_authors(net);
  const auto converted = drdm::convert_authors_state(theirs, options);
  EXPECT_EQ(converted.size(), drdm::module_state(*net).size());
  EXPECT_TRUE(converted.at("time_table")
                  .narrow(0, 80, 1)
                  .equal(converted.at("time_table").narrow(0, 79, 1)));

  auto missing = theirs;
  missing.erase("b4.1.convs.0.bias");
  EXPECT_NE(conversion_error(missing, options).find("missing key 'b4.1.convs.0.bias'"),
            std::string::npos);
  auto extra = theirs;
  extra["b4.1.ln.weight"] = at::ones({20});  // their decoder has no norm
  EXPECT_NE(conversion_error(extra, options).find("'b4.1.ln.weight'"), std::string::npos);
  auto shape = theirs;
  shape.at("down2.weight") = at::zeros({20, 20, 3, 3});
  EXPECT_NE(conversion_error(shape, options).find("'down2.weight' has shape [20, 20, 3, 3]"),
            std::string::npos);
  auto rows = theirs;
  rows.at("time_embed.weight") = at::zeros({50, 100});
  EXPECT_NE(conversion_error(rows, options).find("sampler.timesteps"), std::string::npos);
  auto ours = options;
  ours.decoder_norm = true;
  EXPECT_NE(conversion_error(theirs, ours).find("model.decoder_norm"), std::string::npos);
}

TEST(Import, ReadsATorchSaveStateDict) {
  const auto tiny = golden().at("tiny_state_dict");
  const auto s = drdm::read_torch_state_dict(kGolden + "/" + tiny.at("file").get<std::string>());
  ASSERT_EQ(s.size(), tiny.at("entries").size());
  for (const auto& [key, values] : tiny.at("entries").items()) {
    const auto want = at::tensor(values.get<std::vector<float>>())
                          .view(tiny.at("shapes").at(key).get<std::vector<int64_t>>());
    EXPECT_TRUE(s.at(key).equal(want)) << key;
  }
  EXPECT_THROW(drdm::read_torch_state_dict(kConfig), std::runtime_error);
}

TEST(Import, ConfigKeysDefaultToTheOriginalNetwork) {
  const auto c = drdm::parse_train_config("{}", "test");
  EXPECT_EQ(c.model.time_frequencies, drdm::TimeFrequencies::kStandard);
  EXPECT_EQ(c.model.time_mlp_slope, 0.01);
  EXPECT_TRUE(c.model.decoder_norm);
  EXPECT_EQ(c.model.output_units, drdm::OutputUnits::kVoxels);
  EXPECT_FALSE(c.model.output_clamp);
  EXPECT_EQ(drdm::to_json(drdm::parse_train_config(drdm::to_json(c), "again")), drdm::to_json(c));
  try {
    drdm::parse_train_config(R"({"model": {"output_units": "mm"}})", "test");
    ADD_FAILURE() << "accepted output_units mm";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("model.output_units"), std::string::npos) << e.what();
  }
  // A model file from before these keys (its embedded config has none of
  // them, like the models shipped before the import) loads into the original network.
  auto text = json::parse(drdm::to_json(c));
  for (const char* k :
       {"time_frequencies", "time_mlp_slope", "decoder_norm", "output_units", "output_clamp"})
    ASSERT_EQ(text.at("model").erase(k), 1u) << k;
  const drdm::RecoveryNet net(drdm::network_options(c));
  drdm::test::TempDir dir;
  drdm::save_checkpoint(dir.path("old.pt"), "drdm", text.dump(), 7, drdm::module_state(*net));
  const auto old = drdm::load_model(dir.path("old.pt"));
  EXPECT_TRUE(old.net->options.decoder_norm);
  EXPECT_EQ(old.net->options.output_units, drdm::OutputUnits::kVoxels);
  EXPECT_EQ(drdm::module_state(*old.net).count("dec3.0.norm.weight"), 1u);
}

// With the authors' file at hand (DRDM_AUTHORS_PTH), converting it again
// gives the committed model bit for bit.
TEST(Import, ConvertsTheAuthorsFileWhenAvailable) {
  const char* pth = std::getenv("DRDM_AUTHORS_PTH");
  if (!pth || !*pth) GTEST_SKIP() << "set DRDM_AUTHORS_PTH to their 000000_cmr_recresacnet.pth";
  drdm::test::TempDir dir;
  const auto s = drdm::import_authors_model(pth, kConfig, dir.path("out"));
  EXPECT_EQ(s.elements, 443435);
  EXPECT_EQ(s.parameters, 435435);
  EXPECT_LT(s.table_formula_max_diff, 1e-4);
  const auto fresh = drdm::read_checkpoint(s.model, "drdm").model;
  const auto shipped = shipped_state();
  ASSERT_EQ(fresh.size(), shipped.size());
  for (const auto& [key, value] : shipped) EXPECT_TRUE(fresh.at(key).equal(value)) << key;
  EXPECT_THROW(drdm::import_authors_model(pth, kConfig, dir.path("out")), std::runtime_error);
}

}  // namespace
