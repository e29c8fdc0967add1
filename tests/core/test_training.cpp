// Losses, optimizers, schedules, initialisation, determinism across thread counts, and a short
// training run that must learn.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "core/errors.hpp"
#include "core/optimizer.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"
#include "core/training.hpp"

namespace mpicnn::core {
namespace {

TEST(Loss, CrossEntropyByHand) {
  // logits (0, ln 3): p = (1/4, 3/4); label 1: loss = -ln(3/4); grad = p - onehot.
  const float logits[2] = {0.f, std::log(3.f)};
  const std::int32_t label = 1;
  float grad[2];
  const LossSum s = softmax_cross_entropy(grad, logits, &label, {}, 1, 2);
  EXPECT_NEAR(s.sum, -std::log(0.75), 1e-7);
  EXPECT_EQ(s.normalizer, 1.0);
  EXPECT_EQ(s.correct, 1.0);
  EXPECT_NEAR(grad[0], 0.25, 1e-7);
  EXPECT_NEAR(grad[1], -0.25, 1e-7);
}

TEST(Loss, CrossEntropyIsStableForHugeLogits) {
  const float logits[3] = {1e4f, -1e4f, 0.f};
  const std::int32_t label = 1;
  float grad[3];
  const LossSum s = softmax_cross_entropy(grad, logits, &label, {}, 1, 3);
  EXPECT_NEAR(s.sum, 2e4, 1e-2);
  EXPECT_TRUE(std::isfinite(grad[0]) && std::isfinite(grad[1]));
}

TEST(Loss, ClassWeightsWeightSumAndNormaliser) {
  const float logits[4] = {0, 0, 0, 0};
  const std::int32_t labels[2] = {0, 1};
  const std::vector<float> weights = {1.f, 3.f};
  float grad[4];
  const LossSum s = softmax_cross_entropy(grad, logits, labels, weights, 2, 2);
  EXPECT_NEAR(s.sum, 4 * std::log(2.0), 1e-6);
  EXPECT_EQ(s.normalizer, 4.0);
  EXPECT_NEAR(grad[2], 3 * 0.5, 1e-7);
}

TEST(Loss, LabelOutOfRangeIsAnError) {
  const float logits[2] = {0, 0};
  const std::int32_t label = 2;
  EXPECT_THROW(softmax_cross_entropy(nullptr, logits, &label, {}, 1, 2), ShapeError);
}

TEST(Loss, MeanSquaredErrorByHand) {
  const float out[2] = {1, 3}, target[2] = {0, 1};
  float grad[2];
  const LossSum s = mean_squared_error(grad, out, target, 1, 2);
  EXPECT_EQ(s.sum, 5.0);
  EXPECT_EQ(s.normalizer, 2.0);
  EXPECT_EQ(grad[0], 2.f);
  EXPECT_EQ(grad[1], 4.f);
}

ParamStore one_param(float value, float grad) {
  ParamStore store;
  store.declare({"0.weight", {1}, 0, 0, 0, 1, 1, ParamRole::weight});
  store.allocate();
  store.value(0)[0] = value;
  store.grad(0)[0] = grad;
  return store;
}

TEST(Optimizer, SgdMomentumNesterovAndWeightDecayByHand) {
  ParamStore p = one_param(1.f, 0.5f);
  Optimizer sgd({"sgd", 0.9, false, 0.1}, p.size());
  sgd.step(p, 0.1);  // d = 0.5 + 0.1*1 = 0.6; v = 0.6; w = 1 - 0.06
  EXPECT_FLOAT_EQ(p.value(0)[0], 0.94f);
  sgd.step(p, 0.1);  // d = 0.5 + 0.094 = 0.594; v = 0.54 + 0.594 = 1.134; w = 0.94 - 0.1134
  EXPECT_FLOAT_EQ(p.value(0)[0], 0.8266f);
  ParamStore q = one_param(1.f, 0.5f);
  Optimizer nesterov({"sgd", 0.9, true, 0.0}, q.size());
  nesterov.step(q, 0.1);  // v = 0.5; d = 0.5 + 0.45 = 0.95
  EXPECT_FLOAT_EQ(q.value(0)[0], 0.905f);
}

TEST(Optimizer, AdamAndAdamWFirstStepMoveByLearningRate) {
  // On step 1 the bias-corrected update is lr * g / (|g| + eps) = lr * sign(g).
  ParamStore p = one_param(1.f, 0.5f);
  Optimizer adam({"adam"}, p.size());
  adam.step(p, 0.01);
  EXPECT_NEAR(p.value(0)[0], 0.99, 1e-6);
  ParamStore q = one_param(1.f, 0.5f);
  OptimizerConfig c{"adamw"};
  c.weight_decay = 0.5;
  Optimizer adamw(c, q.size());
  adamw.step(q, 0.01);  // w *= 1 - 0.005 first
  EXPECT_NEAR(q.value(0)[0], 0.995 - 0.01, 1e-6);
}

TEST(Optimizer, UnknownNameIsAnError) {
  EXPECT_THROW(Optimizer({"lbfgs"}, 16), ConfigError);
}

TEST(Schedule, WarmupStepAndCosine) {
  ScheduleConfig s{"step", 0.1, 10, 100, 0.5, 0.0};
  EXPECT_DOUBLE_EQ(learning_rate(s, 0, 1000), 0.01);
  EXPECT_DOUBLE_EQ(learning_rate(s, 9, 1000), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 109, 1000), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 110, 1000), 0.05);
  s.kind = "cosine";
  EXPECT_DOUBLE_EQ(learning_rate(s, 10, 110), 0.1);
  EXPECT_NEAR(learning_rate(s, 60, 110), 0.05, 1e-12);
  EXPECT_NEAR(learning_rate(s, 110, 110), 0.0, 1e-12);
  s.kind = "constant";
  EXPECT_DOUBLE_EQ(learning_rate(s, 500, 110), 0.1);
}

