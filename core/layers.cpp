#include "layers.hpp"

#include <functional>
#include <limits>
#include <set>

#include "arg_reader.hpp"
#include "block_kernels.hpp"
#include "errors.hpp"
#include "pool_layer.hpp"

namespace mpicnn::core {
namespace {

int pooled_size(int in, int window, int stride, int pad) { return (in + 2 * pad - window) / stride + 1; }

// The 2D layers refuse volumes rather than treat depth as more channels or more samples.
void require_image(const ArgReader& a, const Shape& in, const std::string& instead) {
  if (in.is_volume()) a.fail("needs an image input (C,H,W), got volume " + in.str() + " (for volumes use " + instead + ")");
}

class Conv2D final : public Layer {
 public:
  Conv2D(const ArgReader& a, const Shape& in) {
    require_image(a, in, "conv3d");
    const int filters = a.integer("filters", 1), kernel = a.integer("kernel", 1);
    const int stride = a.integer("stride", 1), pad = a.integer("pad", 0);
    bias_ = a.boolean("bias");
    if (in.h + 2 * pad < kernel || in.w + 2 * pad < kernel)
      a.fail("kernel " + std::to_string(kernel) + " with pad " + std::to_string(pad) + " does not fit input " + in.str());
    g_ = {in.c, in.h, in.w, filters, kernel, kernel, stride, pad,
          pooled_size(in.h, kernel, stride, pad), pooled_size(in.w, kernel, stride, pad)};
    input_ = in;
    output_ = {filters, g_.out_h, g_.out_w};
  }
  std::string spec() const override {
    return "conv(" + std::to_string(g_.filters) + "," + std::to_string(g_.kernel_h) + ",stride=" +
           std::to_string(g_.stride) + ",pad=" + std::to_string(g_.pad) + (bias_ ? "" : ",bias=false") + ")";
  }
  void declare(ParamStore& store, StateStore&, const Scope& scope) override {
    const int fan_in = int(g_.col_rows()), fan_out = g_.filters * g_.kernel_h * g_.kernel_w;
    weight_ = store.declare({scope.prefix + "weight", {g_.filters, g_.in_channels, g_.kernel_h, g_.kernel_w}, 0, 0,
                             scope.unit, fan_in, fan_out, ParamRole::weight});
    if (bias_)
      bias_index_ = store.declare({scope.prefix + "bias", {g_.filters}, 0, 0, scope.unit, fan_in, fan_out, ParamRole::bias});
  }
  void bind(const BindContext& context) override {
    store_ = &context.params;
    algorithm_ = choose_conv_algorithm(g_);
    workspace_ = &context.workspace;
    workspace_->reserve(conv2d_workspace_size(g_, context.max_batch, algorithm_));
  }
  void forward(float* out, const float* in, int batch) override {
    conv2d_forward(out, workspace_->data(), in, store_->value(weight_), bias_ ? store_->value(bias_index_) : nullptr, g_,
                   batch, algorithm_);
  }
  void backward(float* in_grad, const float* out_grad, const float* in, const float*, int batch) override {
    conv2d_backward(in_grad, store_->grad(weight_), bias_ ? store_->grad(bias_index_) : nullptr, workspace_->data(),
                    out_grad, in, store_->value(weight_), g_, batch, algorithm_);
  }
  double forward_flops() const override { return 2.0 * g_.out_size() * g_.col_rows(); }

