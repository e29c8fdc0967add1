// Winograd F(2x2,3x3) convolutions (core/winograd.cpp) against the naive direct convolution in
// double precision: forward pass and input gradient, in float and double, bitwise across 1, 2
// and 3 threads; and the per-layer plan that picks it.
//
// Tolerance. Winograd forms each output from the same products as direct convolution, rearranged
// through linear transforms: y = A^T [(G g G^T) . (B^T d B)] A, summed over channels. Forward
// error analysis of such a computation (each step a sum or product, Higham's "Accuracy and
// Stability of Numerical Algorithms", 2002, ch. 3) bounds its rounding error by gamma_n M_w, where
// M_w is the same expression evaluated on absolute values (|A^T|, |G|, |B^T|, |g|, |d|) and n the
// roundings on the longest path: 4 in the filter transform, 2 in the input transform, 1 product,
// depth - 1 in the channel sum, 4 in the output transform and 1 for the bias. M_w exceeds direct
// convolution's M = sum |g d| (the transforms' paths add magnitudes that cancel): it is what the
// float result is allowed to lose precision against. As in test_conv_direct.cpp, float uses the
// probabilistic bound lambda sqrt(n) u M_w (lambda 6); double the worst case gamma_n M_w, plus the
// reference's own gamma_t M. A channel's contribution dropped, or one transform coefficient
// wrong, is off by about M_w / depth or more: far outside either bound.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "conv2d_problem.hpp"
#include "core/kernels.hpp"

