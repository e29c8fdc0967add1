#pragma once
// Classification metrics from a confusion matrix and per-sample probabilities: what a clinical
// audit asks for (sensitivity, specificity, per class and averaged, and ROC AUC).
#include <cstdint>
#include <string>
#include <vector>

namespace mpicnn::app {

struct ClassMetrics {
  double precision = 0, recall = 0, specificity = 0, f1 = 0, auc = 0;
  std::int64_t support = 0;  // samples of this class
};

struct ClassificationReport {
  std::vector<ClassMetrics> per_class;
  ClassMetrics macro, weighted;  // unweighted mean over classes; mean weighted by support
};

// confusion: (K,K), row = true class, column = predicted. probabilities: (N,K); labels: (N).
ClassificationReport classification_report(const std::vector<std::int64_t>& confusion, int classes,
                                           const std::vector<float>& probabilities,
                                           const std::vector<std::int32_t>& labels);


}  // namespace mpicnn::app
