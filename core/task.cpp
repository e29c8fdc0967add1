#include "task.hpp"

#include <algorithm>
#include <cmath>

#include "class_scores_task.hpp"
#include "errors.hpp"
#include "metrics.hpp"

namespace mpicnn::core {
namespace {

// Softmax cross-entropy over class labels; the mean divides by the sum of the batch's class
// weights, computed from the global class histogram (integers) as PyTorch's weighted mean.
class Classification final : public ClassScoresTask {
 public:
  Classification(std::vector<float> class_weights, double focal_gamma, double label_smoothing)
      : weights_(std::move(class_weights)), gamma_(focal_gamma), smoothing_(label_smoothing) {}
  std::string kind() const override { return "cross_entropy"; }
  TaskOptions options() const override {
    TaskOptions o;
    o.class_weights = weights_, o.focal_gamma = gamma_, o.label_smoothing = smoothing_;
    return o;
  }
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
    if (gamma_ > 0) return softmax_focal_loss(grad, outputs, batch.labels, weights_, gamma_, batch.count, k);
    return softmax_cross_entropy(grad, outputs, batch.labels, weights_, batch.count, k, smoothing_);
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
  std::string prediction_name() const override { return "probabilities"; }
  void predict(float* out, const float* outputs, int k) const override { softmax(out, outputs, k); }
  std::string onnx_postprocess() const override { return "Softmax"; }

 private:
  std::vector<float> weights_;
  double gamma_, smoothing_;
};

// Mean squared error over every output value; the normaliser is count x outputs.
class Regression final : public Task {
 public:
  std::string kind() const override { return "mse"; }
  TaskOptions options() const override { return {}; }
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
  std::vector<Metric> step_metrics(double, int, int) const override { return {}; }
  bool classifies() const override { return false; }
  std::vector<Metric> eval_metrics(const EvalSums&) const override { return {}; }
  std::vector<std::string> best_metrics() const override { return {"loss"}; }
  bool higher_is_better(const std::string&) const override { return false; }
  std::string prediction_name() const override { return "outputs"; }
  void predict(float* out, const float* outputs, int k) const override { std::copy(outputs, outputs + k, out); }
  std::string onnx_postprocess() const override { return ""; }
};

// Multi-label: one sigmoid per label, binary cross-entropy (optional per-label positive weights);
// MedMNIST's evaluator: ACC at the 0.5 threshold averaged over labels, AUC per label and mean; and
// at the same threshold sensitivity, specificity and precision per label and their means.
class MultiLabel final : public Task {
 public:
  MultiLabel(std::vector<float> pos_weight, double focal_gamma, double focal_alpha)
      : pos_weight_(std::move(pos_weight)), gamma_(focal_gamma), alpha_(focal_alpha) {}
  std::string kind() const override { return "bce"; }
  TaskOptions options() const override {
    TaskOptions o;
    o.pos_weight = pos_weight_, o.focal_gamma = gamma_, o.focal_alpha = alpha_;
    return o;
  }
  void check(const DatasetTargets& data, int outputs, const std::string& where) const override {
    if (data.has_labels)
      throw ConfigError("loss 'bce' needs 0/1 targets per label (multi-label), but " + where +
                        " has one class label per sample: use cross_entropy");
    if (data.target_size != outputs)
      throw ConfigError("model.spec ends with " + std::to_string(outputs) + " outputs, but " + where + " has " +
                        std::to_string(data.target_size) + " labels per sample");
    if (!pos_weight_.empty() && int(pos_weight_.size()) != outputs)
      throw ConfigError("'loss.pos_weight' has " + std::to_string(pos_weight_.size()) +
                        " weights, expected one per label (" + std::to_string(outputs) + ")");
  }
  LossSum loss(float* grad, const float* outputs, const BatchView& batch, int k) const override {
    if (!batch.targets) throw ConfigError("loss 'bce' needs 0/1 targets per label, but the dataset has class labels");
    if (gamma_ > 0) return sigmoid_focal_loss(grad, outputs, batch.targets, gamma_, alpha_, batch.count, k);
    return sigmoid_binary_cross_entropy(grad, outputs, batch.targets, pos_weight_, batch.count, k);
  }
  void append_step_totals(const BatchView&, int, std::vector<double>&) const override {}
  double normalizer(std::span<const double>, int global_count, int k) const override {
    return double(global_count) * double(k);
  }
  std::vector<Metric> step_metrics(double correct, int global_count, int k) const override {
    return {{"accuracy", correct / double(global_count) / double(k)}};
  }
  bool classifies() const override { return false; }
  bool needs_scores() const override { return true; }
  std::vector<Metric> eval_metrics(const EvalSums& e) const override {
    const std::vector<double> aucs = per_label_auc(e.predictions, e.targets, e.outputs);
    const std::vector<ThresholdRates> rates = per_label_rates(e.predictions, e.targets, e.outputs, 0.5);
    std::vector<double> sensitivity, specificity, precision;
    for (const ThresholdRates& r : rates)
      sensitivity.push_back(r.sensitivity), specificity.push_back(r.specificity), precision.push_back(r.precision);
    std::vector<Metric> metrics = {{"accuracy", e.count > 0 ? e.correct / double(e.count) / double(e.outputs) : 0.0},
                                   {"auc", mean_defined(aucs)},
                                   {"sensitivity", mean_defined(sensitivity)},
                                   {"specificity", mean_defined(specificity)},
                                   {"precision", mean_defined(precision)}};
    // Per label "<metric>_<k>": metrics.jsonl, checkpoints and `eval --json` keep them all.
    const std::pair<std::string, const std::vector<double>*> per_label[] = {
        {"auc_", &aucs}, {"sensitivity_", &sensitivity}, {"specificity_", &specificity}, {"precision_", &precision}};
    for (const auto& [prefix, values] : per_label)
      for (std::size_t k = 0; k < values->size(); ++k) metrics.emplace_back(prefix + std::to_string(k), (*values)[k]);
    return metrics;
  }
  std::vector<std::string> best_metrics() const override { return {"auc", "accuracy", "loss"}; }
  bool higher_is_better(const std::string& metric) const override { return metric != "loss"; }
  std::string prediction_name() const override { return "probabilities"; }
  bool one_class_per_sample() const override { return false; }
  void predict(float* out, const float* outputs, int k) const override {
    for (int i = 0; i < k; ++i) out[i] = float(1 / (1 + std::exp(-double(outputs[i]))));
  }
  std::string onnx_postprocess() const override { return "Sigmoid"; }

