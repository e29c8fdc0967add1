// The 3D kernels (core/volume_kernels.hpp) and layers: conv3d against a naive direct convolution in
// double precision (float and double kernels, tolerances as in test_conv_direct.cpp: 2 gamma_n M for
// double, the probabilistic 6 sqrt(n) u M for float), central-difference gradient checks of conv3d,
// maxpool3d and avgpool3d, results bitwise identical on 1, 2 and 3 threads, and the layers' specs,
// shapes and errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "core/errors.hpp"
#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "core/training.hpp"
#include "core/volume_kernels.hpp"
#include "direct_reference.hpp"
#include "gradient_check.hpp"
#include "spec_errors.hpp"

namespace mpicnn::core {
namespace {

using ::testing::HasSubstr;

struct Conv3dCase {
  std::string name;
  int C;
  Extent3 in;
  int K;
  Extent3 kernel, stride, pad;
  int batch;
  Conv3dGeometry geometry() const {
    return {C, in, K, kernel, stride, pad, sliding_extent(in, kernel, stride, pad)};
  }
};

struct Conv3dProblem {
  Conv3dGeometry g;
  int batch;
  Vec x, w, b, dy, dw0, db0;  // dw0, db0: what the backward pass adds to
  explicit Conv3dProblem(const Conv3dCase& c)
      : g(c.geometry()), batch(c.batch), x(random_floats(batch * g.in_size(), 11)),
        w(random_floats(g.filters * g.col_rows(), 12)), b(random_floats(g.filters, 13)),
        dy(random_floats(batch * g.out_size(), 14)), dw0(random_floats(w.size(), 15)), db0(random_floats(b.size(), 16)) {}

  // f(input index, output index, weight index) for every multiply-add whose input lies inside.
  template <class F>
  void each_term(F&& f) const {
    const Extent3 &in = g.in, &out = g.out, &k = g.kernel;
    for (int n = 0; n < batch; ++n)
      for (int f_ = 0; f_ < g.filters; ++f_)
        for (int od = 0; od < out.d; ++od)
          for (int oh = 0; oh < out.h; ++oh)
            for (int ow = 0; ow < out.w; ++ow)
              for (int c = 0; c < g.in_channels; ++c)
                for (int t = 0; t < k.d; ++t)
                  for (int r = 0; r < k.h; ++r)
                    for (int s = 0; s < k.w; ++s) {
                      const int id = od * g.stride.d - g.pad.d + t, ih = oh * g.stride.h - g.pad.h + r,
                                iw = ow * g.stride.w - g.pad.w + s;
                      if (id < 0 || id >= in.d || ih < 0 || ih >= in.h || iw < 0 || iw >= in.w) continue;
                      const std::size_t xi = n * g.in_size() + ((std::size_t(c) * in.d + id) * in.h + ih) * in.w + iw;
                      const std::size_t yi = n * g.out_size() + ((std::size_t(f_) * out.d + od) * out.h + oh) * out.w + ow;
                      const std::size_t wi = (((std::size_t(f_) * g.in_channels + c) * k.d + t) * k.h + r) * k.w + s;
                      f(xi, yi, wi);
                    }
  }
  int filters() const { return g.filters; }
  std::size_t pixels() const { return g.out_voxels(); }
};

template <class T>
std::vector<T> as(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class T>
void check_conv3d_against_direct(const Conv3dCase& c) {
  const Conv3dProblem p(c);
  const ConvReference<Conv3dProblem> want{p};
  const Conv3dGeometry& g = p.g;
  const std::vector<T> x = as<T>(p.x), w = as<T>(p.w), b = as<T>(p.b), dy = as<T>(p.dy);
  std::vector<T> y(c.batch * g.out_size());
  conv3d_forward(y.data(), x.data(), w.data(), b.data(), g, c.batch);
  expect_close(y, want.forward(), "forward");
  std::vector<T> dx(x.size()), dw = as<T>(p.dw0), db = as<T>(p.db0);
  conv3d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), g, c.batch);
  expect_close(dx, want.input_grad(), "input gradient");
  expect_close(dw, want.weight_grad(), "weight gradient");
  expect_close(db, want.bias_grad(), "bias gradient");
  std::vector<T> dw_only = as<T>(p.dw0);
  conv3d_backward(static_cast<T*>(nullptr), dw_only.data(), static_cast<T*>(nullptr), dy.data(),
                  x.data(), w.data(), g, c.batch);
  EXPECT_EQ(dw_only, dw) << "without input gradient and bias";
}

class Conv3dDirect : public ::testing::TestWithParam<Conv3dCase> {};

TEST_P(Conv3dDirect, FloatMatchesDirectConvolution) { check_conv3d_against_direct<float>(GetParam()); }
TEST_P(Conv3dDirect, DoubleMatchesDirectConvolution) { check_conv3d_against_direct<double>(GetParam()); }

TEST_P(Conv3dDirect, BitwiseIdenticalForOneTwoAndThreeThreads) {
  const Conv3dProblem p(GetParam());
  const Conv3dGeometry& g = p.g;
  const std::vector<float> x = as<float>(p.x), w = as<float>(p.w), b = as<float>(p.b), dy = as<float>(p.dy);
  expect_bitwise_on_one_two_and_three_threads([&] {
    std::vector<float> y(p.batch * g.out_size()), dx(x.size()),
        dw(w.size()), db(b.size());
    conv3d_forward(y.data(), x.data(), w.data(), b.data(), g, p.batch);
    conv3d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), g, p.batch);
    for (const auto* part : {&dx, &dw, &db}) y.insert(y.end(), part->begin(), part->end());
    return y;
  });
}

