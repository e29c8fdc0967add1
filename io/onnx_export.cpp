#include "io/onnx_export.hpp"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <variant>

#include "core/batchnorm.hpp"
#include "core/blocks.hpp"
#include "core/embedding_kernels.hpp"
#include "core/errors.hpp"
#include "core/task.hpp"
#include "io/bundle.hpp"
#include "io/checkpoint.hpp"
#include "io/loss_io.hpp"

namespace fs = std::filesystem;

namespace mpicnn::io {
namespace {

// raw_data of a TensorProto is little-endian; the arena is copied into it byte for byte.
static_assert(std::endian::native == std::endian::little, "ONNX raw_data export assumes a little-endian host");

// IR version 7 is the one that came with opset 13: the oldest pair every current runtime reads.
constexpr std::int64_t kIrVersion = 7;

using Dim = std::variant<std::int64_t, std::string>;  // a size, or a symbolic name such as "N"

void set_tensor_type(onnx::ValueInfoProto* value, const std::string& name, const std::vector<Dim>& dims) {
  value->set_name(name);
  onnx::TypeProto_Tensor* tensor = value->mutable_type()->mutable_tensor_type();
  tensor->set_elem_type(onnx::TensorProto::FLOAT);
  for (const Dim& d : dims) {
    onnx::TensorShapeProto_Dimension* dim = tensor->mutable_shape()->add_dim();
    if (std::holds_alternative<std::string>(d)) dim->set_dim_param(std::get<std::string>(d));
    else dim->set_dim_value(std::get<std::int64_t>(d));
  }
}

void add_ints(onnx::NodeProto* node, const std::string& name, const std::vector<std::int64_t>& values) {
  onnx::AttributeProto* a = node->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (std::int64_t v : values) a->add_ints(v);
}
void add_int(onnx::NodeProto* node, const std::string& name, std::int64_t value) {
  onnx::AttributeProto* a = node->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(value);
}
void add_float(onnx::NodeProto* node, const std::string& name, float value) {
  onnx::AttributeProto* a = node->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(value);
}

// Shortest text that reads back as the same double.
std::string join_numbers(const std::vector<double>& values) {
  std::string text;
  char number[32];
  for (double v : values) {
    const auto end = std::to_chars(number, number + sizeof number, v).ptr;
    if (!text.empty()) text += ',';
    text.append(number, end);
  }
  return text;
}

std::string json_strings(const std::vector<std::string>& values) {
  std::string text = "[";
  for (std::size_t i = 0; i < values.size(); ++i) {
    text += i ? ", \"" : "\"";
    for (unsigned char c : values[i]) {
      if (c == '"' || c == '\\') text += '\\', text += char(c);
      else if (c < 0x20) {
        char escaped[8];
        std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
        text += escaped;
      } else text += char(c);
    }
    text += "\"";
  }
  return text + "]";
}

// Appends nodes to a graph, naming each produced tensor and recording its shape (without the batch
// dimension) so that every intermediate gets a value_info that strict shape inference checks.
class GraphBuilder {
 public:
  explicit GraphBuilder(onnx::GraphProto* graph) : graph_(graph) {}

  onnx::NodeProto* node(const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                        const std::vector<std::int64_t>& output_dims) {
    onnx::NodeProto* n = graph_->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (const auto& input : inputs) n->add_input(input);
    n->add_output(name);
    produced_.push_back({name, output_dims});
    return n;
  }

  // A node computing from initializers only (a parameter's transform): its output has no batch
  // dimension.
  onnx::NodeProto* constant_node(const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                                 const std::vector<std::int64_t>& output_dims) {
    onnx::NodeProto* n = node(op, name, inputs, output_dims);
    produced_.pop_back();
    constants_.push_back({name, output_dims});
    return n;
  }

  void initializer(const std::string& name, const std::vector<std::int64_t>& dims, const float* values, std::size_t n) {
    onnx::TensorProto* t = graph_->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (std::int64_t d : dims) t->add_dims(d);
    t->set_raw_data(values, n * sizeof(float));
  }
  void initializer(const std::string& name, const std::vector<std::int64_t>& values) {
    onnx::TensorProto* t = graph_->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    t->add_dims(std::int64_t(values.size()));
    t->set_raw_data(values.data(), values.size() * sizeof(std::int64_t));
  }

