#pragma once
// What the 2D and 3D max and average pools share as layers (layers.cpp, volume_layers.cpp): the
// argmax buffer, the choice of kernel, the absorbed ReLU. Each pool checks its arguments, builds
// its geometry and writes its spec; the kernels come in as PoolKernels of that geometry.
#include <cstdint>
#include <vector>

#include "layers.hpp"

namespace mpicnn::core {

template <class Geometry>
struct PoolKernels {
  void (*max_forward)(float* out, std::int32_t* argmax, const float* in, const Geometry& g, int batch, bool relu);
  void (*max_backward)(float* in_grad, const float* out_grad, const std::int32_t* argmax, const Geometry& g, int batch,
                       const float* relu_out);
  void (*avg_forward)(float* out, const float* in, const Geometry& g, int batch);
  void (*avg_backward)(float* in_grad, const float* out_grad, const Geometry& g, int batch);
};

template <class Geometry>
class PoolLayer : public Layer {
 public:
  void bind(const BindContext& context) override {
    if (max_) argmax_.assign(std::size_t(context.max_batch) * g_.out_size(), 0);
    run_ = &context.run;
  }
  void forward(float* out, const float* in, int batch) override {
    if (max_) kernels_.max_forward(out, argmax(), in, g_, batch, relu_);
    else kernels_.avg_forward(out, in, g_, batch);
  }
  void backward(float* in_grad, const float* out_grad, const float*, const float* out, int batch) override {
    if (!in_grad) return;
    if (max_) kernels_.max_backward(in_grad, out_grad, argmax(), g_, batch, relu_ ? out : nullptr);
    else kernels_.avg_backward(in_grad, out_grad, g_, batch);
  }
  bool can_absorb_preceding_relu() const override { return max_; }
  void absorb_preceding_relu() override { relu_ = true; }

 protected:
  PoolLayer(bool is_max, const PoolKernels<Geometry>& kernels) : max_(is_max), kernels_(kernels) {}
  Geometry g_{};  // set by the constructor of the 2D or 3D pool
  bool max_;

 private:
  // This call's samples in the argmax of the last forward (a layer-synchronous pass calls once per micro-batch).
  std::int32_t* argmax() { return argmax_.data() + std::size_t(run_->sample_offset) * g_.out_size(); }
  PoolKernels<Geometry> kernels_;
  bool relu_ = false;  // applies the ReLU before it (absorb_preceding_relu)
  std::vector<std::int32_t> argmax_;  // (max_batch, out size) of the last forward
  const RunContext* run_ = nullptr;
};

}  // namespace mpicnn::core