 private:
  ConvGeometry g_;
  bool bias_ = true;
  int weight_ = -1, bias_index_ = -1;
  ParamStore* store_ = nullptr;
  ConvAlgorithm algorithm_ = ConvAlgorithm::direct;
  Workspace* workspace_ = nullptr;
};

class Pool2D final : public PoolLayer<PoolGeometry> {
 public:
  Pool2D(const ArgReader& a, const Shape& in, bool is_max)
      : PoolLayer(is_max, {maxpool_forward<float>, maxpool_backward<float>, avgpool_forward<float>, avgpool_backward<float>}) {
    require_image(a, in, is_max ? "maxpool3d" : "avgpool3d");
    const int window = a.integer("window", 1);
    const int stride = a.given("stride") ? a.integer("stride", 1) : window;
    const int pad = a.integer("pad", 0);
    if (2 * pad > window) a.fail("pad " + std::to_string(pad) + " must be at most half the window " + std::to_string(window));
    if (in.h + 2 * pad < window || in.w + 2 * pad < window)
      a.fail("window " + std::to_string(window) + " does not fit input " + in.str());
    g_ = {in.c, in.h, in.w, window, stride, pad, pooled_size(in.h, window, stride, pad), pooled_size(in.w, window, stride, pad)};
    input_ = in;
    output_ = {in.c, g_.out_h, g_.out_w};
  }
  std::string spec() const override {
    return std::string(max_ ? "maxpool(" : "avgpool(") + std::to_string(g_.window) + ",stride=" +
           std::to_string(g_.stride) + ",pad=" + std::to_string(g_.pad) + ")";
  }
};

class ActivationLayer final : public Layer {
 public:
  ActivationLayer(const ArgReader& a, const Shape& in, Activation kind) : kind_(kind) {
    if (kind == Activation::leaky_relu) slope_ = a.real("slope");
    input_ = output_ = in;
  }
  std::string spec() const override {
    switch (kind_) {
      case Activation::relu: return "relu";
      case Activation::leaky_relu: return "leakyrelu(slope=" + float_text(slope_) + ")";
      case Activation::sigmoid: return "sigmoid";
      case Activation::tanh: return "tanh";
    }
    return "";
  }
  void forward(float* out, const float* in, int batch) override {
    activation_forward(out, in, batch * input_.size(), kind_, slope_);
  }
  void backward(float* in_grad, const float* out_grad, const float* in, const float* out, int batch) override {
    if (in_grad) activation_backward(in_grad, out_grad, in, out, batch * input_.size(), kind_, slope_);
  }

 private:
  Activation kind_;
  float slope_ = 0.f;
};

class Flatten final : public Layer {
 public:
  explicit Flatten(const Shape& in) {
    if (in.size() > std::size_t(std::numeric_limits<int>::max()))
      throw ShapeError("flatten: input " + in.str() + " has more than 2^31 values");
    input_ = in;
    output_ = {int(in.size()), 1, 1};
  }
  std::string spec() const override { return "flatten"; }
  bool is_view() const override { return true; }
  void forward(float* out, const float* in, int batch) override {
    std::copy(in, in + batch * input_.size(), out);
  }
  void backward(float* in_grad, const float* out_grad, const float*, const float*, int batch) override {
    if (in_grad) std::copy(out_grad, out_grad + batch * input_.size(), in_grad);
  }
};

class Dense final : public Layer {
 public:
  Dense(const ArgReader& a, const Shape& in) {
    units_ = a.integer("units", 1);
    bias_ = a.boolean("bias");
    if (in.size() != std::size_t(in.c)) a.fail("needs a flat input (C,1,1), got " + in.str() + ": add 'flatten' before it");
    input_ = in;
    output_ = {units_, 1, 1};
  }
  std::string spec() const override {
    return "dense(" + std::to_string(units_) + (bias_ ? "" : ",bias=false") + ")";
  }
  void declare(ParamStore& store, StateStore&, const Scope& scope) override {
    const int inputs = int(input_.size());
    weight_ = store.declare({scope.prefix + "weight", {units_, inputs}, 0, 0, scope.unit, inputs, units_, ParamRole::weight});
    if (bias_)
      bias_index_ = store.declare({scope.prefix + "bias", {units_}, 0, 0, scope.unit, inputs, units_, ParamRole::bias});
  }
  void bind(const BindContext& context) override { store_ = &context.params; }
  void forward(float* out, const float* in, int batch) override {
    dense_forward(out, in, store_->value(weight_), bias_ ? store_->value(bias_index_) : nullptr, batch,
                  int(input_.size()), units_);
  }
  void backward(float* in_grad, const float* out_grad, const float* in, const float*, int batch) override {
    dense_backward(in_grad, store_->grad(weight_), bias_ ? store_->grad(bias_index_) : nullptr, out_grad, in,
                   store_->value(weight_), batch, int(input_.size()), units_);
  }
  double forward_flops() const override { return 2.0 * input_.size() * units_; }