 private:
  std::vector<float> pos_weight_;
  double gamma_, alpha_;
};

}  // namespace

const std::vector<std::string>& known_tasks() {
  static const std::vector<std::string> kinds = {"cross_entropy", "mse", "bce", "arcface", "cosface", "triplet", "detection"};
  return kinds;
}

// Each kind takes only its own weights: one given to another kind is an error, not ignored.
std::unique_ptr<Task> make_task(const std::string& kind, const TaskOptions& options) {
  if (kind == "detection") return make_detection_task(options);
  if (!options.class_weights.empty() && kind != "cross_entropy")
    throw ConfigError("'loss.class_weights' applies to cross_entropy only, not '" + kind + "'" +
                      (kind == "bce" ? ": use loss.pos_weight" : ""));
  if (!options.pos_weight.empty() && kind != "bce")
    throw ConfigError("'loss.pos_weight' applies to bce only, not '" + kind + "'");
  if (options.focal_gamma > 0 && kind == "mse") throw ConfigError("'loss.focal_gamma' applies to cross_entropy and bce, not 'mse'");
  if (options.focal_alpha >= 0 && !(kind == "bce" && options.focal_gamma > 0))
    throw ConfigError("'loss.focal_alpha' applies to bce with loss.focal_gamma > 0 only" +
                      std::string(kind == "cross_entropy" ? ": cross_entropy's focal loss takes loss.class_weights" : ""));
  if (options.focal_gamma > 0 && !options.pos_weight.empty())
    throw ConfigError("'loss.pos_weight' and 'loss.focal_gamma' do not combine (focal loss weighs labels by loss.focal_alpha)");
  if (options.label_smoothing > 0 && (kind != "cross_entropy" || options.focal_gamma > 0))
    throw ConfigError("'loss.label_smoothing' applies to cross_entropy without loss.focal_gamma only, not '" + kind + "'" +
                      (options.focal_gamma > 0 ? " with focal_gamma" : ""));
  if (is_metric_task(kind)) return make_metric_task(kind, options);
  if (options.scale >= 0 || options.margin >= 0 || !options.mining.empty())
    throw ConfigError("'loss.scale', 'loss.margin' and 'loss.mining' apply to arcface, cosface and triplet, not '" + kind + "'");
  if (kind == "cross_entropy")
    return std::make_unique<Classification>(options.class_weights, options.focal_gamma, options.label_smoothing);
  if (kind == "bce") return std::make_unique<MultiLabel>(options.pos_weight, options.focal_gamma, options.focal_alpha);
  if (kind == "mse") return std::make_unique<Regression>();
  throw ConfigError("unknown loss '" + kind + "' (known: cross_entropy, mse, bce, arcface, cosface, triplet, detection)");
}

}  // namespace mpicnn::core