// MultiStepLR's milestones count from step 0, warm-up included; at a milestone the new rate applies.
TEST(Schedule, MultiStepDecaysAtEachMilestone) {
  ScheduleConfig s{"multistep", 0.1, 10, 1, 0.5, 0.0, {50, 75}};
  EXPECT_DOUBLE_EQ(learning_rate(s, 4, 1000), 0.05);  // warm-up
  EXPECT_DOUBLE_EQ(learning_rate(s, 49, 1000), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 50, 1000), 0.05);
  EXPECT_DOUBLE_EQ(learning_rate(s, 74, 1000), 0.05);
  EXPECT_DOUBLE_EQ(learning_rate(s, 75, 1000), 0.025);
  EXPECT_DOUBLE_EQ(learning_rate(s, 999, 1000), 0.025);
}

TEST(Init, HeIsSeededAndHasTheRightSpread) {
  Model a("conv(64,5) flatten dense(10)", {16, 12, 12}, 1), b("conv(64,5) flatten dense(10)", {16, 12, 12}, 1);
  init_params(a.params(), "he", 7);
  init_params(b.params(), "he", 7);
  EXPECT_EQ(0, std::memcmp(a.params().values().data(), b.params().values().data(), a.params().size() * 4));
  const ParamInfo& w = a.params().info(0);
  double sq = 0;
  for (std::size_t i = 0; i < w.size; ++i) sq += double(a.params().value(0)[i]) * a.params().value(0)[i];
  const double expected = 2.0 / (16 * 25);
  EXPECT_NEAR(sq / w.size, expected, 0.05 * expected);  // 25600 draws: sampling error ~1%
  EXPECT_EQ(a.params().value(1)[0], 0.f);               // bias
  init_params(b.params(), "he", 8);
  EXPECT_NE(0, std::memcmp(a.params().values().data(), b.params().values().data(), a.params().size() * 4));
}

