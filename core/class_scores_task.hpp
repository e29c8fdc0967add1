#pragma once
// What the tasks whose outputs score one class per sample share (cross_entropy's logits, arcface's
// and cosface's cosines): accuracy by arg-max, MedMNIST's one-vs-rest AUC, best.h5 by accuracy.
#include "metrics.hpp"
#include "task.hpp"

namespace mpicnn::core {

class ClassScoresTask : public Task {
 public:
  std::vector<Metric> step_metrics(double correct, int global_count, int) const override {
    return {{"accuracy", correct / global_count}};
  }
  bool classifies() const override { return true; }
  bool needs_scores() const override { return true; }
  // MedMNIST's evaluator: ACC by arg-max, AUC one-vs-rest mean (binary: of class 1's score).
  std::vector<Metric> eval_metrics(const EvalSums& e) const override {
    return {{"accuracy", e.count > 0 ? e.correct / double(e.count) : 0.0},
            {"auc", multiclass_auc(e.predictions, e.labels, e.outputs)}};
  }
  std::vector<std::string> best_metrics() const override { return {"accuracy", "auc", "loss"}; }
  bool higher_is_better(const std::string& metric) const override { return metric != "loss"; }
};

}  // namespace mpicnn::core
