// Layers of an embedding head: `l2norm` (each sample's features scaled to unit length) and
// `cosine(n)`, a bias-free classifier whose rows (class centres) are normalised as well, so that
// its outputs are cos(theta) between the embedding and each centre: the input of the margin
// losses (core/metric_losses.hpp). Its parameter is "weight", (n, features), as a bias-free
// nn.Linear whose rows PyTorch code normalises with F.normalize.
#include "arg_reader.hpp"
#include "embedding_kernels.hpp"

namespace mpicnn::core {
namespace {

void require_flat(const ArgReader& args, const Shape& in) {
  if (in.h != 1 || in.w != 1) args.fail("needs a flat input (C,1,1), got " + in.str() + ": add 'flatten' before it");
}

class L2Norm final : public Layer {
 public:
  L2Norm(const ArgReader& args, const Shape& in) {
    require_flat(args, in);
    input_ = output_ = in;
  }
  std::string spec() const override { return "l2norm"; }
  void bind(const BindContext& context) override {
    norms_ = Buffer(std::size_t(context.max_batch));
    run_ = &context.run;
  }
  void forward(float* out, const float* in, int batch) override {
    l2_normalize_forward(out, norms(), in, batch, input_.c);
  }
  void backward(float* in_grad, const float* out_grad, const float*, const float* out, int batch) override {
    if (in_grad) l2_normalize_backward(in_grad, out_grad, out, norms(), batch, input_.c);
  }

 private:
  float* norms() { return norms_.data() + run_->sample_offset; }
  Buffer norms_;  // (max_batch): max(||x||, eps) of the last forward
  const RunContext* run_ = nullptr;
};

class Cosine final : public Layer {
 public:
  Cosine(const ArgReader& args, const Shape& in) {
    classes_ = args.integer("classes", 1);
    require_flat(args, in);
    input_ = in;
    output_ = {classes_, 1, 1};
  }
  std::string spec() const override { return "cosine(" + std::to_string(classes_) + ")"; }
  void declare(ParamStore& store, StateStore&, const Scope& scope) override {
    const int features = input_.c;
    weight_ = store.declare({scope.prefix + "weight", {classes_, features}, 0, 0, scope.unit, features, classes_,
                             ParamRole::weight});
  }
  void bind(const BindContext& context) override {
    store_ = &context.params;
    run_ = &context.run;
    const std::size_t features = std::size_t(input_.c), batch = std::size_t(context.max_batch);
    x_hat_ = Buffer(batch * features), x_norms_ = Buffer(batch), x_hat_grad_ = Buffer(batch * features);
    w_hat_ = Buffer(std::size_t(classes_) * features), w_norms_ = Buffer(std::size_t(classes_));
    w_hat_grad_ = Buffer(std::size_t(classes_) * features);
  }
  void forward(float* out, const float* in, int batch) override {
    const int features = input_.c;
    l2_normalize_forward(x_hat(), x_norms(), in, batch, features);
    l2_normalize_forward(w_hat_.data(), w_norms_.data(), store_->value(weight_), classes_, features);
    cosine_forward(out, x_hat(), w_hat_.data(), batch, features, classes_);
  }
  void backward(float* in_grad, const float* out_grad, const float*, const float*, int batch) override {
    const int features = input_.c;
    cosine_backward(x_hat_grad_.data(), w_hat_grad_.data(), out_grad, x_hat(), w_hat_.data(), batch, features,
                    classes_);
    l2_normalize_backward(store_->grad(weight_), w_hat_grad_.data(), w_hat_.data(), w_norms_.data(), classes_, features,
                          true);
    if (in_grad) l2_normalize_backward(in_grad, x_hat_grad_.data(), x_hat(), x_norms(), batch, features);
  }
  double forward_flops() const override { return 2.0 * input_.c * classes_; }

 private:
  int classes_ = 0;
  int weight_ = -1;
  // This call's samples in the buffers of the last forward (a layer-synchronous pass calls once per micro-batch).
  float* x_hat() { return x_hat_.data() + std::size_t(run_->sample_offset) * std::size_t(input_.c); }
  float* x_norms() { return x_norms_.data() + run_->sample_offset; }
  ParamStore* store_ = nullptr;
  const RunContext* run_ = nullptr;
  // The last forward's normalised input and class centres with their norms (for backward).
  Buffer x_hat_, x_norms_, x_hat_grad_, w_hat_, w_norms_, w_hat_grad_;
};

}  // namespace

std::unique_ptr<Layer> make_l2norm(const LayerArgs& args, const Shape& in, const std::string& path) {
  return std::make_unique<L2Norm>(ArgReader(args, {}, path), in);
}

std::unique_ptr<Layer> make_cosine(const LayerArgs& args, const Shape& in, const std::string& path) {
  return std::make_unique<Cosine>(ArgReader(args, {"classes"}, path), in);
}

}  // namespace mpicnn::core
