#pragma once
// A network built from a text spec such as
//   "conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten dense(128) relu dense(10)"
// or, with blocks, "conv(64,3,pad=1,bias=false) bn relu repeat(2){residual{conv(64,3,pad=1) bn relu
// conv(64,3,pad=1) bn} relu} globalavgpool flatten dense(10)". Grammar:
//   sequence := item*      item := name ['(' args ')'] ['{' sequence ('|' sequence)* '}']
// It owns the parameter arena, the state area and every activation buffer, sized once for
// `max_batch` samples.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "blocks.hpp"
#include "layers.hpp"
#include "params.hpp"

namespace mpicnn::core {

// Splits a spec into layer descriptions (blocks nested); throws ConfigError naming the character
// at fault.
std::vector<LayerArgs> parse_spec(const std::string& spec);

// The parameters a spec declares for an input shape, computed without allocating any of them
// (checks a file's declared shapes before trusting its sizes). Throws like the Model constructor.
std::vector<ParamInfo> plan_params(const std::string& spec, const Shape& input);
std::vector<StateInfo> plan_state(const std::string& spec, const Shape& input);
// The canonical spec of each top-level layer, also without allocating (a classifier sharded
// across ranks is built apart from the layers before it).
std::vector<std::string> top_level_specs(const std::string& spec, const Shape& input);
// Floats of every layer's output for one sample, also computed without allocating.
std::size_t plan_activation_floats(const std::string& spec, const Shape& input);
// Forward FLOPs for one sample, as Model::forward_flops(), also without allocating.
double plan_forward_flops(const std::string& spec, const Shape& input);

class Model {
 public:
  Model(const std::string& spec, const Shape& input, int max_batch);

  const Shape& input_shape() const { return input_; }
  const Shape& output_shape() const { return root_->output_shape(); }
  int max_batch() const { return max_batch_; }
  // Every layer with every argument spelled out; parsing it again gives the same model.
  std::string canonical_spec() const;
  // The top-level layers: the units of gradient reduction.
  const std::vector<std::unique_ptr<Layer>>& layers() const { return root_->children(); }
  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  StateStore& state() { return state_; }
  const StateStore& state() const { return state_; }
  // Train or evaluation mode, the step and sample position (dropout), the statistics slot
  // (BatchNorm): set before each forward pass.
  RunContext& run() { return run_; }
  // Room for the batch statistics of `slots` micro-batches per step.
  void reserve_statistics(int slots) { state_.reserve_statistics(slots); }
  // Folds the statistics of slots [0, slots) into the running statistics; then clears them.
  void commit_statistics(int slots);

  // input: (batch, C, H, W), kept by pointer until backward. Returns (batch, output size).
  const float* forward(const float* input, int batch);
  // Accumulates parameter gradients from d(loss)/d(output). `layer_done(i)` is called as soon as
  // layer i's parameter gradients are final, last layer first (to start their reduction early).
  void backward(const float* output_grad, int batch, const std::function<void(int)>& layer_done = {});
  // Output of layer i from the last forward (for finding where non-finite values appear); for a
  // ReLU absorbed by the max pool after it, its input.
  const float* activation(int layer) const { return root_->child_output(layer); }

  // Keras-style table: layer (blocks indented), output shape, parameters, forward FLOPs per sample.
  std::string summary() const;
  double forward_flops() const;

 private:
  Shape input_;
  int max_batch_;
  std::unique_ptr<Sequential> root_;
  ParamStore params_;
  StateStore state_;
  RunContext run_;
  Workspace workspace_;
  Buffer output_;  // (max_batch, output size)
  const float* last_input_ = nullptr;
};

// Metric learning: the top-level layer whose output is the model's embedding: the one before a
// final cosine(n) (an l2norm in an embedding head), else a final l2norm; -1 when the model ends in
// neither (or is only cosine(n)).
int embedding_layer(const Model& model);
// embedding_layer, for cutting the model there: ConfigError beginning with `where` when it has none.
int embedding_layer_to_cut(const Model& model, const std::string& where);
// The spec of the top-level layers [0, last]: a sub-model whose parameters and state have the
// names they have in the whole model, so the whole model's checkpoint loads into it.
std::string spec_through_layer(const Model& model, int last);

}  // namespace mpicnn::core