// name, C, (D,H,W), K, kernel, stride, pad, batch
INSTANTIATE_TEST_SUITE_P(
    Geometries, Conv3dDirect,
    ::testing::Values(Conv3dCase{"Cube3Pad1", 2, {6, 6, 6}, 4, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 5},  // two chunks
                      Conv3dCase{"Stride2", 3, {7, 8, 9}, 5, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, 3},
                      Conv3dCase{"Pointwise", 6, {4, 5, 3}, 7, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, 2},
                      Conv3dCase{"PerAxis", 2, {5, 7, 6}, 3, {1, 3, 2}, {1, 2, 1}, {0, 1, 1}, 9},  // three chunks
                      Conv3dCase{"Stem7Stride2", 1, {12, 12, 12}, 8, {7, 7, 7}, {2, 2, 2}, {3, 3, 3}, 2},
                      Conv3dCase{"ManySamplesLarge", 16, {8, 8, 8}, 32, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 6},
                      // 1080 column rows x 990 voxels: two voxel blocks (of 970), the second starting
                      // inside an output row; 20 filters: two filter blocks
                      Conv3dCase{"TwoVoxelBlocks", 40, {10, 11, 9}, 20, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, 2}),
    [](const ::testing::TestParamInfo<Conv3dCase>& info) { return info.param.name; });

TEST(Conv3d, ForwardByHand) {
  // A 2x2x2 input 1..8, one 2x2x2 filter of ones, bias 0.5: one output, the sum 36 plus 0.5.
  const Conv3dGeometry g{1, {2, 2, 2}, 1, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}};
  std::vector<float> in = {1, 2, 3, 4, 5, 6, 7, 8}, weight(8, 1.f), bias = {0.5f}, out(1);
  conv3d_forward(out.data(), in.data(), weight.data(), bias.data(), g, 1);
  EXPECT_EQ(out[0], 36.5f);
}

TEST(Conv3d, GradientsMatchCentralDifferences) {
  const Conv3dGeometry g{2, {4, 5, 4}, 3, {3, 2, 3}, {2, 1, 1}, {1, 0, 1},
                         sliding_extent({4, 5, 4}, {3, 2, 3}, {2, 1, 1}, {1, 0, 1})};
  const int n = 5;
  const Vec x = random_vec(n * g.in_size(), 1), w = random_vec(g.filters * g.col_rows(), 2), b = random_vec(g.filters, 3);
  const Vec r = random_vec(n * g.out_size(), 4);
  auto forward = [&](const Vec& xx, const Vec& ww, const Vec& bb) {
    Vec out(n * g.out_size());
    conv3d_forward(out.data(), xx.data(), ww.data(), bb.data(), g, n);
    return out;
  };
  Vec dx(x.size()), dw(w.size(), 0.0), db(b.size(), 0.0);
  conv3d_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), g, n);
  expect_gradient([&](const Vec& v) { return forward(v, w, b); }, x, dx, r);
  expect_gradient([&](const Vec& v) { return forward(x, v, b); }, w, dw, r);
  expect_gradient([&](const Vec& v) { return forward(x, w, v); }, b, db, r);
}

