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

// Recursive descent over the grammar in model.hpp; `at_` is the next character.
class SpecParser {
 public:
  explicit SpecParser(const std::string& spec) : spec_(spec) {}

  std::vector<LayerArgs> parse() {
    std::vector<LayerArgs> layers = sequence();
    if (at_ < spec_.size())
      fail(spec_[at_] == '|' ? "'|' outside a block (only residual{main | shortcut} takes one)" : "unmatched '}'");
    return layers;
  }

 private:
  std::vector<LayerArgs> sequence() {
    std::vector<LayerArgs> layers;
    while (true) {
      skip_space();
      if (at_ == spec_.size() || spec_[at_] == '|' || spec_[at_] == '}') return layers;
      layers.push_back(item());
    }
  }

  LayerArgs item() {
    const std::size_t start = at_;
    while (at_ < spec_.size() && (std::isalnum(static_cast<unsigned char>(spec_[at_])) || spec_[at_] == '_')) ++at_;
    if (at_ == start) fail(std::string("unexpected '") + spec_[at_] + "'");
    LayerArgs layer;
    layer.kind = spec_.substr(start, at_ - start);
    if (at_ < spec_.size() && spec_[at_] == '(') arguments(layer);
    skip_space();
    if (at_ < spec_.size() && spec_[at_] == '{') block(layer);
    return layer;
  }

  void arguments(LayerArgs& layer) {
    const std::size_t open = at_, close = spec_.find(')', at_);
    if (close == std::string::npos || spec_.find('(', at_ + 1) < close)
      fail("unclosed '(' after '" + layer.kind + "'");
    std::stringstream stream(spec_.substr(open + 1, close - open - 1));
    std::string item;
    while (std::getline(stream, item, ',')) {
      item = trim(item);
      if (item.empty()) fail("empty argument in '" + layer.kind + "(...)'", open);
      const auto eq = item.find('=');
      if (eq == std::string::npos) {
        if (!layer.named.empty()) fail("positional argument after a named one in '" + layer.kind + "'", open);
        layer.positional.push_back(item);
      } else {
        layer.named[trim(item.substr(0, eq))] = trim(item.substr(eq + 1));
      }
    }
    at_ = close + 1;
  }

  void block(LayerArgs& layer) {
    const std::size_t open = at_;
    if (++depth_ > kMaxDepth) fail("blocks nested more than " + std::to_string(kMaxDepth) + " deep");
    layer.has_braces = true;
    do {
      ++at_;  // past '{' or '|'
      layer.branches.push_back(sequence());
      if (layer.branches.back().empty()) fail("empty branch in '" + layer.kind + "{...}'", open);
    } while (at_ < spec_.size() && spec_[at_] == '|');
    if (at_ == spec_.size()) fail("unclosed '{' after '" + layer.kind + "'", open);
    ++at_;  // past '}'
    --depth_;
  }

  void skip_space() {
    while (at_ < spec_.size() && std::isspace(static_cast<unsigned char>(spec_[at_]))) ++at_;
  }
  [[noreturn]] void fail(const std::string& what) const { fail(what, at_); }
  [[noreturn]] void fail(const std::string& what, std::size_t at) const { spec_error(spec_, at, what); }

  static constexpr int kMaxDepth = 16;
  const std::string& spec_;
  std::size_t at_ = 0;
  int depth_ = 0;
};

}  // namespace

std::vector<LayerArgs> parse_spec(const std::string& spec) {
  std::vector<LayerArgs> layers = SpecParser(spec).parse();
  if (layers.empty()) throw ConfigError("model spec is empty: expected layers such as 'conv(32,5) relu flatten dense(10)'");
  return layers;
}

namespace {

std::unique_ptr<Sequential> build_root(const std::string& spec, const Shape& input) {
  if (input.c < 1 || input.d < 1 || input.h < 1 || input.w < 1) throw ShapeError("model input shape " + input.str() + " is empty");
  return std::make_unique<Sequential>(parse_spec(spec), input, "");
}

struct Plan {
  ParamStore params;
  StateStore state;
  std::unique_ptr<Sequential> root;
};

Plan declared(const std::string& spec, const Shape& input) {
  Plan plan{{}, {}, build_root(spec, input)};
  plan.root->declare(plan.params, plan.state, {});
  return plan;
}

}  // namespace

