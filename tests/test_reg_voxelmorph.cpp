// VoxelMorph: shapes, parameter count (closed form and by hand), flow init,
// integration, weights by name, a short training run.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>

#include "drdm/core/module_state.h"
#include "drdm/core/random_field.h"
#include "drdm/core/spatial.h"
#include "drdm/engine/optim.h"
#include "drdm/reg/voxelmorph.h"

namespace {

namespace reg = drdm::reg;
using Sizes = std::vector<int64_t>;

reg::VoxelMorphOptions options3d() {
  reg::VoxelMorphOptions o;
  o.dims(3);
  return o;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(VoxelMorph, OutputShapes2DAnd3D) {
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  reg::VoxelMorph net2;
  const auto m2 = at::rand({2, 1, 128, 128}), f2 = at::rand({2, 1, 128, 128});
  const auto out2 = net2->forward_full(m2, f2);
  EXPECT_EQ(out2.displacement.sizes(), (Sizes{2, 2, 128, 128}));
  EXPECT_EQ(out2.preintegration.sizes(), (Sizes{2, 2, 64, 64}));  // integration_downsize 2

  reg::VoxelMorph net3(options3d());
  const auto m3 = at::rand({1, 1, 32, 32, 32});
  const auto out3 = net3->forward_full(m3, at::rand({1, 1, 32, 32, 32}));
  EXPECT_EQ(out3.displacement.sizes(), (Sizes{1, 3, 32, 32, 32}));
  EXPECT_EQ(out3.preintegration.sizes(), (Sizes{1, 3, 16, 16, 16}));

  // Non-square, several channels, no integration: the displacement is the flow itself.
  reg::VoxelMorphOptions o;
  o.channels(2);
  o.integration_steps(0);
  reg::VoxelMorph direct(o);
  const auto out = direct->forward_full(at::rand({1, 2, 32, 64}), at::rand({1, 2, 32, 64}));
  EXPECT_EQ(out.displacement.sizes(), (Sizes{1, 2, 32, 64}));
  EXPECT_TRUE(out.preintegration.equal(out.displacement));
}

TEST(VoxelMorph, BadInputsAreErrorsNamingTheProblem) {
  reg::VoxelMorph net;
  const auto msg = error_of([&] {
    net->forward(at::rand({1, 1, 120, 128}), at::rand({1, 1, 120, 128}));
  });
  EXPECT_NE(msg.find("120"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16"), std::string::npos) << msg;
  EXPECT_THROW(net->forward(at::rand({1, 1, 128, 128}), at::rand({1, 1, 64, 64})),
               std::invalid_argument);
  EXPECT_THROW(net->forward(at::rand({1, 2, 64, 64}), at::rand({1, 2, 64, 64})),
               std::invalid_argument);
  EXPECT_THROW(net->forward(at::rand({1, 1, 32, 32, 32}), at::rand({1, 1, 32, 32, 32})),
               std::invalid_argument);
  reg::VoxelMorphOptions bad;
  bad.decoder({32, 32});
  EXPECT_THROW(reg::VoxelMorph{bad}, std::invalid_argument);
  bad = {};
  bad.dims(4);
  EXPECT_THROW(reg::voxelmorph_parameter_count(bad), std::invalid_argument);
  // integration_downsize must divide the size.
  reg::VoxelMorphOptions three;
  three.integration_downsize(3);
  reg::VoxelMorph net3(three);
  const auto m3 = error_of([&] {
    net3->forward(at::rand({1, 1, 32, 48}), at::rand({1, 1, 32, 48}));
  });
  EXPECT_NE(m3.find("32"), std::string::npos) << m3;
}

TEST(VoxelMorph, ParameterCountMatchesTheLayerList) {
  // The 2D default by hand (input 2 channels; a 3x3 conv cin -> cout has 9 cin cout + cout):
  //   encoder  2->16: 304   16->32: 4640   32->32: 9248   32->32: 9248          = 23440
  //   decoder  32->32 at 1/16: 9248, then (32 + 32 skip)->32: 18464 (x3)       = 64640
  //   full-resolution  (32 + 16 skip)->32: 13856   32->16: 4624   16->16: 2320  = 20800
  //   flow     16->2: 290
  //   total 23440 + 64640 + 20800 + 290                                         = 109170
  EXPECT_EQ(drdm::parameter_count(*reg::VoxelMorph()), 109170);
  EXPECT_EQ(reg::voxelmorph_parameter_count({}), 109170);
  // The same list in 3D (27-tap kernels, flow to 3 channels): 327331.
  EXPECT_EQ(reg::voxelmorph_parameter_count(options3d()), 327331);
  EXPECT_EQ(drdm::parameter_count(*reg::VoxelMorph(options3d())), 327331);
  for (int64_t dims : {2, 3}) {
    reg::VoxelMorphOptions o;
    o.dims(dims);
    o.channels(2);
    o.encoder({8, 12});
    o.decoder({10, 6, 5});
    EXPECT_EQ(drdm::parameter_count(*reg::VoxelMorph(o)), reg::voxelmorph_parameter_count(o));
    o.decoder({4, 7});  // no full-resolution convs
    EXPECT_EQ(drdm::parameter_count(*reg::VoxelMorph(o)), reg::voxelmorph_parameter_count(o));
  }
}

TEST(VoxelMorph, FlowStartsTiny) {
  torch::manual_seed(3);
  torch::NoGradGuard no_grad;
  const auto state = drdm::module_state(*reg::VoxelMorph());
  EXPECT_EQ(state.at("flow.bias").abs().max().item<double>(), 0.0);
  EXPECT_LT(state.at("flow.weight").std().item<double>(), 3e-5);
  EXPECT_GT(state.at("flow.weight").std().item<double>(), 3e-6);
  for (int64_t steps : {0, 7}) {
    reg::VoxelMorphOptions o;
    o.integration_steps(steps);
    reg::VoxelMorph net(o);
    const auto u = net->forward(at::rand({2, 1, 64, 64}), at::rand({2, 1, 64, 64}));
    EXPECT_LT(u.abs().max().item<double>(), 1e-2) << "steps " << steps;
  }
  reg::VoxelMorph net3(options3d());
  const auto u3 = net3->forward(at::rand({1, 1, 32, 32, 32}), at::rand({1, 1, 32, 32, 32}));
  EXPECT_LT(u3.abs().max().item<double>(), 1e-2);
}

TEST(VoxelMorph, IntegrationKeepsALargeVelocityFoldFree) {
  torch::NoGradGuard no_grad;
  drdm::RandomFieldOptions ro;
  ro.amplitude = 16.0;  // largest velocity 16 voxels on 128^2
  ro.squarings = 0;     // the velocity itself
  const auto v = drdm::random_smooth_field({128, 128}, 2, 7, ro);
  // As a displacement the velocity folds ...
  EXPECT_LE(drdm::jacobian_determinant(v).min().item<double>(), 0.0);
  for (int64_t downsize : {1, 2}) {
    reg::VoxelMorphOptions o;
    o.integration_downsize(downsize);
    const auto u = reg::VoxelMorph(o)->integrate(v);
    EXPECT_EQ(u.sizes(), v.sizes());
    // ... its exponential does not, and moves about as far.
    EXPECT_GT(drdm::jacobian_determinant(u).min().item<double>(), 0.0) << "downsize " << downsize;
    EXPECT_GT(u.abs().max().item<double>(), 0.5 * v.abs().max().item<double>());
  }
  reg::VoxelMorphOptions o0;
  o0.integration_steps(0);
  EXPECT_TRUE(reg::VoxelMorph(o0)->integrate(v).equal(v));
}

TEST(VoxelMorph, WeightsByNameRoundTripAndErrorsNameTheKey) {
  torch::manual_seed(5);
  torch::NoGradGuard no_grad;
  reg::VoxelMorphOptions o;
  o.integration_steps(0);
  reg::VoxelMorph a(o), b(o);
  const auto sa = drdm::module_state(*a);
  for (const char* key :
       {"enc0.weight", "enc3.bias", "dec0.weight", "dec3.weight", "rem2.bias", "flow.weight"})
    EXPECT_TRUE(sa.count(key)) << key;
  EXPECT_EQ(sa.at("enc0.weight").sizes(), (Sizes{16, 2, 3, 3}));
  EXPECT_EQ(sa.at("dec3.weight").sizes(), (Sizes{32, 64, 3, 3}));
  EXPECT_EQ(sa.at("rem0.weight").sizes(), (Sizes{32, 48, 3, 3}));
  EXPECT_EQ(sa.at("flow.weight").sizes(), (Sizes{2, 16, 3, 3}));
  std::map<std::string, at::Tensor> copy;
  for (const auto& [k, v] : sa) copy[k] = v.clone();
  copy.at("flow.weight").normal_(0, 0.01);  // so the outputs are not ~0
  drdm::load_module_state(*a, copy);
  drdm::load_module_state(*b, copy);
  const auto m = at::rand({1, 1, 32, 32}), f = at::rand({1, 1, 32, 32});
  EXPECT_TRUE(a->forward(m, f).allclose(b->forward(m, f)));

  auto missing = copy;
  missing.erase("dec2.bias");
  EXPECT_NE(error_of([&] { drdm::load_module_state(*b, missing); }).find("dec2.bias"),
            std::string::npos);
  auto extra = copy;
  extra["head.weight"] = at::zeros({1});
  EXPECT_NE(error_of([&] { drdm::load_module_state(*b, extra); }).find("head.weight"),
            std::string::npos);
  auto shaped = copy;
  shaped["rem1.weight"] = at::zeros({16, 32, 3, 3, 3});
  EXPECT_NE(error_of([&] { drdm::load_module_state(*b, shaped); }).find("rem1.weight"),
            std::string::npos);
}

TEST(VoxelMorph, CloneIsADeepCopy) {
  torch::manual_seed(6);
  torch::NoGradGuard no_grad;
  reg::VoxelMorph net;
  drdm::module_state(*net).at("flow.weight").normal_(0, 0.01);
  const auto copy = std::dynamic_pointer_cast<reg::VoxelMorphImpl>(net->clone());
  ASSERT_TRUE(copy);
  const auto m = at::rand({1, 1, 32, 32}), f = at::rand({1, 1, 32, 32});
  const auto u = net->forward(m, f);
  EXPECT_TRUE(at::equal(u, copy->forward(m, f)));
  drdm::module_state(*copy).at("flow.bias").add_(1);
  EXPECT_TRUE(at::equal(u, net->forward(m, f)));
  EXPECT_FALSE(at::equal(u, copy->forward(m, f)));
}

/// A smooth image of Gaussian blobs, ~0 at the border.
at::Tensor blobs(int64_t n) {
  const auto x = at::arange(n, at::kFloat).view({n, 1});
  const auto y = at::arange(n, at::kFloat).view({1, n});
  auto img = at::zeros({n, n});
  const double c[][3] = {{20, 22, 5}, {40, 30, 7}, {28, 45, 4}, {45, 48, 5}};
  for (const auto& b : c)
    img += at::exp(-((x - b[0]).pow(2) + (y - b[1]).pow(2)) / (2 * b[2] * b[2]));
  return img.view({1, 1, n, n});
}

TEST(VoxelMorph, ThirtyAdamStepsReduceTheImageLoss) {
  torch::manual_seed(11);
  reg::VoxelMorph net;  // the default: velocity, 7 squarings at half resolution
  const auto moving = blobs(64);
  const auto fixed = at::roll(moving, {2}, {3});  // shifted by 2 voxels along the last axis
  drdm::Adam adam(net->parameters());
  auto loss_now = [&] {
    return (drdm::warp(moving, net->forward(moving, fixed)) - fixed).pow(2).mean();
  };
  double first = 0;
  for (int step = 0; step < 30; ++step) {
    adam.zero_grad();
    auto loss = loss_now();
    if (step == 0) first = loss.item<double>();
    loss.backward();
    adam.step(1e-3);
  }
  torch::NoGradGuard no_grad;
  const double last = loss_now().item<double>();
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
}

TEST(VoxelMorph, RunsOnCuda_CUDA) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(2);
  torch::NoGradGuard no_grad;
  reg::VoxelMorph net;
  const auto m = at::rand({1, 1, 64, 64}), f = at::rand({1, 1, 64, 64});
  auto s = drdm::module_state(*net);
  s.at("flow.weight").normal_(0, 0.01);
  const auto cpu = net->forward(m, f);
  net->to(at::kCUDA);
  const auto gpu = net->forward(m.cuda(), f.cuda()).cpu();
  EXPECT_LT((gpu - cpu).abs().max().item<double>(), 1e-3);
}

}  // namespace