Pool3dGeometry pool3d_geometry(int C, Extent3 in, int window, int stride, int pad) {
  const Extent3 k{window, window, window}, s{stride, stride, stride}, p{pad, pad, pad};
  return {C, in, k, s, p, sliding_extent(in, k, s, p)};
}

TEST(MaxPool3d, ForwardByHandPicksTheFirstOfTies) {
  // 2x2x2 input: the maximum 8 at (1,1,1); a tie of 5s picks the first in scan order.
  const Pool3dGeometry g = pool3d_geometry(1, {2, 2, 2}, 2, 2, 0);
  std::vector<float> in = {1, 2, 3, 4, 5, 6, 7, 8}, out(1);
  std::vector<std::int32_t> arg(1);
  maxpool3d_forward(out.data(), arg.data(), in.data(), g, 1);
  EXPECT_EQ(out[0], 8.f);
  EXPECT_EQ(arg[0], 7);
  in = {5, 1, 1, 5, 1, 1, 1, 1};
  maxpool3d_forward(out.data(), arg.data(), in.data(), g, 1);
  EXPECT_EQ(arg[0], 0);
}

TEST(AvgPool3d, ForwardByHandCountsPadding) {
  // A 1x1x1 input of 8 with pad 1 and a 2-window: each of the 8 windows sees the one value out of 8.
  const Pool3dGeometry g = pool3d_geometry(1, {1, 1, 1}, 2, 1, 1);
  ASSERT_EQ(g.out, (Extent3{2, 2, 2}));
  std::vector<float> in = {8}, out(8);
  avgpool3d_forward(out.data(), in.data(), g, 1);
  EXPECT_EQ(out, std::vector<float>(8, 1.f));
}

struct PoolCase {
  int window, stride, pad;
};
class Pool3dGradient : public ::testing::TestWithParam<PoolCase> {};

TEST_P(Pool3dGradient, MaxAndAverageMatchCentralDifferences) {
  const PoolCase c = GetParam();
  const Pool3dGeometry g = pool3d_geometry(2, {5, 6, 5}, c.window, c.stride, c.pad);
  const int n = 3;
  const Vec x = random_vec(n * g.in_size(), 21), r = random_vec(n * g.out_size(), 22);
  std::vector<std::int32_t> arg(n * g.out_size()), arg_plus(arg.size()), arg_minus(arg.size());
  auto max_forward = [&](const Vec& v, std::vector<std::int32_t>& where) {
    Vec out(n * g.out_size());
    maxpool3d_forward(out.data(), where.data(), v.data(), g, n);
    return out;
  };
  auto avg_forward = [&](const Vec& v) {
    Vec out(n * g.out_size());
    avgpool3d_forward(out.data(), v.data(), g, n);
    return out;
  };
  max_forward(x, arg);
  Vec dx_max(x.size()), dx_avg(x.size());
  maxpool3d_backward(dx_max.data(), r.data(), arg.data(), g, n);
  avgpool3d_backward(dx_avg.data(), r.data(), g, n);
  std::vector<std::int32_t> scratch(arg.size());
  // A step that moves an argmax crosses a kink: no derivative to compare there.
  auto argmax_moves = [&](const Vec& plus, const Vec& minus, std::size_t) {
    max_forward(plus, arg_plus);
    max_forward(minus, arg_minus);
    return arg_plus != arg_minus;
  };
  expect_gradient([&](const Vec& v) { return max_forward(v, scratch); }, x, dx_max, r, argmax_moves);
  expect_gradient(avg_forward, x, dx_avg, r);
}

INSTANTIATE_TEST_SUITE_P(Windows, Pool3dGradient,
                         ::testing::Values(PoolCase{2, 2, 0}, PoolCase{3, 2, 1}, PoolCase{3, 1, 1}, PoolCase{2, 3, 1}));

