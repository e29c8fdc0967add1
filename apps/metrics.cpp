#include "metrics.hpp"

#include "core/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mpicnn::app {

ClassificationReport classification_report(const std::vector<std::int64_t>& confusion, int classes,
                                           const std::vector<float>& probabilities,
                                           const std::vector<std::int32_t>& labels) {
  ClassificationReport report;
  std::int64_t total = 0;
  for (auto v : confusion) total += v;
  auto safe = [](double num, double den) { return den > 0 ? num / den : 0.0; };
  for (int k = 0; k < classes; ++k) {
    std::int64_t tp = confusion[std::size_t(k) * classes + k], predicted = 0, actual = 0;
    for (int j = 0; j < classes; ++j) {
      predicted += confusion[std::size_t(j) * classes + k];
      actual += confusion[std::size_t(k) * classes + j];
    }
    ClassMetrics m;
    m.support = actual;
    m.precision = safe(tp, predicted);
    m.recall = safe(tp, actual);
    const std::int64_t negatives = total - actual, false_positives = predicted - tp;
    m.specificity = safe(double(negatives - false_positives), double(negatives));
    m.f1 = safe(2 * m.precision * m.recall, m.precision + m.recall);
    std::vector<float> scores(labels.size());
    std::vector<bool> positive(labels.size());
    for (std::size_t n = 0; n < labels.size(); ++n) {
      scores[n] = probabilities[n * classes + k];
      positive[n] = labels[n] == k;
    }
    m.auc = core::roc_auc(scores, positive);
    report.per_class.push_back(m);
  }
  auto average = [&](bool weighted) {
    ClassMetrics a;
    double weight_total = 0, auc_weight = 0;
    for (const auto& m : report.per_class) {
      const double w = weighted ? double(m.support) : 1.0;
      a.precision += w * m.precision, a.recall += w * m.recall, a.specificity += w * m.specificity, a.f1 += w * m.f1;
      if (!std::isnan(m.auc)) a.auc += w * m.auc, auc_weight += w;
      weight_total += w;
      a.support += m.support;
    }
    a.precision = safe(a.precision, weight_total), a.recall = safe(a.recall, weight_total);
    a.specificity = safe(a.specificity, weight_total), a.f1 = safe(a.f1, weight_total);
    a.auc = auc_weight > 0 ? a.auc / auc_weight : std::nan("");
    return a;
  };
  report.macro = average(false);
  report.weighted = average(true);
  return report;
}

}  // namespace mpicnn::app