std::vector<ParamInfo> plan_params(const std::string& spec, const Shape& input) {
  return declared(spec, input).params.infos();
}

std::vector<StateInfo> plan_state(const std::string& spec, const Shape& input) {
  return declared(spec, input).state.infos();
}

std::vector<std::string> top_level_specs(const std::string& spec, const Shape& input) {
  std::vector<std::string> specs;
  const std::unique_ptr<Sequential> root = build_root(spec, input);
  for (const auto& layer : root->children()) specs.push_back(layer->spec());
  return specs;
}

std::size_t plan_activation_floats(const std::string& spec, const Shape& input) {
  const Plan plan = declared(spec, input);
  std::vector<Layer::Row> rows;
  plan.root->summary_rows(rows, 0, "", plan.params);
  std::size_t total = 0;
  for (const auto& row : rows) total += row.output.size();
  return total;
}

double plan_forward_flops(const std::string& spec, const Shape& input) {
  return build_root(spec, input)->forward_flops();
}

Model::Model(const std::string& spec, const Shape& input, int max_batch)
    : input_(input), max_batch_(max_batch), root_(build_root(spec, input)) {
  if (max_batch < 1) throw ConfigError("batch size must be at least 1, got " + std::to_string(max_batch));
  root_->declare(params_, state_, {});
  params_.allocate();
  state_.allocate();
  root_->bind({params_, state_, run_, max_batch, workspace_});
  output_ = Buffer(std::size_t(max_batch) * output_shape().size());
}

std::string Model::canonical_spec() const { return root_->spec(); }

const float* Model::forward(const float* input, int batch) {
  if (batch > max_batch_)
    throw ShapeError("batch of " + std::to_string(batch) + " exceeds the model's maximum " + std::to_string(max_batch_));
  last_input_ = input;
  root_->forward(output_.data(), input, batch);
  return output_.data();
}

void Model::backward(const float* output_grad, int batch, const std::function<void(int)>& layer_done) {
  root_->backward_children(nullptr, output_grad, last_input_, output_.data(), batch, layer_done);
}

void Model::commit_statistics(int slots) {
  root_->commit_statistics(slots);
  state_.clear_statistics();
}

double Model::forward_flops() const { return root_->forward_flops(); }

std::string Model::summary() const {
  std::vector<Layer::Row> rows;
  root_->summary_rows(rows, 0, "", params_);
  std::ostringstream out;
  char line[200];
  std::snprintf(line, sizeof line, "%-14s %-40s %-16s %12s %14s\n", "#", "layer", "output shape", "params", "FLOPs");
  out << line << std::string(100, '-') << "\n";
  std::snprintf(line, sizeof line, "%-14s %-40s %-16s %12s %14s\n", "", "input", input_.str().c_str(), "", "");
  out << line;
  for (const auto& row : rows) {
    const std::string title = std::string(2 * std::size_t(row.depth), ' ') + row.spec;
    std::snprintf(line, sizeof line, "%-14s %-40s %-16s %12zu %14.0f\n", row.name.c_str(), title.c_str(),
                  row.output.str().c_str(), row.params, row.flops);
    out << line;
  }
  out << std::string(100, '-') << "\n";
  std::snprintf(line, sizeof line, "total parameters: %zu, forward FLOPs per sample: %.0f\n", params_.count(),
                forward_flops());
  out << line;
  return out.str();
}

int embedding_layer(const Model& model) {
  const int last = int(model.layers().size()) - 1;
  const std::string kind = parse_spec(model.layers().back()->spec()).at(0).kind;
  if (kind == "cosine") return last - 1;
  return kind == "l2norm" ? last : -1;
}

int embedding_layer_to_cut(const Model& model, const std::string& where) {
  const int layer = embedding_layer(model);
  if (layer < 0)
    throw ConfigError(where + ": the model ends in '" + model.layers().back()->spec() +
                      "', which is no embedding head (expected a final l2norm, or cosine(n) after the embedding)");
  return layer;
}

std::string spec_through_layer(const Model& model, int last) {
  std::string spec;
  for (int i = 0; i <= last; ++i) {
    if (!spec.empty()) spec += ' ';
    spec += model.layers()[std::size_t(i)]->spec();
  }
  return spec;
}

}  // namespace mpicnn::core
