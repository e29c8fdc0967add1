// Convolution kernels against a naive direct convolution in double precision, on geometries that
// reach every path of core/conv_kernels.cpp (forward from the image, from shifted copies or
// through im2col; weight gradient from shifted copies, from the image (taps_tiles) or through
// im2row; input gradient scattered from register tiles or through col2im; the 1x1 product; small
// maps as one product per group of images), in float and double, for full and partial chunks and
// groups of images.
//
// Tolerances come from the rounding error of a sum of n terms t_i, relative to M = sum |t_i|
// (u = unit roundoff, 2^-53 for double, 2^-24 for float):
//   double: the worst-case bound |error| <= gamma_n M, gamma_n = n u / (1 - n u), for the kernel
//           and again for the reference: 2 gamma_n M (about 1e-12 M for the longest sums here).
//   float:  the inputs are exactly representable in float, so only the kernel's float arithmetic
//           errs. The worst case n u M is too loose to catch a dropped term, so the probabilistic
//           bound of Higham and Mary (SIAM J. Sci. Comput. 41, 2019) is used: |error| <=
//           lambda sqrt(n) u M, violated with probability at most 2 exp(-lambda^2 / 2) per
//           element; lambda = 6 (3e-8). One term of a sum dropped is off by about M / n, far more.
// An element whose terms are all zero (M = 0) must come out exactly zero.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/kernels.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"
#include "conv2d_problem.hpp"

