#pragma once
// Thin layer classes: each checks shapes, declares its parameters and state, owns its workspaces
// and calls the kernels. Composite layers (core/blocks.hpp) own sequences of layers.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels.hpp"
#include "micro_batches.hpp"
#include "params.hpp"
#include "tensor.hpp"

namespace mpicnn::core {

// What a forward pass needs to know beyond its tensors, set by whoever drives the model (the
// trainer, evaluation, a test) before each pass. Dropout masks are a pure function of (seed, step,
// global sample position, layer), so they do not depend on the rank count and survive a resume
// or a step computed again; BatchNorm writes the batch's statistics into `statistics_slot`.
struct RunContext {
  RunContext(bool training = false, std::uint64_t seed = 0, long step = 0, long first_sample = 0, int statistics_slot = 0)
      : training(training), seed(seed), step(step), first_sample(first_sample), statistics_slot(statistics_slot) {}
  bool training = false;  // evaluation unless the trainer says otherwise
  std::uint64_t seed = 0;
  long step = 0;            // global step
  long first_sample = 0;    // global position, within the step, of the batch's first sample
  int statistics_slot = 0;  // where BatchNorm records this batch's statistics (a micro-batch)
  // Layer-synchronous pass (model.bn_statistics = global_batch; core/micro_batches.hpp): the
  // batch is this rank's micro-batches, run one layer at a time over all of them, and BatchNorm
  // takes its statistics over the global batch through `exchange`. Unset: one pass per batch.
  std::vector<MicroBatch> micro_batches;
  BatchExchange* exchange = nullptr;
  // Where, in buffers sized for the whole batch, the current call's first sample sits: a
  // layer-synchronous pass calls a plain layer once per micro-batch.
  int sample_offset = 0;
  bool layer_synchronous() const { return training && exchange != nullptr; }
};

// Where a layer's parameters go: the name prefix ("4.main.1.") and the top-level layer (the unit
// whose completion backward reports).
struct Scope {
  std::string prefix;
  int unit = 0;
};

// Scratch memory shared by every convolution of a model: only one layer runs at a time, and
// nothing in a convolution's workspace outlives its call. Layers reserve their size at bind time
// and take data() at each call (a later, larger reservation moves the buffer).
class Workspace {
 public:
  void reserve(std::size_t floats) {
    if (floats > buffer_.size()) buffer_ = Buffer(floats);
  }
  float* data() { return buffer_.data(); }

 private:
  Buffer buffer_;
};

struct BindContext {
  ParamStore& params;
  StateStore& state;
  RunContext& run;  // a Sequential moves the sample position from micro-batch to micro-batch
  int max_batch;
  Workspace& workspace;
};

class Layer {
 public:
  virtual ~Layer() = default;
  const Shape& input_shape() const { return input_; }
  const Shape& output_shape() const { return output_; }
  // The layer as it would be written in a spec, with every argument: "conv(32,5,stride=1,pad=0)".
  virtual std::string spec() const = 0;
  // How the layer is named in a summary (a composite: its kind only; its layers get rows below).
  virtual std::string title() const { return spec(); }
  // Declares parameters and state (before allocation) under the scope's name prefix.
  virtual void declare(ParamStore&, StateStore&, const Scope&) {}
  // Takes views into the allocated arena and allocates workspaces for up to `max_batch` samples.
  virtual void bind(const BindContext&) {}
  virtual void forward(float* out, const float* in, int batch) = 0;
  // in_grad may be null when nothing upstream needs it. Parameter gradients accumulate.
  virtual void backward(float* in_grad, const float* out_grad, const float* in, const float* out, int batch) = 0;
  // Folds the batch statistics recorded in slots [0, slots) into the state, in slot order.
  virtual void commit_statistics(int /*slots*/) {}
  virtual double forward_flops() const { return 0; }  // per sample, multiply-adds counted as 2
  // A layer whose output is its input reinterpreted (flatten): a sequence gives it its input's
  // buffers and never runs it.
  virtual bool is_view() const { return false; }
  // A layer that can apply the ReLU just before it (max pooling: relu(max(window)) =
  // max(relu(window))) says so, and once told to, does; that ReLU then becomes a view of its input.
  virtual bool can_absorb_preceding_relu() const { return false; }
  virtual void absorb_preceding_relu() {}
  // A layer that takes a layer-synchronous pass's micro-batches all at once (composites, which
  // hand them on, and BatchNorm, which needs them all); any other runs once per micro-batch.
  virtual bool spans_micro_batches() const { return false; }
  // Summary rows of the layers inside a composite (empty for a plain layer).
  struct Row {
    int depth;
    std::string name, spec;
    Shape output;
    std::size_t params;
    double flops;
  };
  virtual void summary_rows(std::vector<Row>&, int /*depth*/, const std::string& /*prefix*/,
                            const ParamStore&) const {}

 protected:
  Shape input_, output_;
};

// Arguments of one layer in a spec: positional values and key=value pairs, all as text; a
// composite's branches (residual{main | shortcut}, repeat(n){body}) as sequences of their own.
struct LayerArgs {
  std::string kind;
  std::vector<std::string> positional;
  std::map<std::string, std::string> named;
  std::vector<std::vector<LayerArgs>> branches;
  bool has_braces = false;
};

// Builds the layer `args` describes for an input of shape `in`; `path` ("5", "5.main.2": 1-based
// positions) names it in errors.
std::unique_ptr<Layer> make_layer(const LayerArgs& args, const Shape& in, const std::string& path);
// The layer kinds make_layer knows, for error messages and help.
const std::vector<std::string>& known_layer_kinds();

// Parameters each layer owns, by the scope prefix, for summaries.
std::size_t params_under(const ParamStore& params, const std::string& prefix);

}  // namespace mpicnn::core
