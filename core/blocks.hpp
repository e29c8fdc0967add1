#pragma once
// Composite layers: a Sequential owns a chain of layers and their activation buffers; a residual
// block owns a main and an optional shortcut Sequential and adds their outputs; repeat(n){...} is
// n copies of a Sequential. Not a general graph: what ResNets need, and nothing a spec cannot say.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers.hpp"

namespace mpicnn::core {

class Sequential final : public Layer {
 public:
  // `path` names the sequence in errors ("" at the top, "5.main" inside a block); its layers are
  // path.1, path.2, ... (1-based, as a user counts them).
  Sequential(const std::vector<LayerArgs>& items, const Shape& in, const std::string& path);
  explicit Sequential(std::vector<std::unique_ptr<Layer>> layers);

  std::string spec() const override;
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

  const std::vector<std::unique_ptr<Layer>>& children() const { return children_; }
  // Child i's output of the last forward (the caller's output for the last child); for a ReLU
  // absorbed by the max pool after it, its input.
  const float* child_output(int i) const;

 private:
  void link_buffers(int max_batch);

  std::vector<std::unique_ptr<Layer>> children_;
  // Per child, (max_batch, out size): its output and d(loss)/d(output). A child that is not run
  // (passes_through_) shares both with the child before it; the last child uses the caller's.
  std::vector<Buffer> buffers_;
  std::vector<float*> outputs_, output_grads_;
  std::vector<bool> passes_through_;
  float* last_out_ = nullptr;
};

}  // namespace mpicnn::core