// Two classes of 12x12 images: a bright bar in the left or the right half, plus noise.
struct Separable {
  std::vector<float> images;
  std::vector<std::int32_t> labels;
  explicit Separable(int n, std::uint64_t seed) : images(std::size_t(n) * 144), labels(n) {
    Rng rng(seed);
    for (int i = 0; i < n; ++i) {
      labels[i] = int(rng.below(2));
      for (int y = 0; y < 12; ++y)
        for (int x = 0; x < 12; ++x)
          images[i * 144 + y * 12 + x] = float(0.3 * rng.normal()) + ((x < 6) == (labels[i] == 0) ? 1.f : 0.f);
    }
  }
};

std::vector<float> train(int threads, int steps, double* final_loss = nullptr) {
  set_threads(threads);
  Model model("conv(8,3,pad=1) relu maxpool(2) conv(8,3) relu avgpool(2) flatten dense(16) relu dense(2)", {1, 12, 12}, 32);
  init_params(model.params(), "he", 1);
  Optimizer sgd({"sgd", 0.9}, model.params().size());
  GradientWorker worker(model);
  const Separable data(32 * steps, 3);
  double loss = 0;
  for (int s = 0; s < steps; ++s) {
    model.params().zero_grads();
    const BatchView batch{data.images.data() + s * 32 * 144, data.labels.data() + s * 32, nullptr, 32};
    const LossSum sums = worker.accumulate(batch, *make_task("cross_entropy"));
    scale_gradients(model.params(), 1.0 / sums.normalizer);
    sgd.step(model.params(), 0.05);
    loss = sums.sum / sums.normalizer;
  }
  set_threads(0);
  if (final_loss) *final_loss = loss;
  const auto& v = model.params().values();
  return {v.data(), v.data() + v.size()};
}

TEST(Determinism, OneTwoAndThreeThreadsGiveBitwiseIdenticalWeights) {
  const std::vector<float> one = train(1, 20), two = train(2, 20), three = train(3, 20);
  EXPECT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(one.data(), three.data(), one.size() * sizeof(float)));
}

TEST(Training, LearnsSeparableData) {
  double loss = 0;
  train(0, 60, &loss);
  // Chance level is ln 2 = 0.69; the classes are separable, so the loss must fall far below it.
  EXPECT_LT(loss, 0.05);
}

TEST(Training, EmptyBatchStillReportsEveryLayerOnce) {
  Model model("conv(2,3) relu flatten dense(2)", {1, 5, 5}, 4);
  GradientWorker worker(model);
  std::vector<int> done;
  const LossSum s = worker.accumulate({}, *make_task("cross_entropy"), [&](int i) { done.push_back(i); });
  EXPECT_EQ(done, (std::vector<int>{3, 2, 1, 0}));
  EXPECT_EQ(s.normalizer, 0.0);
}

// Without decay_norm_and_bias, weight decay reaches only weights: biases and BatchNorm scales and
// shifts move by their gradients alone (zero here), across update chunks (a 30000-float dense
// weight spans four 8K chunks, its bias starts inside one). SGD and AdamW alike.
TEST(Optimizer, DecayNormAndBiasOffLeavesBiasesAndBatchNormUndecayed) {
  for (const std::string name : {"sgd", "adamw"})
    for (bool decay_all : {true, false}) {
      Model model("conv(3,3) bn flatten dense(100) dense(3,bias=false)", {1, 12, 12}, 1);
      std::fill(model.params().values().data(), model.params().values().data() + model.params().size(), 1.f);
      OptimizerConfig config;
      config.name = name;
      config.weight_decay = 0.5;
      config.decay_norm_and_bias = decay_all;
      Optimizer optimizer(config, model.params());
      optimizer.step(model.params(), 0.1);
      for (std::size_t p = 0; p < model.params().infos().size(); ++p) {
        const ParamInfo& info = model.params().info(int(p));
        const bool decayed = decay_all || info.role == ParamRole::weight;
        const float expected = decayed ? 0.95f : 1.f;  // sgd: 1 - 0.1 * 0.5; adamw: 1 * (1 - 0.1 * 0.5), zero moments
        for (std::size_t i = 0; i < info.size; ++i)
          ASSERT_EQ(model.params().value(int(p))[i], expected) << name << " " << info.name << "[" << i << "]";
      }
    }
}

}  // namespace
}  // namespace mpicnn::core