  // Tensor `last`, the last node's output, becomes the graph output `name`; value_info for every
  // other tensor.
  void finish(const std::string& last, const std::string& name) {
    onnx::NodeProto* node = graph_->mutable_node(graph_->node_size() - 1);
    if (node->output(0) != last)
      throw Error("ONNX export: the graph ends in '" + last + "' but its last node makes '" + node->output(0) +
                  "' (an exporter bug, please report it)");
    node->set_output(0, name);
    produced_.pop_back();
    for (const auto& [tensor, dims] : produced_) {
      std::vector<Dim> full = {std::string("N")};
      full.insert(full.end(), dims.begin(), dims.end());
      set_tensor_type(graph_->add_value_info(), tensor, full);
    }
    for (const auto& [tensor, dims] : constants_) set_tensor_type(graph_->add_value_info(), tensor, {dims.begin(), dims.end()});
  }

 private:
  onnx::GraphProto* graph_;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> produced_, constants_;
};

// One sample's dims: [C,H,W] for an image, [C,D,H,W] for a volume.
std::vector<std::int64_t> chw(const core::Shape& s) {
  if (s.is_volume()) return {s.c, s.d, s.h, s.w};
  return {s.c, s.h, s.w};
}

// n copies of value (an attribute per spatial axis).
std::vector<std::int64_t> per_axis(std::size_t n, int value) { return std::vector<std::int64_t>(n, value); }

const std::string& named_text(const core::LayerArgs& a, const std::string& key) {
  const auto it = a.named.find(key);
  if (it == a.named.end()) throw Error("ONNX export: layer '" + a.kind + "' has no '" + key + "' in its canonical spec");
  return it->second;
}

// A size per spatial axis as the canonical spec writes it: "3" for every axis, or "1x3x3" (3d layers).
std::vector<std::int64_t> axis_sizes(const std::string& text, std::size_t axes) {
  std::vector<std::int64_t> sizes;
  for (std::size_t begin = 0; begin <= text.size();) {
    const std::size_t x = std::min(text.find('x', begin), text.size());
    sizes.push_back(std::stoll(text.substr(begin, x - begin)));
    begin = x + 1;
  }
  if (sizes.size() == 1) sizes.assign(axes, sizes[0]);
  if (sizes.size() != axes) throw Error("ONNX export: '" + text + "' gives " + std::to_string(sizes.size()) +
                                        " sizes for " + std::to_string(axes) + " axes");
  return sizes;
}
// ONNX pads: every axis's begin, then every axis's end (the engine pads both sides alike).
std::vector<std::int64_t> both_sides(std::vector<std::int64_t> pads) {
  const std::size_t n = pads.size();
  for (std::size_t i = 0; i < n; ++i) pads.push_back(pads[i]);
  return pads;
}

// The value flowing between nodes: a tensor name, [N,F] when flat (after flatten or dense; the
// engine's (F,1,1)), else [N,C,H,W] or [N,C,D,H,W].
struct Value {
  std::string tensor;
  bool flat = false;
};

// Walks the model's layer tree as the engine declares it (core/blocks.hpp): a layer at name prefix
// "3.main.0." owns the parameters "3.main.0.weight"/"3.main.0.bias" and the state
// "3.main.0.running_mean"/"3.main.0.running_var", and its nodes are named "layer3.main.0_<kind>".
class LayerExporter {
 public:
  LayerExporter(GraphBuilder& g, const core::Model& model) : g_(g), model_(model) {
    const auto& params = model.params().infos();
    for (std::size_t i = 0; i < params.size(); ++i) params_[params[i].name] = &params[i];
    const auto& state = model.state().infos();
    for (std::size_t i = 0; i < state.size(); ++i) (state[i].counter ? counters_ : state_)[state[i].name] = int(i);
  }

  // The top-level layers from `x`; then checks that every parameter and running statistic found
  // its node, so a walk that lost a branch cannot pass for a smaller model.
  Value model(Value x) {
    x = chain(model_.layers(), "", x);
    for (const auto& [name, info] : params_)
      if (!used_.count(name)) internal("parameter '" + name + "' is in no node");
    for (const auto& [name, index] : state_)
      if (!used_.count(name)) internal("state tensor '" + name + "' is in no node");
    return x;
  }
  std::size_t parameters() const { return parameters_; }

