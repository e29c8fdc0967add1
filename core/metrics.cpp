#include "metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mpicnn::core {

double roc_auc(const std::vector<float>& scores, const std::vector<bool>& positive) {
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  // Sum of the positives' ranks, ties sharing their mean rank.
  double rank_sum = 0;
  std::size_t positives = 0;
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    while (j < order.size() && scores[order[j]] == scores[order[i]]) ++j;
    const double mean_rank = 0.5 * double(i + 1 + j);
    for (std::size_t k = i; k < j; ++k)
      if (positive[order[k]]) rank_sum += mean_rank, ++positives;
    i = j;
  }
  const std::size_t negatives = scores.size() - positives;
  if (positives == 0 || negatives == 0) return std::nan("");
  return (rank_sum - 0.5 * double(positives) * double(positives + 1)) / (double(positives) * double(negatives));
}

std::vector<float> column(std::span<const float> values, int columns, int k) {
  std::vector<float> out(values.size() / std::size_t(columns));
  for (std::size_t n = 0; n < out.size(); ++n) out[n] = values[n * std::size_t(columns) + std::size_t(k)];
  return out;
}

double multiclass_auc(std::span<const float> probabilities, std::span<const std::int32_t> labels, int classes) {
  std::vector<double> aucs;
  for (int k = classes == 2 ? 1 : 0; k < classes; ++k) {
    std::vector<bool> positive(labels.size());
    for (std::size_t n = 0; n < labels.size(); ++n) positive[n] = labels[n] == k;
    aucs.push_back(roc_auc(column(probabilities, classes, k), positive));
  }
  return mean_defined(aucs);
}

std::vector<double> per_label_auc(std::span<const float> scores, std::span<const float> targets, int labels) {
  std::vector<double> aucs;
  for (int k = 0; k < labels; ++k) {
    const std::vector<float> truth = column(targets, labels, k);
    std::vector<bool> positive(truth.size());
    for (std::size_t n = 0; n < truth.size(); ++n) positive[n] = truth[n] > 0.5f;
    aucs.push_back(roc_auc(column(scores, labels, k), positive));
  }
  return aucs;
}

std::vector<ThresholdRates> per_label_rates(std::span<const float> scores, std::span<const float> targets, int labels,
                                            double threshold) {
  const auto ratio = [](std::int64_t part, std::int64_t whole) { return whole > 0 ? double(part) / double(whole) : std::nan(""); };
  std::vector<ThresholdRates> rates;
  const std::size_t n = labels > 0 ? scores.size() / std::size_t(labels) : 0;
  for (int k = 0; k < labels; ++k) {
    std::int64_t tp = 0, fp = 0, tn = 0, fn = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const bool predicted = scores[i * labels + k] > threshold, actual = targets[i * labels + k] > 0.5f;
      tp += predicted && actual, fp += predicted && !actual, tn += !predicted && !actual, fn += !predicted && actual;
    }
    rates.push_back({ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(tp, tp + fp)});
  }
  return rates;
}

int per_label_index(const std::string& name) {
  const std::size_t underscore = name.rfind('_');
  if (underscore == std::string::npos || underscore + 1 == name.size()) return -1;
  int index = 0;
  for (std::size_t i = underscore + 1; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || index > 1000000) return -1;
    index = index * 10 + (name[i] - '0');
  }
  return index;
}

double mean_defined(const std::vector<double>& values) {
  double sum = 0;
  int count = 0;
  for (double v : values)
    if (!std::isnan(v)) sum += v, ++count;
  return count ? sum / count : std::nan("");
}

}  // namespace mpicnn::core
