// The pieces a classifier split by rows across ranks combines (distributed/sharded_classifier.hpp),
// without MPI: over blocks of classes of any split, the margin softmax, the cosine layer's input
// gradient and the initialisation of a block of rows give bitwise the unsplit results.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/embedding_kernels.hpp"
#include "core/metric_losses.hpp"
#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "core/rng.hpp"

namespace mpicnn::core {
namespace {

constexpr int kBatch = 5, kDim = 6, kClasses = 11;

struct Case {
  std::vector<float> x_hat, w_hat, cosines;
  std::vector<std::int32_t> labels;
};

// Unit embeddings and centres (as the layer normalises them), their cosines, one label per sample.
Case make_case(std::uint64_t seed) {
  Rng rng(seed);
  Case c;
  std::vector<float> x(kBatch * kDim), w(kClasses * kDim), norms(kClasses);
  for (float& v : x) v = float(rng.normal());
  for (float& v : w) v = float(rng.normal());
  c.x_hat.resize(x.size()), c.w_hat.resize(w.size());
  l2_normalize_forward(c.x_hat.data(), norms.data(), x.data(), kBatch, kDim);
  l2_normalize_forward(c.w_hat.data(), norms.data(), w.data(), kClasses, kDim);
  c.cosines.resize(kBatch * kClasses);
  cosine_forward(c.cosines.data(), c.x_hat.data(), c.w_hat.data(), kBatch, kDim, kClasses);
  for (int n = 0; n < kBatch; ++n) c.labels.push_back(std::int32_t(rng.below(kClasses)));
  return c;
}

// Block b of a split: its columns of the (batch, classes) matrix m.
template <class T>
std::vector<T> columns(const std::vector<T>& m, int first, int rows) {
  std::vector<T> block;
  for (int n = 0; n < kBatch; ++n)
    block.insert(block.end(), m.begin() + n * kClasses + first, m.begin() + n * kClasses + first + rows);
  return block;
}

struct Split {
  std::vector<float> grad;  // (batch, classes), the blocks' gradients put back in place
  double loss = 0;
};

// The sharded classifier's steps with the blocks [edges[i], edges[i+1]) standing for ranks.
Split split_margin(const Case& c, MarginKind kind, const std::vector<int>& edges) {
  const double scale = 16, margin = kind == MarginKind::arcface ? 0.5 : 0.4;
  std::vector<std::vector<double>> z(edges.size() - 1), slope(edges.size() - 1, std::vector<double>(kBatch, 1.0));
  std::vector<double> top(kBatch, -INFINITY);
  for (std::size_t b = 0; b + 1 < edges.size(); ++b) {
    const int rows = edges[b + 1] - edges[b];
    z[b].resize(kBatch * rows);
    const std::vector<float> cos = columns(c.cosines, edges[b], rows);
    margin_scores(z[b].data(), slope[b].data(), cos.data(), c.labels.data(), {kind, scale, margin, kClasses, edges[b], rows},
                  kBatch);
    for (int n = 0; n < kBatch; ++n) top[n] = std::max(top[n], *std::max_element(&z[b][n * rows], &z[b][n * rows] + rows));
  }
  std::vector<double> log_total(kBatch);
  Split s;
  s.grad.resize(kBatch * kClasses);
  for (int n = 0; n < kBatch; ++n) {
    std::int64_t sum = 0;
    for (std::size_t b = 0; b + 1 < edges.size(); ++b)
      sum += exp_sum_on_grid(&z[b][n * (edges[b + 1] - edges[b])], edges[b + 1] - edges[b], top[n], kClasses);
    log_total[n] = std::log(exp_sum_value(sum, kClasses)) + top[n];
  }
  for (std::size_t b = 0; b + 1 < edges.size(); ++b) {
    const int rows = edges[b + 1] - edges[b];
    std::vector<float> g(kBatch * rows);
    margin_gradients(g.data(), z[b].data(), log_total.data(), slope[b].data(), c.labels.data(),
                     {kind, scale, margin, kClasses, edges[b], rows}, kBatch);
    for (int n = 0; n < kBatch; ++n) {
      std::copy(&g[n * rows], &g[n * rows] + rows, &s.grad[n * kClasses + edges[b]]);
      const int label = c.labels[n] - edges[b];
      if (label >= 0 && label < rows) s.loss += log_total[n] - z[b][n * rows + label];
    }
  }
  return s;
}

TEST(ShardedMargin, BlocksOfAnySplitGiveTheWholeLossAndGradientsBitwise) {
  for (MarginKind kind : {MarginKind::arcface, MarginKind::cosface}) {
    const Case c = make_case(kind == MarginKind::arcface ? 5 : 6);
    std::vector<float> whole(kBatch * kClasses);
    const LossSum reference = margin_softmax_loss(whole.data(), c.cosines.data(), c.labels.data(), kind, 16,
                                                  kind == MarginKind::arcface ? 0.5 : 0.4, kBatch, kClasses);
    for (const std::vector<int>& edges : {std::vector<int>{0, 11}, {0, 6, 11}, {0, 4, 8, 11}, {0, 3, 6, 9, 11}, {0, 1, 11}}) {
      const Split s = split_margin(c, kind, edges);
      EXPECT_EQ(0, std::memcmp(whole.data(), s.grad.data(), whole.size() * sizeof(float))) << edges.size() - 1 << " blocks";
      EXPECT_NEAR(s.loss, reference.sum, 1e-12 * std::abs(reference.sum));  // a float sum in another order
    }
  }
}

// The input gradient's sum over classes on the grid: blocks' int64 sums add to the whole's.
TEST(ShardedMargin, CosineInputGradientOfBlocksSumsToTheWholeBitwise) {
  const Case c = make_case(7);
  std::vector<float> g(kBatch * kClasses);
  margin_softmax_loss(g.data(), c.cosines.data(), c.labels.data(), MarginKind::arcface, 16, 0.5, kBatch, kClasses);
  std::vector<float> whole_x(kBatch * kDim), whole_w(kClasses * kDim);
  cosine_backward(whole_x.data(), whole_w.data(), g.data(), c.x_hat.data(), c.w_hat.data(), kBatch, kDim, kClasses);
  std::vector<double> scale(kBatch);
  for (int n = 0; n < kBatch; ++n) {
    double largest = 0;
    for (int k = 0; k < kClasses; ++k) largest = std::max(largest, std::abs(double(g[n * kClasses + k])));
    scale[n] = cosine_input_scale(largest, kClasses);
  }
  const std::vector<int> edges = {0, 4, 8, 11};
  std::vector<std::int64_t> sums(kBatch * kDim, 0);
  std::vector<float> split_w(kClasses * kDim);
  for (std::size_t b = 0; b + 1 < edges.size(); ++b) {
    const int rows = edges[b + 1] - edges[b];
    const std::vector<float> block = columns(g, edges[b], rows);
    std::vector<std::int64_t> part(kBatch * kDim, 0);
    cosine_input_gradient_add(part.data(), block.data(), rows, c.w_hat.data() + edges[b] * kDim, scale.data(), kBatch,
                              kDim, rows);
    for (std::size_t i = 0; i < sums.size(); ++i) sums[i] += part[i];
    cosine_weight_gradient(split_w.data() + edges[b] * kDim, block.data(), rows, c.x_hat.data(), kBatch, kDim, rows);
  }
  std::vector<float> split_x(kBatch * kDim);
  cosine_input_gradient_finish(split_x.data(), sums.data(), scale.data(), kBatch, kDim);
  EXPECT_EQ(0, std::memcmp(whole_x.data(), split_x.data(), whole_x.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(whole_w.data(), split_w.data(), whole_w.size() * sizeof(float)));
  // The grid costs nothing a float can see: against the plain double sum over classes.
  for (int n = 0; n < kBatch; ++n)
    for (int i = 0; i < kDim; ++i) {
      double exact = 0;
      for (int k = 0; k < kClasses; ++k) exact += double(g[n * kClasses + k]) * double(c.w_hat[k * kDim + i]);
      EXPECT_EQ(whole_x[n * kDim + i], float(exact)) << n << ", " << i;
    }
}

// A block of rows initialised alone is the whole model's block, for every scheme.
TEST(ShardedMargin, InitialisingRowsGivesTheWholeModelsRows) {
  const std::string spec = "conv(4,3) bn relu flatten dense(8) cosine(13)";
  const Shape input{1, 6, 6};
  for (const std::string& scheme : known_init_schemes()) {
    Model model(spec, input, 1);
    init_params(model.params(), scheme, 42);
    const std::vector<ParamInfo> infos = plan_params(spec, input);
    const int last = int(infos.size()) - 1, columns = infos.back().dims[1];
    for (const auto& [first, rows] : {std::pair{0, 13}, std::pair{5, 4}, std::pair{12, 1}}) {
      std::vector<float> block(std::size_t(rows) * columns);
      init_param_rows(block.data(), infos, last, first, rows, scheme, 42);
      EXPECT_EQ(0, std::memcmp(block.data(), model.params().value(last) + std::size_t(first) * columns,
                               block.size() * sizeof(float)))
          << scheme << " rows " << first;
    }
  }
}

}  // namespace
}  // namespace mpicnn::core