  // The kinds of leaf layers this exporter maps (composites: residual, repeat).
  static const std::vector<std::string>& leaf_kinds() {
    static const std::vector<std::string> kinds = {"avgpool", "avgpool3d", "bn", "conv", "conv3d", "cosine", "dense",
                                                   "dropout", "flatten", "globalavgpool", "globalmaxpool", "l2norm",
                                                   "leakyrelu", "maxpool", "maxpool3d", "relu", "sigmoid", "tanh"};
    return kinds;
  }

 private:
  // Layer i of a sequence at prefix p has prefix p + "i." (core::Sequential::declare).
  Value chain(const std::vector<std::unique_ptr<core::Layer>>& layers, const std::string& prefix, Value x) {
    for (std::size_t i = 0; i < layers.size(); ++i) x = layer(*layers[i], prefix + std::to_string(i) + ".", x);
    return x;
  }

  Value layer(const core::Layer& layer, const std::string& prefix, Value x) {
    if (const auto* seq = dynamic_cast<const core::Sequential*>(&layer)) return chain(seq->children(), prefix, x);
    // repeat(n): copy k is a Sequential at prefix + "k.", one after the other.
    if (const auto* repeat = dynamic_cast<const core::Repeat*>(&layer)) return chain(repeat->body().children(), prefix, x);
    if (const auto* residual = dynamic_cast<const core::Residual*>(&layer)) return add_residual(*residual, prefix, x);
    if (const auto* bn = dynamic_cast<const core::BatchNorm*>(&layer)) return add_batchnorm(*bn, prefix, x);
    return add_leaf(layer, prefix, x);
  }

  // Both branches from the same input, then Add (an identity shortcut adds the input itself).
  Value add_residual(const core::Residual& residual, const std::string& prefix, Value x) {
    const std::string name = node_name(prefix, "residual");
    Value main = chain(residual.main_branch().children(), prefix + "main.", x);
    Value other = residual.shortcut_branch() ? chain(residual.shortcut_branch()->children(), prefix + "shortcut.", x) : x;
    // Both are (C,1,1) in the engine but one may be [N,C] here: Add would broadcast [N,C] against
    // [N,C,1,1] to [N,C,N,C], so the one that is not flat is flattened.
    if (main.flat != other.flat) {
      Value& spatial = main.flat ? other : main;
      spatial = flatten(spatial, name + (main.flat ? "_shortcut_flatten" : "_main_flatten"), residual.output_shape());
    }
    return {g_.node("Add", name, {main.tensor, other.tensor}, dims(residual.output_shape(), main.flat))->output(0),
            main.flat};
  }

  // Evaluation semantics: y = scale * (x - running_mean) / sqrt(running_var + epsilon) + B.
  Value add_batchnorm(const core::BatchNorm& bn, const std::string& prefix, Value x) {
    if (bn.prefix() != prefix) internal("BatchNorm declared as '" + bn.prefix() + "' is walked as '" + prefix + "'");
    // Statistics never committed are the initial mean 0 and variance 1: a graph with them would
    // not be the trained model (a checkpoint written without BatchNorm state loads so).
    const std::string batches = prefix + "num_batches_tracked";
    const auto counter = counters_.find(batches);
    if (counter == counters_.end()) internal("layer " + user_path(prefix) + " 'bn' has no state '" + batches + "'");
    if (model_.state().counter(counter->second) == 0)
      throw Error("ONNX export: layer " + user_path(prefix) + " '" + bn.spec() + "' has running statistics that were "
                  "never updated (" + batches + " = 0): the graph would normalise with mean 0 and variance 1, not "
                  "with the training data's");
    const std::string name = node_name(prefix, "bn");
    const int channels = bn.input_shape().c;
    std::string scale = prefix + "scale_ones", shift = prefix + "shift_zeros";
    if (bn.affine()) {
      scale = add_param(bn, prefix, "weight");
      shift = add_param(bn, prefix, "bias");
    } else {  // affine=false: no weight or bias in the model (nor in PyTorch's state_dict)
      const std::vector<float> ones(std::size_t(channels), 1.f), zeros(std::size_t(channels), 0.f);
      g_.initializer(scale, {channels}, ones.data(), ones.size());
      g_.initializer(shift, {channels}, zeros.data(), zeros.size());
    }
    const std::string mean = add_state(bn, prefix, "running_mean"), var = add_state(bn, prefix, "running_var");
    // [N,C] (a BN after dense) is an input BatchNormalization takes as it is.
    onnx::NodeProto* n = g_.node("BatchNormalization", name, {x.tensor, scale, shift, mean, var},
                                 dims(bn.output_shape(), x.flat));
    add_float(n, "epsilon", bn.eps());
    return {name, x.flat};
  }