TEST(Pool3d, BitwiseIdenticalForOneTwoAndThreeThreads) {
  const Pool3dGeometry g = pool3d_geometry(8, {12, 12, 12}, 3, 2, 1);
  const int n = 7;
  const std::vector<float> x = as<float>(random_vec(n * g.in_size(), 31)), dy = as<float>(random_vec(n * g.out_size(), 32));
  expect_bitwise_on_one_two_and_three_threads([&] {
    std::vector<float> y(n * g.out_size()), z(y.size()), dx(x.size()), dz(x.size());
    std::vector<std::int32_t> arg(y.size());
    maxpool3d_forward(y.data(), arg.data(), x.data(), g, n);
    maxpool3d_backward(dx.data(), dy.data(), arg.data(), g, n);
    avgpool3d_forward(z.data(), x.data(), g, n);
    avgpool3d_backward(dz.data(), dy.data(), g, n);
    for (const auto* part : {&z, &dx, &dz}) y.insert(y.end(), part->begin(), part->end());
    return y;
  });
}

// ---- Layers ----

const Shape kVolume{1, 10, 12, 8};  // (C,D,H,W) = (1,8,10,12)

TEST(VolumeLayers, ShapesParametersAndCanonicalSpecRoundTrip) {
  const std::string spec = "conv3d(4,3,pad=1) relu maxpool3d(2) conv3d(6,3,stride=2,pad=1,bias=false) avgpool3d(3,stride=1,pad=1)";
  Model model(spec, kVolume, 2);
  EXPECT_EQ(kVolume.str(), "(1,8,10,12)");
  const std::vector<Shape> expected = {{4, 10, 12, 8}, {4, 10, 12, 8}, {4, 5, 6, 4}, {6, 3, 3, 2}, {6, 3, 3, 2}};
  ASSERT_EQ(model.layers().size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i)
    EXPECT_EQ(model.layers()[i]->output_shape(), expected[i]) << i << ": " << model.layers()[i]->output_shape().str();
  EXPECT_EQ(model.params().info(0).dims, (std::vector<int>{4, 1, 3, 3, 3}));
  EXPECT_EQ(model.params().info(2).dims, (std::vector<int>{6, 4, 3, 3, 3}));
  EXPECT_EQ(model.params().count(), 4u * 27 + 4 + 6u * 4 * 27);
  EXPECT_EQ(model.canonical_spec(),
            "conv3d(4,3,stride=1,pad=1) relu maxpool3d(2,stride=2,pad=0) conv3d(6,3,stride=2,pad=1,bias=false) "
            "avgpool3d(3,stride=1,pad=1)");
  Model again(model.canonical_spec(), kVolume, 2);
  EXPECT_EQ(again.canonical_spec(), model.canonical_spec());
  EXPECT_THAT(model.summary(), HasSubstr("(4,4,5,6)"));
}

TEST(VolumeLayers, TwoDimensionalLayersRefuseVolumesAndThreeDimensionalOnesImages) {
  std::string e = error_of<ConfigError>("conv(4,3)", kVolume);
  EXPECT_THAT(e, HasSubstr("layer 1 'conv' needs an image input (C,H,W), got volume (1,8,10,12) (for volumes use conv3d)"));
  e = error_of<ConfigError>("conv3d(4,3) maxpool(2)", kVolume);
  EXPECT_THAT(e, HasSubstr("layer 2 'maxpool' needs an image input (C,H,W), got volume (4,6,8,10)"));
  e = error_of<ConfigError>("avgpool(2)", kVolume);
  EXPECT_THAT(e, HasSubstr("use avgpool3d"));
  e = error_of<ConfigError>("conv3d(4,3)", {1, 28, 28});
  EXPECT_THAT(e, HasSubstr("layer 1 'conv3d' needs a volume input (C,D,H,W) with depth > 1, got image (1,28,28) "
                           "(for images use conv)"));
  e = error_of<ConfigError>("conv(2,3) maxpool3d(2)", {1, 28, 28});
  EXPECT_THAT(e, HasSubstr("layer 2 'maxpool3d' needs a volume input (C,D,H,W)"));
  e = error_of<ConfigError>("residual{conv3d(1,3,pad=1) avgpool3d(2)}", {1, 8, 8});
  EXPECT_THAT(e, HasSubstr("layer 1.main.1 'conv3d' needs a volume input"));
}

