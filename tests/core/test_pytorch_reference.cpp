// The engine against PyTorch: same spec, weights and batch as the fixtures written by
// pytorch/make_fixtures.py (torch 1.13, float32, CPU); compares the forward output, the mean loss, every
// parameter gradient, and the weights after a few optimizer steps on that batch.
//
// Error metric, for every tensor:
//   max_i |ours_i - torch_i| / max(max_i |torch_i|, 1e-30)
// i.e. the largest element-wise difference relative to the tensor's largest magnitude (for the scalar
// loss, plain relative error). A tensor passes at <= 1e-5. Every figure is printed, so it can be quoted.
//
// Fixture tensors larger than 16384 values (3.weight and 7.weight of the reference CNN) hold their
// gradients and stepped weights at 8192 fixed positions (sample_index/<name>), to keep the files small.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/errors.hpp"
#include "core/loss.hpp"
#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "hdf5_fixture.hpp"

namespace mpicnn::core {
namespace {

constexpr double kTolerance = 1e-5;
using fixtures::Fixture;

// ---- Comparison ----

// The metric stated at the top: max |ours - torch| over the compared elements, divided by the largest
// |torch|. `ours` is the whole tensor; `index` (may be empty) says which flat positions `torch` holds.
double relative_error(const float* ours, const std::vector<float>& torch, const std::vector<std::int32_t>& index) {
  double difference = 0, largest = 0;
  for (std::size_t i = 0; i < torch.size(); ++i) {
    const float mine = ours[index.empty() ? i : std::size_t(index[i])];
    difference = std::max(difference, std::abs(double(mine) - double(torch[i])));
    largest = std::max(largest, std::abs(double(torch[i])));
  }
  return difference / std::max(largest, 1e-30);
}

void report(const std::string& what, std::size_t compared, std::size_t total, double error) {
  const std::string count = compared == total ? std::to_string(total) : std::to_string(compared) + " of " + std::to_string(total);
  std::printf("  %-40s %-16s %.2e %s\n", what.c_str(), count.c_str(), error, error <= kTolerance ? "ok" : "FAIL");
}

// Stored values of a parameter-shaped tensor and the positions they sit at (empty: all of them).
struct Stored {
  std::vector<float> values;
  std::vector<std::int32_t> index;
};

Stored stored(const Fixture& fixture, const std::string& dataset, const ParamInfo& info) {
  Stored s{fixture.floats(dataset), {}};
  if (fixture.has("sample_index/" + info.name)) s.index = fixture.ints("sample_index/" + info.name);
  const std::size_t expected = s.index.empty() ? info.size : s.index.size();
  if (s.values.size() != expected)
    throw ShapeError(dataset + " holds " + std::to_string(s.values.size()) + " values, expected " + std::to_string(expected));
  for (std::int32_t i : s.index)
    if (i < 0 || std::size_t(i) >= info.size) throw ShapeError("sample_index/" + info.name + " out of range");
  return s;
}

// ---- The engine side ----

class Reference {
 public:
  explicit Reference(const std::string& file)
      : fixture_(std::string(MPICNN_FIXTURE_DIR) + "/" + file),
        spec_(fixture_.text("/", "spec")),
        loss_(fixture_.text("/", "loss")),
        batch_(int(fixture_.number("/", "batch"))),
        model_(spec_, input_shape(), batch_) {
    std::vector<int> dims;
    input_ = fixture_.floats("input", &dims);
    const Shape in = model_.input_shape();
    if (dims != std::vector<int>{batch_, in.c, in.h, in.w}) throw ShapeError("input: unexpected shape");
    if (loss_ == "cross_entropy") labels_ = fixture_.ints("labels");
    else targets_ = fixture_.floats("targets");
    output_grad_.assign(std::size_t(batch_) * model_.output_shape().size(), 0.f);
    std::printf("%s\n  spec %s, input %s, batch %d, loss %s, fixture by torch %s\n", file.c_str(), spec_.c_str(),
                in.str().c_str(), batch_, loss_.c_str(), fixture_.text("/", "torch_version").c_str());
    std::printf("  %-40s %-16s %s\n", "tensor", "values", "max|ours-torch|/max|torch|");
  }

  const Fixture& fixture() const { return fixture_; }
  Model& model() { return model_; }
  ParamStore& params() { return model_.params(); }

  void load_initial_params() {
    const auto& infos = params().infos();
    if (fixture_.members("params").size() != infos.size())
      throw ShapeError("the fixture has " + std::to_string(fixture_.members("params").size()) + " parameters, the model " +
                       std::to_string(infos.size()));
    for (std::size_t p = 0; p < infos.size(); ++p) {
      std::vector<int> dims;
      const std::vector<float> values = fixture_.floats("params/" + infos[p].name, &dims);
      if (dims != infos[p].dims) throw ShapeError("params/" + infos[p].name + ": torch and engine layouts differ");
      std::copy(values.begin(), values.end(), params().value(int(p)));
    }
  }