  Value add_leaf(const core::Layer& layer, const std::string& prefix, Value x) {
    const core::LayerArgs a = core::parse_spec(layer.spec()).at(0);
    const std::string name = node_name(prefix, a.kind);
    const core::Shape in = layer.input_shape(), out = layer.output_shape();
    const bool is_conv = a.kind == "conv" || a.kind == "conv3d";
    const bool is_pool = a.kind == "maxpool" || a.kind == "avgpool" || a.kind == "maxpool3d" || a.kind == "avgpool3d";
    const bool spatial = is_conv || is_pool || a.kind == "globalavgpool" || a.kind == "globalmaxpool";
    if (spatial && x.flat) {  // a dense output (units,1,1) feeding a spatial layer: back to [N,units,1,1]
      if (!have_axes_) g_.initializer("unsqueeze_axes_hw", {2, 3}), have_axes_ = true;
      x = {g_.node("Unsqueeze", name + "_to_nchw", {x.tensor, "unsqueeze_axes_hw"}, chw(in))->output(0), false};
    }
    // 2 spatial axes (H,W) for conv/maxpool/avgpool, 3 (D,H,W) for their 3d forms.
    const std::size_t axes = a.kind.ends_with("3d") ? 3 : 2;
    if (is_conv) {
      const std::string weight = add_param(layer, prefix, "weight");
      std::vector<std::string> inputs = {x.tensor, weight};
      if (params_.count(prefix + "bias")) inputs.push_back(add_param(layer, prefix, "bias"));
      const std::vector<int>& w = params_.at(weight)->dims;  // (K,C,R,S) or (K,C,T,R,S)
      onnx::NodeProto* n = g_.node("Conv", name, inputs, chw(out));
      add_ints(n, "kernel_shape", std::vector<std::int64_t>(w.begin() + 2, w.end()));
      add_ints(n, "strides", axis_sizes(named_text(a, "stride"), axes));
      add_ints(n, "pads", both_sides(axis_sizes(named_text(a, "pad"), axes)));
      add_ints(n, "dilations", per_axis(axes, 1));
      add_int(n, "group", 1);
      return {name, false};
    }
    if (is_pool) {
      const bool is_max = a.kind.starts_with("max");
      onnx::NodeProto* n = g_.node(is_max ? "MaxPool" : "AveragePool", name, {x.tensor}, chw(out));
      add_ints(n, "kernel_shape", axis_sizes(a.positional.at(0), axes));
      add_ints(n, "strides", axis_sizes(named_text(a, "stride"), axes));
      add_ints(n, "pads", both_sides(axis_sizes(named_text(a, "pad"), axes)));
      add_int(n, "ceil_mode", 0);
      // Our average divides by the whole window also where it covers padding (PyTorch's default).
      if (!is_max) add_int(n, "count_include_pad", 1);
      return {name, false};
    }
    if (a.kind == "globalavgpool" || a.kind == "globalmaxpool") {
      const char* op = a.kind == "globalavgpool" ? "GlobalAveragePool" : "GlobalMaxPool";
      if (!in.is_volume()) return {g_.node(op, name, {x.tensor}, chw(out))->output(0), false};
      // [N,C,1,1,1] from a volume, where the engine has (C,1,1): flat from here on, as after dense.
      g_.node(op, name, {x.tensor}, {in.c, 1, 1, 1});
      return flatten({name, false}, name + "_flatten", out);
    }
    if (a.kind == "relu" || a.kind == "leakyrelu" || a.kind == "sigmoid" || a.kind == "tanh") {
      const char* op = a.kind == "relu" ? "Relu" : a.kind == "leakyrelu" ? "LeakyRelu" : a.kind == "sigmoid" ? "Sigmoid" : "Tanh";
      onnx::NodeProto* n = g_.node(op, name, {x.tensor}, dims(out, x.flat));
      // The model runs with the float the canonical spec's text parses to; so does the graph.
      if (a.kind == "leakyrelu") add_float(n, "alpha", std::stof(a.named.at("slope")));
      return {name, x.flat};
    }
    if (a.kind == "dropout") return x;  // the identity in evaluation: no node
    if (a.kind == "l2norm") {
      if (!x.flat) x = flatten(x, name + "_flatten", in);
      return {normalize(x.tensor, name, {std::int64_t(in.size())}, false), true};
    }
    if (a.kind == "cosine") return add_cosine(layer, prefix, x.flat ? x : flatten(x, name + "_flatten", in), name);
    if (a.kind == "flatten") return x.flat ? x : flatten(x, name, out);
    if (a.kind == "dense") {
      if (!x.flat) x = flatten(x, name + "_flatten", in);  // dense reads a (C,1,1) input as C features
      const std::string weight = add_param(layer, prefix, "weight");
      std::vector<std::string> inputs = {x.tensor, weight};
      if (params_.count(prefix + "bias")) inputs.push_back(add_param(layer, prefix, "bias"));
      onnx::NodeProto* n = g_.node("Gemm", name, inputs, {std::int64_t(out.size())});
      add_float(n, "alpha", 1.0f);
      add_float(n, "beta", 1.0f);
      add_int(n, "transA", 0);
      add_int(n, "transB", 1);  // weight is (out,in), as PyTorch's Linear
      return {name, true};
    }
    std::string known;
    for (const auto& kind : leaf_kinds()) known += (known.empty() ? "" : ", ") + kind;
    throw Error("ONNX export: layer " + user_path(prefix) + " '" + layer.spec() + "' has no ONNX mapping (exported: " +
                known + ", residual, repeat)");
  }

