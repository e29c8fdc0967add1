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

// Softmax probabilities of one row of logits.
void softmax(float* probabilities, const float* logits, int classes);

}  // namespace mpicnn::core
