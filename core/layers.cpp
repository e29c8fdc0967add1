#include "layers.hpp"

#include <functional>
#include <limits>
#include <set>

#include "errors.hpp"
#include "parse.hpp"

namespace mpicnn::core {
namespace {

// Reads a layer's arguments against its signature, e.g. {"filters", "kernel", "stride=1", "pad=0"}.
class ArgReader {
 public:
  ArgReader(const LayerArgs& args, std::vector<std::string> signature, int position)
      : args_(args), signature_(std::move(signature)), position_(position) {
    if (args.positional.size() > signature_.size()) fail("takes at most " + std::to_string(signature_.size()) + " arguments");
    for (const auto& [key, value] : args.named)
      if (index_of(key) < 0) fail("has no argument '" + key + "'");
  }

  int integer(const std::string& name, int min_value) const {
    const std::string text = raw(name);
    const std::optional<int> parsed = parse_whole<int>(text);
    if (!parsed) fail("argument '" + name + "' must be an integer, got '" + text + "'");
    const int value = *parsed;
    if (value < min_value) fail("argument '" + name + "' must be >= " + std::to_string(min_value) + ", got " + text);
    return value;
  }
  float real(const std::string& name) const {
    const std::string text = raw(name);
    try {
      std::size_t used = 0;
      const float value = std::stof(text, &used);
      if (used == text.size()) return value;
    } catch (const std::exception&) {
    }
    fail("argument '" + name + "' must be a number, got '" + text + "'");
  }
  bool boolean(const std::string& name) const {
    const std::string text = raw(name);
    if (text == "true" || text == "1") return true;
    if (text == "false" || text == "0") return false;
    fail("argument '" + name + "' must be true or false, got '" + text + "'");
  }
  bool given(const std::string& name) const {
    const int i = index_of(name);
    return args_.named.count(name) || i < int(args_.positional.size());
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw ConfigError("layer " + std::to_string(position_) + " '" + args_.kind + "' " + what + " (expected " +
                      args_.kind + "(" + signature_text() + "))");
  }

