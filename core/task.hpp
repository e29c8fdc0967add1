#pragma once
// What a model is trained for, one object per kind: the loss with its exact normaliser, the
// step's metrics, the evaluation sums and metrics, the default metric choosing best.h5, what
// `predict` writes and the ONNX output's post-processing. The trainer, the evaluator, predict
// and the exporters ask the task; none of them branches on a loss name.
//
// Exactness: every quantity a task reduces across ranks is a sum of per-sample values in fixed
// slots (integers, or floats each written by one rank), so the result does not depend on the rank
// count; the normaliser comes from integers (class histograms, sample counts).
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "boxes.hpp"
#include "detection_eval.hpp"
#include "loss.hpp"
#include "metric_losses.hpp"
#include "tensor.hpp"

namespace mpicnn::core {

// A batch as the kernels see it: (count, C, H, W) images and labels (classification) or
// (count, K) targets (regression); for detection each row's boxes (after augmentation).
struct BatchView {
  const float* images = nullptr;
  const std::int32_t* labels = nullptr;
  const float* targets = nullptr;
  int count = 0;
  std::span<const ImageBoxes> boxes{};  // count rows when the task needs_boxes(), else empty
};

using Metric = std::pair<std::string, double>;  // "accuracy", 0.91

// What an evaluation of a whole split gives a task: the sums, and for a task that needs them
// (AUC) every sample's prediction (Task::predict of its outputs) and truth, in the split's order;
// for detection every sample's detections (Task::detect) and the split's boxes.
struct EvalSums {
  double correct = 0;
  std::int64_t count = 0;
  int outputs = 0;
  std::span<const float> predictions;  // (count, outputs); empty unless needs_scores()
  std::span<const std::int32_t> labels;
  std::span<const float> targets;
  std::span<const DetectedBox> detections{};  // needs_boxes() only, as `truth`
  std::span<const GroundTruthBox> truth{};
};

// What the dataset offers a task: labels and their class count, or targets and their size; boxes.
struct DatasetTargets {
  bool has_labels = false;
  int classes = 0, target_size = 0;
  bool has_boxes = false;
};

// A task's settings (the config's loss.* keys); the sentinels mean "not used by this kind" or
// "its default".
struct TaskOptions {
  std::vector<float> class_weights;  // cross_entropy; empty = all 1
  std::vector<float> pos_weight;     // bce: per label, as BCEWithLogitsLoss(pos_weight=...); empty = all 1
  double focal_gamma = 0;            // > 0: focal loss (cross_entropy: softmax focal; bce: sigmoid focal)
  double focal_alpha = -1;           // bce's focal alpha; < 0: none (torchvision's default is 0.25)
  double label_smoothing = 0;        // cross_entropy, as PyTorch's CrossEntropyLoss(label_smoothing=...)
  // Metric learning (core/metric_losses.hpp); < 0 / empty: the kind's default.
  double scale = -1;   // arcface, cosface: s (64)
  double margin = -1;  // arcface 0.5 (radians), cosface 0.4, triplet 0.2
  std::string mining{};  // triplet: batch_hard (default) or semi_hard
  // Detection's decoding (core/detection_head.hpp DecodeOptions); < 0: its default.
  double score_threshold = -1, nms_iou = -1;
  int max_detections = -1;
};

class Task {
 public:
  virtual ~Task() = default;
  // The config's loss.kind and the checkpoint's /model loss attribute: "cross_entropy", "mse".
  virtual std::string kind() const = 0;
  // The options it was made with, its kind's defaults filled in and the other kinds' left at their
  // sentinels: make_task(kind(), options()) makes the same task (checkpoints store them).
  virtual TaskOptions options() const = 0;
  // Throws ConfigError (naming `where`) when the dataset or the model's outputs do not fit.
  virtual void check(const DatasetTargets& data, int outputs, const std::string& where) const = 0;
  // Called once the model and the dataset are known, before any other use: a task whose outputs
  // have a layout of their own (detection: a grid of cells) reads it here, and throws ConfigError
  // (naming `where`) when it does not fit. The others need nothing.
  virtual void configure(const DatasetTargets&, const Shape& /*input*/, const Shape& /*output*/, const std::string&) {}

  // Loss sum over the batch and d(sum)/d(outputs) (grad may be null), plus per-sample counts.
  virtual LossSum loss(float* grad, const float* outputs, const BatchView& batch, int outputs_per_sample) const = 0;
  // Appends what the step's allreduce must sum for the normaliser (e.g. the class histogram);
  // then normalizer() reads the summed values back.
  virtual void append_step_totals(const BatchView& batch, int outputs, std::vector<double>& totals) const = 0;
  virtual double normalizer(std::span<const double> summed, int global_count, int outputs) const = 0;
  // The step's metrics beside the loss, from the summed LossSum.correct.
  virtual std::vector<Metric> step_metrics(double correct, int global_count, int outputs) const = 0;

  // Evaluation: true when outputs are class scores (a confusion matrix and accuracy follow).
  virtual bool classifies() const = 0;
  // Whether eval_metrics needs every sample's prediction (AUC), gathered from all ranks.
  virtual bool needs_scores() const { return false; }
  // Metric learning: evaluation also judges the embedding (core::embedding_layer, else the
  // outputs) by verification on pairs from the split's labels; the evaluator gathers every
  // sample's embedding and adds core::verification_metric_names(), prefixed "verification_".
  virtual bool verifies() const { return false; }
  // Metrics of a whole evaluation, beside "loss" (without the "test_" prefix).
  virtual std::vector<Metric> eval_metrics(const EvalSums& sums) const = 0;
  // The metrics best.h5 may be chosen by, the default first; whether higher is better.
  virtual std::vector<std::string> best_metrics() const = 0;
  virtual bool higher_is_better(const std::string& metric) const = 0;

  // What predict writes per sample: its dataset name and the transform of the outputs.
  virtual std::string prediction_name() const = 0;  // "probabilities", "outputs"
  // Whether predictions are one class per sample (softmax over the outputs).
  virtual bool one_class_per_sample() const { return classifies(); }
  virtual void predict(float* out, const float* outputs, int outputs_per_sample) const = 0;
  // The ONNX operator that turns logits into predictions ("Softmax", "Sigmoid"), or "" for none.
  virtual std::string onnx_postprocess() const = 0;
  // A margin softmax (arcface, cosface): its formula and s, m, for a classifier whose rows are
  // sharded across ranks (train.classifier = sharded); nullopt for every other task.
  struct MarginSoftmax {
    MarginKind kind;
    double scale, margin;
  };
  virtual std::optional<MarginSoftmax> margin_softmax() const { return std::nullopt; }

  // Detection: whether the loss and evaluation need each row's boxes (BatchView::boxes,
  // EvalSums::truth), and one sample's detections from its outputs, `image` their image id.
  virtual bool needs_boxes() const { return false; }
  virtual std::vector<DetectedBox> detect(const float* /*outputs*/, std::int64_t /*image*/) const { return {}; }
};

// Throws ConfigError naming the kind and the known ones.
std::unique_ptr<Task> make_task(const std::string& kind, const TaskOptions& options = {});
const std::vector<std::string>& known_tasks();
// The metric-learning kinds (core/metric_tasks.cpp): arcface, cosface, triplet.
bool is_metric_task(const std::string& kind);
std::unique_ptr<Task> make_metric_task(const std::string& kind, const TaskOptions& options);
// loss.kind = detection (core/detection_task.cpp): the FCOS head of core/detection_head.hpp.
std::unique_ptr<Task> make_detection_task(const TaskOptions& options);

}  // namespace mpicnn::core
