#pragma once
// Metrics over a whole split's per-sample scores, as MedMNIST's evaluator and scikit-learn compute
// them: ROC AUC (per label, one-vs-rest mean) and thresholded accuracy.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace mpicnn::core {

// Area under the ROC curve of `scores` for `positive` labels (Mann-Whitney U with ties counted
// half, as sklearn.metrics.roc_auc_score); NaN when one of the two groups is empty.
double roc_auc(const std::vector<float>& scores, const std::vector<bool>& positive);

// Column `k` of an (N, K) row-major array.
std::vector<float> column(std::span<const float> values, int columns, int k);

// Mean over classes of the one-vs-rest AUC of probabilities (N, K) for labels (N), skipping
// classes absent or alone (sklearn's roc_auc_score(multi_class="ovr", average="macro") needs every
// class present; MedMNIST's getAUC averages the same per-class values). With K = 2 the AUC of
// class 1's score, as MedMNIST's binary tasks.
double multiclass_auc(std::span<const float> probabilities, std::span<const std::int32_t> labels, int classes);
// Per-label AUC of scores (N, K) against 0/1 targets (N, K); NaN where a label has one group only.
std::vector<double> per_label_auc(std::span<const float> scores, std::span<const float> targets, int labels);
// Per label at a score threshold (predicted positive when score > threshold, as MedMNIST's
// evaluator): sensitivity (recall), specificity and precision; NaN where nothing defines one (no
// positive, no negative, nothing predicted positive).
struct ThresholdRates {
  double sensitivity, specificity, precision;
};
std::vector<ThresholdRates> per_label_rates(std::span<const float> scores, std::span<const float> targets, int labels,
                                            double threshold);
// A per-label metric is named "<metric>_<label index>" (auc_3, val_precision_12): its index, else -1.
int per_label_index(const std::string& name);
// Mean of the values that are not NaN (NaN when none is).
double mean_defined(const std::vector<double>& values);

}  // namespace mpicnn::core
