#pragma once
// Composite layers: a Sequential owns a chain of layers and their activation buffers; a residual
// block owns a main and an optional shortcut Sequential and adds their outputs; repeat(n){...} is
// n copies of a Sequential. Not a general graph: what ResNets need, and nothing a spec cannot say.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "arg_reader.hpp"
#include "block_kernels.hpp"
#include "errors.hpp"
#include "layers.hpp"

namespace mpicnn::core {

class Sequential final : public Layer {
 public:
  // `path` names the sequence in errors ("" at the top, "5.main" inside a block); its layers are
  // path.1, path.2, ... (1-based, as a user counts them).
  Sequential(const std::vector<LayerArgs>& items, const Shape& in, const std::string& path);
  explicit Sequential(std::vector<std::unique_ptr<Layer>> layers);

  std::string spec() const override;
  // In a summary (a copy of a repeat's body) its kind only: its layers get rows of their own.
  std::string title() const override { return "sequential"; }
  // At the top (an empty prefix) child i declares "i." as reduction unit i; below, every child
  // declares "<prefix>i." in the enclosing unit. Names are 0-based, as nn.Sequential's.
  void declare(ParamStore&, StateStore&, const Scope&) override;
  void bind(const BindContext&) override;
  void forward(float* out, const float* in, int batch) override;
  void backward(float* in_grad, const float* out_grad, const float* in, const float* out, int batch) override;
  // As backward; child_done(i) fires once child i's parameter gradients are final, last first.
  void backward_children(float* in_grad, const float* out_grad, const float* in, const float* out, int batch,
                         const std::function<void(int)>& child_done);
  void commit_statistics(int slots) override;
  double forward_flops() const override;
  void summary_rows(std::vector<Row>&, int depth, const std::string& prefix, const ParamStore&) const override;
  bool spans_micro_batches() const override { return true; }

  const std::vector<std::unique_ptr<Layer>>& children() const { return children_; }
  // Child i's output of the last forward (the caller's output for the last child); for a ReLU
  // absorbed by the max pool after it, its input.
  const float* child_output(int i) const;

 private:
  void link_buffers(int max_batch);
  template <class Pass>
  void each_micro_batch(const Layer& child, int batch, const Pass& pass);

  std::vector<std::unique_ptr<Layer>> children_;
  // Per child, (max_batch, out size): its output and d(loss)/d(output). A child that is not run
  // (passes_through_) shares both with the child before it; the last child uses the caller's.
  std::vector<Buffer> buffers_;
  std::vector<float*> outputs_, output_grads_;
  std::vector<bool> passes_through_;
  float* last_out_ = nullptr;
  RunContext* run_ = nullptr;
  ParamStore* params_ = nullptr;
};

// residual{main | shortcut}: out = main(x) + shortcut(x), or main(x) + x without a shortcut.
class Residual final : public Layer {
 public:
  Residual(const LayerArgs& args, const Shape& in, const std::string& path) {
    const ArgReader reader(args, {}, path);
    if (!args.has_braces || args.branches.empty() || args.branches.size() > 2)
      reader.fail("needs a block: residual{main layers} or residual{main layers | shortcut layers}");
    main_ = std::make_unique<Sequential>(args.branches[0], in, path + ".main");
    if (args.branches.size() == 2) shortcut_ = std::make_unique<Sequential>(args.branches[1], in, path + ".shortcut");
    const Shape other = shortcut_ ? shortcut_->output_shape() : in;
    if (main_->output_shape() != other)
      reader.fail("main branch gives " + main_->output_shape().str() + " but the " +
                  (shortcut_ ? "shortcut gives " : "identity shortcut gives the input ") + other.str() +
                  (shortcut_ ? "" : ": add a shortcut branch after '|'"));
    input_ = in;
    output_ = other;
  }
  std::string spec() const override {
    return "residual{" + main_->spec() + (shortcut_ ? " | " + shortcut_->spec() : "") + "}";
  }
  std::string title() const override { return "residual"; }
  void declare(ParamStore& params, StateStore& state, const Scope& scope) override {
    main_->declare(params, state, {scope.prefix + "main.", scope.unit});
    if (shortcut_) shortcut_->declare(params, state, {scope.prefix + "shortcut.", scope.unit});
  }
  void bind(const BindContext& context) override {
    main_->bind(context);
    const std::size_t size = std::size_t(context.max_batch) * output_.size();
    main_out_ = Buffer(size);
    if (!shortcut_) return;
    shortcut_->bind(context);
    shortcut_out_ = Buffer(size);
    shortcut_in_grad_ = Buffer(std::size_t(context.max_batch) * input_.size());
  }
  void forward(float* out, const float* in, int batch) override {
    main_->forward(main_out_.data(), in, batch);
    if (shortcut_) shortcut_->forward(shortcut_out_.data(), in, batch);
    add_tensors(out, main_out_.data(), shortcut_ ? shortcut_out_.data() : in, std::size_t(batch) * output_.size());
  }
  // Both branches receive out_grad; the input's gradient is the sum of theirs.
  void backward(float* in_grad, const float* out_grad, const float* in, const float*, int batch) override {
    main_->backward(in_grad, out_grad, in, main_out_.data(), batch);
    const std::size_t n = std::size_t(batch) * input_.size();
    if (shortcut_) {
      shortcut_->backward(in_grad ? shortcut_in_grad_.data() : nullptr, out_grad, in, shortcut_out_.data(), batch);
      if (in_grad) add_tensors(in_grad, in_grad, shortcut_in_grad_.data(), n);
    } else if (in_grad) {
      add_tensors(in_grad, in_grad, out_grad, n);
    }
  }
  void commit_statistics(int slots) override {
    main_->commit_statistics(slots);
    if (shortcut_) shortcut_->commit_statistics(slots);
  }
  double forward_flops() const override {
    return main_->forward_flops() + (shortcut_ ? shortcut_->forward_flops() : 0) + double(output_.size());
  }
  void summary_rows(std::vector<Row>& rows, int depth, const std::string& prefix, const ParamStore& params) const override {
    main_->summary_rows(rows, depth, prefix + "main.", params);
    if (shortcut_) shortcut_->summary_rows(rows, depth, prefix + "shortcut.", params);
  }
  bool spans_micro_batches() const override { return true; }
  const Sequential& main_branch() const { return *main_; }
  const Sequential* shortcut_branch() const { return shortcut_.get(); }