  // F.normalize over axis 1 of `x`: x / max(||x||, eps). A parameter (constant) has no batch
  // dimension: its nodes get the full `dims`.
  std::string normalize(const std::string& x, const std::string& name, const std::vector<std::int64_t>& dims,
                        bool constant) {
    if (!have_eps_) {
      const float eps = float(core::kNormalizeEps);
      g_.initializer("normalize_eps", {}, &eps, 1), have_eps_ = true;
    }
    std::vector<std::int64_t> norm_dims = dims;
    norm_dims.back() = 1;
    auto make = [&](const char* op, const std::string& node, const std::vector<std::string>& inputs,
                    const std::vector<std::int64_t>& out) {
      return constant ? g_.constant_node(op, node, inputs, out) : g_.node(op, node, inputs, out);
    };
    onnx::NodeProto* norm = make("ReduceL2", name + "_norm", {x}, norm_dims);
    add_ints(norm, "axes", {1});
    add_int(norm, "keepdims", 1);
    make("Max", name + "_clamp", {name + "_norm", "normalize_eps"}, norm_dims);
    return make("Div", name, {x, name + "_clamp"}, dims)->output(0);
  }

  // cosine(n): Gemm of the normalised input and the normalised class centres, the raw weight (as
  // PyTorch's state_dict holds it) normalised inside the graph.
  Value add_cosine(const core::Layer& layer, const std::string& prefix, const Value& x, const std::string& name) {
    const std::string weight = add_param(layer, prefix, "weight");
    const std::vector<int>& w = params_.at(weight)->dims;
    const std::string centres = normalize(weight, name + "_centres", {w[0], w[1]}, true);
    const std::string x_hat = normalize(x.tensor, name + "_input", {w[1]}, false);
    add_int(g_.node("Gemm", name, {x_hat, centres}, {std::int64_t(w[0])}), "transB", 1);
    return {name, true};
  }

  Value flatten(const Value& x, const std::string& name, const core::Shape& shape) {
    add_int(g_.node("Flatten", name, {x.tensor}, {std::int64_t(shape.size())}), "axis", 1);
    return {name, true};
  }

