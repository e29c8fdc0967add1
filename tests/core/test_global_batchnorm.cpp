// Global-batch BatchNorm (model.bn_statistics = global_batch) in one process: a layer-synchronous
// pass over two micro-batches gives what one micro-batch of twice the size gives, bitwise for any
// thread count, and a global batch of one value per channel is refused naming the layer.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/errors.hpp"
#include "core/model.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"

namespace mpicnn::core {
namespace {

using ::testing::HasSubstr;

// BatchNorm in and out of residual blocks, dropout (masks by sample position) and both max pools
// (which keep per-sample indices between the passes): everything a micro-batch offset can break.
const char* kSpec =
    "conv(6,3,pad=1,bias=false) bn relu maxpool(2) "
    "residual{conv(6,3,pad=1,bias=false) bn relu dropout(0.3) conv(6,3,pad=1,bias=false) bn} relu "
    "residual{conv(8,3,stride=2,pad=1,bias=false) bn | conv(8,1,stride=2,bias=false) bn} relu globalmaxpool flatten "
    "dense(6) bn dense(3)";
const Shape kInput{2, 8, 8};
constexpr int kBatch = 8;

void fill(float* v, std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  for (std::size_t i = 0; i < n; ++i) v[i] = float(rng.uniform(-1, 1));
}

struct PassResults {
  std::vector<float> outputs, grads, state;
};

// One layer-synchronous training pass over `micro_batches` (their sizes, in order), then the
// commit of the running statistics. grads: the sum of every micro-batch's gradient set. No
// micro-batches: the ordinary training pass over the whole batch (micro_batch statistics), whose
// kernels the gradient checks cover.
PassResults global_pass(const std::vector<int>& micro_batches, const std::string& spec = kSpec,
                        const Shape& input = kInput) {
  Model model(spec, input, kBatch);
  fill(model.params().values().data(), model.params().size(), 1);
  std::vector<float> x(kBatch * input.size()), dy(kBatch * model.output_shape().size());
  fill(x.data(), x.size(), 2);
  fill(dy.data(), dy.size(), 3);
  LocalExchange exchange(int(micro_batches.size()));
  model.run() = {true, 5, 2, 0, 0};
  int start = 0;
  for (int count : micro_batches) {
    model.run().micro_batches.push_back({start, count, start, int(model.run().micro_batches.size())});
    start += count;
  }
  if (!micro_batches.empty()) model.run().exchange = &exchange;
  model.params().reserve_gradient_sets(std::max(1, int(micro_batches.size())));
  PassResults r;
  const float* y = model.forward(x.data(), kBatch);
  r.outputs.assign(y, y + dy.size());
  model.backward(dy.data(), kBatch);
  r.grads.assign(model.params().size(), 0.f);
  for (int k = 0; k < std::max(1, int(micro_batches.size())); ++k) {
    model.params().select_gradients(k);
    for (std::size_t i = 0; i < r.grads.size(); ++i) r.grads[i] += model.params().grads()[i];
  }
  model.params().select_gradients(0);
  model.commit_statistics(1);
  for (std::size_t i = 0; i < model.state().infos().size(); ++i) {
    const StateInfo& s = model.state().infos()[i];
    if (s.counter) r.state.push_back(float(model.state().counter(int(i))));
    else r.state.insert(r.state.end(), model.state().value(int(i)), model.state().value(int(i)) + s.size);
  }
  return r;
}

// max |a - b| / max |b|
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(b[i])));
  }
  return diff / scale;
}

// Not bitwise: one micro-batch adds its 8 samples' weight gradients in one float sum, two add two
// float sums of 4, and the statistics' double partials are grouped differently too. Both are
// float32 rounding (about 1e-7 of the largest value, a few such steps through the network), so
// 1e-5 relative to the largest value of each result; a statistic over one micro-batch instead of
// both would differ by about 1e-1.
TEST(GlobalBatchNorm, TwoMicroBatchesGiveOneMicroBatchOfTwiceTheSize) {
  const PassResults one = global_pass({kBatch}), two = global_pass({kBatch / 2, kBatch / 2});
  const PassResults uneven = global_pass({3, 5});
  for (const PassResults* r : {&two, &uneven}) {
    const double outputs = relative_difference(r->outputs, one.outputs), grads = relative_difference(r->grads, one.grads);
    const double state = relative_difference(r->state, one.state);
    std::printf("[ figure ] %s micro-batches vs one of 8: outputs %.3g, gradients %.3g, running statistics %.3g\n",
                r == &two ? "4+4" : "3+5", outputs, grads, state);
    EXPECT_LE(outputs, 1e-5);
    EXPECT_LE(grads, 1e-5);
    EXPECT_LE(state, 1e-5);
  }
  EXPECT_EQ(one.state.back(), 1.f);  // num_batches_tracked: one update per pass, not per micro-batch
}

