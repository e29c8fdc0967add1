// Model building from specs: shapes, canonical specs, summaries, and the errors users meet.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/errors.hpp"
#include "core/model.hpp"
#include "core/rng.hpp"
#include "spec_errors.hpp"

namespace mpicnn::core {
namespace {

using ::testing::HasSubstr;

const char* kReference = "conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten dense(128) relu dense(10)";

TEST(Model, ReferenceCnnShapesAndParameterCount) {
  Model model(kReference, {1, 28, 28}, 8);
  const std::vector<Shape> expected = {{32, 24, 24}, {32, 24, 24}, {32, 12, 12}, {64, 8, 8}, {64, 8, 8},
                                       {64, 4, 4},   {1024, 1, 1}, {128, 1, 1},  {128, 1, 1}, {10, 1, 1}};
  ASSERT_EQ(model.layers().size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(model.layers()[i]->output_shape(), expected[i]) << i;
  // 32*25+32 + 64*32*25+64 + 128*1024+128 + 10*128+10
  EXPECT_EQ(model.params().count(), 832u + 51264u + 131200u + 1290u);
  EXPECT_EQ(model.params().info(0).name, "0.weight");
  EXPECT_EQ(model.params().info(2).name, "3.weight");
  EXPECT_EQ(model.params().info(2).dims, (std::vector<int>{64, 32, 5, 5}));
}

TEST(Model, ArenaIsContiguousAndAligned) {
  Model model(kReference, {1, 28, 28}, 2);
  std::size_t expected_offset = 0;
  for (const auto& p : model.params().infos()) {
    EXPECT_EQ(p.offset, expected_offset);
    EXPECT_EQ(p.offset % kAlignFloats, 0u);
    expected_offset += round_up_floats(p.size);
  }
  EXPECT_EQ(model.params().size(), expected_offset);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(model.params().grads().data()) % kAlignment, 0u);
}

TEST(Model, NamedArgumentsAndCanonicalSpecRoundTrip) {
  Model model("conv(8,3,stride=2,pad=1) leakyrelu(slope=0.2) avgpool(2, stride=1) flatten dense(4, bias=false)",
              {3, 9, 9}, 2);
  EXPECT_EQ(model.layers()[0]->output_shape(), (Shape{8, 5, 5}));
  EXPECT_EQ(model.layers()[2]->output_shape(), (Shape{8, 4, 4}));
  Model again(model.canonical_spec(), {3, 9, 9}, 2);
  EXPECT_EQ(again.canonical_spec(), model.canonical_spec());
  EXPECT_EQ(again.params().count(), model.params().count());
}

TEST(Model, CanonicalSpecKeepsEveryDigitOfAFloatArgument) {
  Model model("flatten leakyrelu(slope=1e-7) dense(2)", {1, 2, 2}, 1);
  EXPECT_EQ(model.canonical_spec(), "flatten leakyrelu(slope=1e-07) dense(2)");
}

TEST(Model, SummaryListsLayersParametersAndFlops) {
  Model model(kReference, {1, 28, 28}, 1);
  const std::string summary = model.summary();
  EXPECT_THAT(summary, HasSubstr("conv(32,5,stride=1,pad=0)"));
  EXPECT_THAT(summary, HasSubstr("(64,4,4)"));
  EXPECT_THAT(summary, HasSubstr("total parameters: 184586"));
  EXPECT_THAT(summary, HasSubstr("921600"));  // conv1: 2 * 32*24*24 * 25
}

TEST(Model, PlannedFlopsEqualTheBuiltModelsWithBlocksCountedOnce) {
  const std::string spec = "conv(4,3,pad=1) residual{conv(4,3,pad=1) bn relu} flatten dense(3)";
  const Model model(spec, {2, 6, 6}, 1);
  // conv 2*4*36*18, block conv 2*4*36*36 (+ BN, ReLU, the sum), dense 2*3*144
  EXPECT_GT(model.forward_flops(), 2.0 * 4 * 36 * (18 + 36) + 2.0 * 3 * 144);
  EXPECT_EQ(plan_forward_flops(spec, {2, 6, 6}), model.forward_flops());
}


// Values on a coarse grid (multiples of 1/4 in [-1, 1]): a convolution's outputs are then often
// equal or exactly zero, so pooling windows hold ties and zeros.
void fill_coarse(float* v, std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  for (std::size_t i = 0; i < n; ++i) v[i] = float(std::round(rng.uniform(-4, 4)) / 4);
}

// The same layers run one by one, each with buffers of its own: what the model must equal.
struct LayerByLayer {
  LayerByLayer(const std::string& spec, const Shape& input, int batch) : batch(batch) {
    Shape shape = input;
    for (const LayerArgs& args : parse_spec(spec)) {
      layers.push_back(make_layer(args, shape, std::to_string(layers.size() + 1)));
      shape = layers.back()->output_shape();
    }
    for (std::size_t i = 0; i < layers.size(); ++i) layers[i]->declare(params, state, {std::to_string(i) + ".", int(i)});
    params.allocate();
    state.allocate();
    workspaces.resize(layers.size());
    for (std::size_t i = 0; i < layers.size(); ++i) {
      auto& layer = layers[i];
      layer->bind({params, state, run, batch, workspaces[i]});
      outputs.emplace_back(std::size_t(batch) * layer->output_shape().size());
      grads.emplace_back(std::size_t(batch) * layer->output_shape().size());
    }
  }
  void forward_backward(const float* input, const float* output_grad) {
    for (std::size_t i = 0; i < layers.size(); ++i) layers[i]->forward(outputs[i].data(), i ? outputs[i - 1].data() : input, batch);
    for (int i = int(layers.size()) - 1; i >= 0; --i)
      layers[i]->backward(i ? grads[i - 1].data() : nullptr, i + 1 < int(layers.size()) ? grads[i].data() : output_grad,
                          i ? outputs[i - 1].data() : input, outputs[i].data(), batch);
  }
  int batch;
  std::vector<std::unique_ptr<Layer>> layers;
  ParamStore params;
  StateStore state;
  RunContext run;
  std::vector<Buffer> outputs, grads;
  std::vector<Workspace> workspaces;  // one per layer, sized before any layer binds to it
};

// A spec, its input, and which layers the model should not run (views and absorbed ReLUs).
struct PassThroughCase {
  std::string spec;
  Shape input;
  std::vector<int> passing_through;
};

class PassThrough : public ::testing::TestWithParam<PassThroughCase> {};

// The model runs flatten as a view and lets max pooling apply the ReLU before it; outputs and
// every parameter's gradient must be bitwise those of running every layer by itself, ties and
// zeros included, and every gradient tensor must hold non-zeros (the gradient crossed the pools).
TEST_P(PassThrough, GivesBitwiseTheLayerByLayerResult) {
  const PassThroughCase c = GetParam();
  const int batch = 5;
  Model model(c.spec, c.input, batch);
  LayerByLayer reference(c.spec, c.input, batch);
  ASSERT_EQ(model.params().size(), reference.params.size());
  fill_coarse(model.params().values().data(), model.params().size(), 1);
  std::memcpy(reference.params.values().data(), model.params().values().data(), model.params().size() * sizeof(float));
  std::vector<float> x(batch * c.input.size()), dy(batch * model.output_shape().size());
  fill_coarse(x.data(), x.size(), 2);
  fill_coarse(dy.data(), dy.size(), 3);

  const float* y = model.forward(x.data(), batch);
  model.backward(dy.data(), batch);
  reference.forward_backward(x.data(), dy.data());
  std::vector<int> passing;
  for (int i = 1; i < int(model.layers().size()); ++i)
    if (model.activation(i) == model.activation(i - 1)) passing.push_back(i);
  EXPECT_EQ(passing, c.passing_through);
  EXPECT_EQ(0, std::memcmp(y, reference.outputs.back().data(), dy.size() * sizeof(float)));
  const auto& grads = model.params().grads();
  EXPECT_EQ(0, std::memcmp(grads.data(), reference.params.grads().data(), grads.size() * sizeof(float)));
  for (const ParamInfo& info : model.params().infos())
    EXPECT_TRUE(std::any_of(grads.data() + info.offset, grads.data() + info.offset + info.size, [](float g) { return g != 0; }))
        << info.name << " has only zero gradients";
}

INSTANTIATE_TEST_SUITE_P(
    Specs, PassThrough,
    ::testing::Values(
        // 2x2 pools on whole pairs of quads, then an overlapping window (the general path)
        PassThroughCase{"conv(4,3) relu maxpool(2) conv(8,3) relu maxpool(2,stride=1) flatten dense(6) relu dense(3)",
                        {2, 18, 18}, {1, 4, 6}},
        // 3 channels of 3x4 pooled outputs: 9 quads, the last one alone
        PassThroughCase{"conv(3,3) relu maxpool(2) flatten dense(3)", {2, 8, 10}, {1, 3}},
        // the first layer always runs; an absorbing pool may be the last layer
        PassThroughCase{"relu maxpool(2) conv(6,3) relu maxpool(2)", {2, 12, 12}, {3}},
        // a ReLU after a ReLU, and leaky ReLU (not absorbed)
        PassThroughCase{"conv(4,3) relu relu maxpool(2) conv(2,3) leakyrelu maxpool(2) flatten dense(3)", {1, 16, 16}, {2, 7}},
        // two pass-throughs in a row: flatten, then a ReLU absorbed by a 1x1 pool; flatten first runs
        PassThroughCase{"conv(4,3) flatten relu maxpool(1) dense(3)", {1, 6, 6}, {1, 2}},
        PassThroughCase{"flatten dense(4) relu dense(3)", {2, 3, 3}, {}},
        // volumes: maxpool3d absorbs the ReLU before it (overlapping padded windows, then 2x2x2);
        // avgpool3d does not
        PassThroughCase{"conv3d(4,3,pad=1) relu maxpool3d(3,stride=2,pad=1) conv3d(6,1x3x3,pad=0x1x1) relu maxpool3d(2) "
                        "relu avgpool3d(2) flatten dense(3)",
                        {2, 8, 8, 8}, {1, 4, 8}}));

TEST(ModelErrors, UnknownLayerListsKnownOnes) {
  const std::string e = error_of<ConfigError>("conv(8,3) conv3(4) relu");
  EXPECT_THAT(e, HasSubstr("unknown layer 'conv3' at position 2"));
  EXPECT_THAT(e, HasSubstr("known: avgpool, avgpool3d, bn, conv, conv3d, cosine, dense"));
}

TEST(ModelErrors, ShapeMismatchNamesLayerPositionAndShapes) {
  const std::string e = error_of<ConfigError>("conv(8,5) maxpool(2) conv(16,5) maxpool(2) conv(4,5)");
  EXPECT_THAT(e, HasSubstr("layer 5 'conv'"));
  EXPECT_THAT(e, HasSubstr("does not fit input (16,4,4)"));
}

TEST(ModelErrors, DenseNeedsFlatInput) {
  EXPECT_THAT(error_of<ConfigError>("conv(4,3) dense(10)"), HasSubstr("add 'flatten' before it"));
}

TEST(ModelErrors, ArgumentsAreValidated) {
  EXPECT_THAT(error_of<ConfigError>("conv(8)"), HasSubstr("missing argument 'kernel'"));
  EXPECT_THAT(error_of<ConfigError>("conv(8,x)"), HasSubstr("'kernel' must be an integer, got 'x'"));
  EXPECT_THAT(error_of<ConfigError>("conv(0,3)"), HasSubstr("'filters' must be >= 1"));
  EXPECT_THAT(error_of<ConfigError>("conv(8,3,strid=2)"), HasSubstr("has no argument 'strid'"));
  EXPECT_THAT(error_of<ConfigError>("relu(3)"), HasSubstr("takes at most 0 arguments"));
  EXPECT_THAT(error_of<ConfigError>("conv(8,3"), HasSubstr("unclosed '('"));
  EXPECT_THAT(error_of<ConfigError>("conv(8,3) ; relu"), HasSubstr("unexpected ';' at character 11"));
  EXPECT_THAT(error_of<ConfigError>("   "), HasSubstr("model spec is empty"));
  EXPECT_THAT(error_of<ConfigError>("maxpool(2,pad=2)"), HasSubstr("at most half the window"));
}

}  // namespace
}  // namespace mpicnn::core
