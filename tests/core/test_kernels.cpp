// Kernel tests: hand-computed forward values on tiny inputs, and central-difference gradient
// checks in double precision for inputs and parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "core/kernels.hpp"
#include "gradient_check.hpp"
#include "core/rng.hpp"

namespace mpicnn::core {
namespace {

ConvGeometry conv_geometry(int C, int H, int W, int K, int R, int stride, int pad) {
  return {C, H, W, K, R, R, stride, pad, (H + 2 * pad - R) / stride + 1, (W + 2 * pad - R) / stride + 1};
}

TEST(Conv2d, ForwardByHand) {
  // 3x3 input 1..9, one 2x2 filter of ones, bias 0.5: each output is the sum of a 2x2 window.
  const ConvGeometry g = conv_geometry(1, 3, 3, 1, 2, 1, 0);
  std::vector<float> in = {1, 2, 3, 4, 5, 6, 7, 8, 9}, weight(4, 1.f), bias = {0.5f}, out(4);
  std::vector<float> workspace(conv2d_workspace_size(g, 1));
  conv2d_forward(out.data(), workspace.data(), in.data(), weight.data(), bias.data(), g, 1);
  EXPECT_EQ(out, (std::vector<float>{12.5f, 16.5f, 24.5f, 28.5f}));
}

TEST(Conv2d, ForwardByHandWithStrideAndPadding) {
  // pad 1, stride 2 on a 3x3 input of ones with a 3x3 filter of ones: corners see 4 ones.
  const ConvGeometry g = conv_geometry(1, 3, 3, 1, 3, 2, 1);
  ASSERT_EQ(g.out_h, 2);
  std::vector<float> in(9, 1.f), weight(9, 1.f), out(4);
  std::vector<float> workspace(conv2d_workspace_size(g, 1));
  conv2d_forward(out.data(), workspace.data(), in.data(), weight.data(), static_cast<const float*>(nullptr), g, 1);
  EXPECT_EQ(out, (std::vector<float>{4, 4, 4, 4}));
}

struct ConvCase { int C, H, K, R, stride, pad, batch; };
class ConvGradient : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvGradient, MatchesCentralDifferences) {
  const ConvCase c = GetParam();
  const ConvGeometry g = conv_geometry(c.C, c.H, c.H + 1, c.K, c.R, c.stride, c.pad);
  const int n = c.batch;
  const Vec x = random_vec(n * g.in_size(), 1), w = random_vec(g.filters * g.col_rows(), 2), b = random_vec(g.filters, 3);
  const Vec r = random_vec(n * g.out_size(), 4);
  Vec ws(conv2d_workspace_size(g, n));
  auto forward = [&](const Vec& xx, const Vec& ww, const Vec& bb) {
    Vec out(n * g.out_size());
    conv2d_forward(out.data(), ws.data(), xx.data(), ww.data(), bb.data(), g, n);
    return out;
  };
  Vec dx(x.size()), dw(w.size(), 0.0), db(b.size(), 0.0);
  conv2d_backward(dx.data(), dw.data(), db.data(), ws.data(), r.data(), x.data(), w.data(), g, n);
  expect_gradient([&](const Vec& v) { return forward(v, w, b); }, x, dx, r);
  expect_gradient([&](const Vec& v) { return forward(x, v, b); }, w, dw, r);
  expect_gradient([&](const Vec& v) { return forward(x, w, v); }, b, db, r);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvGradient,
                         ::testing::Values(ConvCase{2, 6, 3, 3, 1, 0, 5},   // two chunks, the second partial
                                           ConvCase{3, 7, 2, 3, 2, 1, 3},   // stride 2, padding
                                           ConvCase{2, 5, 4, 1, 1, 0, 2},   // 1x1 (no im2col)
                                           ConvCase{1, 8, 2, 5, 1, 2, 4})); // large pad

TEST(Conv2d, BackwardAccumulatesParameterGradients) {
  const ConvGeometry g = conv_geometry(1, 4, 4, 2, 3, 1, 0);
  const Vec x = random_vec(g.in_size(), 5), w = random_vec(2 * 9, 6), r = random_vec(g.out_size(), 7);
  Vec ws(conv2d_workspace_size(g, 1)), once(w.size(), 0.0), twice(w.size(), 0.0), db(2, 0.0);
  conv2d_backward(static_cast<double*>(nullptr), once.data(), db.data(), ws.data(), r.data(), x.data(), w.data(), g, 1);
  conv2d_backward(static_cast<double*>(nullptr), twice.data(), db.data(), ws.data(), r.data(), x.data(), w.data(), g, 1);
  conv2d_backward(static_cast<double*>(nullptr), twice.data(), db.data(), ws.data(), r.data(), x.data(), w.data(), g, 1);
  for (std::size_t i = 0; i < w.size(); ++i) EXPECT_DOUBLE_EQ(twice[i], 2 * once[i]);
}

PoolGeometry pool_geometry(int C, int H, int window, int stride, int pad) {
  const int out = (H + 2 * pad - window) / stride + 1;
  return {C, H, H, window, stride, pad, out, out};
}

TEST(MaxPool, ForwardByHand) {
  const PoolGeometry g = pool_geometry(1, 4, 2, 2, 0);
  std::vector<float> in = {1, 5, 2, 0, 3, 4, 8, 1, 0, 0, 1, 1, 9, 0, 1, 2}, out(4);
  std::vector<std::int32_t> arg(4);
  maxpool_forward(out.data(), arg.data(), in.data(), g, 1);
  EXPECT_EQ(out, (std::vector<float>{5, 8, 9, 2}));
  EXPECT_EQ(arg, (std::vector<std::int32_t>{1, 6, 12, 15}));
}

TEST(AvgPool, ForwardByHandCountsPadding) {
  // window 2, stride 2, pad 1 on a 2x2 input: every window holds one real value and three zeros.
  const PoolGeometry g = pool_geometry(1, 2, 2, 2, 1);
  std::vector<float> in = {4, 8, 12, 16}, out(4);
  avgpool_forward(out.data(), in.data(), g, 1);
  EXPECT_EQ(out, (std::vector<float>{1, 2, 3, 4}));
}

class PoolGradient : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(PoolGradient, MaxAndAverageMatchCentralDifferences) {
  const auto [window, stride, pad] = GetParam();
  const PoolGeometry g = pool_geometry(2, 7, window, stride, pad);
  const int n = 3;
  const Vec x = random_vec(n * g.in_size(), 8), r = random_vec(n * g.out_size(), 9);
  std::vector<std::int32_t> arg(n * g.out_size()), arg2(n * g.out_size());
  auto max_forward = [&](const Vec& v) {
    Vec out(n * g.out_size());
    maxpool_forward(out.data(), arg2.data(), v.data(), g, n);
    return out;
  };
  auto avg_forward = [&](const Vec& v) {
    Vec out(n * g.out_size());
    avgpool_forward(out.data(), v.data(), g, n);
    return out;
  };
  Vec out(n * g.out_size()), dx(x.size());
  maxpool_forward(out.data(), arg.data(), x.data(), g, n);
  maxpool_backward(dx.data(), r.data(), arg.data(), g, n);
  // A kink: the perturbation changed which element is the maximum of some window.
  auto argmax_changes = [&](const Vec& plus, const Vec& minus, std::size_t) {
    std::vector<std::int32_t> a(arg.size()), b(arg.size());
    Vec tmp(out.size());
    maxpool_forward(tmp.data(), a.data(), plus.data(), g, n);
    maxpool_forward(tmp.data(), b.data(), minus.data(), g, n);
    return a != b;
  };
  expect_gradient(max_forward, x, dx, r, argmax_changes);
  avgpool_backward(dx.data(), r.data(), g, n);
  expect_gradient(avg_forward, x, dx, r);
}

INSTANTIATE_TEST_SUITE_P(Windows, PoolGradient,
                         ::testing::Values(std::make_tuple(2, 2, 0), std::make_tuple(3, 2, 1), std::make_tuple(3, 1, 0)));

TEST(Dense, ForwardByHand) {
  std::vector<float> in = {1, 2, 3, -1, 0, 1}, weight = {1, 0, 0, 1, 1, 1}, bias = {0.5f, -1}, out(4);
  dense_forward(out.data(), in.data(), weight.data(), bias.data(), 2, 3, 2);
  EXPECT_EQ(out, (std::vector<float>{1.5f, 5, -0.5f, -1}));
}

TEST(Dense, GradientsMatchCentralDifferences) {
  const int n = 19, inputs = 7, outputs = 18;  // more than one row block in both directions
  const Vec x = random_vec(n * inputs, 10), w = random_vec(outputs * inputs, 11), b = random_vec(outputs, 12);
  const Vec r = random_vec(n * outputs, 13);
  auto forward = [&](const Vec& xx, const Vec& ww, const Vec& bb) {
    Vec out(n * outputs);
    dense_forward(out.data(), xx.data(), ww.data(), bb.data(), n, inputs, outputs);
    return out;
  };
  Vec dx(x.size()), dw(w.size(), 0.0), db(b.size(), 0.0);
  dense_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), n, inputs, outputs);
  expect_gradient([&](const Vec& v) { return forward(v, w, b); }, x, dx, r);
  expect_gradient([&](const Vec& v) { return forward(x, v, b); }, w, dw, r);
  expect_gradient([&](const Vec& v) { return forward(x, w, v); }, b, db, r);
}

