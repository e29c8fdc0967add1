// The 3D layers against PyTorch in float64 (fixtures written at test time by
// pytorch/make_volume_fixtures.py): Conv3d, MaxPool3d, AvgPool3d and BatchNorm3d (training and
// evaluation) through the engine's double-precision kernels, forward and every gradient; BatchNorm3d's
// running statistics through the `bn` layer on a volume; and a small 3D residual network (conv3d, bn,
// residual blocks with a strided shortcut, avgpool3d, maxpool3d, globalavgpool, dense) through the
// engine's float32 Model: training logits, mean cross-entropy, every parameter gradient, the running
// statistics after the step, and evaluation logits.
//
// Error metric, per tensor: max_i |ours_i - torch_i| / max_i |torch_i| (the scalar loss: relative
// error); a tensor passes at <= 1e-5. Every figure is printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/block_kernels.hpp"
#include "core/errors.hpp"
#include "core/loss.hpp"
#include "core/model.hpp"
#include "core/volume_kernels.hpp"
#include "hdf5_fixture.hpp"

namespace mpicnn::core {
namespace {

constexpr double kTolerance = 1e-5;
using fixtures::Fixture;

const Fixture& fixture() {
  static const Fixture file(MPICNN_VOLUME_FIXTURE);
  return file;
}

template <class A>
double relative_error(const A& ours, const std::vector<double>& torch) {
  if (ours.size() != torch.size()) throw ShapeError("compared tensors differ in size");
  double difference = 0, largest = 0;
  for (std::size_t i = 0; i < torch.size(); ++i) {
    difference = std::max(difference, std::abs(double(ours[i]) - torch[i]));
    largest = std::max(largest, std::abs(torch[i]));
  }
  return difference / std::max(largest, 1e-30);
}

void check(const std::string& what, double error) {
  std::printf("  %-44s %.2e %s\n", what.c_str(), error, error <= kTolerance ? "ok" : "FAIL");
  EXPECT_LE(error, kTolerance) << what;
}

// One layer case: the tensors of layers/<name>, and its input shape (N,C,D,H,W).
struct LayerCase {
  std::string group;
  int batch = 0, channels = 0;
  Extent3 extent;
  std::vector<double> x, dy;
  explicit LayerCase(const std::string& name) : group("layers/" + name) {
    std::vector<int> dims;
    x = fixture().doubles(group + "/x", &dims);
    if (dims.size() != 5) throw ShapeError(group + "/x: expected (N,C,D,H,W)");
    batch = dims[0], channels = dims[1], extent = {dims[2], dims[3], dims[4]};
    dy = fixture().doubles(group + "/dy");
  }
  std::vector<double> tensor(const std::string& name) const { return fixture().doubles(group + "/" + name); }
  int attribute(const std::string& name) const { return int(fixture().number(group, name)); }
  // `name` may carry a note after a space ("y (layer, float32)"): the tensor is its first word.
  void compare(const std::string& name, const std::vector<double>& ours) const {
    check(group.substr(7) + " " + name, relative_error(ours, tensor(name.substr(0, name.find(' ')))));
  }
};

Extent3 cube(int n) { return {n, n, n}; }

TEST(PyTorchVolumes, Conv3dForwardAndGradientsInDouble) {
  for (const std::string name : {"conv3d_stride2_pad1", "conv3d_pointwise_no_bias", "conv3d_stem7"}) {
    const LayerCase c(name);
    const int kernel = c.attribute("kernel"), stride = c.attribute("stride"), pad = c.attribute("pad");
    const bool bias = c.attribute("bias") != 0;
    const Conv3dGeometry g{c.channels, c.extent, c.attribute("filters"), cube(kernel), cube(stride), cube(pad),
                           sliding_extent(c.extent, cube(kernel), cube(stride), cube(pad))};
    const std::vector<double> weight = c.tensor("weight"), b = bias ? c.tensor("bias") : std::vector<double>{};
    std::vector<double> y(std::size_t(c.batch) * g.out_size()), dx(c.x.size()), dw(weight.size(), 0.0),
        db(std::size_t(g.filters), 0.0);
    conv3d_forward(y.data(), c.x.data(), weight.data(), bias ? b.data() : nullptr, g, c.batch);
    conv3d_backward(dx.data(), dw.data(), bias ? db.data() : nullptr, c.dy.data(), c.x.data(), weight.data(), g, c.batch);
    c.compare("y", y);
    c.compare("dx", dx);
    c.compare("dweight", dw);
    if (bias) c.compare("dbias", db);
  }
}

TEST(PyTorchVolumes, MaxPool3dAndAvgPool3dForwardAndGradientsInDouble) {
  for (const std::string kind : {"maxpool3d", "avgpool3d"})
    for (const std::string window : {"window2", "window3_stride2_pad1", "window3_stride1_pad1"}) {
      const LayerCase c(kind + "_" + window);
      const Extent3 k = cube(c.attribute("window")), s = cube(c.attribute("stride")), p = cube(c.attribute("pad"));
      const Pool3dGeometry g{c.channels, c.extent, k, s, p, sliding_extent(c.extent, k, s, p)};
      std::vector<double> y(std::size_t(c.batch) * g.out_size()), dx(c.x.size());
      if (kind == "maxpool3d") {
        std::vector<std::int32_t> argmax(y.size());
        maxpool3d_forward(y.data(), argmax.data(), c.x.data(), g, c.batch);
        maxpool3d_backward(dx.data(), c.dy.data(), argmax.data(), g, c.batch);
      } else {
        avgpool3d_forward(y.data(), c.x.data(), g, c.batch);
        avgpool3d_backward(dx.data(), c.dy.data(), g, c.batch);
      }
      c.compare("y", y);
      c.compare("dx", dx);
    }
}

TEST(PyTorchVolumes, BatchNorm3dTrainingAndEvaluationInDouble) {
  for (const bool training : {true, false}) {
    const LayerCase c(training ? "bn_train" : "bn_eval");
    const NormGeometry g{c.channels, c.extent.volume()};
    const double eps = fixture().number(c.group, "eps");
    const std::vector<double> gamma = c.tensor("weight"), beta = c.tensor("bias");
    std::vector<double> y(c.x.size()), dx(c.x.size()), dgamma(gamma.size(), 0.0), dbeta(beta.size(), 0.0);
    if (training) {
      std::vector<double> mean(gamma.size()), variance(gamma.size());
      batchnorm_forward_train(y.data(), mean.data(), variance.data(), c.x.data(), gamma.data(), beta.data(), g, c.batch,
                              eps);
      batchnorm_backward_train(dx.data(), dgamma.data(), dbeta.data(), c.dy.data(), c.x.data(), mean.data(),
                               variance.data(), gamma.data(), g, c.batch, eps);
    } else {
      const std::vector<double> mean = c.tensor("running_mean"), variance = c.tensor("running_var");
      batchnorm_forward_eval(y.data(), c.x.data(), gamma.data(), beta.data(), mean.data(), variance.data(), g, c.batch,
                             eps);
      batchnorm_backward_eval(dx.data(), dgamma.data(), dbeta.data(), c.dy.data(), c.x.data(), mean.data(),
                              variance.data(), gamma.data(), g, c.batch, eps);
    }
    c.compare("y", y);
    c.compare("dx", dx);
    c.compare("dweight", dgamma);
    c.compare("dbias", dbeta);
  }
}

// The `bn` layer on a volume (float32): its output and running statistics after one training step from
// PyTorch's starting statistics; the unbiased variance counts N*D*H*W values per channel.
TEST(PyTorchVolumes, BatchNorm3dLayerOutputAndRunningStatistics) {
  const LayerCase c("bn_train");
  Model model("bn", {c.channels, c.extent.h, c.extent.w, c.extent.d}, c.batch);
  auto load = [](float* to, const std::vector<double>& from) { std::copy(from.begin(), from.end(), to); };
  load(model.params().value(0), c.tensor("weight"));
  load(model.params().value(1), c.tensor("bias"));
  const StateStore& state = model.state();
  ASSERT_EQ(state.infos().at(0).name, "0.running_mean");
  ASSERT_EQ(state.infos().at(1).name, "0.running_var");
  load(model.state().value(0), c.tensor("running_mean_before"));
  load(model.state().value(1), c.tensor("running_var_before"));
  const std::vector<float> x(c.x.begin(), c.x.end());
  model.run().training = true;
  const float* y = model.forward(x.data(), c.batch);
  model.commit_statistics(1);
  c.compare("y (layer, float32)", std::vector<double>(y, y + x.size()));
  c.compare("running_mean", std::vector<double>(state.value(0), state.value(0) + c.channels));
  c.compare("running_var", std::vector<double>(state.value(1), state.value(1) + c.channels));
}

// The small 3D residual network of make_volume_fixtures.py, float32 engine against float64 PyTorch.
TEST(PyTorchVolumes, ResidualNetwork3d) {
  const Fixture& f = fixture();
  const std::string spec = f.text("network", "spec");
  const int batch = int(f.number("network", "batch")), classes = int(f.number("network", "classes"));
  std::vector<int> dims;
  const std::vector<float> input = f.floats("network/input", &dims);
  ASSERT_EQ(dims.size(), 5u);
  Model model(spec, {dims[1], dims[3], dims[4], dims[2]}, batch);
  std::printf("network: spec %s\n  input %s, batch %d, torch %s (float64)\n", model.canonical_spec().c_str(),
              model.input_shape().str().c_str(), batch, f.text("network", "torch_version").c_str());
  ASSERT_EQ(int(model.output_shape().size()), classes);
  ParamStore& params = model.params();
  ASSERT_EQ(f.members("network/params").size(), params.infos().size());
  for (std::size_t p = 0; p < params.infos().size(); ++p) {
    const ParamInfo& info = params.info(int(p));
    std::vector<int> param_dims;
    const std::vector<float> values = f.floats("network/params/" + info.name, &param_dims);
    ASSERT_EQ(param_dims, info.dims) << info.name << ": torch and engine layouts differ";
    std::copy(values.begin(), values.end(), params.value(int(p)));
  }
  const std::vector<std::int32_t> labels = f.ints("network/labels");

  model.run().training = true;
  const float* logits = model.forward(input.data(), batch);
  std::vector<float> logits_grad(std::size_t(batch) * classes);
  const LossSum loss = softmax_cross_entropy(logits_grad.data(), logits, labels.data(), {}, batch, classes);
  check("train logits", relative_error(std::vector<double>(logits, logits + logits_grad.size()),
                                       f.doubles("network/train/logits")));
  const double torch_loss = f.doubles("network/train/loss").at(0);
  check("train loss", std::abs(loss.sum / loss.normalizer - torch_loss) / std::abs(torch_loss));
  params.zero_grads();
  model.backward(logits_grad.data(), batch);
  for (std::size_t p = 0; p < params.infos().size(); ++p) {
    const ParamInfo& info = params.info(int(p));
    std::vector<double> grad(params.grad(int(p)), params.grad(int(p)) + info.size);
    for (double& g : grad) g /= loss.normalizer;
    check("train grads/" + info.name, relative_error(grad, f.doubles("network/train/grads/" + info.name)));
  }
  model.commit_statistics(1);
  const StateStore& state = model.state();
  for (std::size_t s = 0; s < state.infos().size(); ++s) {
    const StateInfo& info = state.infos()[s];
    if (info.counter) continue;
    check("train state/" + info.name, relative_error(std::vector<double>(state.value(int(s)), state.value(int(s)) + info.size),
                                                    f.doubles("network/train/state/" + info.name)));
  }
  model.run().training = false;
  const float* eval_logits = model.forward(input.data(), batch);
  check("eval logits", relative_error(std::vector<double>(eval_logits, eval_logits + logits_grad.size()),
                                      f.doubles("network/eval/logits")));
}

}  // namespace
}  // namespace mpicnn::core
