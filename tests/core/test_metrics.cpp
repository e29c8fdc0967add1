// Tasks against references no one here wrote: MedMNIST-style metrics (AUC per label and one-vs-
// rest, thresholded accuracy) against scikit-learn on fixed score arrays with ties
// (tests/core/sklearn/metrics_reference.txt, written by make_fixture.py), identical to 1e-9; and
// the multi-label loss against PyTorch's BCEWithLogitsLoss formula.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "core/errors.hpp"
#include "core/loss.hpp"
#include "core/metrics.hpp"
#include "core/task.hpp"

namespace mpicnn::core {
namespace {

std::map<std::string, std::vector<double>> read_reference() {
  std::ifstream in(MPICNN_SKLEARN_FIXTURE);
  if (!in) throw Error(std::string(MPICNN_SKLEARN_FIXTURE) + ": cannot open the scikit-learn fixture");
  std::map<std::string, std::vector<double>> arrays;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string name, value;
    std::size_t count = 0;
    fields >> name >> count;
    std::vector<double>& values = arrays[name];
    while (fields >> value) values.push_back(value == "nan" ? std::nan("") : std::stod(value));
    if (values.size() != count) throw Error(name + ": expected " + std::to_string(count) + " values");
  }
  return arrays;
}

const std::map<std::string, std::vector<double>>& reference() {
  static const auto arrays = read_reference();
  return arrays;
}

std::vector<float> floats(const std::string& name) {
  const auto& v = reference().at(name);
  return {v.begin(), v.end()};
}
std::vector<std::int32_t> ints(const std::string& name) {
  const auto& v = reference().at(name);
  return {v.begin(), v.end()};
}

double metric(const std::vector<Metric>& metrics, const std::string& name) {
  for (const auto& [key, value] : metrics)
    if (key == name) return value;
  ADD_FAILURE() << "no metric " << name;
  return std::nan("");
}

void expect_same(double ours, double sklearn, const std::string& what) {
  if (std::isnan(sklearn)) EXPECT_TRUE(std::isnan(ours)) << what << ": sklearn cannot compute it, we gave " << ours;
  else EXPECT_NEAR(ours, sklearn, 1e-9) << what;
}

TEST(SklearnReference, MultiLabelAucPerLabelMeanAndAccuracy) {
  const int labels = 5;
  const std::vector<float> logits = floats("multilabel_logits"), targets = floats("multilabel_targets");
  const int count = int(targets.size()) / labels;
  const auto task = make_task("bce");
  std::vector<float> predictions(logits.size());
  for (int n = 0; n < count; ++n) task->predict(&predictions[n * labels], &logits[n * labels], labels);
  const LossSum sums = task->loss(nullptr, logits.data(), {nullptr, nullptr, targets.data(), count}, labels);
  const auto metrics = task->eval_metrics({sums.correct, count, labels, predictions, {}, targets});
  const std::vector<double>& expected = reference().at("multilabel_auc");
  for (int k = 0; k < labels; ++k) expect_same(metric(metrics, "auc_" + std::to_string(k)), expected[k], "label " + std::to_string(k));
  expect_same(metric(metrics, "auc"), mean_defined(expected), "mean AUC over labels with both groups");
  expect_same(metric(metrics, "accuracy"), reference().at("multilabel_accuracy")[0], "accuracy at 0.5");
  for (const std::string rate : {"sensitivity", "specificity", "precision"}) {
    const std::vector<double>& per_label = reference().at("multilabel_" + rate);
    for (int k = 0; k < labels; ++k)
      expect_same(metric(metrics, rate + "_" + std::to_string(k)), per_label[k], rate + " of label " + std::to_string(k));
    expect_same(metric(metrics, rate), mean_defined(per_label), rate + ": mean over the labels that define it");
  }
}

TEST(Metrics, PerLabelIndexReadsTheTrailingNumber) {
  EXPECT_EQ(per_label_index("auc_3"), 3);
  EXPECT_EQ(per_label_index("val_precision_12"), 12);
  EXPECT_EQ(per_label_index("val_auc"), -1);
  EXPECT_EQ(per_label_index("auc_"), -1);
  EXPECT_EQ(per_label_index("auc_1x"), -1);
}

TEST(SklearnReference, MultiClassOneVsRestAndBinaryAuc) {
  const auto task = make_task("cross_entropy");
  for (const std::string kind : {"multiclass", "binary"}) {
    const std::vector<float> probabilities = floats(kind + "_probabilities");
    const std::vector<std::int32_t> labels = ints(kind + "_labels");
    const int classes = int(probabilities.size() / labels.size());
    const auto metrics = task->eval_metrics({0, std::int64_t(labels.size()), classes, probabilities, labels, {}});
    expect_same(metric(metrics, "auc"), reference().at(kind + "_auc")[0], kind);
  }
}

// PyTorch's BCEWithLogitsLoss: l = (1 - t) x + (1 + (p - 1) t) log(1 + exp(-x)), written here
// directly (not through the stable form the kernel uses), and its derivative
// (1 + (p - 1) t) sigmoid(x) - p t.
TEST(SigmoidBinaryCrossEntropy, MatchesBceWithLogitsFormulaAndGradient) {
  const std::vector<float> x = {-3.5f, -0.25f, 0.f, 0.75f, 4.f, 12.f}, t = {0, 1, 1, 0, 1, 0};
  const std::vector<float> pos_weight = {1.f, 3.f, 0.5f};
  for (bool weighted : {false, true}) {
    std::vector<float> grad(6);
    const auto w = weighted ? std::span<const float>(pos_weight) : std::span<const float>();
    const LossSum s = sigmoid_binary_cross_entropy(grad.data(), x.data(), t.data(), w, 2, 3);
    double sum = 0;
    int correct = 0;
    for (int i = 0; i < 6; ++i) {
      const double p = weighted ? pos_weight[i % 3] : 1.0, xi = x[i], ti = t[i];
      sum += (1 - ti) * xi + (1 + (p - 1) * ti) * std::log(1 + std::exp(-xi));
      const double sigmoid = 1 / (1 + std::exp(-xi));
      EXPECT_NEAR(grad[i], (1 + (p - 1) * ti) * sigmoid - p * ti, 1e-7) << i;
      correct += (xi > 0) == (ti > 0.5);
    }
    EXPECT_NEAR(s.sum, sum, 1e-12);
    EXPECT_EQ(s.normalizer, 6.0);
    EXPECT_EQ(s.correct, correct);
  }
}

TEST(SigmoidBinaryCrossEntropy, StaysFiniteForLargeLogits) {
  const std::vector<float> x = {-1e4f, 1e4f}, t = {1, 0};
  std::vector<float> grad(2);
  const LossSum s = sigmoid_binary_cross_entropy(grad.data(), x.data(), t.data(), {}, 1, 2);
  EXPECT_DOUBLE_EQ(s.sum, 2e4);
  EXPECT_EQ(grad, (std::vector<float>{-1.f, 1.f}));
}

TEST(Tasks, BceChecksTheDatasetAndItsWeights) {
  const auto task = make_task("bce", {{}, {1.f, 2.f}});
  EXPECT_THROW(task->check({true, 3, 0}, 3, "d.h5"), ConfigError);
  EXPECT_THROW(task->check({false, 0, 4}, 3, "d.h5"), ConfigError);
  EXPECT_THROW(task->check({false, 0, 3}, 3, "d.h5"), ConfigError);  // two weights for three labels
  EXPECT_NO_THROW(make_task("bce", {{}, {1.f, 2.f, 3.f}})->check({false, 0, 3}, 3, "d.h5"));
  EXPECT_THROW(make_task("mse", {{}, {1.f}}), ConfigError);
  EXPECT_EQ(task->best_metrics().front(), "auc");
}

}  // namespace
}  // namespace mpicnn::core
