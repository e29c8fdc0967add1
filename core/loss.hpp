#pragma once
// Losses return the un-normalised sum and its normaliser, and write d(sum)/d(output). Gradients are
// divided by the normaliser only after they are summed across ranks, so N ranks with batch B give
// the same update as one rank with batch N*B.
#include <cstdint>
#include <span>

namespace mpicnn::core {

struct LossSum {
  double sum = 0;         // sum of per-sample losses (weighted)
  double normalizer = 0;  // what the mean divides by: sample count, sum of class weights, or count*outputs
  double correct = 0;     // samples whose arg-max equals the label (classification only)
};

// Softmax + cross-entropy, fused and stable (log-sum-exp with the max subtracted). With class
// weights the mean is sum(w_y * loss) / sum(w_y), as PyTorch's CrossEntropyLoss(weight=...).
// grad may be null (evaluation). Throws if a label is outside [0, classes).
LossSum softmax_cross_entropy(float* grad /*N,K*/, const float* logits /*N,K*/, const std::int32_t* labels /*N*/,
                              std::span<const float> class_weights, int batch, int classes);

// Mean squared error over every output: sum((y - t)^2) / (N*K).
LossSum mean_squared_error(float* grad /*N,K*/, const float* outputs /*N,K*/, const float* targets /*N,K*/,
                           int batch, int outputs_per_sample);

// Sigmoid + binary cross-entropy per output (multi-label), fused and stable:
// l = (1 - t) x + (1 + (p - 1) t) softplus(-x) with p the label's positive weight (1 when
// pos_weight is empty), as PyTorch's BCEWithLogitsLoss(pos_weight=...); the mean divides by N*K.
// correct counts outputs whose 0.5-threshold decision (x > 0) equals the target (t > 0.5).
LossSum sigmoid_binary_cross_entropy(float* grad /*N,K*/, const float* logits /*N,K*/, const float* targets /*N,K*/,
                                     std::span<const float> pos_weight, int batch, int labels);

// Softmax probabilities of one row of logits.
void softmax(float* probabilities, const float* logits, int classes);

}  // namespace mpicnn::core