namespace mpicnn::core {
namespace {

using namespace conv_test;

// kappa[p][i][r] = sum_a |A^T(p,a)| |B^T(a,i)| |G(a,r)|: the 1D envelope of output p of a tile
// over its input i and filter tap r. The 2D envelope is kappa[p][i][r] * kappa[q][j][s].
using Envelope = std::array<std::array<std::array<double, 3>, 4>, 2>;
Envelope envelope() {
  const double at[2][4] = {{1, 1, 1, 0}, {0, 1, 1, 1}};
  const double bt[4][4] = {{1, 0, 1, 0}, {0, 1, 1, 0}, {0, 1, 1, 0}, {0, 1, 0, 1}};
  const double gm[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, .5, .5}, {0, 0, 1}};
  Envelope k{};
  for (int p = 0; p < 2; ++p)
    for (int i = 0; i < 4; ++i)
      for (int r = 0; r < 3; ++r)
        for (int a = 0; a < 4; ++a) k[p][i][r] += at[p][a] * bt[a][i] * gm[a][r];
  return k;
}

// M_w of every output of a 3x3 pad-1 correlation of `in` (N, depth, H, W) with `filter(row, d, r, s)`
// (rows output channels), plus |bias|.
template <class Filter>
std::vector<double> winograd_magnitude(const std::vector<double>& in, int batch, int depth, int rows, int height,
                                       int width, Filter&& filter, const std::vector<double>* bias) {
  const Envelope k = envelope();
  std::vector<double> m(std::size_t(batch) * rows * height * width, 0.0);
  for (int n = 0; n < batch; ++n)
    for (int row = 0; row < rows; ++row)
      for (int oh = 0; oh < height; ++oh)
        for (int ow = 0; ow < width; ++ow) {
          const int p = oh % 2, q = ow % 2, top = oh - p - 1, left = ow - q - 1;
          double total = bias ? std::abs((*bias)[row]) : 0.0;
          for (int d = 0; d < depth; ++d)
            for (int i = 0; i < 4; ++i)
              for (int j = 0; j < 4; ++j) {
                const int y = top + i, x = left + j;
                if (y < 0 || y >= height || x < 0 || x >= width) continue;
                const double v = std::abs(in[((std::size_t(n) * depth + d) * height + y) * width + x]);
                for (int r = 0; r < 3; ++r)
                  for (int s = 0; s < 3; ++s) total += k[p][i][r] * k[q][j][s] * v * std::abs(filter(row, d, r, s));
              }
          m[((std::size_t(n) * rows + row) * height + oh) * width + ow] = total;
        }
  return m;
}

template <class T>
void expect_within_winograd_bound(const std::vector<T>& got, const Expected& want, const std::vector<double>& m_w,
                                  int depth, const char* what) {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  const int n = 4 + 2 + 1 + (depth - 1) + 4 + 1;
  int failures = 0;
  for (std::size_t i = 0; i < want.value.size() && failures < 5; ++i) {
    const double allowed = sizeof(T) == sizeof(double)
                               ? n * u / (1 - n * u) * m_w[i] + allowed_error<double>(want.terms[i], want.magnitude[i]) / 2
                               : 6.0 * std::sqrt(double(n)) * u * m_w[i];
    const double error = std::abs(double(got[i]) - want.value[i]);
    if (error <= allowed) continue;
    ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want.value[i] << " (error " << error
                  << ", allowed " << allowed << ")";
    ++failures;
  }
}

ConvCase winograd_case(const char* name, int C, int H, int W, int K, int batch) {
  return {name, C, H, W, K, 3, 3, 1, 1, batch};
}

template <class T>
void check_against_direct(const ConvCase& c) {
  const Problem p(c);
  const ConvReference<Problem> want{p};
  const ConvGeometry& g = p.g;
  ASSERT_TRUE(g.out_h == g.height && g.out_w == g.width);
  const int C = g.in_channels, K = g.filters;
  std::vector<T> workspace = guarded<T>(conv2d_workspace_size(g, c.batch, ConvAlgorithm::winograd));
  const std::vector<T> x = as<T>(p.x), w = as<T>(p.w), b = as<T>(p.b), dy = as<T>(p.dy);
  std::vector<T> y = guarded<T>(c.batch * g.out_size());
  conv2d_forward(y.data(), workspace.data(), x.data(), w.data(), b.data(), g, c.batch, ConvAlgorithm::winograd);
  const auto weight = [&](int k, int ch, int r, int s) { return p.w[((std::size_t(k) * C + ch) * 3 + r) * 3 + s]; };
  expect_within_winograd_bound(y, want.forward(),
                               winograd_magnitude(p.x, c.batch, C, K, g.height, g.width, weight, &p.b), C, "forward");
  std::vector<T> dx = guarded<T>(x.size()), dw = guarded<T>(w.size(), p.dw0), db = guarded<T>(b.size(), p.db0);
  conv2d_backward(dx.data(), dw.data(), db.data(), workspace.data(), dy.data(), x.data(), w.data(), g, c.batch,
                  ConvAlgorithm::winograd);
  // The input gradient correlates dY with the filters transposed and rotated by 180 degrees.
  const auto rotated = [&](int ch, int k, int r, int s) { return weight(k, ch, 2 - r, 2 - s); };
  expect_within_winograd_bound(dx, want.input_grad(),
                               winograd_magnitude(p.dy, c.batch, K, C, g.height, g.width, rotated, nullptr), K,
                               "input gradient");
  // The parameter gradients run direct: the direct tolerance.
  expect_close(dw, want.weight_grad(), "weight gradient");
  expect_close(db, want.bias_grad(), "bias gradient");
  for (const auto* v : {&workspace, &y, &dx, &dw, &db}) expect_guard_intact(*v, "a buffer");
}

class Winograd : public ::testing::TestWithParam<ConvCase> {};

TEST_P(Winograd, FloatMatchesDirectConvolution) { check_against_direct<float>(GetParam()); }
TEST_P(Winograd, DoubleMatchesDirectConvolution) { check_against_direct<double>(GetParam()); }

TEST_P(Winograd, BitwiseIdenticalForOneTwoAndThreeThreads) {
  const Problem p(GetParam());
  const ConvGeometry& g = p.g;
  const std::vector<float> x = as<float>(p.x), w = as<float>(p.w), b = as<float>(p.b), dy = as<float>(p.dy);
  expect_bitwise_on_one_two_and_three_threads([&] {
    std::vector<float> workspace(conv2d_workspace_size(g, p.batch, ConvAlgorithm::winograd)), y(p.batch * g.out_size()),
        dx(x.size()), dw(w.size()), db(b.size());
    conv2d_forward(y.data(), workspace.data(), x.data(), w.data(), b.data(), g, p.batch, ConvAlgorithm::winograd);
    conv2d_backward(dx.data(), dw.data(), db.data(), workspace.data(), dy.data(), x.data(), w.data(), g, p.batch,
                    ConvAlgorithm::winograd);
    for (const auto* part : {&dx, &dw, &db}) y.insert(y.end(), part->begin(), part->end());
    return y;
  });
}

// name, C, H, W, K, batch (3x3, stride 1, pad 1)
INSTANTIATE_TEST_SUITE_P(
    Geometries, Winograd,
    ::testing::Values(winograd_case("Maps10x10", 32, 10, 10, 40, 3),         // 25 tiles per image, one group
                      winograd_case("OddMaps9x7", 33, 9, 7, 35, 5),          // partial tiles on both edges
                      winograd_case("Maps7x7TwoGroups", 32, 7, 7, 36, 20),   // 16 images per group, then 4
                      winograd_case("Maps4x4", 40, 4, 4, 32, 70),            // 64 images per group, then 6
                      winograd_case("Deep130To70", 130, 6, 6, 70, 2),        // channel sum past 128, rows past 64
                      winograd_case("Wide5x30", 32, 5, 30, 33, 2),           // 15 tiles per tile row
                      winograd_case("OnePixel", 32, 1, 1, 32, 3)),           // one tile, mostly padding
    [](const ::testing::TestParamInfo<ConvCase>& info) { return info.param.name; });

// The plan: Winograd for 3x3 stride-1 pad-1 layers of at least 32 channels in and out on maps
// of even size once allowed, direct otherwise.
TEST(ConvPlan, WinogradOnlyWhereItFitsAndPaysAndIsAllowed) {
  const ConvGeometry resnet{64, 8, 8, 64, 3, 3, 1, 1, 8, 8};
  EXPECT_EQ(choose_conv_algorithm(resnet), ConvAlgorithm::direct);  // off by default
  allow_winograd(true);
  const auto plan = [](int C, int K, int R, int stride, int pad, int W) {
    const ConvGeometry g{C, 8, W, K, R, R, stride, pad, (8 + 2 * pad - R) / stride + 1, (W + 2 * pad - R) / stride + 1};
    return choose_conv_algorithm(g);
  };
  EXPECT_EQ(plan(64, 64, 3, 1, 1, 8), ConvAlgorithm::winograd);
  EXPECT_EQ(plan(16, 64, 3, 1, 1, 8), ConvAlgorithm::direct);   // too few input channels
  EXPECT_EQ(plan(64, 16, 3, 1, 1, 8), ConvAlgorithm::direct);   // too few filters
  EXPECT_EQ(plan(64, 64, 3, 2, 1, 8), ConvAlgorithm::direct);   // stride 2
  EXPECT_EQ(plan(64, 64, 3, 1, 0, 8), ConvAlgorithm::direct);   // no padding
  EXPECT_EQ(plan(64, 64, 5, 1, 1, 8), ConvAlgorithm::direct);   // 5x5
  EXPECT_EQ(plan(64, 64, 3, 1, 1, 300), ConvAlgorithm::direct); // wider than a task's rows
  EXPECT_EQ(plan(64, 64, 3, 1, 1, 7), ConvAlgorithm::direct);   // odd width: tiles past the map
  allow_winograd(false);
  EXPECT_EQ(plan(64, 64, 3, 1, 1, 8), ConvAlgorithm::direct);
}

}  // namespace
}  // namespace mpicnn::core
