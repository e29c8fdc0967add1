#include "io/onnx_export.hpp"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <bit>
#include <charconv>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <variant>

#include "core/errors.hpp"
#include "io/bundle.hpp"
#include "io/checkpoint.hpp"

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

  // The last node's output becomes the graph output `name`; value_info for every other tensor.
  void finish(const std::string& name) {
    onnx::NodeProto* last = graph_->mutable_node(graph_->node_size() - 1);
    last->set_output(0, name);
    produced_.pop_back();
    for (const auto& [tensor, dims] : produced_) {
      std::vector<Dim> full = {std::string("N")};
      full.insert(full.end(), dims.begin(), dims.end());
      set_tensor_type(graph_->add_value_info(), tensor, full);
    }
  }

 private:
  onnx::GraphProto* graph_;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> produced_;
};

std::vector<std::int64_t> chw(const core::Shape& s) { return {s.c, s.h, s.w}; }

int named_integer(const core::LayerArgs& a, const std::string& key) {
  const auto it = a.named.find(key);
  if (it == a.named.end()) throw Error("ONNX export: layer '" + a.kind + "' has no '" + key + "' in its canonical spec");
  return std::stoi(it->second);
}

// The layers of `model` as ONNX nodes, from tensor "input_normalized" to the last layer's output.
void add_layers(GraphBuilder& g, const core::Model& model, std::size_t* parameters) {
  const auto& infos = model.params().infos();
  const float* base = model.params().values().data();
  std::string x = "input_normalized";
  bool flat = false;  // the tensor is [N,F] (after flatten or dense), else [N,C,H,W]
  bool have_axes = false;
  auto param = [&](int layer, bool bias) -> const core::ParamInfo* {
    for (const auto& p : infos)
      if (p.layer == layer && p.is_bias() == bias) return &p;
    return nullptr;
  };
  auto add_param = [&](const core::ParamInfo& p) {
    g.initializer(p.name, {p.dims.begin(), p.dims.end()}, base + p.offset, p.size);
    *parameters += p.size;
  };

  for (std::size_t i = 0; i < model.layers().size(); ++i) {
    const core::Layer& layer = *model.layers()[i];
    const auto parsed = core::parse_spec(layer.spec());
    const core::LayerArgs& a = parsed.at(0);
    const std::string name = "layer" + std::to_string(i) + "_" + a.kind;
    const core::Shape in = layer.input_shape(), out = layer.output_shape();
    const bool spatial = a.kind == "conv" || a.kind == "maxpool" || a.kind == "avgpool";
    if (spatial && flat) {  // a dense output (units,1,1) feeding a spatial layer: back to [N,units,1,1]
      if (!have_axes) g.initializer("unsqueeze_axes_hw", {2, 3}), have_axes = true;
      x = g.node("Unsqueeze", name + "_to_nchw", {x, "unsqueeze_axes_hw"}, chw(in))->output(0);
      flat = false;
    }
    if (a.kind == "conv") {
      const core::ParamInfo* weight = param(int(i), false);
      const core::ParamInfo* bias = param(int(i), true);
      const int stride = named_integer(a, "stride"), pad = named_integer(a, "pad");
      add_param(*weight);
      std::vector<std::string> inputs = {x, weight->name};
      if (bias) add_param(*bias), inputs.push_back(bias->name);
      onnx::NodeProto* n = g.node("Conv", name, inputs, chw(out));
      add_ints(n, "kernel_shape", {weight->dims[2], weight->dims[3]});
      add_ints(n, "strides", {stride, stride});
      add_ints(n, "pads", {pad, pad, pad, pad});
      add_ints(n, "dilations", {1, 1});
      add_int(n, "group", 1);
      x = name;
    } else if (a.kind == "maxpool" || a.kind == "avgpool") {
      const int window = std::stoi(a.positional.at(0));
      const int stride = named_integer(a, "stride"), pad = named_integer(a, "pad");
      onnx::NodeProto* n = g.node(a.kind == "maxpool" ? "MaxPool" : "AveragePool", name, {x}, chw(out));
      add_ints(n, "kernel_shape", {window, window});
      add_ints(n, "strides", {stride, stride});
      add_ints(n, "pads", {pad, pad, pad, pad});
      add_int(n, "ceil_mode", 0);
      // Our average divides by window^2 also where the window covers padding (PyTorch's default).
      if (a.kind == "avgpool") add_int(n, "count_include_pad", 1);
      x = name;
    } else if (a.kind == "relu" || a.kind == "leakyrelu" || a.kind == "sigmoid" || a.kind == "tanh") {
      const char* op = a.kind == "relu" ? "Relu" : a.kind == "leakyrelu" ? "LeakyRelu" : a.kind == "sigmoid" ? "Sigmoid" : "Tanh";
      const std::vector<std::int64_t> dims = flat ? std::vector<std::int64_t>{std::int64_t(out.size())} : chw(out);
      onnx::NodeProto* n = g.node(op, name, {x}, dims);
      // The model runs with the float the canonical spec's text parses to; so does the graph.
      if (a.kind == "leakyrelu") add_float(n, "alpha", std::stof(a.named.at("slope")));
      x = name;
    } else if (a.kind == "flatten") {
      if (!flat) {
        add_int(g.node("Flatten", name, {x}, {std::int64_t(out.size())}), "axis", 1);
        x = name;
      }
      flat = true;
    } else if (a.kind == "dense") {
      if (!flat) {  // dense reads a (C,1,1) input as C features
        add_int(g.node("Flatten", name + "_flatten", {x}, {std::int64_t(in.size())}), "axis", 1);
        x = name + "_flatten";
      }
      const core::ParamInfo* weight = param(int(i), false);
      const core::ParamInfo* bias = param(int(i), true);
      add_param(*weight);
      std::vector<std::string> inputs = {x, weight->name};
      if (bias) add_param(*bias), inputs.push_back(bias->name);
      onnx::NodeProto* n = g.node("Gemm", name, inputs, {std::int64_t(out.size())});
      add_float(n, "alpha", 1.0f);
      add_float(n, "beta", 1.0f);
      add_int(n, "transA", 0);
      add_int(n, "transB", 1);  // weight is (out,in), as PyTorch's Linear
      x = name;
      flat = true;
    } else {
      throw Error("ONNX export: no ONNX mapping for layer " + std::to_string(i) + " '" + layer.spec() + "'");
    }
  }
  if (!flat) add_int(g.node("Flatten", "output_flatten", {x}, {std::int64_t(model.output_shape().size())}), "axis", 1);
}

