#include "loss.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "errors.hpp"

namespace mpicnn::core {

void softmax(float* probabilities, const float* logits, int classes) {
  const float top = *std::max_element(logits, logits + classes);
  double total = 0;
  for (int k = 0; k < classes; ++k) total += std::exp(double(logits[k] - top));
  for (int k = 0; k < classes; ++k) probabilities[k] = float(std::exp(double(logits[k] - top)) / total);
}

LossSum softmax_cross_entropy(float* grad, const float* logits, const std::int32_t* labels,
                              std::span<const float> class_weights, int batch, int classes) {
  LossSum result;
  for (int n = 0; n < batch; ++n) {
    const float* z = logits + std::size_t(n) * classes;
    const int label = labels[n];
    if (label < 0 || label >= classes)
      throw ShapeError("label " + std::to_string(label) + " is outside [0, " + std::to_string(classes) + ")");
    const double weight = class_weights.empty() ? 1.0 : class_weights[label];
    const float top = *std::max_element(z, z + classes);
    double total = 0;
    for (int k = 0; k < classes; ++k) total += std::exp(double(z[k] - top));
    const double log_total = std::log(total) + top;
    result.sum += weight * (log_total - z[label]);
    result.normalizer += weight;
    if (std::max_element(z, z + classes) - z == label) result.correct += 1;
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
