// loss.kind = detection: the one-level FCOS head of core/detection_head.hpp as a task. Its
// normaliser is the number of positive cells of the global batch, an integer summed across ranks
// with the step's totals; evaluation decodes every sample and scores the split by COCO's and VOC's
// rules (core/detection_eval.hpp).
#include <algorithm>

#include "detection_head.hpp"
#include "errors.hpp"
#include "task.hpp"

namespace mpicnn::core {
namespace {

// "ap", "ap50", ... in DetectionSummary's order: the names of metrics.jsonl, checkpoints and eval.
const std::vector<std::pair<std::string, double DetectionSummary::*>>& summary_fields() {
  static const std::vector<std::pair<std::string, double DetectionSummary::*>> fields = {
      {"ap", &DetectionSummary::ap},           {"ap50", &DetectionSummary::ap50},
      {"ap75", &DetectionSummary::ap75},       {"ap_small", &DetectionSummary::ap_small},
      {"ap_medium", &DetectionSummary::ap_medium}, {"ap_large", &DetectionSummary::ap_large},
      {"ar1", &DetectionSummary::ar1},         {"ar10", &DetectionSummary::ar10},
      {"ar100", &DetectionSummary::ar100},     {"ar_small", &DetectionSummary::ar_small},
      {"ar_medium", &DetectionSummary::ar_medium}, {"ar_large", &DetectionSummary::ar_large},
      {"voc_ap50", &DetectionSummary::voc_ap50}};
  return fields;
}

class Detection final : public Task {
 public:
  Detection(DetectionLossOptions options, DecodeOptions decode) : options_(options), decode_(decode) {}
  std::string kind() const override { return "detection"; }
  TaskOptions options() const override {
    TaskOptions o;
    o.focal_gamma = options_.focal_gamma, o.focal_alpha = options_.focal_alpha;
    o.score_threshold = decode_.score_threshold, o.nms_iou = decode_.nms_iou, o.max_detections = decode_.max_detections;
    return o;
  }
  // The layout only: `mpicnn detect` applies a detector to a split without boxes.
  void configure(const DatasetTargets& data, const Shape& input, const Shape& output, const std::string&) override {
    head_ = detection_head(input, output, data.classes);
  }
  // Training and evaluation compare with the split's boxes.
  void check(const DatasetTargets& data, int, const std::string& where) const override {
    if (!data.has_boxes)
      throw ConfigError("loss 'detection' needs boxes, but " + where + " has none (mpicnn convert --format coco writes them)");
  }
  LossSum loss(float* grad, const float* outputs, const BatchView& batch, int) const override {
    return detection_loss(grad, outputs, rows(batch), head_, options_);
  }
  void append_step_totals(const BatchView& batch, int, std::vector<double>& totals) const override {
    totals.push_back(double(count_positives(head_, rows(batch))));
  }
  // torchvision's max(1, num_foreground): a step without any object still has a finite mean.
  double normalizer(std::span<const double> positives, int, int) const override { return std::max(1.0, positives[0]); }
  std::vector<Metric> step_metrics(double, int, int) const override { return {}; }
  bool classifies() const override { return false; }
  // Means over classes, then per class "<metric>_<k>" (eval prints them as a table).
  std::vector<Metric> eval_metrics(const EvalSums& e) const override {
    const DetectionMetrics m = evaluate_detections(e.truth, e.detections, head_.classes);
    std::vector<Metric> metrics;
    for (const auto& [name, field] : summary_fields()) metrics.emplace_back(name, m.mean.*field);
    for (std::size_t k = 0; k < m.per_class.size(); ++k)
      for (const auto& [name, field] : summary_fields()) metrics.emplace_back(name + "_" + std::to_string(k), m.per_class[k].*field);
    return metrics;
  }
  std::vector<std::string> best_metrics() const override { return {"ap", "ap50", "loss"}; }
  bool higher_is_better(const std::string& metric) const override { return metric != "loss"; }
  std::string prediction_name() const override { return "outputs"; }
  bool one_class_per_sample() const override { return false; }
  void predict(float* out, const float* outputs, int k) const override { std::copy(outputs, outputs + k, out); }
  std::string onnx_postprocess() const override { return ""; }
  bool needs_boxes() const override { return true; }
  std::vector<DetectedBox> detect(const float* outputs, std::int64_t image) const override {
    return decode_detections(outputs, head_, decode_, image);
  }

 private:
  std::span<const ImageBoxes> rows(const BatchView& batch) const {
    if (int(batch.boxes.size()) != batch.count)
      throw ConfigError("loss 'detection' needs every row's boxes, but the batch of " + std::to_string(batch.count) +
                        " rows has " + std::to_string(batch.boxes.size()));
    return batch.boxes;
  }

  DetectionLossOptions options_;
  DecodeOptions decode_;
  DetectionHead head_;
};

}  // namespace

std::unique_ptr<Task> make_detection_task(const TaskOptions& o) {
  if (!o.class_weights.empty() || !o.pos_weight.empty() || o.label_smoothing > 0 || o.scale >= 0 || o.margin >= 0 ||
      !o.mining.empty())
    throw ConfigError("loss 'detection' takes loss.focal_gamma and loss.focal_alpha only (not class_weights, pos_weight, "
                      "label_smoothing, scale, margin or mining)");
  DetectionLossOptions options;
  if (o.focal_gamma > 0) options.focal_gamma = o.focal_gamma;
  if (o.focal_alpha >= 0) options.focal_alpha = o.focal_alpha;
  DecodeOptions decode;
  if (o.score_threshold >= 0) decode.score_threshold = float(o.score_threshold);
  if (o.nms_iou >= 0) decode.nms_iou = o.nms_iou;
  if (o.max_detections >= 0) decode.max_detections = o.max_detections;
  return std::make_unique<Detection>(options, decode);
}

}  // namespace mpicnn::core