void add_metadata(onnx::ModelProto& m, const std::string& key, const std::string& value) {
  onnx::StringStringEntryProto* entry = m.add_metadata_props();
  entry->set_key(key);
  entry->set_value(value);
}

onnx::ModelProto build_model(const CheckpointHeader& h, const core::Model& model, const std::string& sha256,
                             const OnnxExportOptions& options, OnnxExportSummary* summary) {
  const bool classify = h.model.loss == "cross_entropy" && options.probabilities;
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
  m.set_doc_string(
      std::string("mpicnn ") + MPICNN_VERSION + " model exported from checkpoint " + source + " (SHA-256 " + sha256 +
      "). Input 'input': float32 [N," + std::to_string(input.c) + "," + std::to_string(input.h) + "," +
      std::to_string(input.w) + "] (NCHW, N = any batch size) holding images on the scale the training reader "
      "fed the network before normalising: " + kInputScaling +
      " (mean and std in metadata; the graph normalises itself, do not normalise again). Output 'logits': float32 [N," +
      std::to_string(k) + "], the network's raw outputs." +
      (classify ? " Output 'probabilities': softmax of the logits over axis 1, classes in the order of metadata "
                  "'class_names'."
                : ""));

  onnx::GraphProto* graph = m.mutable_graph();
  graph->set_name("mpicnn");
  graph->set_doc_string(h.model.spec);
  set_tensor_type(graph->add_input(), "input", {std::string("N"), std::int64_t(input.c), std::int64_t(input.h), std::int64_t(input.w)});

  GraphBuilder g(graph);
  std::vector<float> mean(h.model.mean.begin(), h.model.mean.end()), std_dev(h.model.std.begin(), h.model.std.end());
  if (mean.size() != std::size_t(input.c) || std_dev.size() != std::size_t(input.c))
    throw IoError(h.path + ": /model mean and std need " + std::to_string(input.c) + " values, one per input channel");
  g.initializer("mean", {1, input.c, 1, 1}, mean.data(), mean.size());
  g.initializer("std", {1, input.c, 1, 1}, std_dev.data(), std_dev.size());
  g.node("Sub", "input_centered", {"input", "mean"}, chw(input));
  g.node("Div", "input_normalized", {"input_centered", "std"}, chw(input));
  summary->parameters = 0;
  add_layers(g, model, &summary->parameters);
  g.finish("logits");
  set_tensor_type(graph->add_output(), "logits", {std::string("N"), k});
  summary->outputs = {"logits"};
  if (classify) {
    onnx::NodeProto* softmax = graph->add_node();
    softmax->set_op_type("Softmax");
    softmax->set_name("probabilities");
    softmax->add_input("logits");
    softmax->add_output("probabilities");
    add_int(softmax, "axis", 1);
    set_tensor_type(graph->add_output(), "probabilities", {std::string("N"), k});
    summary->outputs.push_back("probabilities");
  }
  summary->nodes = graph->node_size();

  add_metadata(m, "mpicnn_version", MPICNN_VERSION);
  add_metadata(m, "spec", h.model.spec);
  add_metadata(m, "input_shape", std::to_string(input.c) + "," + std::to_string(input.h) + "," + std::to_string(input.w));
  add_metadata(m, "input_scaling", kInputScaling);
  add_metadata(m, "mean", join_numbers(h.model.mean));
  add_metadata(m, "std", join_numbers(h.model.std));
  add_metadata(m, "loss", h.model.loss);
  add_metadata(m, "class_names", json_strings(h.model.class_names));
  add_metadata(m, "outputs", classify ? "logits,probabilities" : "logits");
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

OnnxExportSummary export_onnx(const std::string& checkpoint_path, const std::string& output_path,
                              const OnnxExportOptions& options) {
  const CheckpointHeader h = read_checkpoint_header(checkpoint_path);
  check_export_target(output_path, checkpoint_path);
  core::Model model(h.model.spec, h.model.input, 1);
  load_checkpoint(checkpoint_path, model, nullptr);
  OnnxExportSummary summary;
  summary.source_sha256 = sha256_file(checkpoint_path);
  const onnx::ModelProto m = build_model(h, model, summary.source_sha256, options, &summary);
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

}  // namespace mpicnn::io
