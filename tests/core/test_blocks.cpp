// BatchNorm, global pooling, dropout and the residual sum: hand values, double-precision gradient
// checks, bitwise determinism across thread counts; blocks in models: names, shapes, errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "core/block_kernels.hpp"
#include "core/errors.hpp"
#include "core/model.hpp"
#include "core/parallel.hpp"
#include "gradient_check.hpp"

namespace mpicnn::core {
namespace {

using ::testing::HasSubstr;

TEST(BatchNormKernel, TrainForwardByHand) {
  // One channel, two samples of one value: mean 2, biased variance 1.
  const NormGeometry g{1, 1};
  std::vector<double> in = {1, 3}, out(2), mean(1), var(1), gamma = {2}, beta = {0.5};
  batchnorm_forward_train(out.data(), mean.data(), var.data(), in.data(), gamma.data(), beta.data(), g, 2, 1e-5);
  EXPECT_DOUBLE_EQ(mean[0], 2);
  EXPECT_DOUBLE_EQ(var[0], 1);
  EXPECT_NEAR(out[0], 0.5 - 2 / std::sqrt(1 + 1e-5), 1e-15);
  EXPECT_NEAR(out[1], 0.5 + 2 / std::sqrt(1 + 1e-5), 1e-15);
}

TEST(BatchNormKernel, EvalForwardUsesRunningStatistics) {
  const NormGeometry g{2, 1};
  std::vector<double> in = {1, 1}, out(2), rm = {0, 1}, rv = {4, 1}, gamma = {1, 3}, beta = {0, -1};
  batchnorm_forward_eval(out.data(), in.data(), gamma.data(), beta.data(), rm.data(), rv.data(), g, 1, 0.0);
  EXPECT_DOUBLE_EQ(out[0], 0.5);
  EXPECT_DOUBLE_EQ(out[1], -1);
}

// Three channels of 2x2 over a batch of 3, gamma and beta given: d/dx, d/dgamma, d/dbeta.
TEST(BatchNormKernel, TrainGradients) {
  const NormGeometry g{3, 4};
  const int batch = 3;
  const Vec x = random_vec(batch * g.sample(), 1), gamma = random_vec(3, 2), beta = random_vec(3, 3);
  const Vec r = random_vec(x.size(), 4);
  auto forward = [&](const Vec& xs, const Vec& gs, const Vec& bs) {
    Vec out(xs.size()), mean(3), var(3);
    batchnorm_forward_train(out.data(), mean.data(), var.data(), xs.data(), gs.data(), bs.data(), g, batch, 1e-5);
    return out;
  };
  Vec out(x.size()), mean(3), var(3), dx(x.size()), dgamma(3), dbeta(3);
  batchnorm_forward_train(out.data(), mean.data(), var.data(), x.data(), gamma.data(), beta.data(), g, batch, 1e-5);
  batchnorm_backward_train(dx.data(), dgamma.data(), dbeta.data(), r.data(), x.data(), mean.data(), var.data(),
                           gamma.data(), g, batch, 1e-5);
  expect_gradient([&](const Vec& v) { return forward(v, gamma, beta); }, x, dx, r);
  expect_gradient([&](const Vec& v) { return forward(x, v, beta); }, gamma, dgamma, r);
  expect_gradient([&](const Vec& v) { return forward(x, gamma, v); }, beta, dbeta, r);
}

TEST(BatchNormKernel, EvalGradients) {
  const NormGeometry g{2, 3};
  const int batch = 2;
  const Vec x = random_vec(batch * g.sample(), 5), gamma = random_vec(2, 6), beta = random_vec(2, 7);
  const Vec rm = random_vec(2, 8), rv = {0.5, 2.0}, r = random_vec(x.size(), 9);
  auto forward = [&](const Vec& xs, const Vec& gs) {
    Vec out(xs.size());
    batchnorm_forward_eval(out.data(), xs.data(), gs.data(), beta.data(), rm.data(), rv.data(), g, batch, 1e-5);
    return out;
  };
  Vec dx(x.size()), dgamma(2), dbeta(2);
  batchnorm_backward_eval(dx.data(), dgamma.data(), dbeta.data(), r.data(), x.data(), rm.data(), rv.data(),
                          gamma.data(), g, batch, 1e-5);
  expect_gradient([&](const Vec& v) { return forward(v, gamma); }, x, dx, r);
  expect_gradient([&](const Vec& v) { return forward(x, v); }, gamma, dgamma, r);
}

TEST(GlobalPoolKernel, ForwardByHandAndGradients) {
  const NormGeometry g{2, 3};
  const Vec x = {1, 5, 3, -2, -1, -4, 0, 2, 1, 7, 7, 6};  // 2 samples of 2 channels x 3 values
  Vec avg(4), max(4);
  std::vector<std::int32_t> argmax(4);
  global_avgpool_forward(avg.data(), x.data(), g, 2);
  global_maxpool_forward(max.data(), argmax.data(), x.data(), g, 2);
  EXPECT_EQ(avg, (Vec{3, -7.0 / 3, 1, 20.0 / 3}));
  EXPECT_EQ(max, (Vec{5, -1, 2, 7}));
  EXPECT_EQ(argmax, (std::vector<std::int32_t>{1, 4, 1, 3}));  // the first of tied maxima
  const Vec r = random_vec(4, 10);
  Vec davg(x.size()), dmax(x.size());
  global_avgpool_backward(davg.data(), r.data(), g, 2);
  global_maxpool_backward(dmax.data(), r.data(), argmax.data(), g, 2);
  expect_gradient([&](const Vec& v) { Vec o(4); global_avgpool_forward(o.data(), v.data(), g, 2); return o; }, x, davg, r);
  // Max: the central difference is taken away from ties (x[9] = x[10] = 7 moves the argmax).
  expect_gradient([&](const Vec& v) {
    Vec o(4);
    std::vector<std::int32_t> a(4);
    global_maxpool_forward(o.data(), a.data(), v.data(), g, 2);
    return o;
  }, x, dmax, r, [](const Vec&, const Vec&, std::size_t i) { return i == 9 || i == 10; });
}

TEST(DropoutKernel, MaskIsAPureFunctionOfStepPositionAndLayer) {
  const std::size_t per_sample = 50;
  const int batch = 8;
  const double p = 0.3;
  std::vector<float> in(batch * per_sample, 1.f), whole(in.size()), halves(in.size());
  const DropoutKey key{7, 11, 3, 16};
  dropout_forward(whole.data(), in.data(), per_sample, batch, p, key);
  // The same samples computed in two parts (as two ranks or micro-batches would) get the same masks.
  dropout_forward(halves.data(), in.data(), per_sample, 4, p, key);
  dropout_forward(halves.data() + 4 * per_sample, in.data(), per_sample, 4, p, DropoutKey{7, 11, 3, 20});
  EXPECT_EQ(whole, halves);
  std::size_t kept = 0;
  for (int n = 0; n < batch; ++n)
    for (std::size_t e = 0; e < per_sample; ++e) {
      const float expected = dropout_keeps(key, n, e, p) ? float(1 / (1 - p)) : 0.f;
      EXPECT_EQ(whole[n * per_sample + e], expected);
      kept += expected != 0;
    }
  EXPECT_GT(kept, 0.6 * in.size());
  EXPECT_LT(kept, 0.8 * in.size());
  std::vector<float> other_step(in.size()), other_layer(in.size());
  dropout_forward(other_step.data(), in.data(), per_sample, batch, p, DropoutKey{7, 11, 4, 16});
  dropout_forward(other_layer.data(), in.data(), per_sample, batch, p, DropoutKey{7, 12, 3, 16});
  EXPECT_NE(whole, other_step);
  EXPECT_NE(whole, other_layer);
}

// With the mask fixed by the key, dropout is linear: its gradient is the same mask and scale.
TEST(DropoutKernel, Gradient) {
  const std::size_t per_sample = 12;
  const DropoutKey key{1, 2, 3, 0};
  const Vec x = random_vec(3 * per_sample, 11), r = random_vec(x.size(), 12);
  Vec dx(x.size());
  dropout_backward(dx.data(), r.data(), per_sample, 3, 0.5, key);
  expect_gradient([&](const Vec& v) {
    Vec o(v.size());
    dropout_forward(o.data(), v.data(), per_sample, 3, 0.5, key);
    return o;
  }, x, dx, r);
}

TEST(AddKernel, SumsAndAliases) {
  std::vector<float> a = {1, 2, 3}, b = {10, 20, 30};
  add_tensors(a.data(), a.data(), b.data(), 3);
  EXPECT_EQ(a, (std::vector<float>{11, 22, 33}));
}

void fill(float* v, std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  for (std::size_t i = 0; i < n; ++i) v[i] = float(rng.uniform(-1, 1));
}

// Every output and gradient of a forward and backward pass (training mode), and the committed
// running statistics, for a fixed model, weights and input.
std::vector<float> pass_results(Model& model, int batch, bool training) {
  fill(model.params().values().data(), model.params().size(), 1);
  std::vector<float> x(batch * model.input_shape().size()), dy(batch * model.output_shape().size());
  fill(x.data(), x.size(), 2);
  fill(dy.data(), dy.size(), 3);
  model.run() = {training, 5, 2, 0, 0};
  model.params().zero_grads();
  const float* y = model.forward(x.data(), batch);
  std::vector<float> results(y, y + dy.size());
  model.backward(dy.data(), batch);
  results.insert(results.end(), model.params().grads().data(), model.params().grads().data() + model.params().size());
  model.commit_statistics(1);
  for (const StateInfo& s : model.state().infos())
    if (!s.counter) {
      const float* v = model.state().value(int(&s - model.state().infos().data()));
      results.insert(results.end(), v, v + s.size);
    }
  return results;
}

const char* kSmallResNet =
    "conv(8,3,pad=1,bias=false) bn relu "
    "residual{conv(8,3,pad=1,bias=false) bn relu dropout(0.2) conv(8,3,pad=1,bias=false) bn} relu "
    "residual{conv(16,3,stride=2,pad=1,bias=false) bn relu conv(16,3,pad=1,bias=false) bn | "
    "conv(16,1,stride=2,bias=false) bn} relu globalavgpool flatten dense(5)";

TEST(Blocks, BitwiseIdenticalForAnyThreadCount) {
  std::vector<float> reference;
  for (int threads : {1, 2, 3}) {
    set_threads(threads);
    Model model(kSmallResNet, {3, 12, 12}, 6);
    const std::vector<float> results = pass_results(model, 6, true);
    if (reference.empty()) reference = results;
    else EXPECT_EQ(0, std::memcmp(results.data(), reference.data(), results.size() * sizeof(float))) << threads;
  }
  set_threads(0);
}

TEST(Blocks, NamesAsNestedPyTorchModules) {
  const Model model(kSmallResNet + std::string(" dropout(0.1) repeat(2){dense(5) bn}"), {3, 12, 12}, 2);
  std::vector<std::string> names, state;
  for (const auto& p : model.params().infos()) names.push_back(p.name);
  for (const auto& s : model.state().infos()) state.push_back(s.name);
  EXPECT_THAT(names, ::testing::Contains("0.weight"));
  EXPECT_THAT(names, ::testing::Contains("1.weight"));  // bn scale
  EXPECT_THAT(names, ::testing::Contains("3.main.0.weight"));
  EXPECT_THAT(names, ::testing::Contains("5.shortcut.1.bias"));
  EXPECT_THAT(names, ::testing::Contains("11.1.0.weight"));
  EXPECT_THAT(state, ::testing::Contains("5.shortcut.1.running_var"));
  EXPECT_THAT(state, ::testing::Contains("11.1.1.num_batches_tracked"));
  for (const auto& p : model.params().infos())
    EXPECT_EQ(p.layer, std::stoi(p.name.substr(0, p.name.find('.')))) << p.name << ": reduction unit = top-level layer";
}

TEST(Blocks, CanonicalSpecRoundTripsAndSummaryShowsNesting) {
  const Model model(kSmallResNet, {3, 12, 12}, 2);
  const std::string canonical = model.canonical_spec();
  EXPECT_THAT(canonical, HasSubstr("residual{conv(16,3,stride=2,pad=1,bias=false) bn(eps=1e-05,momentum=0.1) relu"));
  EXPECT_THAT(canonical, HasSubstr(" | conv(16,1,stride=2,pad=0,bias=false) bn(eps=1e-05,momentum=0.1)}"));
  const Model again(canonical, {3, 12, 12}, 2);
  EXPECT_EQ(again.canonical_spec(), canonical);
  EXPECT_EQ(again.params().count(), model.params().count());
  const Model repeated("repeat(3){conv(4,3,pad=1) relu} flatten dense(2)", {1, 5, 5}, 1);
  EXPECT_EQ(repeated.canonical_spec(), "repeat(3){conv(4,3,stride=1,pad=1) relu} flatten dense(2)");
  const std::string summary = model.summary();
  EXPECT_THAT(summary, HasSubstr("residual"));
  EXPECT_THAT(summary, HasSubstr("5.shortcut.0"));
  EXPECT_THAT(summary, HasSubstr("  conv(16,1,stride=2,pad=0,bias=false)"));
  EXPECT_THAT(summary, HasSubstr("(16,6,6)"));
  // A repeat's copies are rows of their own kind, not their whole body's spec on one line.
  const std::string copies = repeated.summary();
  EXPECT_THAT(copies, HasSubstr("0.1              sequential"));
  EXPECT_THAT(copies, ::testing::Not(HasSubstr("conv(4,3,stride=1,pad=1) relu ")));
}

// A residual block is its two branches run as models of their own, added: outputs and parameter
// gradients bitwise.
TEST(Blocks, ResidualIsTheSumOfItsBranches) {
  const std::string main = "conv(4,3,pad=1) relu conv(4,3,pad=1)", shortcut = "conv(4,1)";
  const Shape in{2, 5, 5};
  const int batch = 3;
  Model block("residual{" + main + " | " + shortcut + "}", in, batch);
  Model a(main, in, batch), b(shortcut, in, batch);
  fill(block.params().values().data(), block.params().size(), 1);
  const auto copy = [&](Model& to, const std::string& prefix) {
    for (const auto& p : to.params().infos())
      for (const auto& q : block.params().infos())
        if (q.name == "0." + prefix + p.name) std::memcpy(to.params().value(int(&p - to.params().infos().data())),
                                                          block.params().values().data() + q.offset, p.size * 4);
  };
  copy(a, "main.");
  copy(b, "shortcut.");
  std::vector<float> x(batch * in.size()), dy(batch * 4 * 25);
  fill(x.data(), x.size(), 2);
  fill(dy.data(), dy.size(), 3);
  const float* y = block.forward(x.data(), batch);
  const float* ya = a.forward(x.data(), batch);
  const float* yb = b.forward(x.data(), batch);
  for (std::size_t i = 0; i < dy.size(); ++i) ASSERT_EQ(y[i], ya[i] + yb[i]) << i;
  block.backward(dy.data(), batch);
  a.backward(dy.data(), batch);
  b.backward(dy.data(), batch);
  for (const auto& q : block.params().infos()) {
    Model& branch = q.name.find(".main.") != std::string::npos ? a : b;
    const std::string local = q.name.substr(q.name.find('.', 2) + 1);
    for (const auto& p : branch.params().infos())
      if (p.name == local) {
        EXPECT_EQ(0, std::memcmp(branch.params().grads().data() + p.offset, block.params().grads().data() + q.offset, p.size * 4))
            << q.name;
      }
  }
}

TEST(Blocks, IdentityResidualGradientChecksInDouble) {
  // d/dx of x + relu-free main branch is 1 + main's: checked on the kernel level with add.
  const Vec x = random_vec(6, 13), r = random_vec(6, 14);
  Vec dx = r;  // the identity branch's gradient ...
  for (std::size_t i = 0; i < 6; ++i) dx[i] += 2 * r[i];  // ... plus the main branch 2x's
  expect_gradient([](const Vec& v) {
    Vec doubled(v.size()), out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) doubled[i] = 2 * v[i];
    add_tensors(out.data(), doubled.data(), v.data(), v.size());
    return out;
  }, x, dx, r);
}

TEST(Blocks, BatchNormCommitsStatisticsOnlyWhenTold) {
  Model model("conv(2,1,bias=false) bn", {1, 2, 2}, 2);
  model.params().value(0)[0] = 1, model.params().value(0)[1] = -2;
  std::fill(model.params().value(1), model.params().value(1) + 2, 1.f);  // bn scale
  model.run().training = true;
  const std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8};  // channel 0 sees 1..8: mean 4.5, variance 5.25 (biased), 6 (unbiased)
  model.forward(x.data(), 2);
  const float* mean = model.state().value(0);
  const float* var = model.state().value(1);
  EXPECT_EQ(mean[0], 0.f);
  EXPECT_EQ(var[0], 1.f);
  model.commit_statistics(1);
  EXPECT_FLOAT_EQ(mean[0], 0.45f);
  EXPECT_FLOAT_EQ(mean[1], -0.9f);
  EXPECT_FLOAT_EQ(var[0], float(0.9 + 0.1 * 6));  // the unbiased variance
  EXPECT_FLOAT_EQ(var[1], float(0.9 + 0.1 * 24));
  EXPECT_EQ(model.state().counter(2), 1);
  model.commit_statistics(1);  // cleared by the first commit: an empty slot changes nothing
  EXPECT_FLOAT_EQ(mean[0], 0.45f);
  EXPECT_EQ(model.state().counter(2), 1);
  model.run().training = false;
  const float* y = model.forward(x.data(), 2);
  EXPECT_NEAR(y[0], (1 - 0.45) / std::sqrt(var[0] + 1e-5), 1e-6);
}

