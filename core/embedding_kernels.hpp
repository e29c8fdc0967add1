#pragma once
// Kernels of the embedding layers: L2 normalisation of each sample's features and the cosine
// classifier (both the embedding and the class centres normalised), for float and double (the
// gradient checks). Normalisation is PyTorch's F.normalize: y = x / max(||x||, eps), eps = 1e-12.
#include <cstddef>

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

}  // namespace mpicnn::core