  // A parameter as an initializer under its own (PyTorch state_dict) name.
  std::string add_param(const core::Layer& layer, const std::string& prefix, const std::string& what) {
    const std::string name = prefix + what;
    const auto it = params_.find(name);
    if (it == params_.end()) internal("layer " + user_path(prefix) + " '" + layer.spec() + "' has no parameter '" + name + "'");
    const core::ParamInfo& p = *it->second;
    g_.initializer(name, {p.dims.begin(), p.dims.end()}, model_.params().values().data() + p.offset, p.size);
    used_.insert(name);
    parameters_ += p.size;
    return name;
  }
  std::string add_state(const core::Layer& layer, const std::string& prefix, const std::string& what) {
    const std::string name = prefix + what;
    const auto it = state_.find(name);
    if (it == state_.end()) internal("layer " + user_path(prefix) + " '" + layer.spec() + "' has no state '" + name + "'");
    const core::StateInfo& s = model_.state().infos()[std::size_t(it->second)];
    g_.initializer(name, {s.dims.begin(), s.dims.end()}, model_.state().value(it->second), s.size);
    used_.insert(name);
    return name;
  }

  static std::vector<std::int64_t> dims(const core::Shape& s, bool flat) {
    return flat ? std::vector<std::int64_t>{std::int64_t(s.size())} : chw(s);
  }
  // "3.main.0." -> "layer3.main.0_conv": the parameter names' path, so a node and its weights
  // read alike (top-level nodes keep their old names, "layer3_conv").
  static std::string node_name(const std::string& prefix, const std::string& kind) {
    return "layer" + prefix.substr(0, prefix.size() - 1) + "_" + kind;
  }
  // The 1-based path the engine's spec errors use ("4.main.1" for prefix "3.main.0.").
  static std::string user_path(const std::string& prefix) {
    std::string path, part;
    for (char c : prefix) {
      if (c != '.') {
        part += c;
        continue;
      }
      const bool number = !part.empty() && part.find_first_not_of("0123456789") == std::string::npos;
      if (!path.empty()) path += '.';
      path += number ? std::to_string(std::stoi(part) + 1) : part;
      part.clear();
    }
    return path;
  }
  [[noreturn]] static void internal(const std::string& what) {
    throw Error("ONNX export: " + what + " (an exporter bug, please report it)");
  }

