// ArcFace, CosFace and triplet loss (batch-hard, semi-hard) against PyTorch's autograd in float64
// on the published formulas (tests/core/pytorch/make_metric_loss_fixtures.py, written at test
// time): loss and d(mean)/d(input). Then the task objects and their option errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/errors.hpp"
#include "core/metric_losses.hpp"
#include "core/task.hpp"
#include "core/verification.hpp"
#include "fixture_text.hpp"

namespace mpicnn::core {
namespace {

struct Case {
  std::string kind, mining;
  double scale = 0, margin = 0;
  int n = 0, k = 0;
  std::vector<double> input, labels, loss, grad;
};

std::vector<Case> read_cases() {
  std::ifstream in(MPICNN_METRIC_LOSS_FIXTURE);
  EXPECT_TRUE(in) << MPICNN_METRIC_LOSS_FIXTURE << " is missing: it is written by pytorch_reference.metric_loss_fixtures";
  std::vector<Case> cases;
  for (std::string text; std::getline(in, text);) {
    std::istringstream header(text);
    Case c;
    std::string word;
    header >> word >> c.kind >> c.mining >> c.scale >> c.margin >> c.n >> c.k;
    c.input = values_after(in, "input"), c.labels = values_after(in, "labels");
    c.loss = values_after(in, "loss"), c.grad = values_after(in, "grad");
    cases.push_back(c);
  }
  return cases;
}

LossSum our_loss(const Case& c, std::vector<float>& grad) {
  const std::vector<float> input(c.input.begin(), c.input.end());
  const std::vector<std::int32_t> labels(c.labels.begin(), c.labels.end());
  grad.assign(input.size(), 0.f);
  if (c.kind == "triplet")
    return triplet_loss(grad.data(), input.data(), labels.data(), c.margin,
                        c.mining == "batch_hard" ? Mining::batch_hard : Mining::semi_hard, c.n, c.k);
  return margin_softmax_loss(grad.data(), input.data(), labels.data(),
                             c.kind == "arcface" ? MarginKind::arcface : MarginKind::cosface, c.scale, c.margin, c.n, c.k);
}

TEST(MetricLosses, MatchPyTorch) {
  const std::vector<Case> cases = read_cases();
  ASSERT_EQ(cases.size(), 10u);
  for (const Case& c : cases) {
    std::vector<float> grad;
    const LossSum ours = our_loss(c, grad);
    const double mean = ours.sum / ours.normalizer;
    const std::string name = c.kind + (c.kind == "triplet" ? " " + c.mining : " s " + std::to_string(c.scale)) +
                             " m " + std::to_string(c.margin);
    EXPECT_GT(c.loss[0], 0) << name << ": a case whose loss is 0 tests nothing";
    EXPECT_NEAR(mean, c.loss[0], 1e-5 * std::abs(c.loss[0])) << name;
    const auto [worst, largest] = worst_and_largest(grad, ours.normalizer, c.grad);
    EXPECT_LE(worst, 1e-5 * largest) << name;
    std::printf("[ figure ] %s: |loss - torch| / loss %.2g, max |grad - torch| / max |grad| %.2g\n", name.c_str(),
                std::abs(mean - c.loss[0]) / c.loss[0], worst / largest);
  }
}

TEST(MetricTasks, UseTheKernelsWithTheDefaults) {
  const std::vector<float> cosines = {0.3f, -0.2f, 0.9f, 0.1f, 0.5f, -0.7f};
  const std::vector<std::int32_t> labels = {2, 0};
  BatchView batch;
  batch.labels = labels.data(), batch.count = 2;
  std::vector<float> a(6), b(6);
  const LossSum arc = make_task("arcface")->loss(a.data(), cosines.data(), batch, 3);
  const LossSum ref = margin_softmax_loss(b.data(), cosines.data(), labels.data(), MarginKind::arcface, 64, 0.5, 2, 3);
  EXPECT_EQ(arc.sum, ref.sum);
  EXPECT_EQ(a, b);
  EXPECT_EQ(arc.correct, 1);  // sample 0's largest cosine is its label's; sample 1's is not
  const LossSum cos = make_task("cosface")->loss(a.data(), cosines.data(), batch, 3);
  EXPECT_EQ(cos.sum, margin_softmax_loss(b.data(), cosines.data(), labels.data(), MarginKind::cosface, 64, 0.4, 2, 3).sum);
  EXPECT_EQ(make_task("triplet")->normalizer({}, 12, 8), 12);
  EXPECT_EQ(make_task("arcface")->prediction_name(), "cosines");
  EXPECT_EQ(make_task("triplet")->prediction_name(), "embeddings");
  const std::vector<float> not_cosines = {3.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  EXPECT_THROW(make_task("arcface")->loss(nullptr, not_cosines.data(), batch, 3), ShapeError);
}

// Evaluation of the metric tasks: verification figures on the split's embeddings, pairs from its
// labels (label_pair_verification), added by the evaluator; triplet reports nothing else.
TEST(MetricTasks, EvaluationIsVerificationOnTheSplit) {
  std::vector<float> embeddings;
  std::vector<std::int32_t> labels;
  for (int n = 0; n < 30; ++n) {
    labels.push_back(n % 5);
    for (int d = 0; d < 4; ++d) embeddings.push_back(float(std::sin(1.7 * n + d)) + (d == n % 4 ? 1.f : 0.f));
  }
  const std::vector<Pair> pairs = pairs_from_labels(labels, 18);
  std::vector<bool> same;
  for (const Pair& p : pairs) same.push_back(p.same);
  const auto metrics = label_pair_verification(embeddings, 4, labels);
  EXPECT_EQ(metrics, verification_metrics(pair_scores(embeddings, 4, pairs), same));
  ASSERT_EQ(metrics.size(), verification_metric_names().size());
  for (std::size_t i = 0; i < metrics.size(); ++i) EXPECT_EQ(metrics[i].first, verification_metric_names()[i]);
  EXPECT_TRUE(label_pair_verification(std::span(embeddings).first(8), 4, std::span(labels).first(2)).empty());
  const auto triplet = make_task("triplet");
  EXPECT_TRUE(triplet->verifies() && make_task("arcface")->verifies() && make_task("cosface")->verifies());
  EXPECT_FALSE(make_task("cross_entropy")->verifies());
  EXPECT_TRUE(triplet->eval_metrics({0, 30, 4, embeddings, labels, {}}).empty());
  EXPECT_EQ(triplet->best_metrics().front(), "verification_accuracy");
  const auto arcface = make_task("arcface")->best_metrics();
  EXPECT_EQ(arcface.front(), "accuracy");
  EXPECT_NE(std::find(arcface.begin(), arcface.end(), "verification_tar_at_far_1e-3"), arcface.end());
}

// Checkpoints store Task::options() and rebuild the task from them: every kind's options, its
// defaults filled in, make the same task again.
TEST(MetricTasks, OptionsRebuildTheSameTask) {
  TaskOptions arc;
  arc.scale = 30, arc.margin = 0.3;
  const auto task = make_task("arcface", arc);
  EXPECT_EQ(task->options().scale, 30);
  EXPECT_EQ(task->options().margin, 0.3);
  EXPECT_EQ(make_task("arcface")->options().scale, 64);
  EXPECT_EQ(make_task("cosface")->options().margin, 0.4);
  EXPECT_EQ(make_task("triplet")->options().mining, "batch_hard");
  EXPECT_EQ(make_task("triplet")->options().margin, 0.2);
  const std::vector<float> cosines = {0.3f, -0.2f, 0.9f, 0.1f, 0.5f, -0.7f};
  const std::vector<std::int32_t> labels = {2, 0};
  BatchView batch;
  batch.labels = labels.data(), batch.count = 2;
  const auto rebuilt = make_task(task->kind(), task->options());
  EXPECT_EQ(rebuilt->loss(nullptr, cosines.data(), batch, 3).sum, task->loss(nullptr, cosines.data(), batch, 3).sum);
  EXPECT_NE(make_task("arcface")->loss(nullptr, cosines.data(), batch, 3).sum, task->loss(nullptr, cosines.data(), batch, 3).sum);
  TaskOptions ce;
  ce.class_weights = {1, 2, 0.5f}, ce.label_smoothing = 0.1;
  TaskOptions bce;
  bce.focal_gamma = 2, bce.focal_alpha = 0.25;
  for (const auto& [kind, options] : {std::pair{std::string("cross_entropy"), ce}, std::pair{std::string("bce"), bce},
                                      std::pair{std::string("mse"), TaskOptions{}}, std::pair{std::string("triplet"), TaskOptions{}}}) {
    const TaskOptions o = make_task(kind, options)->options();
    const TaskOptions again = make_task(kind, o)->options();
    EXPECT_EQ(o.class_weights, again.class_weights) << kind;
    EXPECT_EQ(o.label_smoothing, options.label_smoothing) << kind;
    EXPECT_EQ(o.focal_gamma, options.focal_gamma) << kind;
    EXPECT_EQ(o.focal_alpha, again.focal_alpha) << kind;
    EXPECT_EQ(o.mining, again.mining) << kind;
  }
  EXPECT_EQ(make_task("cross_entropy", ce)->options().class_weights, ce.class_weights);
}

std::string error_of(const std::string& kind, const TaskOptions& options) {
  try {
    make_task(kind, options);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(MetricTasks, OptionsOutOfRangeAreOneLineErrors) {
  using ::testing::HasSubstr;
  TaskOptions o;
  o.margin = 1.6;
  EXPECT_THAT(error_of("arcface", o), HasSubstr("'loss.margin' for arcface must be in [0, pi/2), got 1.6"));
  EXPECT_EQ(error_of("cosface", o), "no error");
  o.margin = 2.5;
  EXPECT_THAT(error_of("triplet", o), HasSubstr("'loss.margin' for triplet must be in [0, 2), got 2.5"));
  EXPECT_THAT(error_of("cross_entropy", o), HasSubstr("apply to arcface, cosface and triplet, not 'cross_entropy'"));
  o = {};
  o.scale = 0;
  EXPECT_THAT(error_of("cosface", o), HasSubstr("'loss.scale' must be > 0, got 0"));
  EXPECT_THAT(error_of("triplet", o), HasSubstr("'loss.scale' applies to arcface and cosface only, not 'triplet'"));
  o = {};
  o.mining = "hardest";
  EXPECT_THAT(error_of("triplet", o), HasSubstr("'loss.mining' must be batch_hard or semi_hard, got 'hardest'"));
  EXPECT_THAT(error_of("arcface", o), HasSubstr("'loss.mining' applies to triplet only"));
  DatasetTargets data{true, 10, 0};
  EXPECT_THROW(make_task("arcface")->check(data, 8, "data.h5"), ConfigError);
  EXPECT_NO_THROW(make_task("arcface")->check(data, 10, "data.h5"));
}

}  // namespace
}  // namespace mpicnn::core
