#pragma once
// Kernels of the embedding layers: L2 normalisation of each sample's features and the cosine
// classifier (both the embedding and the class centres normalised), for float and double (the
// gradient checks). Normalisation is PyTorch's F.normalize: y = x / max(||x||, eps), eps = 1e-12.
#include <cstddef>
#include <cstdint>

namespace mpicnn::core {

constexpr double kNormalizeEps = 1e-12;

// out (rows, dim) = in / max(||in row||, eps); norms (rows) keeps max(||row||, eps) for backward.
template <class T>
void l2_normalize_forward(T* out /*rows,dim*/, T* norms /*rows*/, const T* in /*rows,dim*/, int rows, int dim);

// in_grad (rows, dim) from out_grad and the forward's out and norms: (g - y (y . g)) / n where the
// norm exceeded eps, g / eps where it was clamped (the clamp's derivative). in_grad may alias
// out_grad. accumulate: add into in_grad instead of writing it (weight gradients).
template <class T>
void l2_normalize_backward(T* in_grad /*rows,dim*/, const T* out_grad /*rows,dim*/, const T* out /*rows,dim*/,
                           const T* norms /*rows*/, int rows, int dim, bool accumulate = false);

// cos (batch, classes) = x_hat (batch, dim) . w_hat (classes, dim)^T, both already normalised.
template <class T>
void cosine_forward(T* cos /*batch,classes*/, const T* x_hat /*batch,dim*/, const T* w_hat /*classes,dim*/,
                    int batch, int dim, int classes);

// d/dx_hat (batch, dim) = cos_grad . w_hat; d/dw_hat (classes, dim) = cos_grad^T . x_hat (both written).
template <class T>
void cosine_backward(T* x_hat_grad /*batch,dim*/, T* w_hat_grad /*classes,dim*/, const T* cos_grad /*batch,classes*/,
                     const T* x_hat /*batch,dim*/, const T* w_hat /*classes,dim*/, int batch, int dim, int classes);

// The pieces of cosine_backward, for a classifier whose rows are split across ranks
// (distributed/sharded_classifier.hpp). Both give every element the same arithmetic whatever
// block of classes is passed, so that any split of the rows gives bitwise the unsplit result:
// - the class-centre gradient is a double sum over the batch (in sample order) per row;
// - the input gradient is a sum over classes on a fixed-point grid (int64, exact in any order and
//   grouping): sample n's terms g * w lie below 2^e with 2^(e-1) > max_k |cos_grad[n,k]| (|w| <= 1),
//   scaled by cosine_input_scale so that `classes` of them stay below 2^62. Its resolution is
//   at most 2^-(60 - ceil(log2 classes)) of the row's largest gradient: 2^-43 for 100,000 classes.
// cos_grad rows are `stride` apart (the block's width, or the whole row's).
template <class T>
void cosine_weight_gradient(T* w_hat_grad /*rows,dim*/, const T* cos_grad /*batch,stride*/, std::size_t stride,
                            const T* x_hat /*batch,dim*/, int batch, int dim, int rows);
// The grid scale of a sample from its largest |cos_grad| over all `classes` (0 when it is 0).
double cosine_input_scale(double largest_gradient, long classes);
// Adds the block's terms to sums (batch, dim): trunc(g * w * scale[n]).
template <class T>
void cosine_input_gradient_add(std::int64_t* sums /*batch,dim*/, const T* cos_grad /*batch,stride*/,
                               std::size_t stride, const T* w_hat /*rows,dim*/, const double* scale /*batch*/,
                               int batch, int dim, int rows);
// x_hat_grad = sums / scale (0 where the scale is 0).
template <class T>
void cosine_input_gradient_finish(T* x_hat_grad /*batch,dim*/, const std::int64_t* sums /*batch,dim*/,
                                  const double* scale /*batch*/, int batch, int dim);

}  // namespace mpicnn::core