  GraphBuilder& g_;
  const core::Model& model_;
  std::map<std::string, const core::ParamInfo*> params_;
  std::map<std::string, int> state_;     // float tensors: initializers
  std::map<std::string, int> counters_;  // num_batches_tracked: checked, not exported
  std::set<std::string> used_;
  std::size_t parameters_ = 0;
  bool have_axes_ = false;
  bool have_eps_ = false;
};

// The layers of `model` as ONNX nodes, from tensor "input_normalized" to a [N,K] output, or to
// the model's own [N,C,H,W] when `keep_grid` (a detector's cells).
Value add_layers(GraphBuilder& g, const core::Model& model, bool keep_grid, std::size_t* parameters) {
  LayerExporter exporter(g, model);
  Value x = exporter.model({"input_normalized", false});
  if (!x.flat && !keep_grid) {
    add_int(g.node("Flatten", "output_flatten", {x.tensor}, {std::int64_t(model.output_shape().size())}), "axis", 1);
    x = {"output_flatten", true};
  }
  *parameters = exporter.parameters();
  return x;
}

void add_metadata(onnx::ModelProto& m, const std::string& key, const std::string& value) {
  onnx::StringStringEntryProto* entry = m.add_metadata_props();
  entry->set_key(key);
  entry->set_value(value);
}

onnx::ModelProto build_model(const CheckpointHeader& h, const core::Model& model, const std::string& sha256,
                             const OnnxExportOptions& options, OnnxExportSummary* summary) {
  // The task says how logits become predictions: Softmax over classes, Sigmoid per label; a
  // detector's output keeps its grid of cells, decoded outside the graph (README).
  const std::unique_ptr<core::Task> task = task_of(h.model, h.path);
  const std::string postprocess = options.probabilities && !options.embedding ? task->onnx_postprocess() : "";
  const std::string output = options.embedding ? "embedding" : "logits";
  const std::string spec = options.embedding ? model.canonical_spec() : h.model.spec;
  const bool classify = !postprocess.empty(), grid = !options.embedding && task->needs_boxes();
  const core::Shape out_shape = model.output_shape();
  const std::string source = fs::path(h.path).filename().string();
  const core::Shape input = h.model.input;
  const std::int64_t k = std::int64_t(model.output_shape().size());

  onnx::ModelProto m;
  m.set_ir_version(kIrVersion);
  m.set_producer_name("mpicnn");
  m.set_producer_version(MPICNN_VERSION);
  m.set_model_version(h.trainer.global_step);
  onnx::OperatorSetIdProto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOnnxOpset);
  const std::string sample_dims = std::to_string(input.c) + "," + (input.is_volume() ? std::to_string(input.d) + "," : "") +
                                  std::to_string(input.h) + "," + std::to_string(input.w);
  m.set_doc_string(
      std::string("mpicnn ") + MPICNN_VERSION + " model exported from checkpoint " + source + " (SHA-256 " + sha256 +
      "). Input 'input': float32 [N," + sample_dims + "] (" + (input.is_volume() ? "NCDHW" : "NCHW") +
      ", N = any batch size) holding " + (input.is_volume() ? "volumes" : "images") + " on the scale the training reader "
      "fed the network before normalising: " + kInputScaling +
      " (mean and std in metadata; the graph normalises itself, do not normalise again). " +
      (options.embedding ? "Output 'embedding': float32 [N," + std::to_string(k) +
                               "], the model's embedding (the output of its layers up to the embedding head; metadata "
                               "'source_spec' is the whole model)."
       : grid ? "Output 'logits': float32 [N," + std::to_string(out_shape.c) + "," + std::to_string(out_shape.h) + "," +
                    std::to_string(out_shape.w) +
                    "], the detector head's raw outputs per cell (class logits, 4 box distances, centerness; decode as "
                    "README 'Object detection' states)."
              : "Output 'logits': float32 [N," + std::to_string(k) + "], the network's raw outputs.") +
      (postprocess == "Softmax" ? " Output 'probabilities': softmax of the logits over axis 1, classes in the order "
                                  "of metadata 'class_names'."
       : postprocess == "Sigmoid" ? " Output 'probabilities': the sigmoid of each logit, one probability per label "
                                    "(multi-label), labels in the order of metadata 'class_names'."
                                  : ""));

  onnx::GraphProto* graph = m.mutable_graph();
  graph->set_name("mpicnn");
  graph->set_doc_string(spec);
  std::vector<Dim> input_dims = {std::string("N")};
  for (std::int64_t d : chw(input)) input_dims.push_back(d);
  set_tensor_type(graph->add_input(), "input", input_dims);

  GraphBuilder g(graph);
  std::vector<float> mean(h.model.mean.begin(), h.model.mean.end()), std_dev(h.model.std.begin(), h.model.std.end());
  if (mean.size() != std::size_t(input.c) || std_dev.size() != std::size_t(input.c))
    throw IoError(h.path + ": /model mean and std need " + std::to_string(input.c) + " values, one per input channel");
  // [1,C,1,1] or [1,C,1,1,1]: broadcast over the sample's spatial axes.
  std::vector<std::int64_t> per_channel(chw(input).size() + 1, 1);
  per_channel[1] = input.c;
  g.initializer("mean", per_channel, mean.data(), mean.size());
  g.initializer("std", per_channel, std_dev.data(), std_dev.size());
  g.node("Sub", "input_centered", {"input", "mean"}, chw(input));
  g.node("Div", "input_normalized", {"input_centered", "std"}, chw(input));
  const Value logits = add_layers(g, model, grid, &summary->parameters);
  g.finish(logits.tensor, output);
  if (grid) {
    set_tensor_type(graph->add_output(), output,
                    {std::string("N"), std::int64_t(out_shape.c), std::int64_t(out_shape.h), std::int64_t(out_shape.w)});
  } else {
    set_tensor_type(graph->add_output(), output, {std::string("N"), k});
  }
  summary->outputs = {output};
  if (classify) {
    onnx::NodeProto* node = graph->add_node();
    node->set_op_type(postprocess);
    node->set_name("probabilities");
    node->add_input("logits");
    node->add_output("probabilities");
    if (postprocess == "Softmax") add_int(node, "axis", 1);
    set_tensor_type(graph->add_output(), "probabilities", {std::string("N"), k});
    summary->outputs.push_back("probabilities");
  }
  summary->nodes = graph->node_size();