 private:
  std::unique_ptr<Sequential> main_, shortcut_;
  Buffer main_out_, shortcut_out_, shortcut_in_grad_;
};

// repeat(n){body}: n copies of the body in a row, each its own Sequential ("i.k.j" parameters).
class Repeat final : public Layer {
 public:
  Repeat(const LayerArgs& args, const Shape& in, const std::string& path) {
    const ArgReader reader(args, {"times"}, path);
    times_ = reader.integer("times", 1);
    if (!args.has_braces || args.branches.size() != 1) reader.fail("needs one block: repeat(n){layers}");
    std::vector<std::unique_ptr<Layer>> copies;
    Shape shape = in;
    for (int k = 0; k < times_; ++k) {
      copies.push_back(std::make_unique<Sequential>(args.branches[0], shape, path + "." + std::to_string(k + 1)));
      shape = copies.back()->output_shape();
    }
    body_ = std::make_unique<Sequential>(std::move(copies));
    input_ = in;
    output_ = shape;
  }
  std::string spec() const override {
    const auto& first = static_cast<const Sequential&>(*body_->children().front());
    return "repeat(" + std::to_string(times_) + "){" + first.spec() + "}";
  }
  std::string title() const override { return "repeat(" + std::to_string(times_) + ")"; }
  // Copy k declares "<prefix>k.": what the body Sequential does below the top level.
  void declare(ParamStore& params, StateStore& state, const Scope& scope) override {
    body_->declare(params, state, scope);
  }
  void bind(const BindContext& context) override { body_->bind(context); }
  void forward(float* out, const float* in, int batch) override { body_->forward(out, in, batch); }
  void backward(float* in_grad, const float* out_grad, const float* in, const float* out, int batch) override {
    body_->backward(in_grad, out_grad, in, out, batch);
  }
  void commit_statistics(int slots) override { body_->commit_statistics(slots); }
  double forward_flops() const override { return body_->forward_flops(); }
  void summary_rows(std::vector<Row>& rows, int depth, const std::string& prefix, const ParamStore& params) const override {
    body_->summary_rows(rows, depth, prefix, params);
  }
  bool spans_micro_batches() const override { return true; }
  // A Sequential of `times` Sequentials, the copies of the body.
  const Sequential& body() const { return *body_; }

 private:
  int times_ = 1;
  std::unique_ptr<Sequential> body_;
};

}  // namespace mpicnn::core