TEST(VolumeLayers, SizesPerAxis) {
  Model model("conv3d(4,1x3x3,stride=1x2x2,pad=0x1x1) maxpool3d(2x1x1) avgpool3d(3x3x1,stride=1,pad=1x1x0)", kVolume, 1);
  EXPECT_EQ(model.layers()[0]->output_shape(), (Shape{4, 5, 6, 8}));  // (C,D,H,W) = (4,8,5,6)
  EXPECT_EQ(model.layers()[1]->output_shape(), (Shape{4, 5, 6, 4}));
  EXPECT_EQ(model.layers()[2]->output_shape(), (Shape{4, 5, 6, 4}));
  EXPECT_EQ(model.params().info(0).dims, (std::vector<int>{4, 1, 1, 3, 3}));
  EXPECT_EQ(model.canonical_spec(), "conv3d(4,1x3x3,stride=1x2x2,pad=0x1x1) maxpool3d(2x1x1,stride=2x1x1,pad=0) "
                                    "avgpool3d(3x3x1,stride=1,pad=1x1x0)");
  Model again(model.canonical_spec(), kVolume, 1);
  EXPECT_EQ(again.canonical_spec(), model.canonical_spec());
  EXPECT_THAT(error_of<ConfigError>("conv3d(4,1x3)", kVolume),
              HasSubstr("argument 'kernel' must be an integer or DxHxW (e.g. 1x3x3), got '1x3'"));
  EXPECT_THAT(error_of<ConfigError>("conv3d(4,3,stride=1x0x1)", kVolume),
              HasSubstr("argument 'stride' must be >= 1 on every axis, got 1x0x1"));
  EXPECT_THAT(error_of<ConfigError>("maxpool3d(1x2x2,pad=1)", kVolume),
              HasSubstr("pad 1 must be at most half the window 1x2x2"));
}

TEST(VolumeLayers, ArgumentsAreValidated) {
  EXPECT_THAT(error_of<ConfigError>("conv3d(4,9)", kVolume), HasSubstr("kernel 9 with pad 0 does not fit input (1,8,10,12)"));
  EXPECT_THAT(error_of<ConfigError>("conv3d(4)", kVolume), HasSubstr("missing argument 'kernel'"));
  EXPECT_THAT(error_of<ConfigError>("maxpool3d(2,pad=2)", kVolume), HasSubstr("at most half the window"));
  EXPECT_THAT(error_of<ConfigError>("avgpool3d(3,strid=1)", kVolume), HasSubstr("has no argument 'strid'"));
}

}  // namespace
}  // namespace mpicnn::core