  add_metadata(m, "mpicnn_version", MPICNN_VERSION);
  add_metadata(m, "spec", spec);
  if (options.embedding) add_metadata(m, "source_spec", h.model.spec);
  add_metadata(m, "input_shape", sample_dims);
  add_metadata(m, "input_scaling", kInputScaling);
  add_metadata(m, "mean", join_numbers(h.model.mean));
  add_metadata(m, "std", join_numbers(h.model.std));
  add_metadata(m, "loss", h.model.loss);
  add_metadata(m, "loss_description", loss_description(h.model));
  add_metadata(m, "class_names", json_strings(h.model.class_names));
  add_metadata(m, "outputs", classify ? "logits,probabilities" : output);
  add_metadata(m, "source_checkpoint", source);
  add_metadata(m, "source_checkpoint_sha256", sha256);
  add_metadata(m, "source_created", h.created);
  add_metadata(m, "source_global_step", std::to_string(h.trainer.global_step));
  for (const auto& [name, value] : h.metrics) add_metadata(m, "metric." + name, join_numbers({value}));
  return m;
}

// The checker plus strict shape inference: every inferred shape must agree with the value_info and
// outputs we declared from the model's own shapes.
void check(const onnx::ModelProto& m) {
  try {
    onnx::checker::check_model(m);
    onnx::ModelProto inferred = m;
    onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(/*check_type=*/true, /*strict_mode=*/1));
  } catch (const std::exception& e) {
    throw Error(std::string("the exported ONNX graph fails the ONNX checker (an exporter bug, please report it): ") +
                e.what());
  }
}

void write_bytes(const std::string& path, const std::string& bytes) {
  const std::string temp = temp_path_for(path);
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (out) out.write(bytes.data(), std::streamsize(bytes.size())), out.flush();
    if (!out) {
      const std::string reason = std::strerror(errno);
      std::error_code ignored;
      fs::remove(temp, ignored);
      throw IoError(path + ": cannot write (" + reason + ")");
    }
  }
  replace_file(temp, path);
}

}  // namespace

const std::vector<std::string>& onnx_exported_kinds() {
  static const std::vector<std::string> kinds = [] {
    std::vector<std::string> all = LayerExporter::leaf_kinds();
    all.insert(all.end(), {"repeat", "residual"});
    std::sort(all.begin(), all.end());
    return all;
  }();
  return kinds;
}

OnnxExportSummary export_onnx_model(const core::Model& model, const CheckpointHeader& source,
                                    const std::string& source_sha256, const std::string& output_path,
                                    const OnnxExportOptions& options) {
  OnnxExportSummary summary;
  summary.source_sha256 = source_sha256;
  const onnx::ModelProto m = build_model(source, model, source_sha256, options, &summary);
  if (m.ByteSizeLong() > std::size_t(INT_MAX))
    throw IoError(output_path + ": the model needs " + std::to_string(m.ByteSizeLong()) +
                  " bytes, beyond the 2 GiB a single ONNX protobuf file can hold");
  check(m);
  std::string bytes;
  if (!m.SerializeToString(&bytes)) throw Error("ONNX export: protobuf serialisation failed");
  write_bytes(output_path, bytes);
  summary.bytes = bytes.size();
  return summary;
}

OnnxExportSummary export_onnx(const std::string& checkpoint_path, const std::string& output_path,
                              const OnnxExportOptions& options) {
  const CheckpointHeader h = read_checkpoint_header(checkpoint_path);
  check_export_target(output_path, checkpoint_path);
  std::string spec = h.model.spec;
  if (options.embedding) {
    const core::Model whole(h.model.spec, h.model.input, 1);
    spec = core::spec_through_layer(whole, core::embedding_layer_to_cut(whole, "--cut embedding: " + checkpoint_path));
  }
  core::Model model(spec, h.model.input, 1);
  load_checkpoint(checkpoint_path, model, nullptr);
  return export_onnx_model(model, h, sha256_file(checkpoint_path), output_path, options);
}

}  // namespace mpicnn::io
