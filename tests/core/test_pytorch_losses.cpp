// Focal and label-smoothed losses against PyTorch (tests/core/pytorch/make_loss_fixtures.py, written
// at test time): torchvision.ops.sigmoid_focal_loss, the multi-class focal form and
// F.cross_entropy(label_smoothing=...), loss and d(mean)/d(logits) in float64.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/loss.hpp"
#include "fixture_text.hpp"

namespace {

using mpicnn::core::LossSum;
using mpicnn::core::values_after;
using mpicnn::core::worst_and_largest;

struct Case {
  std::string kind;
  double gamma = 0, alpha = -1;
  int n = 0, k = 0;
  std::vector<double> logits, truth, weights, loss, grad;
};

std::vector<Case> read_cases() {
  std::ifstream in(MPICNN_LOSS_FIXTURE);
  EXPECT_TRUE(in) << MPICNN_LOSS_FIXTURE << " is missing: it is written by pytorch_reference.loss_fixtures";
  std::vector<Case> cases;
  for (std::string text; std::getline(in, text);) {
    std::istringstream header(text);
    Case c;
    std::string word;
    header >> word >> c.kind >> c.gamma >> c.alpha >> c.n >> c.k;
    c.logits = values_after(in, "logits"), c.truth = values_after(in, "truth"), c.weights = values_after(in, "weights");
    c.loss = values_after(in, "loss"), c.grad = values_after(in, "grad");
    cases.push_back(c);
  }
  return cases;
}

LossSum our_loss(const Case& c, std::vector<float>& grad) {
  const std::vector<float> logits(c.logits.begin(), c.logits.end()), weights(c.weights.begin(), c.weights.end());
  grad.assign(c.logits.size(), 0.f);
  if (c.kind == "sigmoid") {
    const std::vector<float> targets(c.truth.begin(), c.truth.end());
    return mpicnn::core::sigmoid_focal_loss(grad.data(), logits.data(), targets.data(), c.gamma, c.alpha, c.n, c.k);
  }
  const std::vector<std::int32_t> labels(c.truth.begin(), c.truth.end());
  if (c.kind == "smoothed")
    return mpicnn::core::softmax_cross_entropy(grad.data(), logits.data(), labels.data(), weights, c.n, c.k, c.gamma);
  return mpicnn::core::softmax_focal_loss(grad.data(), logits.data(), labels.data(), weights, c.gamma, c.n, c.k);
}

TEST(Losses, MatchPyTorch) {
  const std::vector<Case> cases = read_cases();
  ASSERT_EQ(cases.size(), 12u);
  for (const Case& c : cases) {
    std::vector<float> grad;
    const LossSum ours = our_loss(c, grad);
    const double mean = ours.sum / ours.normalizer;
    const std::string name = c.kind + (c.kind == "smoothed" ? " label_smoothing " + std::to_string(c.gamma)
                                                            : " gamma " + std::to_string(c.gamma) + " alpha " + std::to_string(c.alpha)) +
                             (c.weights.empty() ? "" : ", class weights");
    EXPECT_NEAR(mean, c.loss[0], 1e-6 * std::abs(c.loss[0])) << name;
    const auto [worst, largest] = worst_and_largest(grad, ours.normalizer, c.grad);
    // float32 gradients: relative to the largest entry of the case, as the other PyTorch tests.
    EXPECT_LE(worst, 1e-6 * largest) << name;
    std::printf("[ figure ] %s: |loss - torch| %.2g, max |grad - torch| / max |grad| %.2g\n", name.c_str(),
                std::abs(mean - c.loss[0]), worst / largest);
  }
}

TEST(Losses, FocalAtGammaZeroIsCrossEntropy) {
  const std::vector<float> logits = {2.f, -1.f, 0.5f, 0.f, 3.f, -2.f};
  const std::vector<std::int32_t> labels = {2, 0};
  const std::vector<float> weights = {0.5f, 2.f, 1.f};
  std::vector<float> focal(6), plain(6);
  const LossSum f = mpicnn::core::softmax_focal_loss(focal.data(), logits.data(), labels.data(), weights, 0.0, 2, 3);
  const LossSum p = mpicnn::core::softmax_cross_entropy(plain.data(), logits.data(), labels.data(), weights, 2, 3);
  EXPECT_NEAR(f.sum, p.sum, 1e-12);
  EXPECT_EQ(f.normalizer, p.normalizer);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(focal[i], plain[i], 1e-7);
}

}  // namespace
