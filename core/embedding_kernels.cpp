#include "embedding_kernels.hpp"

#include <algorithm>
#include <cmath>

#include "parallel.hpp"

namespace mpicnn::core {

template <class T>
void l2_normalize_forward(T* out, T* norms, const T* in, int rows, int dim) {
  for (int r = 0; r < rows; ++r) {
    const T* x = in + std::size_t(r) * dim;
    double squares = 0;
    for (int i = 0; i < dim; ++i) squares += double(x[i]) * double(x[i]);
    const double norm = std::max(std::sqrt(squares), kNormalizeEps);
    norms[r] = T(norm);
    T* y = out + std::size_t(r) * dim;
    for (int i = 0; i < dim; ++i) y[i] = T(double(x[i]) / norm);
  }
}

template <class T>
void l2_normalize_backward(T* in_grad, const T* out_grad, const T* out, const T* norms, int rows, int dim,
                           bool accumulate) {
  for (int r = 0; r < rows; ++r) {
    const std::size_t at = std::size_t(r) * dim;
    const T *g = out_grad + at, *y = out + at;
    const double norm = double(norms[r]);
    double projection = 0;  // y . g; zero where the norm was clamped (x itself is then held fixed)
    if (norm > kNormalizeEps)
      for (int i = 0; i < dim; ++i) projection += double(y[i]) * double(g[i]);
    T* dx = in_grad + at;
    for (int i = 0; i < dim; ++i) {
      const T value = T((double(g[i]) - double(y[i]) * projection) / norm);
      dx[i] = accumulate ? dx[i] + value : value;
    }
  }
}

template <class T>
void cosine_forward(T* cos, const T* x_hat, const T* w_hat, int batch, int dim, int classes) {
  parallel_for(std::size_t(batch), 2.0 * dim * classes, [&](std::size_t n) {
    const T* x = x_hat + n * dim;
    for (int k = 0; k < classes; ++k) {
      const T* w = w_hat + std::size_t(k) * dim;
      double dot = 0;
      for (int i = 0; i < dim; ++i) dot += double(x[i]) * double(w[i]);
      cos[n * classes + k] = T(dot);
    }
  });
}

template <class T>
void cosine_backward(T* x_hat_grad, T* w_hat_grad, const T* cos_grad, const T* x_hat, const T* w_hat, int batch,
                     int dim, int classes) {
  // Each output row is written by one task, its sum in a fixed order: the same for any thread count.
  parallel_for(std::size_t(batch), 2.0 * dim * classes, [&](std::size_t n) {
    for (int i = 0; i < dim; ++i) {
      double sum = 0;
      for (int k = 0; k < classes; ++k) sum += double(cos_grad[n * classes + k]) * double(w_hat[std::size_t(k) * dim + i]);
      x_hat_grad[n * dim + i] = T(sum);
    }
  });
  parallel_for(std::size_t(classes), 2.0 * dim * batch, [&](std::size_t k) {
    for (int i = 0; i < dim; ++i) {
      double sum = 0;
      for (int n = 0; n < batch; ++n) sum += double(cos_grad[std::size_t(n) * classes + k]) * double(x_hat[std::size_t(n) * dim + i]);
      w_hat_grad[k * dim + i] = T(sum);
    }
  });
}

#define MPICNN_EMBEDDING_KERNELS(T)                                                                      \
  template void l2_normalize_forward<T>(T*, T*, const T*, int, int);                                      \
  template void l2_normalize_backward<T>(T*, const T*, const T*, const T*, int, int, bool);               \
  template void cosine_forward<T>(T*, const T*, const T*, int, int, int);                                 \
  template void cosine_backward<T>(T*, T*, const T*, const T*, const T*, int, int, int);
MPICNN_EMBEDDING_KERNELS(float)
MPICNN_EMBEDDING_KERNELS(double)
#undef MPICNN_EMBEDDING_KERNELS

}  // namespace mpicnn::core