TEST(Blocks, DropoutIsTheIdentityInEvaluation) {
  Model model("dropout(0.5)", {1, 4, 4}, 2);
  std::vector<float> x(32);
  fill(x.data(), x.size(), 1);
  model.run().training = false;
  const float* y = model.forward(x.data(), 2);
  EXPECT_EQ(0, std::memcmp(y, x.data(), x.size() * 4));
  model.run().training = true;
  y = model.forward(x.data(), 2);
  EXPECT_NE(0, std::memcmp(y, x.data(), x.size() * 4));
}

std::string error_of(const std::string& spec, const Shape& in = {1, 8, 8}) {
  try {
    Model model(spec, in, 1);
    model.run().training = true;
    std::vector<float> x(in.size());
    model.forward(x.data(), 1);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(BlockErrors, NameTheBlockPathAndPosition) {
  EXPECT_THAT(error_of("conv(4,3) residual{conv(4,3,pad=1) conv3 | conv(4,1)}"),
              HasSubstr("unknown layer 'conv3' at position 2.main.2"));
  EXPECT_THAT(error_of("residual{conv(4,3,pad=1)}"),
              HasSubstr("layer 1 'residual' main branch gives (4,8,8) but the identity shortcut gives the input (1,8,8)"));
  EXPECT_THAT(error_of("residual{conv(4,3) | conv(4,1)}"),
              HasSubstr("main branch gives (4,6,6) but the shortcut gives (4,8,8)"));
  EXPECT_THAT(error_of("relu repeat(2){conv(2,3) bn(eps=0)}"), HasSubstr("layer 2.1.2 'bn' argument 'eps' must be > 0"));
  EXPECT_THAT(error_of("dropout(1)"), HasSubstr("layer 1 'dropout' argument 'p' must be in [0, 1), got 1"));
  EXPECT_THAT(error_of("dropout(-0.1)"), HasSubstr("must be in [0, 1)"));
  EXPECT_THAT(error_of("conv(2,8) bn"), HasSubstr("layer 2 'bn': expected more than 1 value per channel in training"));
  EXPECT_THAT(error_of("conv{relu}"), HasSubstr("layer 1 'conv' takes no {...} block"));
  EXPECT_THAT(error_of("residual"), HasSubstr("layer 1 'residual' needs a block"));
  EXPECT_THAT(error_of("repeat{relu}"), HasSubstr("is missing argument 'times'"));
  EXPECT_THAT(error_of("repeat(0){relu}"), HasSubstr("argument 'times' must be >= 1"));
  EXPECT_THAT(error_of("residual{relu | relu | relu}"), HasSubstr("needs a block"));
}

TEST(BlockErrors, GrammarErrorsNameTheCharacter) {
  EXPECT_THAT(error_of("residual{relu"), HasSubstr("unclosed '{' after 'residual' at character 9"));
  EXPECT_THAT(error_of("relu }"), HasSubstr("unmatched '}' at character 6"));
  EXPECT_THAT(error_of("relu | relu"), HasSubstr("'|' outside a block"));
  EXPECT_THAT(error_of("residual{ | relu}"), HasSubstr("empty branch in 'residual{...}'"));
  EXPECT_THAT(error_of("residual{relu |}"), HasSubstr("empty branch"));
  std::string deep;
  for (int i = 0; i < 20; ++i) deep += "repeat(1){";
  EXPECT_THAT(error_of(deep + "relu" + std::string(20, '}')), HasSubstr("nested more than 16 deep"));
}

}  // namespace
}  // namespace mpicnn::core