  // Forward, loss and backward; leaves d(mean loss)/d(param) in the gradient arena. Returns the mean loss.
  double forward_backward() {
    const float* out = model_.forward(input_.data(), batch_);
    const int outputs = int(model_.output_shape().size());
    const LossSum loss = loss_ == "cross_entropy"
                             ? softmax_cross_entropy(output_grad_.data(), out, labels_.data(), {}, batch_, outputs)
                             : mean_squared_error(output_grad_.data(), out, targets_.data(), batch_, outputs);
    params().zero_grads();
    model_.backward(output_grad_.data(), batch_);
    // The loss's gradient is d(sum)/d(output); the mean's is that over the normaliser.
    const float scale = float(1.0 / loss.normalizer);
    for (float& g : params().grads().span()) g *= scale;
    return loss.sum / loss.normalizer;
  }

  const float* logits() const { return model_.activation(int(model_.layers().size()) - 1); }

 private:
  Shape input_shape() const {
    const std::vector<double> shape = fixture_.numbers("/", "input_shape");
    if (shape.size() != 3) throw ShapeError("input_shape must be (C,H,W)");
    return {int(shape[0]), int(shape[1]), int(shape[2])};
  }

  Fixture fixture_;
  std::string spec_, loss_;
  int batch_;
  Model model_;
  std::vector<float> input_, targets_, output_grad_;
  std::vector<std::int32_t> labels_;
};

void check_forward_and_gradients(Reference& ref) {
  ref.load_initial_params();
  const double loss = ref.forward_backward();

  const std::vector<float> logits = ref.fixture().floats("logits");
  ASSERT_EQ(logits.size(), std::size_t(ref.model().max_batch()) * ref.model().output_shape().size());
  const double logits_error = relative_error(ref.logits(), logits, {});
  report("logits", logits.size(), logits.size(), logits_error);
  EXPECT_LE(logits_error, kTolerance) << "forward output differs from torch";

  const double torch_loss = ref.fixture().floats("loss").at(0);
  const double loss_error = std::abs(loss - torch_loss) / std::abs(torch_loss);
  report("loss (" + std::to_string(torch_loss) + ")", 1, 1, loss_error);
  EXPECT_LE(loss_error, kTolerance) << "ours " << loss << ", torch " << torch_loss;

  for (std::size_t p = 0; p < ref.params().infos().size(); ++p) {
    const ParamInfo& info = ref.params().info(int(p));
    const Stored torch = stored(ref.fixture(), "grads/" + info.name, info);
    const double error = relative_error(ref.params().grad(int(p)), torch.values, torch.index);
    report("grads/" + info.name, torch.values.size(), info.size, error);
    EXPECT_LE(error, kTolerance) << "gradient of " << info.name;
  }
}

void check_optimizer_steps(Reference& ref) {
  for (const std::string& run : ref.fixture().members("after_steps")) {
    const std::string group = "after_steps/" + run;
    OptimizerConfig config;
    config.name = ref.fixture().text(group, "optimizer");
    config.momentum = ref.fixture().number(group, "momentum");
    config.nesterov = ref.fixture().number(group, "nesterov") != 0;
    config.weight_decay = ref.fixture().number(group, "weight_decay");
    config.beta1 = ref.fixture().number(group, "beta1");
    config.beta2 = ref.fixture().number(group, "beta2");
    config.epsilon = ref.fixture().number(group, "eps");
    const double lr = ref.fixture().number(group, "lr");
    const int steps = int(ref.fixture().number(group, "steps"));
    std::printf("  %s: %s lr %g momentum %g nesterov %d weight_decay %g, %d steps\n", run.c_str(), config.name.c_str(),
                lr, config.momentum, int(config.nesterov), config.weight_decay, steps);

    ref.load_initial_params();
    Optimizer optimizer(config, ref.params().size());
    for (int step = 0; step < steps; ++step) {
      ref.forward_backward();
      optimizer.step(ref.params(), lr);
    }

    for (std::size_t p = 0; p < ref.params().infos().size(); ++p) {
      const ParamInfo& info = ref.params().info(int(p));
      const Stored torch = stored(ref.fixture(), group + "/" + info.name, info);
      const float* ours = ref.params().value(int(p));
      const double error = relative_error(ours, torch.values, torch.index);
      report(group + "/" + info.name, torch.values.size(), info.size, error);
      EXPECT_LE(error, kTolerance) << run << ": weights of " << info.name;
    }
  }
}

// conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten dense(128) relu dense(10) on Fashion-MNIST
// images, cross-entropy, SGD with momentum.
TEST(PyTorchReference, ReferenceCnn) {
  Reference ref("reference_cnn.h5");
  check_forward_and_gradients(ref);
  check_optimizer_steps(ref);
}

// Strided padded convolution, padded average pooling, tanh, leaky ReLU, sigmoid, mean squared error;
// SGD with Nesterov momentum and weight decay, Adam with L2 decay, AdamW.
TEST(PyTorchReference, PoolStrideMseCnn) {
  Reference ref("pool_stride_mse_cnn.h5");
  check_forward_and_gradients(ref);
  check_optimizer_steps(ref);
}

}  // namespace
}  // namespace mpicnn::core
