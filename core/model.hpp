#pragma once
// A sequential network built from a text spec such as
//   "conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten dense(128) relu dense(10)".
// It owns the parameter arena and every activation buffer, sized once for `max_batch` samples.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers.hpp"
#include "params.hpp"

namespace mpicnn::core {

// Splits a spec into layer descriptions; throws ConfigError naming the character at fault.
std::vector<LayerArgs> parse_spec(const std::string& spec);

// The parameters a spec declares for an input shape, computed without allocating any of them
// (checks a file's declared shapes before trusting its sizes). Throws like the Model constructor.
std::vector<ParamInfo> plan_params(const std::string& spec, const Shape& input);
// Floats of every layer's output for one sample, also computed without allocating.
std::size_t plan_activation_floats(const std::string& spec, const Shape& input);

class Model {
 public:
  Model(const std::string& spec, const Shape& input, int max_batch);

  const Shape& input_shape() const { return input_; }
  const Shape& output_shape() const { return layers_.back()->output_shape(); }
  int max_batch() const { return max_batch_; }
  // Every layer with every argument spelled out; parsing it again gives the same model.
  std::string canonical_spec() const;
  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }

  // input: (batch, C, H, W), kept by pointer until backward. Returns (batch, output size).
  const float* forward(const float* input, int batch);
  // Accumulates parameter gradients from d(loss)/d(output). `layer_done(i)` is called as soon as
  // layer i's parameter gradients are final, last layer first (to start their reduction early).
  void backward(const float* output_grad, int batch, const std::function<void(int)>& layer_done = {});
  // Output of layer i from the last forward (for finding where non-finite values appear); for a
  // ReLU absorbed by the max pool after it, its input.
  const float* activation(int layer) const { return outputs_[layer]; }

  // Keras-style table: layer, output shape, parameters, forward FLOPs per sample.
  std::string summary() const;
  double forward_flops() const;

 private:
  void bind_buffers();

  Shape input_;
  int max_batch_;
  std::vector<std::unique_ptr<Layer>> layers_;
  ParamStore params_;
  // Per layer, (max_batch, out size): its output and d(loss)/d(output). A layer the model does not
  // run (passes_through_) shares both with the layer before it.
  std::vector<Buffer> buffers_;
  std::vector<float*> outputs_, output_grads_;
  std::vector<bool> passes_through_;
  const float* last_input_ = nullptr;
};

}  // namespace mpicnn::core
