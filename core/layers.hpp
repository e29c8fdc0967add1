#pragma once
// Thin layer classes: each checks shapes, declares its parameters in the arena, owns its
// workspaces and calls the kernels.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels.hpp"
#include "params.hpp"
#include "tensor.hpp"

namespace mpicnn::core {

class Layer {
 public:
  virtual ~Layer() = default;
  const Shape& input_shape() const { return input_; }
  const Shape& output_shape() const { return output_; }
  // The layer as it would be written in a spec, with every argument: "conv(32,5,stride=1,pad=0)".
  virtual std::string spec() const = 0;
  // Declares parameters in the arena (before it is allocated); `layer` is this layer's index.
  virtual void declare_params(ParamStore&, int /*layer*/) {}
  // Takes views into the allocated arena and allocates workspaces for up to `max_batch` samples.
  virtual void bind(ParamStore&, int /*max_batch*/) {}
  virtual void forward(float* out, const float* in, int batch) = 0;
  // in_grad may be null when nothing upstream needs it. Parameter gradients accumulate.
  virtual void backward(float* in_grad, const float* out_grad, const float* in, const float* out, int batch) = 0;
  virtual double forward_flops() const { return 0; }  // per sample, multiply-adds counted as 2
  // A layer whose output is its input reinterpreted (flatten): a model gives it its input's
  // buffers and never runs it.
  virtual bool is_view() const { return false; }
  // A layer that can apply the ReLU just before it (max pooling: relu(max(window)) =
  // max(relu(window))) says so, and once told to, does; that ReLU then becomes a view of its input.
  virtual bool can_absorb_preceding_relu() const { return false; }
  virtual void absorb_preceding_relu() {}

 protected:
  Shape input_, output_;
};

// Arguments of one layer in a spec: positional values and key=value pairs, all as text.
struct LayerArgs {
  std::string kind;
  std::vector<std::string> positional;
  std::map<std::string, std::string> named;
};

// Builds the layer `args` describes for an input of shape `in`; `position` (1-based) is used in errors.
std::unique_ptr<Layer> make_layer(const LayerArgs& args, const Shape& in, int position);
// The layer kinds make_layer knows, for error messages and help.
const std::vector<std::string>& known_layer_kinds();

}  // namespace mpicnn::core