namespace mpicnn::core {
namespace {

// The spec of a config file's [model] section (configs/*.ini).
std::string config_spec(const std::string& name) {
  std::ifstream file(std::string(MPICNN_CONFIG_DIR) + "/" + name);
  std::string line;
  while (std::getline(file, line))
    if (line.rfind("spec = ", 0) == 0) return line.substr(7);
  ADD_FAILURE() << name << ": no 'spec = ' line";
  return "";
}

TEST(VolumeModels, ResNet18For28CubedVolumesBuildsWithMonaisShapes) {
  Model model(config_spec("resnet18_3d.ini"), {1, 28, 28, 28}, 2);
  const auto& layers = model.layers();
  ASSERT_EQ(layers.size(), 19u);
  EXPECT_EQ(layers[0]->output_shape(), (Shape{64, 28, 28, 28}));
  EXPECT_EQ(layers[3]->output_shape(), (Shape{64, 28, 28, 28}));   // layer1
  EXPECT_EQ(layers[5]->output_shape(), (Shape{128, 14, 14, 14}));  // layer2
  EXPECT_EQ(layers[9]->output_shape(), (Shape{256, 7, 7, 7}));     // layer3
  EXPECT_EQ(layers[13]->output_shape(), (Shape{512, 4, 4, 4}));    // layer4
  EXPECT_EQ(layers[16]->output_shape(), (Shape{512, 1, 1}));
  EXPECT_EQ(layers[18]->output_shape(), (Shape{11, 1, 1}));
  // 33,145,419 parameters (the 3x3x3 kernels hold three times the weights of the 2D ResNet-18's
  // 11.2M), counted from the layer shapes of the BasicBlocks:
  std::size_t expected = 64 * 27 + 2 * 64;  // stem conv and bn
  const int widths[4] = {64, 128, 256, 512};
  for (int stage = 0, in = 64; stage < 4; in = widths[stage], ++stage) {
    const std::size_t f = std::size_t(widths[stage]);
    expected += f * in * 27 + f * f * 27 + 4 * f;       // first block: two convs, two bn
    if (stage > 0) expected += f * std::size_t(in) + 2 * f;  // its shortcut conv and bn
    expected += 2 * f * f * 27 + 4 * f;                 // second block
  }
  expected += 512 * 11 + 11;
  EXPECT_EQ(model.params().count(), expected);
  EXPECT_EQ(model.canonical_spec(), Model(model.canonical_spec(), {1, 28, 28, 28}, 1).canonical_spec());
}

TEST(VolumeModels, ResNet18For64CubedVolumesWithMonaisDefaultStem) {
  const std::string spec = config_spec("resnet18_3d_64.ini");
  Model model(spec, {1, 64, 64, 64}, 1);
  const auto& layers = model.layers();
  ASSERT_EQ(layers.size(), 20u);
  EXPECT_EQ(layers[0]->output_shape(), (Shape{64, 32, 32, 32}));   // 7x7x7 stride-2 stem
  EXPECT_EQ(layers[3]->output_shape(), (Shape{64, 16, 16, 16}));   // max pool
  EXPECT_EQ(layers[4]->output_shape(), (Shape{64, 16, 16, 16}));   // layer1
  EXPECT_EQ(layers[6]->output_shape(), (Shape{128, 8, 8, 8}));     // layer2
  EXPECT_EQ(layers[10]->output_shape(), (Shape{256, 4, 4, 4}));    // layer3
  EXPECT_EQ(layers[14]->output_shape(), (Shape{512, 2, 2, 2}));    // layer4
  EXPECT_EQ(layers[19]->output_shape(), (Shape{11, 1, 1}));
  // resnet18_3d.ini's count with a 7x7x7 stem instead of 3x3x3: 64 * (343 - 27) more weights.
  EXPECT_EQ(model.params().count(), 33145419u + 64 * (343 - 27));
  // On 28^3 the last stage would reach depth 1: refused where it happens.
  EXPECT_THAT(error_of<ConfigError>(spec, {1, 28, 28, 28}),
              HasSubstr("'conv3d' needs a volume input (C,D,H,W) with depth > 1, got image (512,1,1)"));
}

TEST(VolumeModels, BatchNormNormalisesEachChannelOverBatchAndDepthHeightWidth) {
  const Shape volume{3, 4, 5, 6};
  Model model("bn", volume, 2);
  std::fill(model.params().value(0), model.params().value(0) + 3, 1.f);  // the scale (init's job in training)
  const std::vector<float> x = as<float>(random_vec(2 * volume.size(), 41, 3.0));
  model.run().training = true;
  const float* y = model.forward(x.data(), 2);
  const std::size_t spatial = volume.size() / 3;  // D*H*W = 120
  for (int c = 0; c < 3; ++c) {
    double sum = 0, squares = 0;
    for (int n = 0; n < 2; ++n)
      for (std::size_t i = 0; i < spatial; ++i) {
        const double v = y[(std::size_t(n) * 3 + c) * spatial + i];
        sum += v, squares += v * v;
      }
    EXPECT_NEAR(sum / (2 * spatial), 0.0, 1e-6) << c;
    EXPECT_NEAR(squares / (2 * spatial), 1.0, 1e-4) << c;  // biased variance, eps 1e-5
  }
}

TEST(VolumeModels, GlobalPoolsReduceDepthHeightAndWidth) {
  const Shape volume{2, 3, 4, 5};
  const std::vector<float> x = as<float>(random_vec(volume.size(), 42));
  const std::size_t spatial = volume.size() / 2;
  for (const bool is_max : {false, true}) {
    Model model(is_max ? "globalmaxpool flatten dense(1)" : "globalavgpool flatten dense(1)", volume, 1);
    model.forward(x.data(), 1);
    EXPECT_EQ(model.layers()[0]->output_shape(), (Shape{2, 1, 1}));
    for (int c = 0; c < 2; ++c) {
      double sum = 0, best = -1e30;
      for (std::size_t i = 0; i < spatial; ++i) sum += x[c * spatial + i], best = std::max(best, double(x[c * spatial + i]));
      EXPECT_NEAR(model.activation(0)[c], is_max ? best : sum / double(spatial), 1e-6) << c;
    }
  }
}

TEST(VolumeModels, DenseNeedsAFlatInputAndFlattenGivesOne) {
  EXPECT_THAT(error_of<ConfigError>("conv3d(2,3) dense(4)", kVolume),
              HasSubstr("layer 2 'dense' needs a flat input (C,1,1), got (2,6,8,10): add 'flatten' before it"));
  Model model("conv3d(2,3) flatten dense(4)", kVolume, 1);
  EXPECT_EQ(model.layers()[1]->output_shape(), (Shape{2 * 6 * 8 * 10, 1, 1}));
}

}  // namespace
}  // namespace mpicnn::core

