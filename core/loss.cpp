#include "loss.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "errors.hpp"

namespace mpicnn::core {

void softmax(float* probabilities, const float* logits, int classes) {
  const float top = *std::max_element(logits, logits + classes);
  double total = 0;
  for (int k = 0; k < classes; ++k) total += std::exp(double(logits[k] - top));
  for (int k = 0; k < classes; ++k) probabilities[k] = float(std::exp(double(logits[k] - top)) / total);
}

namespace {

// Sample n's label, checked against the class count, and its class weight.
int checked_label(const std::int32_t* labels, int n, int classes) {
  const int label = labels[n];
  if (label < 0 || label >= classes)
    throw ShapeError("label " + std::to_string(label) + " is outside [0, " + std::to_string(classes) + ")");
  return label;
}

double class_weight(std::span<const float> class_weights, int label) {
  return class_weights.empty() ? 1.0 : class_weights[label];
}

// log(sum(exp(z))) with the max subtracted first, so no exp overflows.
double log_sum_exp(const float* z, int classes) {
  const float top = *std::max_element(z, z + classes);
  double total = 0;
  for (int k = 0; k < classes; ++k) total += std::exp(double(z[k] - top));
  return std::log(total) + top;
}

bool argmax_is(const float* z, int classes, int label) { return std::max_element(z, z + classes) - z == label; }

// The label-smoothed form of softmax_cross_entropy (see loss.hpp). d/dz_j of the sample's loss:
// (1 - e) w_y (p_j - [j = y]) + (e / K) (W p_j - w_j), W = sum_k w_k.
LossSum smoothed_cross_entropy(float* grad, const float* logits, const std::int32_t* labels,
                               std::span<const float> class_weights, int batch, int classes, double e) {
  double all_weights = 0;
  for (int k = 0; k < classes; ++k) all_weights += class_weight(class_weights, k);
  LossSum result;
  for (int n = 0; n < batch; ++n) {
    const float* z = logits + std::size_t(n) * classes;
    const int label = checked_label(labels, n, classes);
    const double weight = class_weight(class_weights, label), log_total = log_sum_exp(z, classes);
    double smooth = 0;
    for (int k = 0; k < classes; ++k) smooth += class_weight(class_weights, k) * (log_total - z[k]);
    result.sum += (1 - e) * weight * (log_total - z[label]) + e / classes * smooth;
    result.normalizer += weight;
    if (argmax_is(z, classes, label)) result.correct += 1;
    if (!grad) continue;
    float* g = grad + std::size_t(n) * classes;
    for (int k = 0; k < classes; ++k) {
      const double p = std::exp(double(z[k]) - log_total);
      g[k] = float((1 - e) * weight * (p - (k == label)) + e / classes * (all_weights * p - class_weight(class_weights, k)));
    }
  }
  return result;
}

// The slope of m^gamma, m = 1 - p_t: gamma m^(gamma - 1), taken as 0 at m = 0 (its limit for
// gamma > 1; m = 0 needs a probability of exactly 1).
double focal_slope(double m, double gamma) { return m > 0 ? gamma * std::pow(m, gamma - 1) : 0.0; }
}  // namespace


LossSum softmax_cross_entropy(float* grad, const float* logits, const std::int32_t* labels,
                              std::span<const float> class_weights, int batch, int classes, double label_smoothing) {
  if (label_smoothing > 0) return smoothed_cross_entropy(grad, logits, labels, class_weights, batch, classes, label_smoothing);
  LossSum result;
  for (int n = 0; n < batch; ++n) {
    const float* z = logits + std::size_t(n) * classes;
    const int label = checked_label(labels, n, classes);
    const double weight = class_weight(class_weights, label), log_total = log_sum_exp(z, classes);
    result.sum += weight * (log_total - z[label]);
    result.normalizer += weight;
    if (argmax_is(z, classes, label)) result.correct += 1;
    if (!grad) continue;
    float* g = grad + std::size_t(n) * classes;
    for (int k = 0; k < classes; ++k) g[k] = float(weight * (std::exp(double(z[k]) - log_total) - (k == label)));
  }
  return result;
}

LossSum sigmoid_binary_cross_entropy(float* grad, const float* logits, const float* targets,
                                     std::span<const float> pos_weight, int batch, int labels) {
  LossSum result;
  for (int n = 0; n < batch; ++n)
    for (int k = 0; k < labels; ++k) {
      const std::size_t i = std::size_t(n) * labels + k;
      const double x = logits[i], t = targets[i], p = pos_weight.empty() ? 1.0 : pos_weight[k];
      const double softplus_minus_x = std::max(-x, 0.0) + std::log1p(std::exp(-std::abs(x)));
      const double positive_scale = 1 + (p - 1) * t;
      result.sum += (1 - t) * x + positive_scale * softplus_minus_x;
      if ((x > 0) == (t > 0.5)) result.correct += 1;
      // d/dx: (1 - t) - (1 + (p - 1) t) sigmoid(-x); sigmoid(-x) from exp(-|x|) without overflow.
      const double e = std::exp(-std::abs(x)), sigmoid_minus_x = x >= 0 ? e / (1 + e) : 1 / (1 + e);
      if (grad) grad[i] = float((1 - t) - positive_scale * sigmoid_minus_x);
    }
  result.normalizer = double(batch) * labels;
  return result;
}

LossSum softmax_focal_loss(float* grad, const float* logits, const std::int32_t* labels,
                           std::span<const float> class_weights, double gamma, int batch, int classes) {
  LossSum result;
  std::vector<double> p(static_cast<std::size_t>(classes));
  for (int n = 0; n < batch; ++n) {
    const float* z = logits + std::size_t(n) * classes;
    const int label = checked_label(labels, n, classes);
    const double weight = class_weight(class_weights, label), log_total = log_sum_exp(z, classes);
    for (int k = 0; k < classes; ++k) p[k] = std::exp(double(z[k]) - log_total);
    double miss = 0;  // 1 - p_y as the sum of the other classes: exact where p_y is close to 1
    for (int k = 0; k < classes; ++k) miss += k == label ? 0.0 : p[k];
    const double log_p = double(z[label]) - log_total;
    const double modulator = std::pow(miss, gamma);
    result.sum += -weight * modulator * log_p;
    result.normalizer += weight;
    if (argmax_is(z, classes, label)) result.correct += 1;
    if (!grad) continue;
    // dl/dz_k = w (gamma (1 - p_y)^(gamma - 1) p_y log p_y - (1 - p_y)^gamma) (delta_ky - p_k)
    const double scale = weight * (focal_slope(miss, gamma) * p[label] * log_p - modulator);
    float* g = grad + std::size_t(n) * classes;
    for (int k = 0; k < classes; ++k) g[k] = float(scale * ((k == label) - p[k]));
  }
  return result;
}

LossSum sigmoid_focal_loss(float* grad, const float* logits, const float* targets, double gamma, double alpha,
                           int batch, int labels) {
  LossSum result;
  for (int n = 0; n < batch; ++n)
    for (int k = 0; k < labels; ++k) {
      const std::size_t i = std::size_t(n) * labels + k;
      const double x = logits[i], t = targets[i];
      const double e = std::exp(-std::abs(x));  // both sigmoids from exp(-|x|), without overflow
      const double p = x >= 0 ? 1 / (1 + e) : e / (1 + e), q = x >= 0 ? e / (1 + e) : 1 / (1 + e);  // q = 1 - p
      const double bce = std::max(x, 0.0) - x * t + std::log1p(e);
      const double miss = t * q + (1 - t) * p;  // 1 - p_t
      const double a = alpha >= 0 ? alpha * t + (1 - alpha) * (1 - t) : 1.0;
      const double modulator = std::pow(miss, gamma);
      result.sum += a * modulator * bce;
      if ((x > 0) == (t > 0.5)) result.correct += 1;
      // d(miss)/dx = (1 - 2t) p q; d(bce)/dx = p - t.
      if (grad) grad[i] = float(a * ((p - t) * modulator + bce * focal_slope(miss, gamma) * (1 - 2 * t) * p * q));
    }
  result.normalizer = double(batch) * labels;
  return result;
}

LossSum mean_squared_error(float* grad, const float* outputs, const float* targets, int batch, int outputs_per_sample) {
  LossSum result;
  const std::size_t n = std::size_t(batch) * outputs_per_sample;
  for (std::size_t i = 0; i < n; ++i) {
    const double diff = double(outputs[i]) - targets[i];
    result.sum += diff * diff;
    if (grad) grad[i] = float(2.0 * diff);
  }
  result.normalizer = double(n);
  return result;
}

}  // namespace mpicnn::core
