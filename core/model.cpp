#include "model.hpp"

#include <cctype>
#include <cstdio>
#include <sstream>

#include "errors.hpp"

namespace mpicnn::core {
namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\n\r"), e = s.find_last_not_of(" \t\n\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

[[noreturn]] void spec_error(const std::string& spec, std::size_t at, const std::string& what) {
  throw ConfigError("model spec '" + spec + "': " + what + " at character " + std::to_string(at + 1));
}

void parse_arguments(LayerArgs& layer, const std::string& text, const std::string& spec, std::size_t at) {
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    item = trim(item);
    if (item.empty()) spec_error(spec, at, "empty argument in '" + layer.kind + "(" + text + ")'");
    const auto eq = item.find('=');
    if (eq == std::string::npos) {
      if (!layer.named.empty()) spec_error(spec, at, "positional argument after a named one in '" + layer.kind + "'");
      layer.positional.push_back(item);
    } else {
      layer.named[trim(item.substr(0, eq))] = trim(item.substr(eq + 1));
    }
  }
}

}  // namespace

std::vector<LayerArgs> parse_spec(const std::string& spec) {
  std::vector<LayerArgs> layers;
  std::size_t i = 0;
  while (true) {
    while (i < spec.size() && std::isspace(static_cast<unsigned char>(spec[i]))) ++i;
    if (i == spec.size()) break;
    const std::size_t start = i;
    while (i < spec.size() && (std::isalnum(static_cast<unsigned char>(spec[i])) || spec[i] == '_')) ++i;
    if (i == start) spec_error(spec, i, std::string("unexpected '") + spec[i] + "'");
    LayerArgs layer;
    layer.kind = spec.substr(start, i - start);
    if (i < spec.size() && spec[i] == '(') {
      const std::size_t close = spec.find(')', i);
      if (close == std::string::npos || spec.find('(', i + 1) < close)
        spec_error(spec, i, "unclosed '(' after '" + layer.kind + "'");
      parse_arguments(layer, spec.substr(i + 1, close - i - 1), spec, i);
      i = close + 1;
    }
    layers.push_back(std::move(layer));
  }
  if (layers.empty()) throw ConfigError("model spec is empty: expected layers such as 'conv(32,5) relu flatten dense(10)'");
  return layers;
}

namespace {

std::vector<std::unique_ptr<Layer>> build_layers(const std::string& spec, const Shape& input) {
  if (input.c < 1 || input.h < 1 || input.w < 1) throw ShapeError("model input shape " + input.str() + " is empty");
  std::vector<std::unique_ptr<Layer>> layers;
  Shape shape = input;
  int position = 1;
  for (const LayerArgs& args : parse_spec(spec)) {
    layers.push_back(make_layer(args, shape, position++));
    shape = layers.back()->output_shape();
  }
  return layers;
}

}  // namespace

std::vector<ParamInfo> plan_params(const std::string& spec, const Shape& input) {
  ParamStore store;
  const auto layers = build_layers(spec, input);
  for (std::size_t i = 0; i < layers.size(); ++i) layers[i]->declare_params(store, int(i));
  return store.infos();
}

std::size_t plan_activation_floats(const std::string& spec, const Shape& input) {
  std::size_t total = 0;
  for (const auto& layer : build_layers(spec, input)) total += layer->output_shape().size();
  return total;
}

Model::Model(const std::string& spec, const Shape& input, int max_batch)
    : input_(input), max_batch_(max_batch), layers_(build_layers(spec, input)) {
  if (max_batch < 1) throw ConfigError("batch size must be at least 1, got " + std::to_string(max_batch));
  for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i]->declare_params(params_, int(i));
  params_.allocate();
  for (auto& layer : layers_) layer->bind(params_, max_batch);
  bind_buffers();
}

// Views (flatten) and ReLUs absorbed by the next layer pass their input through: they get the
// buffers of the layer before them and are never run. The first layer (its input is the caller's)
// and the last (its output gradient is the caller's) always run.
void Model::bind_buffers() {
  const std::size_t n = layers_.size();
  passes_through_.assign(n, false);
  outputs_.assign(n, nullptr);
  output_grads_.assign(n, nullptr);
  for (std::size_t i = 0; i < n; ++i) {
    const bool inner = i > 0 && i + 1 < n;
    const bool relu_absorbed = inner && layers_[i]->spec() == "relu" && layers_[i + 1]->can_absorb_preceding_relu();
    if (relu_absorbed) layers_[i + 1]->absorb_preceding_relu();
    passes_through_[i] = relu_absorbed || (inner && layers_[i]->is_view());
    if (passes_through_[i]) {
      outputs_[i] = outputs_[i - 1], output_grads_[i] = output_grads_[i - 1];
      continue;
    }
    const std::size_t size = std::size_t(max_batch_) * layers_[i]->output_shape().size();
    outputs_[i] = buffers_.emplace_back(size).data();
    output_grads_[i] = buffers_.emplace_back(size).data();
  }
}

std::string Model::canonical_spec() const {
  std::string text;
  for (const auto& layer : layers_) {
    if (!text.empty()) text += ' ';
    text += layer->spec();
  }
  return text;
}

const float* Model::forward(const float* input, int batch) {
  if (batch > max_batch_)
    throw ShapeError("batch of " + std::to_string(batch) + " exceeds the model's maximum " + std::to_string(max_batch_));
  last_input_ = input;
  for (std::size_t i = 0; i < layers_.size(); ++i)
    if (!passes_through_[i]) layers_[i]->forward(outputs_[i], i == 0 ? input : outputs_[i - 1], batch);
  return outputs_.back();
}

void Model::backward(const float* output_grad, int batch, const std::function<void(int)>& layer_done) {
  for (int i = int(layers_.size()) - 1; i >= 0; --i) {
    if (!passes_through_[i]) {
      const float* out_grad = i + 1 == int(layers_.size()) ? output_grad : output_grads_[i];
      const float* in = i == 0 ? last_input_ : outputs_[i - 1];
      layers_[i]->backward(i == 0 ? nullptr : output_grads_[i - 1], out_grad, in, outputs_[i], batch);
    }
    if (layer_done) layer_done(i);
  }
}

double Model::forward_flops() const {
  double total = 0;
  for (const auto& layer : layers_) total += layer->forward_flops();
  return total;
}

std::string Model::summary() const {
  std::vector<std::size_t> counts(layers_.size(), 0);
  for (const auto& p : params_.infos()) counts[p.layer] += p.size;
  std::ostringstream out;
  char line[160];
  std::snprintf(line, sizeof line, "%-4s %-34s %-16s %12s %14s\n", "#", "layer", "output shape", "params", "FLOPs");
  out << line << std::string(84, '-') << "\n";
  std::snprintf(line, sizeof line, "%-4s %-34s %-16s %12s %14s\n", "", "input", input_.str().c_str(), "", "");
  out << line;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    std::snprintf(line, sizeof line, "%-4zu %-34s %-16s %12zu %14.0f\n", i, layers_[i]->spec().c_str(),
                  layers_[i]->output_shape().str().c_str(), counts[i], layers_[i]->forward_flops());
    out << line;
  }
  out << std::string(84, '-') << "\n";
  std::snprintf(line, sizeof line, "total parameters: %zu, forward FLOPs per sample: %.0f\n", params_.count(),
                forward_flops());
  out << line;
  return out.str();
}

}  // namespace mpicnn::core