 private:
  int index_of(const std::string& name) const {
    for (std::size_t i = 0; i < signature_.size(); ++i)
      if (signature_[i].substr(0, signature_[i].find('=')) == name) return int(i);
    return -1;
  }
  std::string raw(const std::string& name) const {
    const int i = index_of(name);
    if (auto it = args_.named.find(name); it != args_.named.end()) {
      if (i < int(args_.positional.size())) fail("argument '" + name + "' given twice");
      return it->second;
    }
    if (i < int(args_.positional.size())) return args_.positional[i];
    const std::string& entry = signature_[i];
    if (entry.find('=') == std::string::npos) fail("is missing argument '" + name + "'");
    return entry.substr(entry.find('=') + 1);
  }
  std::string signature_text() const {
    std::string text;
    for (const auto& s : signature_) text += (text.empty() ? "" : ", ") + s;
    return text;
  }
  const LayerArgs& args_;
  std::vector<std::string> signature_;
  int position_;
};

int pooled_size(int in, int window, int stride, int pad) { return (in + 2 * pad - window) / stride + 1; }

class Conv2D final : public Layer {
 public:
  Conv2D(const ArgReader& a, const Shape& in) {
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
  void declare_params(ParamStore& store, int layer) override {
    const int fan_in = int(g_.col_rows()), fan_out = g_.filters * g_.kernel_h * g_.kernel_w;
    weight_ = store.declare({std::to_string(layer) + ".weight", {g_.filters, g_.in_channels, g_.kernel_h, g_.kernel_w},
                             0, 0, layer, fan_in, fan_out, false});
    if (bias_) bias_index_ = store.declare({std::to_string(layer) + ".bias", {g_.filters}, 0, 0, layer, fan_in, fan_out, true});
  }
  void bind(ParamStore& store, int max_batch) override {
    store_ = &store;
    workspace_ = Buffer(conv2d_workspace_size(g_, max_batch));
  }
  void forward(float* out, const float* in, int batch) override {
    conv2d_forward(out, workspace_.data(), in, store_->value(weight_), bias_ ? store_->value(bias_index_) : nullptr, g_,
                   batch);
  }
  void backward(float* in_grad, const float* out_grad, const float* in, const float*, int batch) override {
    conv2d_backward(in_grad, store_->grad(weight_), bias_ ? store_->grad(bias_index_) : nullptr, workspace_.data(),
                    out_grad, in, store_->value(weight_), g_, batch);
  }
  double forward_flops() const override { return 2.0 * g_.out_size() * g_.col_rows(); }

 private:
  ConvGeometry g_;
  bool bias_ = true;
  int weight_ = -1, bias_index_ = -1;
  ParamStore* store_ = nullptr;
  Buffer workspace_;
};

class Pool2D final : public Layer {
 public:
  Pool2D(const ArgReader& a, const Shape& in, bool is_max) : max_(is_max) {
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
  void bind(ParamStore&, int max_batch) override {
    if (max_) argmax_.assign(std::size_t(max_batch) * g_.out_size(), 0);
  }
  void forward(float* out, const float* in, int batch) override {
    if (max_) maxpool_forward(out, argmax_.data(), in, g_, batch, relu_);
    else avgpool_forward(out, in, g_, batch);
  }
  void backward(float* in_grad, const float* out_grad, const float*, const float* out, int batch) override {
    if (!in_grad) return;
    if (max_) maxpool_backward(in_grad, out_grad, argmax_.data(), g_, batch, relu_ ? out : nullptr);
    else avgpool_backward(in_grad, out_grad, g_, batch);
  }
  bool can_absorb_preceding_relu() const override { return max_; }
  void absorb_preceding_relu() override { relu_ = true; }

 private:
  PoolGeometry g_;
  bool max_;
  bool relu_ = false;  // applies the ReLU before it (absorb_preceding_relu)
  std::vector<std::int32_t> argmax_;
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
      case Activation::leaky_relu: {
        // Shortest text that reads back as the same float: the spec must rebuild this exact model.
        char text[32];
        const auto end = std::to_chars(text, text + sizeof text, slope_).ptr;
        return "leakyrelu(slope=" + std::string(text, end) + ")";
      }
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
    if (in.h != 1 || in.w != 1) a.fail("needs a flat input (C,1,1), got " + in.str() + ": add 'flatten' before it");
    input_ = in;
    output_ = {units_, 1, 1};
  }
  std::string spec() const override {
    return "dense(" + std::to_string(units_) + (bias_ ? "" : ",bias=false") + ")";
  }
  void declare_params(ParamStore& store, int layer) override {
    const int inputs = int(input_.size());
    weight_ = store.declare({std::to_string(layer) + ".weight", {units_, inputs}, 0, 0, layer, inputs, units_, false});
    if (bias_) bias_index_ = store.declare({std::to_string(layer) + ".bias", {units_}, 0, 0, layer, inputs, units_, true});
  }
  void bind(ParamStore& store, int) override { store_ = &store; }
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

using Factory = std::function<std::unique_ptr<Layer>(const LayerArgs&, const Shape&, int)>;

const std::map<std::string, Factory>& factories() {
  static const std::map<std::string, Factory> table = {
      {"conv", [](const LayerArgs& a, const Shape& in, int pos) {
         return std::make_unique<Conv2D>(ArgReader(a, {"filters", "kernel", "stride=1", "pad=0", "bias=true"}, pos), in);
       }},
      {"maxpool", [](const LayerArgs& a, const Shape& in, int pos) {
         return std::make_unique<Pool2D>(ArgReader(a, {"window", "stride=window", "pad=0"}, pos), in, true);
       }},
      {"avgpool", [](const LayerArgs& a, const Shape& in, int pos) {
         return std::make_unique<Pool2D>(ArgReader(a, {"window", "stride=window", "pad=0"}, pos), in, false);
       }},
      {"relu", [](const LayerArgs& a, const Shape& in, int pos) {
         return std::make_unique<ActivationLayer>(ArgReader(a, {}, pos), in, Activation::relu);
       }},
      {"leakyrelu", [](const LayerArgs& a, const Shape& in, int pos) {
         return std::make_unique<ActivationLayer>(ArgReader(a, {"slope=0.01"}, pos), in, Activation::leaky_relu);
       }},
      {"sigmoid", [](const LayerArgs& a, const Shape& in, int pos) {
         return std::make_unique<ActivationLayer>(ArgReader(a, {}, pos), in, Activation::sigmoid);
       }},
      {"tanh", [](const LayerArgs& a, const Shape& in, int pos) {
         return std::make_unique<ActivationLayer>(ArgReader(a, {}, pos), in, Activation::tanh);
       }},
      {"flatten", [](const LayerArgs& a, const Shape& in, int pos) {
         ArgReader(a, {}, pos);
         return std::make_unique<Flatten>(in);
       }},
      {"dense", [](const LayerArgs& a, const Shape& in, int pos) {
         return std::make_unique<Dense>(ArgReader(a, {"units", "bias=true"}, pos), in);
       }},
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

std::unique_ptr<Layer> make_layer(const LayerArgs& args, const Shape& in, int position) {
  const auto it = factories().find(args.kind);
  if (it == factories().end()) {
    std::string known;
    for (const auto& name : known_layer_kinds()) known += (known.empty() ? "" : ", ") + name;
    throw ConfigError("unknown layer '" + args.kind + "' at position " + std::to_string(position) + " (known: " + known + ")");
  }
  return it->second(args, in, position);
}

}  // namespace mpicnn::core
