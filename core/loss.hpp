#pragma once
// Losses return the un-normalised sum and its normaliser, and write d(sum)/d(output). Gradients are
// divided by the normaliser only after they are summed across ranks, so N ranks with batch B give
// the same update as one rank with batch N*B.
#include <cmath>
#include <cstdint>
#include <span>

namespace mpicnn::core {

struct LossSum {
  double sum = 0;         // sum of per-sample losses (weighted)
  double normalizer = 0;  // what the mean divides by: sample count, sum of class weights, or count*outputs
  double correct = 0;     // samples whose arg-max equals the label (classification only)
};

// A micro-batch's loss sum rounded to a multiple of 2^-32 before a step adds it to the others:
// sums of such values below 2^21 are exact in double in any order, so the step's loss (added on
// each rank, then over the ranks) does not depend on how the micro-batches are spread over ranks.
inline double on_loss_grid(double sum) { return std::ldexp(std::nearbyint(std::ldexp(sum, 32)), -32); }

// Softmax + cross-entropy, fused and stable (log-sum-exp with the max subtracted). With class
// weights the mean is sum(w_y * loss) / sum(w_y), as PyTorch's CrossEntropyLoss(weight=...).
// grad may be null (evaluation). Throws if a label is outside [0, classes). Label smoothing e,
// as PyTorch's CrossEntropyLoss(weight=w, label_smoothing=e): each sample adds
// (1 - e) w_y (-log p_y) + (e / K) sum_k w_k (-log p_k), still divided by sum(w_y).
LossSum softmax_cross_entropy(float* grad /*N,K*/, const float* logits /*N,K*/, const std::int32_t* labels /*N*/,
                              std::span<const float> class_weights, int batch, int classes, double label_smoothing = 0);

// Mean squared error over every output: sum((y - t)^2) / (N*K).
LossSum mean_squared_error(float* grad /*N,K*/, const float* outputs /*N,K*/, const float* targets /*N,K*/,
                           int batch, int outputs_per_sample);

// Sigmoid + binary cross-entropy per output (multi-label), fused and stable:
// l = (1 - t) x + (1 + (p - 1) t) softplus(-x) with p the label's positive weight (1 when
// pos_weight is empty), as PyTorch's BCEWithLogitsLoss(pos_weight=...); the mean divides by N*K.
// correct counts outputs whose 0.5-threshold decision (x > 0) equals the target (t > 0.5).
LossSum sigmoid_binary_cross_entropy(float* grad /*N,K*/, const float* logits /*N,K*/, const float* targets /*N,K*/,
                                     std::span<const float> pos_weight, int batch, int labels);

// Focal loss (Lin et al. 2017) for class labels: l = -w_y (1 - p_y)^gamma log p_y with p the
// softmax and w the class weights (the per-class alpha; all 1 when empty); normalised by sum(w_y)
// like softmax_cross_entropy, which it equals at gamma = 0.
LossSum softmax_focal_loss(float* grad /*N,K*/, const float* logits /*N,K*/, const std::int32_t* labels /*N*/,
                           std::span<const float> class_weights, double gamma, int batch, int classes);

// Sigmoid focal loss per output, as torchvision.ops.sigmoid_focal_loss: with p = sigmoid(x) and
// p_t = p t + (1 - p)(1 - t), l = a_t (1 - p_t)^gamma BCE(x, t), a_t = alpha t + (1 - alpha)(1 - t)
// when alpha >= 0 (1 when alpha < 0); the mean divides by N*K.
LossSum sigmoid_focal_loss(float* grad /*N,K*/, const float* logits /*N,K*/, const float* targets /*N,K*/,
                           double gamma, double alpha, int batch, int labels);

// Softmax probabilities of one row of logits.
void softmax(float* probabilities, const float* logits, int classes);

}  // namespace mpicnn::core