namespace mpicnn::core {
namespace {

// Two classes of 1x8x8x8 volumes: a bright slab in the front or the back half of the depth, plus noise.
struct SeparableVolumes {
  static constexpr int kSide = 8, kVoxels = kSide * kSide * kSide;
  std::vector<float> volumes;
  std::vector<std::int32_t> labels;
  SeparableVolumes(int n, std::uint64_t seed) : volumes(std::size_t(n) * kVoxels), labels(n) {
    Rng rng(seed);
    for (int i = 0; i < n; ++i) {
      labels[i] = int(rng.below(2));
      for (int v = 0; v < kVoxels; ++v) {
        const bool front = v / (kSide * kSide) < kSide / 2;
        volumes[std::size_t(i) * kVoxels + v] = float(0.3 * rng.normal()) + (front == (labels[i] == 0) ? 1.f : 0.f);
      }
    }
  }
};

// Trains a small 3D residual network with SGD; returns its weights, then its running statistics.
std::vector<float> train_volumes(int steps, double* final_loss = nullptr) {
  constexpr int kBatch = 8;
  Model model("conv3d(4,3,pad=1,bias=false) bn relu residual{conv3d(8,3,stride=2,pad=1,bias=false) bn relu "
              "conv3d(8,3,pad=1) | conv3d(8,1,stride=2,bias=false) bn} relu maxpool3d(2) avgpool3d(3,stride=1,pad=1) "
              "globalavgpool flatten dense(2)",
              {1, 8, 8, 8}, kBatch);
  init_params(model.params(), "he", 1);
  Optimizer sgd({"sgd", 0.9}, model.params().size());
  GradientWorker worker(model);
  const SeparableVolumes data(kBatch * steps, 3);
  model.run().training = true;
  double loss = 0;
  for (int s = 0; s < steps; ++s) {
    model.params().zero_grads();
    const BatchView batch{data.volumes.data() + std::size_t(s) * kBatch * SeparableVolumes::kVoxels,
                          data.labels.data() + s * kBatch, nullptr, kBatch};
    const LossSum sums = worker.accumulate(batch, *make_task("cross_entropy"));
    scale_gradients(model.params(), 1.0 / sums.normalizer);
    sgd.step(model.params(), 0.05);
    model.commit_statistics(1);
    loss = sums.sum / sums.normalizer;
  }
  if (final_loss) *final_loss = loss;
  std::vector<float> result(model.params().values().data(), model.params().values().data() + model.params().size());
  for (std::size_t s = 0; s < model.state().infos().size(); ++s) {
    const StateInfo& info = model.state().infos()[s];
    if (!info.counter) result.insert(result.end(), model.state().value(int(s)), model.state().value(int(s)) + info.size);
  }
  return result;
}

TEST(VolumeTraining, OneTwoAndThreeThreadsGiveBitwiseIdenticalWeightsAndStatistics) {
  expect_bitwise_on_one_two_and_three_threads([] { return train_volumes(6); });
}

TEST(VolumeTraining, LearnsSeparableVolumes) {
  double loss = 0;
  train_volumes(30, &loss);
  // Chance level is ln 2 = 0.69; the classes are separable, so the loss must fall far below it.
  EXPECT_LT(loss, 0.1);
}

}  // namespace
}  // namespace mpicnn::core
