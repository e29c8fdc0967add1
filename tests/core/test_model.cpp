// Model building from specs: shapes, canonical specs, summaries, and the errors users meet.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/errors.hpp"
#include "core/model.hpp"

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

template <class E>
std::string error_of(const std::string& spec, Shape input = {1, 28, 28}) {
  try {
    Model model(spec, input, 1);
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for '" << spec << "'";
  return "";
}

TEST(ModelErrors, UnknownLayerListsKnownOnes) {
  const std::string e = error_of<ConfigError>("conv(8,3) conv3(4) relu");
  EXPECT_THAT(e, HasSubstr("unknown layer 'conv3' at position 2"));
  EXPECT_THAT(e, HasSubstr("known: avgpool, conv, dense"));
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