// One micro-batch of 8 through the exchange against the ordinary training pass over the same 8:
// the same statistics, taken in double from exchanged partials instead of in one kernel, so the
// same float32 rounding bound as above.
TEST(GlobalBatchNorm, OneMicroBatchGivesTheOrdinaryTrainingPass) {
  const PassResults global = global_pass({kBatch}), plain = global_pass({});
  const double outputs = relative_difference(global.outputs, plain.outputs);
  const double grads = relative_difference(global.grads, plain.grads), state = relative_difference(global.state, plain.state);
  std::printf("[ figure ] one micro-batch of 8 vs the ordinary pass: outputs %.3g, gradients %.3g, running statistics %.3g\n",
              outputs, grads, state);
  EXPECT_LE(outputs, 1e-5);
  EXPECT_LE(grads, 1e-5);
  EXPECT_LE(state, 1e-5);
}

// The other layers that keep per-sample values between the passes: the 3D max pool, l2norm and
// cosine (ArcFace's head, behind a dense layer so that its input norms differ); BatchNorm3d.
TEST(GlobalBatchNorm, TwoMicroBatchesGiveOneOfTwiceTheSizeForVolumesAndEmbeddingHeads) {
  const std::string spec =
      "conv3d(4,3,pad=1,bias=false) bn relu maxpool3d(2) flatten dense(6) bn l2norm dense(5) cosine(3)";
  const Shape volume{1, 4, 4, 4};  // (C,H,W,D): 1 channel of 4x4x4
  const PassResults one = global_pass({kBatch}, spec, volume), two = global_pass({3, 5}, spec, volume);
  const double outputs = relative_difference(two.outputs, one.outputs), grads = relative_difference(two.grads, one.grads);
  const double state = relative_difference(two.state, one.state);
  std::printf("[ figure ] volumes, 3+5 micro-batches vs one of 8: outputs %.3g, gradients %.3g, running statistics %.3g\n",
              outputs, grads, state);
  EXPECT_LE(outputs, 1e-5);
  EXPECT_LE(grads, 1e-5);
  EXPECT_LE(state, 1e-5);
}

TEST(GlobalBatchNorm, BitwiseIdenticalForAnyThreadCount) {
  PassResults reference;
  for (int threads : {1, 2, 3}) {
    set_threads(threads);
    const PassResults r = global_pass({3, 5});
    if (reference.outputs.empty()) {
      reference = r;
      continue;
    }
    EXPECT_EQ(0, std::memcmp(r.outputs.data(), reference.outputs.data(), r.outputs.size() * 4)) << threads;
    EXPECT_EQ(0, std::memcmp(r.grads.data(), reference.grads.data(), r.grads.size() * 4)) << threads;
    EXPECT_EQ(0, std::memcmp(r.state.data(), reference.state.data(), r.state.size() * 4)) << threads;
  }
  set_threads(0);
}

TEST(GlobalBatchNorm, OneValuePerChannelOverTheGlobalBatchIsRefusedNamingTheLayer) {
  Model model("conv(4,3) relu flatten dense(5) bn dense(2)", {1, 3, 3}, 1);
  std::vector<float> x(9, 0.5f);
  LocalExchange exchange(1);
  model.run() = {true, 5, 2, 0, 0};
  model.run().micro_batches = {{0, 1, 0, 0}};
  model.run().exchange = &exchange;
  try {
    model.forward(x.data(), 1);
    FAIL() << "expected an error";
  } catch (const ShapeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("layer 5 'bn': model.bn_statistics = global_batch needs more than 1 value per "
                                    "channel over the global batch, got 1"));
  }
}

}  // namespace
}  // namespace mpicnn::core
