// The metric-learning tasks (issue 18): arcface and cosface over the cosines of a `cosine(n)`
// layer, triplet over embeddings. Their normaliser is the global sample count; their kernels are
// in core/metric_losses.hpp.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>

#include "errors.hpp"
#include "metric_losses.hpp"
#include "class_scores_task.hpp"

namespace mpicnn::core {
namespace {

// Shortest text that reads back as the value, as the user would have written it.
std::string number_text(double value) {
  char text[32];
  return std::string(text, std::to_chars(text, text + sizeof text, value).ptr);
}

// The verification figures best.h5 may be chosen by (higher is better), triplet's default first.
constexpr const char* kVerificationBestMetrics[] = {"verification_accuracy", "verification_auc",
                                                    "verification_tar_at_far_1e-2", "verification_tar_at_far_1e-3"};

void require_labels(const std::string& kind, const DatasetTargets& data, const std::string& where) {
  if (!data.has_labels)
    throw ConfigError("loss '" + kind + "' needs identity labels, but " + where + " has regression targets");
}

// Normaliser: the global sample count, as for triplet.
class MarginSoftmax final : public ClassScoresTask {
 public:
  MarginSoftmax(MarginKind kind, double scale, double margin) : kind_(kind), scale_(scale), margin_(margin) {}
  std::string kind() const override { return kind_ == MarginKind::arcface ? "arcface" : "cosface"; }
  TaskOptions options() const override {
    TaskOptions o;
    o.scale = scale_, o.margin = margin_;
    return o;
  }
  void check(const DatasetTargets& data, int outputs, const std::string& where) const override {
    require_labels(kind(), data, where);
    if (data.classes != outputs)
      throw ConfigError("model.spec ends with " + std::to_string(outputs) + " outputs, but " + where + " has " +
                        std::to_string(data.classes) + " identities (end it with cosine(" +
                        std::to_string(data.classes) + "))");
  }
  LossSum loss(float* grad, const float* outputs, const BatchView& batch, int k) const override {
    if (!batch.labels) throw ConfigError("loss '" + kind() + "' needs identity labels, but the dataset has regression targets");
    return margin_softmax_loss(grad, outputs, batch.labels, kind_, scale_, margin_, batch.count, k);
  }
  void append_step_totals(const BatchView&, int, std::vector<double>&) const override {}
  double normalizer(std::span<const double>, int global_count, int) const override { return global_count; }
  bool verifies() const override { return true; }
  // Beside the closed-set figures (arg-max over the training identities' centres), which mean
  // nothing on identities held out from training: there the verification figures judge.
  std::vector<std::string> best_metrics() const override {
    std::vector<std::string> metrics = ClassScoresTask::best_metrics();
    for (const char* name : kVerificationBestMetrics) metrics.push_back(name);
    return metrics;
  }
  std::string prediction_name() const override { return "cosines"; }
  void predict(float* out, const float* outputs, int k) const override { std::copy(outputs, outputs + k, out); }
  std::string onnx_postprocess() const override { return ""; }
  std::optional<Task::MarginSoftmax> margin_softmax() const override { return Task::MarginSoftmax{kind_, scale_, margin_}; }

 private:
  MarginKind kind_;
  double scale_, margin_;
};

class Triplet final : public Task {
 public:
  Triplet(double margin, Mining mining) : margin_(margin), mining_(mining) {}
  std::string kind() const override { return "triplet"; }
  TaskOptions options() const override {
    TaskOptions o;
    o.margin = margin_, o.mining = mining_ == Mining::batch_hard ? "batch_hard" : "semi_hard";
    return o;
  }
  void check(const DatasetTargets& data, int outputs, const std::string& where) const override {
    require_labels(kind(), data, where);
    if (outputs < 2)
      throw ConfigError("loss 'triplet' needs an embedding of at least 2 values, but model.spec ends with " +
                        std::to_string(outputs));
  }
  LossSum loss(float* grad, const float* outputs, const BatchView& batch, int k) const override {
    if (!batch.labels) throw ConfigError("loss 'triplet' needs identity labels, but the dataset has regression targets");
    return triplet_loss(grad, outputs, batch.labels, margin_, mining_, batch.count, k);
  }
  void append_step_totals(const BatchView&, int, std::vector<double>&) const override {}
  double normalizer(std::span<const double>, int global_count, int) const override { return global_count; }
  // Anchors whose nearest neighbour in their batch has their identity.
  std::vector<Metric> step_metrics(double correct, int global_count, int) const override {
    return {{"nn_accuracy", correct / global_count}};
  }
  bool classifies() const override { return false; }
  // Verification on the split's identities (held out from training in an open-set split) is all
  // it reports (core::Task::verifies).
  bool verifies() const override { return true; }
  std::vector<Metric> eval_metrics(const EvalSums&) const override { return {}; }
  std::vector<std::string> best_metrics() const override {
    std::vector<std::string> metrics(std::begin(kVerificationBestMetrics), std::end(kVerificationBestMetrics));
    metrics.push_back("loss");
    return metrics;
  }
  bool higher_is_better(const std::string& metric) const override { return metric != "loss"; }
  std::string prediction_name() const override { return "embeddings"; }
  bool one_class_per_sample() const override { return false; }
  void predict(float* out, const float* outputs, int k) const override { std::copy(outputs, outputs + k, out); }
  std::string onnx_postprocess() const override { return ""; }

 private:
  double margin_;
  Mining mining_;
};

}  // namespace

bool is_metric_task(const std::string& kind) { return kind == "arcface" || kind == "cosface" || kind == "triplet"; }

// The range checks of loss.scale, loss.margin and loss.mining live here, beside the formulas they
// protect: ArcFace's margin is an angle below pi/2 (beyond, cos(theta + m) stops ordering angles
// even with the fallback), CosFace's a cosine offset below 2, the triplet margin a distance
// between unit vectors (at most 2 apart).
std::unique_ptr<Task> make_metric_task(const std::string& kind, const TaskOptions& o) {
  const bool margin_softmax = kind == "arcface" || kind == "cosface";
  if (!margin_softmax && o.scale >= 0) throw ConfigError("'loss.scale' applies to arcface and cosface only, not '" + kind + "'");
  if (kind != "triplet" && !o.mining.empty()) throw ConfigError("'loss.mining' applies to triplet only, not '" + kind + "'");
  const double scale = o.scale >= 0 ? o.scale : 64.0;
  if (margin_softmax && !(scale > 0)) throw ConfigError("'loss.scale' must be > 0, got " + number_text(o.scale));
  const double margin = o.margin >= 0 ? o.margin : kind == "arcface" ? 0.5 : kind == "cosface" ? 0.4 : 0.2;
  const double limit = kind == "arcface" ? M_PI / 2 : 2.0;
  if (!(margin < limit))
    throw ConfigError("'loss.margin' for " + kind + " must be in [0, " + (kind == "arcface" ? "pi/2" : "2") + "), got " +
                      number_text(o.margin));
  if (kind == "arcface") return std::make_unique<MarginSoftmax>(MarginKind::arcface, scale, margin);
  if (kind == "cosface") return std::make_unique<MarginSoftmax>(MarginKind::cosface, scale, margin);
  const std::string mining = o.mining.empty() ? "batch_hard" : o.mining;
  if (mining != "batch_hard" && mining != "semi_hard")
    throw ConfigError("'loss.mining' must be batch_hard or semi_hard, got '" + mining + "'");
  return std::make_unique<Triplet>(margin, mining == "batch_hard" ? Mining::batch_hard : Mining::semi_hard);
}

}  // namespace mpicnn::core
