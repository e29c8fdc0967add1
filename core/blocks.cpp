#include "blocks.hpp"

#include "arg_reader.hpp"
#include "block_kernels.hpp"
#include "errors.hpp"

namespace mpicnn::core {
namespace {

std::string child_path(const std::string& path, std::size_t i) {
  return (path.empty() ? "" : path + ".") + std::to_string(i + 1);
}

std::vector<std::unique_ptr<Layer>> build_children(const std::vector<LayerArgs>& items, const Shape& in,
                                                   const std::string& path) {
  if (items.empty()) throw ConfigError("layer " + path + ": empty sequence, expected at least one layer");
  std::vector<std::unique_ptr<Layer>> children;
  Shape shape = in;
  for (std::size_t i = 0; i < items.size(); ++i) {
    children.push_back(make_layer(items[i], shape, child_path(path, i)));
    shape = children.back()->output_shape();
  }
  return children;
}

}  // namespace

Sequential::Sequential(const std::vector<LayerArgs>& items, const Shape& in, const std::string& path)
    : Sequential(build_children(items, in, path)) {}

Sequential::Sequential(std::vector<std::unique_ptr<Layer>> layers) : children_(std::move(layers)) {
  input_ = children_.front()->input_shape();
  output_ = children_.back()->output_shape();
}

std::string Sequential::spec() const {
  std::string text;
  for (const auto& child : children_) {
    if (!text.empty()) text += ' ';  // appended, not "" + string: GCC 12 warns falsely (bug 105651)
    text += child->spec();
  }
  return text;
}

void Sequential::declare(ParamStore& params, StateStore& state, const Scope& scope) {
  const bool top = scope.prefix.empty();
  for (std::size_t i = 0; i < children_.size(); ++i)
    children_[i]->declare(params, state, {scope.prefix + std::to_string(i) + ".", top ? int(i) : scope.unit});
}

void Sequential::bind(const BindContext& context) {
  run_ = &context.run;
  params_ = &context.params;
  for (auto& child : children_) child->bind(context);
  link_buffers(context.max_batch);
}

// Views (flatten) and ReLUs absorbed by the next layer pass their input through: they get the
// buffers of the layer before them and are never run. The first child (its input is the caller's)
// and the last (its output is the caller's) always run.
void Sequential::link_buffers(int max_batch) {
  const std::size_t n = children_.size();
  passes_through_.assign(n, false);
  outputs_.assign(n, nullptr);
  output_grads_.assign(n, nullptr);
  for (std::size_t i = 0; i + 1 < n; ++i) {
    const bool inner = i > 0;
    const bool relu_absorbed =
        inner && children_[i]->spec() == "relu" && children_[i + 1]->can_absorb_preceding_relu();
    if (relu_absorbed) children_[i + 1]->absorb_preceding_relu();
    passes_through_[i] = relu_absorbed || (inner && children_[i]->is_view());
    if (passes_through_[i]) {
      outputs_[i] = outputs_[i - 1], output_grads_[i] = output_grads_[i - 1];
      continue;
    }
    const std::size_t size = std::size_t(max_batch) * children_[i]->output_shape().size();
    outputs_[i] = buffers_.emplace_back(size).data();
    output_grads_[i] = buffers_.emplace_back(size).data();
  }
}

// In a layer-synchronous pass a plain layer runs once per micro-batch, with that micro-batch's
// sample position and gradient set, just as it would in a pass of its own; anything else once.
template <class Pass>
void Sequential::each_micro_batch(const Layer& child, int batch, const Pass& pass) {
  if (!run_->layer_synchronous() || child.spans_micro_batches()) return pass(0, batch);
  const long first = run_->first_sample;
  for (std::size_t k = 0; k < run_->micro_batches.size(); ++k) {
    const MicroBatch& m = run_->micro_batches[k];
    run_->first_sample = m.first_sample, run_->sample_offset = m.start;
    params_->select_gradients(int(k));
    pass(std::size_t(m.start), m.count);
  }
  run_->first_sample = first, run_->sample_offset = 0;
  params_->select_gradients(0);
}

void Sequential::forward(float* out, const float* in, int batch) {
  last_out_ = out;
  const std::size_t n = children_.size();
  for (std::size_t i = 0; i < n; ++i) {
    if (passes_through_[i]) continue;
    Layer& child = *children_[i];
    float* o = i + 1 == n ? out : outputs_[i];
    const float* x = i == 0 ? in : outputs_[i - 1];
    each_micro_batch(child, batch, [&](std::size_t start, int count) {
      child.forward(o + start * child.output_shape().size(), x + start * child.input_shape().size(), count);
    });
  }
}

void Sequential::backward(float* in_grad, const float* out_grad, const float* in, const float* out, int batch) {
  backward_children(in_grad, out_grad, in, out, batch, {});
}

void Sequential::backward_children(float* in_grad, const float* out_grad, const float* in, const float* out,
                                   int batch, const std::function<void(int)>& child_done) {
  const int n = int(children_.size());
  for (int i = n - 1; i >= 0; --i) {
    if (!passes_through_[i]) {
      Layer& child = *children_[i];
      const bool last = i + 1 == n;
      float* dx = i == 0 ? in_grad : output_grads_[i - 1];
      const float* dy = last ? out_grad : output_grads_[i];
      const float* x = i == 0 ? in : outputs_[i - 1];
      const float* y = last ? out : outputs_[i];
      each_micro_batch(child, batch, [&](std::size_t start, int count) {
        const std::size_t in_at = start * child.input_shape().size(), out_at = start * child.output_shape().size();
        child.backward(dx ? dx + in_at : nullptr, dy + out_at, x + in_at, y + out_at, count);
      });
    }
    if (child_done) child_done(i);
  }
}

void Sequential::commit_statistics(int slots) {
  for (auto& child : children_) child->commit_statistics(slots);
}

double Sequential::forward_flops() const {
  double total = 0;
  for (const auto& child : children_) total += child->forward_flops();
  return total;
}

const float* Sequential::child_output(int i) const {
  return i + 1 == int(children_.size()) ? last_out_ : outputs_[i];
}

void Sequential::summary_rows(std::vector<Row>& rows, int depth, const std::string& prefix,
                              const ParamStore& params) const {
  for (std::size_t i = 0; i < children_.size(); ++i) {
    const Layer& child = *children_[i];
    const std::string name = prefix + std::to_string(i);
    rows.push_back({depth, name, child.title(), child.output_shape(), params_under(params, name + "."),
                    child.forward_flops()});
    child.summary_rows(rows, depth + 1, name + ".", params);
  }
}

std::unique_ptr<Layer> make_residual(const LayerArgs& args, const Shape& in, const std::string& path) {
  return std::make_unique<Residual>(args, in, path);
}

std::unique_ptr<Layer> make_repeat(const LayerArgs& args, const Shape& in, const std::string& path) {
  return std::make_unique<Repeat>(args, in, path);
}

}  // namespace mpicnn::core
