// The embedding layers: l2norm and cosine(n). Hand values, double-precision gradient checks of the
// kernels (input and class centres), the layers in a model (names, spec round trip, errors, the
// sub-model up to the embedding).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "core/embedding_kernels.hpp"
#include "core/errors.hpp"
#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "gradient_check.hpp"

namespace mpicnn::core {
namespace {

using ::testing::HasSubstr;

TEST(L2NormKernel, ForwardByHandAndClampAtZero) {
  const std::vector<double> x = {3, 4, 0, 0, 0, 0};
  std::vector<double> y(6), norms(3);
  l2_normalize_forward(y.data(), norms.data(), x.data(), 3, 2);
  EXPECT_DOUBLE_EQ(y[0], 0.6);
  EXPECT_DOUBLE_EQ(y[1], 0.8);
  EXPECT_DOUBLE_EQ(norms[0], 5.0);
  EXPECT_EQ(y[2], 0.0);  // F.normalize: a zero row stays zero (divided by eps)
  EXPECT_EQ(norms[2], kNormalizeEps);
}

TEST(L2NormKernel, Gradient) {
  constexpr int rows = 3, dim = 5;
  const Vec x = random_vec(rows * dim, 11), r = random_vec(rows * dim, 12);
  auto f = [&](const Vec& in) {
    Vec y(in.size()), norms(rows);
    l2_normalize_forward(y.data(), norms.data(), in.data(), rows, dim);
    return y;
  };
  Vec y(x.size()), norms(rows), dx(x.size());
  l2_normalize_forward(y.data(), norms.data(), x.data(), rows, dim);
  l2_normalize_backward(dx.data(), r.data(), y.data(), norms.data(), rows, dim);
  expect_gradient(f, x, dx, r);
}

// cos = normalize(x) normalize(W)^T as the layer computes it, in double.
struct CosineOracle {
  int batch, dim, classes;
  Vec outputs(const Vec& x, const Vec& w) const {
    Vec x_hat(x.size()), w_hat(w.size()), xn(batch), wn(classes), cos(std::size_t(batch) * classes);
    l2_normalize_forward(x_hat.data(), xn.data(), x.data(), batch, dim);
    l2_normalize_forward(w_hat.data(), wn.data(), w.data(), classes, dim);
    cosine_forward(cos.data(), x_hat.data(), w_hat.data(), batch, dim, classes);
    return cos;
  }
  // Gradients of <cos, r> with respect to x and w, as the layer's backward chains the kernels.
  std::pair<Vec, Vec> gradients(const Vec& x, const Vec& w, const Vec& r) const {
    Vec x_hat(x.size()), w_hat(w.size()), xn(batch), wn(classes), gx_hat(x.size()), gw_hat(w.size());
    l2_normalize_forward(x_hat.data(), xn.data(), x.data(), batch, dim);
    l2_normalize_forward(w_hat.data(), wn.data(), w.data(), classes, dim);
    cosine_backward(gx_hat.data(), gw_hat.data(), r.data(), x_hat.data(), w_hat.data(), batch, dim, classes);
    Vec gx(x.size()), gw(w.size(), 0.0);
    l2_normalize_backward(gx.data(), gx_hat.data(), x_hat.data(), xn.data(), batch, dim);
    l2_normalize_backward(gw.data(), gw_hat.data(), w_hat.data(), wn.data(), classes, dim, true);
    return {gx, gw};
  }
};

TEST(CosineKernel, ValuesAreCosinesAndGradientsCheck) {
  const CosineOracle oracle{4, 6, 3};
  const Vec x = random_vec(4 * 6, 21), w = random_vec(3 * 6, 22), r = random_vec(4 * 3, 23);
  const Vec cos = oracle.outputs(x, w);
  // Sample 1 against class 2 by hand.
  double dot = 0, nx = 0, nw = 0;
  for (int i = 0; i < 6; ++i) dot += x[6 + i] * w[12 + i], nx += x[6 + i] * x[6 + i], nw += w[12 + i] * w[12 + i];
  EXPECT_NEAR(cos[1 * 3 + 2], dot / std::sqrt(nx * nw), 1e-15);
  const auto [gx, gw] = oracle.gradients(x, w, r);
  expect_gradient([&](const Vec& in) { return oracle.outputs(in, w); }, x, gx, r);
  expect_gradient([&](const Vec& in) { return oracle.outputs(x, in); }, w, gw, r);
}

TEST(EmbeddingLayers, InAModelNamedAndRoundTripped) {
  Model model("flatten dense(8,bias=false) l2norm cosine(5)", {2, 3, 3}, 4);
  EXPECT_EQ(model.canonical_spec(), "flatten dense(8,bias=false) l2norm cosine(5)");
  EXPECT_EQ(Model(model.canonical_spec(), {2, 3, 3}, 4).canonical_spec(), model.canonical_spec());
  ASSERT_EQ(model.params().infos().size(), 2u);
  EXPECT_EQ(model.params().infos()[1].name, "3.weight");  // nn.Linear(8, 5, bias=False).weight
  EXPECT_EQ(model.params().infos()[1].dims, (std::vector<int>{5, 8}));
  EXPECT_EQ(model.output_shape().c, 5);
  init_params(model.params(), "he", 3);
  std::vector<float> x(4 * 18);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(0.7 * double(i)));
  const float* cos = model.forward(x.data(), 4);
  for (int i = 0; i < 20; ++i) EXPECT_LE(std::abs(cos[i]), 1.0f + 1e-6f);
  // Backward reaches the class centres and the embedding layer.
  std::vector<float> dy(20);
  for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = float(std::cos(1.3 * double(i)));
  model.params().zero_grads();
  model.backward(dy.data(), 4);
  double total = 0;
  for (std::size_t i = 0; i < model.params().size(); ++i) total += std::abs(model.params().grads()[i]);
  EXPECT_GT(total, 0);
}

// export --cut embedding and predict --cut embedding: the sub-model up to the embedding has the
// whole model's parameter names and, on the same weights, the embedding the whole model computes.
TEST(EmbeddingLayers, CutAtTheEmbedding) {
  const Shape in{2, 4, 4};
  Model model("conv(3,3) bn relu flatten dense(6,bias=false) l2norm cosine(5)", in, 3);
  ASSERT_EQ(embedding_layer(model), 5);
  const std::string cut = spec_through_layer(model, embedding_layer(model));
  EXPECT_EQ(cut, "conv(3,3,stride=1,pad=0) bn(eps=1e-05,momentum=0.1) relu flatten "
                 "dense(6,bias=false) l2norm");
  Model sub(cut, in, 3);
  ASSERT_EQ(sub.params().infos().size() + 1, model.params().infos().size());
  for (std::size_t i = 0; i < sub.params().infos().size(); ++i)
    EXPECT_EQ(sub.params().infos()[i].name, model.params().infos()[i].name);
  init_params(model.params(), "he", 4);
  std::copy_n(model.params().values().data(), sub.params().size(), sub.params().values().data());
  std::vector<float> x(3 * 32);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(0.3 * double(i)));
  model.run().training = sub.run().training = false;
  model.forward(x.data(), 3);
  const float* embedding = sub.forward(x.data(), 3);
  for (int i = 0; i < 18; ++i) EXPECT_EQ(embedding[i], model.activation(5)[i]);
  EXPECT_EQ(embedding_layer(Model("flatten dense(4) l2norm", in, 1)), 2);
  EXPECT_EQ(embedding_layer(Model("flatten dense(4)", in, 1)), -1);
  EXPECT_EQ(embedding_layer(Model("flatten cosine(4)", in, 1)), 0);
  try {
    embedding_layer_to_cut(Model("flatten dense(4)", in, 1), "--cut embedding: ckpt.h5");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("--cut embedding: ckpt.h5: the model ends in 'dense(4)', which is no "
                                    "embedding head (expected a final l2norm, or cosine(n) after the embedding)"));
  }
}

std::string error_of(const std::string& spec, const Shape& in) {
  try {
    Model model(spec, in, 1);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(EmbeddingLayers, ErrorsNameTheLayer) {
  EXPECT_THAT(error_of("conv(2,3) l2norm", {1, 6, 6}), HasSubstr("layer 2 'l2norm' needs a flat input (C,1,1), got (2,4,4)"));
  EXPECT_THAT(error_of("cosine(4)", {3, 2, 2}), HasSubstr("layer 1 'cosine' needs a flat input"));
  EXPECT_THAT(error_of("flatten cosine(0)", {3, 2, 2}), HasSubstr("layer 2 'cosine' argument 'classes' must be >= 1"));
  EXPECT_THAT(error_of("flatten cosine", {3, 2, 2}), HasSubstr("is missing argument 'classes'"));
  EXPECT_THAT(error_of("flatten l2norm(2)", {3, 2, 2}), HasSubstr("layer 2 'l2norm' takes at most 0 arguments"));
}

}  // namespace
}  // namespace mpicnn::core