 private:
  int units_ = 0;
  bool bias_ = true;
  int weight_ = -1, bias_index_ = -1;
  ParamStore* store_ = nullptr;
};

// Global pooling over every spatial position: (C,H,W) or (C,D,H,W) -> (C,1,1), as PyTorch's
// AdaptiveAvgPool2d(1) / AdaptiveMaxPool2d(1), or their 3d forms followed by a flatten to (C,1,1).
class GlobalPool final : public Layer {
 public:
  GlobalPool(const Shape& in, bool is_max) : max_(is_max) {
    g_ = {in.c, in.size() / std::size_t(in.c)};
    input_ = in;
    output_ = {in.c, 1, 1};
  }
  std::string spec() const override { return max_ ? "globalmaxpool" : "globalavgpool"; }
  void bind(const BindContext& context) override {
    if (max_) argmax_.assign(std::size_t(context.max_batch) * g_.channels, 0);
    run_ = &context.run;
  }
  void forward(float* out, const float* in, int batch) override {
    if (max_) global_maxpool_forward(out, argmax(), in, g_, batch);
    else global_avgpool_forward(out, in, g_, batch);
  }
  void backward(float* in_grad, const float* out_grad, const float*, const float*, int batch) override {
    if (!in_grad) return;
    if (max_) global_maxpool_backward(in_grad, out_grad, argmax(), g_, batch);
    else global_avgpool_backward(in_grad, out_grad, g_, batch);
  }

 private:
  std::int32_t* argmax() { return argmax_.data() + std::size_t(run_->sample_offset) * std::size_t(g_.channels); }
  NormGeometry g_;
  bool max_;
  std::vector<std::int32_t> argmax_;  // (max_batch, C) of the last forward
  const RunContext* run_ = nullptr;
};

// FNV-1a of a layer's name prefix: a dropout layer's stream, stable for a given spec.
std::uint64_t name_hash(const std::string& name) {
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ULL;
  return h;
}

// Inverted dropout; the identity in evaluation. The mask is recomputed in backward from the run
// context (it is a pure function of it), so nothing is stored between the passes.
class Dropout final : public Layer {
 public:
  Dropout(const ArgReader& a, const Shape& in) {
    p_ = a.real("p");
    if (!(p_ >= 0.f && p_ < 1.f)) a.fail("argument 'p' must be in [0, 1), got " + float_text(p_));
    input_ = output_ = in;
  }
  std::string spec() const override { return "dropout(" + float_text(p_) + ")"; }
  void declare(ParamStore&, StateStore&, const Scope& scope) override { layer_ = name_hash(scope.prefix); }
  void bind(const BindContext& context) override { run_ = &context.run; }
  void forward(float* out, const float* in, int batch) override {
    const std::size_t n = std::size_t(batch) * input_.size();
    if (!run_->training || p_ == 0.f) std::copy(in, in + n, out);
    else dropout_forward(out, in, input_.size(), batch, p_, key());
  }
  void backward(float* in_grad, const float* out_grad, const float*, const float*, int batch) override {
    if (!in_grad) return;
    const std::size_t n = std::size_t(batch) * input_.size();
    if (!run_->training || p_ == 0.f) std::copy(out_grad, out_grad + n, in_grad);
    else dropout_backward(in_grad, out_grad, input_.size(), batch, p_, key());
  }

