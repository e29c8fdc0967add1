#include "task.hpp"

#include <algorithm>

#include "errors.hpp"

namespace mpicnn::core {
namespace {

// Softmax cross-entropy over class labels; the mean divides by the sum of the batch's class
// weights, computed from the global class histogram (integers) as PyTorch's weighted mean.
class Classification final : public Task {
 public:
  explicit Classification(std::vector<float> class_weights) : weights_(std::move(class_weights)) {}
  std::string kind() const override { return "cross_entropy"; }
  void check(const DatasetTargets& data, int outputs, const std::string& where) const override {
    if (!data.has_labels)
      throw ConfigError("loss 'cross_entropy' needs class labels, but " + where + " has regression targets");
    if (data.classes != outputs)
      throw ConfigError("model.spec ends with " + std::to_string(outputs) + " outputs, but " + where + " has " +
                        std::to_string(data.classes) + " classes");
    if (!weights_.empty() && int(weights_.size()) != outputs)
      throw ConfigError("'loss.class_weights' has " + std::to_string(weights_.size()) +
                        " weights, expected one per class (" + std::to_string(outputs) + ")");
  }
  LossSum loss(float* grad, const float* outputs, const BatchView& batch, int k) const override {
    if (!batch.labels) throw ConfigError("loss 'cross_entropy' needs class labels, but the dataset has regression targets");
    return softmax_cross_entropy(grad, outputs, batch.labels, weights_, batch.count, k);
  }
  void append_step_totals(const BatchView& batch, int k, std::vector<double>& totals) const override {
    const std::size_t first = totals.size();
    totals.resize(first + std::size_t(k), 0.0);
    for (int n = 0; n < batch.count; ++n) totals[first + std::size_t(batch.labels[n])] += 1;
  }
  double normalizer(std::span<const double> histogram, int, int) const override {
    double total = 0;
    for (std::size_t c = 0; c < histogram.size(); ++c) total += histogram[c] * (weights_.empty() ? 1.0 : weights_[c]);
    return total;
  }
  std::vector<Metric> step_metrics(double correct, int global_count) const override {
    return {{"accuracy", correct / global_count}};
  }
  bool classifies() const override { return true; }
  std::vector<Metric> eval_metrics(double correct, std::int64_t count) const override {
    return {{"accuracy", count > 0 ? correct / double(count) : 0.0}};
  }
  std::vector<std::string> best_metrics() const override { return {"accuracy", "loss"}; }
  bool higher_is_better(const std::string& metric) const override { return metric != "loss"; }
  std::string prediction_name() const override { return "probabilities"; }
  void predict(float* out, const float* outputs, int k) const override { softmax(out, outputs, k); }
  std::string onnx_postprocess() const override { return "Softmax"; }

 private:
  std::vector<float> weights_;
};

// Mean squared error over every output value; the normaliser is count x outputs.
class Regression final : public Task {
 public:
  std::string kind() const override { return "mse"; }
  void check(const DatasetTargets& data, int outputs, const std::string& where) const override {
    if (data.has_labels) throw ConfigError("loss 'mse' needs regression targets, but " + where + " has class labels");
    if (data.target_size != outputs)
      throw ConfigError("model.spec ends with " + std::to_string(outputs) + " outputs, but the targets in " + where +
                        " have " + std::to_string(data.target_size) + " values per sample");
  }
  LossSum loss(float* grad, const float* outputs, const BatchView& batch, int k) const override {
    if (!batch.targets) throw ConfigError("loss 'mse' needs regression targets, but the dataset has class labels");
    return mean_squared_error(grad, outputs, batch.targets, batch.count, k);
  }
  void append_step_totals(const BatchView&, int, std::vector<double>&) const override {}
  double normalizer(std::span<const double>, int global_count, int k) const override {
    return double(global_count) * double(k);
  }
  std::vector<Metric> step_metrics(double, int) const override { return {}; }
  bool classifies() const override { return false; }
  std::vector<Metric> eval_metrics(double, std::int64_t) const override { return {}; }
  std::vector<std::string> best_metrics() const override { return {"loss"}; }
  bool higher_is_better(const std::string&) const override { return false; }
  std::string prediction_name() const override { return "outputs"; }
  void predict(float* out, const float* outputs, int k) const override { std::copy(outputs, outputs + k, out); }
  std::string onnx_postprocess() const override { return ""; }
};

}  // namespace

const std::vector<std::string>& known_tasks() {
  static const std::vector<std::string> kinds = {"cross_entropy", "mse"};
  return kinds;
}

std::unique_ptr<Task> make_task(const std::string& kind, const TaskOptions& options) {
  if (kind == "cross_entropy") return std::make_unique<Classification>(options.class_weights);
  if (kind == "mse") {
    if (!options.class_weights.empty()) throw ConfigError("'loss.class_weights' applies to cross_entropy only, not 'mse'");
    return std::make_unique<Regression>();
  }
  throw ConfigError("unknown loss '" + kind + "' (known: cross_entropy, mse)");
}

}  // namespace mpicnn::core