namespace mpicnn::core {
namespace {

using namespace conv_test;

template <class T>
void check_against_direct(const ConvCase& c) {
  const Problem p(c);
  const ConvReference<Problem> want{p};
  const ConvGeometry& g = p.g;
  std::vector<T> workspace = guarded<T>(conv2d_workspace_size(g, c.batch));
  const std::vector<T> x = as<T>(p.x), w = as<T>(p.w), b = as<T>(p.b), dy = as<T>(p.dy);
  std::vector<T> y = guarded<T>(c.batch * g.out_size());
  conv2d_forward(y.data(), workspace.data(), x.data(), w.data(), b.data(), g, c.batch);
  expect_close(y, want.forward(), "forward");
  std::vector<T> dx = guarded<T>(x.size()), dw = guarded<T>(w.size(), p.dw0), db = guarded<T>(b.size(), p.db0);
  conv2d_backward(dx.data(), dw.data(), db.data(), workspace.data(), dy.data(), x.data(), w.data(), g, c.batch);
  expect_close(dx, want.input_grad(), "input gradient");
  expect_close(dw, want.weight_grad(), "weight gradient");
  expect_close(db, want.bias_grad(), "bias gradient");
  // Without the input gradient (a first layer) the parameter gradients are the same.
  std::vector<T> dw_only = guarded<T>(w.size(), p.dw0), db_only = guarded<T>(b.size(), p.db0);
  conv2d_backward(static_cast<T*>(nullptr), dw_only.data(), db_only.data(), workspace.data(), dy.data(), x.data(),
                  w.data(), g, c.batch);
  EXPECT_EQ(dw_only, dw);
  EXPECT_EQ(db_only, db);
  for (const auto* v : {&workspace, &y, &dx, &dw, &db}) expect_guard_intact(*v, "a buffer");
}

class ConvDirect : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvDirect, FloatMatchesDirectConvolution) { check_against_direct<float>(GetParam()); }
TEST_P(ConvDirect, DoubleMatchesDirectConvolution) { check_against_direct<double>(GetParam()); }

// Results must not depend on the thread count (the trainer's determinism rests on it).
TEST_P(ConvDirect, BitwiseIdenticalForOneTwoAndThreeThreads) {
  const Problem p(GetParam());
  const ConvGeometry& g = p.g;
  const std::vector<float> x = as<float>(p.x), w = as<float>(p.w), b = as<float>(p.b), dy = as<float>(p.dy);
  expect_bitwise_on_one_two_and_three_threads([&] {
    std::vector<float> workspace(conv2d_workspace_size(g, p.batch)), y(p.batch * g.out_size()), dx(x.size()),
        dw(w.size()), db(b.size());
    conv2d_forward(y.data(), workspace.data(), x.data(), w.data(), b.data(), g, p.batch);
    conv2d_backward(dx.data(), dw.data(), db.data(), workspace.data(), dy.data(), x.data(), w.data(), g, p.batch);
    for (const auto* part : {&dx, &dw, &db}) y.insert(y.end(), part->begin(), part->end());
    return y;
  });
}

// name, C, H, W, K, R, S, stride, pad, batch
INSTANTIATE_TEST_SUITE_P(
    Geometries, ConvDirect,
    ::testing::Values(
        ConvCase{"ReferenceConv1", 1, 28, 28, 32, 5, 5, 1, 0, 16},        // out 24x24, 25 taps deep
        ConvCase{"ReferenceConv2", 32, 12, 12, 64, 5, 5, 1, 0, 16},       // out 8x8, 800 deep
        ConvCase{"ReferenceConv1Batch5", 1, 28, 28, 32, 5, 5, 1, 0, 5},   // a partial second chunk
        ConvCase{"ReferenceConv2Batch1", 32, 12, 12, 64, 5, 5, 1, 0, 1},  // one partial chunk
        ConvCase{"FromImage40Filters", 8, 12, 12, 40, 5, 5, 1, 0, 5},     // filter tail of 8
        ConvCase{"FromImage10Filters", 6, 12, 20, 10, 5, 5, 1, 0, 3},     // out 8x16, K < one tile
        ConvCase{"Rows16", 6, 20, 20, 24, 5, 5, 1, 0, 2},                 // out 16x16
        ConvCase{"Rows8PixelTail", 7, 7, 12, 20, 5, 5, 1, 0, 5},          // out 3x8: 24 pixels
        ConvCase{"Rows8Tall", 4, 14, 12, 36, 5, 5, 1, 0, 5},              // out 10x8: tail of 16
        ConvCase{"OneChannel16Wide", 1, 9, 20, 12, 5, 5, 1, 0, 5},        // out 5x16, few filters
        ConvCase{"OneChannel33Filters", 1, 12, 12, 33, 5, 5, 1, 0, 4},    // over 32 filters, shallow
        ConvCase{"NonSquareFilter", 3, 10, 13, 20, 3, 6, 1, 0, 5},        // R 3, S 6, out 8x8
        ConvCase{"WideFilter", 2, 9, 14, 7, 2, 7, 1, 0, 3},               // S 7: dW not from the image
        ConvCase{"OddWidth", 3, 11, 13, 17, 3, 3, 1, 0, 5},               // out 9x11: not whole rows
        ConvCase{"DeepOddWidth", 16, 9, 11, 10, 3, 3, 1, 0, 3},           // 144 deep, out 7x9
        ConvCase{"DeepPadded", 16, 8, 8, 9, 3, 3, 1, 1, 5},               // 144 deep, padded
        ConvCase{"ShallowManyFilters", 3, 10, 12, 120, 5, 5, 1, 0, 5},    // 75 deep, 9000 weights
        ConvCase{"Stride2Pad1", 3, 11, 11, 9, 3, 3, 2, 1, 5},
        ConvCase{"Stride2", 4, 12, 12, 16, 4, 4, 2, 0, 3},
        ConvCase{"Pad2", 2, 8, 8, 12, 5, 5, 1, 2, 5},                     // out 8x8 but padded
        ConvCase{"Pointwise", 5, 6, 7, 11, 1, 1, 1, 0, 5},
        ConvCase{"PointwiseStride2", 5, 7, 7, 6, 1, 1, 2, 0, 3},
        // Weight gradient through im2row with C*R*S a whole number of 32-column pads (no padding
        // to absorb an over-long run): ResNet-18's 64-channel 3x3 convolutions and its 1x1 stride-2
        // shortcuts. An over-long run once overwrote the next row's first taps here.
        ConvCase{"Im2rowNoPad576Deep", 64, 6, 6, 8, 3, 3, 1, 1, 2},
        ConvCase{"Im2rowNoPadPointwiseStride2", 64, 6, 6, 8, 1, 1, 2, 0, 2},
        // Output maps of at most 64 pixels run as one product per group of images
        // (core/conv_groups.cpp): 256 / P images per group, the last group partial, filters and
        // taps past whole 64-row task blocks. The cases above with such maps (DeepOddWidth, Pad2,
        // Stride2...) take that path too; these keep the per-image im2col path covered.
        ConvCase{"Groups4x4Of16Plus4", 72, 4, 4, 70, 3, 3, 1, 1, 20},      // ResNet's last stage
        ConvCase{"Groups7x7Of5Plus2", 24, 7, 7, 20, 3, 3, 1, 1, 7},        // 5 images of 49 pixels
        ConvCase{"GroupsStride2To4x4", 40, 7, 7, 66, 3, 3, 2, 1, 17},      // 256->512-like, 4x4 out
        ConvCase{"GroupsPointwiseStride2", 130, 7, 7, 12, 1, 1, 2, 0, 18}, // 1x1 shortcut, 3 blocks of taps
        ConvCase{"GroupsOnePixel", 9, 3, 3, 5, 3, 3, 1, 0, 3},             // 1x1 maps
        ConvCase{"Im2colPad1Maps12x12", 16, 12, 12, 20, 3, 3, 1, 1, 5},    // 144 pixels: per image
        ConvCase{"Im2colStride2Maps10x10", 6, 20, 20, 9, 3, 3, 2, 1, 5}),  // 100 pixels: per image
    [](const ::testing::TestParamInfo<ConvCase>& info) { return info.param.name; });

}  // namespace
}  // namespace mpicnn::core