 private:
  DropoutKey key() const { return {run_->seed, layer_, run_->step, run_->first_sample}; }
  float p_ = 0.5f;
  std::uint64_t layer_ = 0;
  const RunContext* run_ = nullptr;
};

using Factory = std::function<std::unique_ptr<Layer>(const LayerArgs&, const Shape&, const std::string&)>;

// A layer kind without braces; composites (residual, repeat) are the only ones that take them.
template <class Make>
Factory plain(Make make) {
  return [make](const LayerArgs& a, const Shape& in, const std::string& path) -> std::unique_ptr<Layer> {
    if (a.has_braces) throw ConfigError("layer " + path + " '" + a.kind + "' takes no {...} block (only residual and repeat do)");
    return make(a, in, path);
  };
}

const std::map<std::string, Factory>& factories() {
  using Path = const std::string&;
  static const std::map<std::string, Factory> table = {
      {"conv", plain([](const LayerArgs& a, const Shape& in, Path path) {
         return std::make_unique<Conv2D>(ArgReader(a, {"filters", "kernel", "stride=1", "pad=0", "bias=true"}, path), in);
       })},
      {"maxpool", plain([](const LayerArgs& a, const Shape& in, Path path) {
         return std::make_unique<Pool2D>(ArgReader(a, {"window", "stride=window", "pad=0"}, path), in, true);
       })},
      {"avgpool", plain([](const LayerArgs& a, const Shape& in, Path path) {
         return std::make_unique<Pool2D>(ArgReader(a, {"window", "stride=window", "pad=0"}, path), in, false);
       })},
      {"globalavgpool", plain([](const LayerArgs& a, const Shape& in, Path path) {
         ArgReader(a, {}, path);
         return std::make_unique<GlobalPool>(in, false);
       })},
      {"globalmaxpool", plain([](const LayerArgs& a, const Shape& in, Path path) {
         ArgReader(a, {}, path);
         return std::make_unique<GlobalPool>(in, true);
       })},
      {"relu", plain([](const LayerArgs& a, const Shape& in, Path path) {
         return std::make_unique<ActivationLayer>(ArgReader(a, {}, path), in, Activation::relu);
       })},
      {"leakyrelu", plain([](const LayerArgs& a, const Shape& in, Path path) {
         return std::make_unique<ActivationLayer>(ArgReader(a, {"slope=0.01"}, path), in, Activation::leaky_relu);
       })},
      {"sigmoid", plain([](const LayerArgs& a, const Shape& in, Path path) {
         return std::make_unique<ActivationLayer>(ArgReader(a, {}, path), in, Activation::sigmoid);
       })},
      {"tanh", plain([](const LayerArgs& a, const Shape& in, Path path) {
         return std::make_unique<ActivationLayer>(ArgReader(a, {}, path), in, Activation::tanh);
       })},
      {"flatten", plain([](const LayerArgs& a, const Shape& in, Path path) {
         ArgReader(a, {}, path);
         return std::make_unique<Flatten>(in);
       })},
      {"dense", plain([](const LayerArgs& a, const Shape& in, Path path) {
         return std::make_unique<Dense>(ArgReader(a, {"units", "bias=true"}, path), in);
       })},
      {"dropout", plain([](const LayerArgs& a, const Shape& in, Path path) {
         return std::make_unique<Dropout>(ArgReader(a, {"p=0.5"}, path), in);
       })},
      {"conv3d", plain(make_conv3d)},
      {"maxpool3d", plain(make_maxpool3d)},
      {"avgpool3d", plain(make_avgpool3d)},
      {"bn", plain(make_batchnorm)},
      {"l2norm", plain(make_l2norm)},
      {"cosine", plain(make_cosine)},
      {"residual", make_residual},
      {"repeat", make_repeat},
  };
  return table;
}

}  // namespace

const std::vector<std::string>& known_layer_kinds() {
  static const std::vector<std::string> kinds = [] {
    std::vector<std::string> names;
    for (const auto& [name, factory] : factories()) names.push_back(name);
    return names;
  }();
  return kinds;
}

std::unique_ptr<Layer> make_layer(const LayerArgs& args, const Shape& in, const std::string& path) {
  const auto it = factories().find(args.kind);
  if (it == factories().end()) {
    std::string known;
    for (const auto& name : known_layer_kinds()) known += (known.empty() ? "" : ", ") + name;
    throw ConfigError("unknown layer '" + args.kind + "' at position " + path + " (known: " + known + ")");
  }
  return it->second(args, in, path);
}

std::size_t params_under(const ParamStore& params, const std::string& prefix) {
  std::size_t n = 0;
  for (const auto& p : params.infos())
    if (p.name.compare(0, prefix.size(), prefix) == 0) n += p.size;
  return n;
}

}  // namespace mpicnn::core