TEST(Activation, ForwardByHand) {
  std::vector<float> in = {-2, 0, 3}, out(3);
  activation_forward(out.data(), in.data(), 3, Activation::relu, 0.f);
  EXPECT_EQ(out, (std::vector<float>{0, 0, 3}));
  activation_forward(out.data(), in.data(), 3, Activation::leaky_relu, 0.1f);
  EXPECT_EQ(out, (std::vector<float>{-0.2f, 0, 3}));
  activation_forward(out.data(), in.data(), 3, Activation::sigmoid, 0.f);
  EXPECT_FLOAT_EQ(out[1], 0.5f);
  activation_forward(out.data(), in.data(), 3, Activation::tanh, 0.f);
  EXPECT_FLOAT_EQ(out[2], std::tanh(3.f));
}

class ActivationGradient : public ::testing::TestWithParam<Activation> {};

TEST_P(ActivationGradient, MatchesCentralDifferences) {
  const Activation kind = GetParam();
  const std::size_t n = 40000;  // more than one element chunk
  const Vec x = random_vec(n, 14, 3.0), r = random_vec(n, 15);
  auto forward = [&](const Vec& v) {
    Vec out(n);
    activation_forward(out.data(), v.data(), n, kind, 0.1);
    return out;
  };
  const Vec out = forward(x);
  Vec dx(n);
  activation_backward(dx.data(), r.data(), x.data(), out.data(), n, kind, 0.1);
  // The only kink of ReLU and leaky ReLU is at 0.
  auto at_kink = [](const Vec& plus, const Vec& minus, std::size_t i) { return (plus[i] > 0) != (minus[i] > 0); };
  // Checking 40000 points one by one is slow (each evaluates the whole vector): check the function
  // on a 200-element prefix, the chunk logic is covered by the forward/backward sizes above.
  const std::size_t m = 200;
  const Vec xs(x.begin(), x.begin() + m), rs(r.begin(), r.begin() + m), dxs(dx.begin(), dx.begin() + m);
  auto forward_prefix = [&](const Vec& v) {
    Vec o(m);
    activation_forward(o.data(), v.data(), m, kind, 0.1);
    return o;
  };
  expect_gradient(forward_prefix, xs, dxs, rs, at_kink);
  // The chunked backward agrees with a prefix-sized backward everywhere.
  Vec small(m);
  const Vec small_out = forward_prefix(xs);
  activation_backward(small.data(), rs.data(), xs.data(), small_out.data(), m, kind, 0.1);
  for (std::size_t i = 0; i < m; ++i) EXPECT_EQ(small[i], dx[i]);
}

INSTANTIATE_TEST_SUITE_P(Kinds, ActivationGradient,
                         ::testing::Values(Activation::relu, Activation::leaky_relu, Activation::sigmoid, Activation::tanh));

}  // namespace
}  // namespace mpicnn::core
