#pragma once
// Losses of metric learning (face recognition, issue 18), with the sum/normaliser contract of
// core/loss.hpp: each returns the un-normalised sum over the batch and writes d(sum)/d(input).
//
// Margin softmax (ArcFace, CosFace) reads cosines, the outputs of a `cosine(n)` layer: for the
// label's class the cosine is replaced by phi(cos), every class is scaled by s, then softmax
// cross-entropy; normaliser: the sample count.
//   ArcFace (Deng et al. 2019): phi = cos(theta + m) = cos cos(m) - sin(theta) sin(m) while
//     theta + m <= pi (cos > cos(pi - m)); beyond that insightface's fallback phi = cos - m sin(m)
//     keeps phi decreasing in theta.
//   CosFace (Wang et al. 2018): phi = cos - m.
// Triplet loss reads embeddings, L2-normalises them (F.normalize) and mines inside the batch it is
// given (the micro-batch under exact reduction) with Euclidean distances d:
//   batch_hard (Hermans et al. 2017): per anchor, max(0, m + max_p d(a,p) - min_n d(a,n));
//   semi_hard (Schroff et al. 2015, as TensorFlow Addons' triplet_semihard_loss): per positive
//     pair (a,p), the nearest negative farther than p, or when there is none the farthest
//     negative; max(0, m + d(a,p) - d(a,n)), averaged over the anchor's positives.
// Each anchor contributes its loss (0 without a positive or a negative in the batch); the
// normaliser is the sample count, so under P x K sampling (every anchor with K-1 positives) the
// mean is the published one.
#include <cstdint>

#include "loss.hpp"

namespace mpicnn::core {

enum class MarginKind { arcface, cosface };

// cosines (N,K) in [-1,1] (slightly outside is clamped: float rounding); correct counts samples
// whose largest cosine is the label's. Throws ShapeError for a label outside [0, K) or a cosine
// beyond [-1.001, 1.001] (not the output of a cosine layer).
LossSum margin_softmax_loss(float* grad /*N,K*/, const float* cosines /*N,K*/, const std::int32_t* labels /*N*/,
                            MarginKind kind, double scale, double margin, int batch, int classes);

// The margin softmax over one block of classes, [first, first + rows) of `classes`, in the steps a
// classifier split by rows across ranks combines between (distributed/sharded_classifier.hpp):
// margin_softmax_loss is the same steps over the one block of all classes, so a split gives
// bitwise its result. Per sample: z = s * cos, the label's s * phi(cos); top = max z (exact in any
// order); total = sum exp(z - top), each term on a fixed-point grid (int64, exact in any order;
// 2^-(62 - ceil(log2 classes)) per term, far below float rounding of the loss); log_total =
// log(total) + top; loss = log_total - z[label]; d/dcos = s * (p - [k = label] * ...) as below.
struct MarginBlock {
  MarginKind kind;
  double scale, margin;
  long classes;
  int first, rows;
};
// z (batch, rows) from cosines (batch, rows); slope[n] = d(phi)/dcos where sample n's label is in the
// block (left as it is otherwise). Throws as margin_softmax_loss.
void margin_scores(double* z /*batch,rows*/, double* slope /*batch*/, const float* cosines /*batch,rows*/,
                   const std::int32_t* labels /*batch*/, const MarginBlock& block, int batch);
// The block's sum of exp(z - top) on the grid, and the total of all blocks' sums as a number.
std::int64_t exp_sum_on_grid(const double* z /*rows*/, int rows, double top, long classes);
double exp_sum_value(std::int64_t sum, long classes);
// d(loss)/dcos (batch, rows) from each sample's log_total.
void margin_gradients(float* grad /*batch,rows*/, const double* z /*batch,rows*/, const double* log_total /*batch*/,
                      const double* slope /*batch*/, const std::int32_t* labels /*batch*/, const MarginBlock& block,
                      int batch);

enum class Mining { batch_hard, semi_hard };

// correct counts anchors whose nearest other sample (normalised, Euclidean) shares its label.
LossSum triplet_loss(float* grad /*N,D*/, const float* embeddings /*N,D*/, const std::int32_t* labels /*N*/,
                     double margin, Mining mining, int batch, int dim);

}  // namespace mpicnn::core
