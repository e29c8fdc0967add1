#include "embedding_kernels.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

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
void cosine_weight_gradient(T* w_hat_grad, const T* cos_grad, std::size_t stride, const T* x_hat, int batch, int dim,
                            int rows) {
  // Each output row is written by one task, its sum in a fixed order: the same for any thread count.
  parallel_for(std::size_t(rows), 2.0 * dim * batch, [&](std::size_t k) {
    for (int i = 0; i < dim; ++i) {
      double sum = 0;
      for (int n = 0; n < batch; ++n) sum += double(cos_grad[std::size_t(n) * stride + k]) * double(x_hat[std::size_t(n) * dim + i]);
      w_hat_grad[k * dim + i] = T(sum);
    }
  });
}

double cosine_input_scale(double largest_gradient, long classes) {
  if (!(largest_gradient > 0) || !std::isfinite(largest_gradient)) return 0;
  int top = 0;
  std::frexp(largest_gradient, &top);  // largest < 2^top; a term g * w with |w| <= 1 (+ rounding) < 2^(top+1)
  return std::ldexp(1.0, 62 - std::bit_width(std::uint64_t(std::max(1L, classes) - 1)) - (top + 1));
}

template <class T>
void cosine_input_gradient_add(std::int64_t* sums, const T* cos_grad, std::size_t stride, const T* w_hat,
                               const double* scale, int batch, int dim, int rows) {
  parallel_for(std::size_t(batch), 2.0 * dim * rows, [&](std::size_t n) {
    std::int64_t* sum = sums + n * dim;
    for (int k = 0; k < rows; ++k) {
      const double g = double(cos_grad[n * stride + std::size_t(k)]) * scale[n];
      if (g == 0) continue;  // adds nothing
      const T* w = w_hat + std::size_t(k) * dim;
      for (int i = 0; i < dim; ++i) sum[i] += static_cast<std::int64_t>(g * double(w[i]));
    }
  });
}

template <class T>
void cosine_input_gradient_finish(T* x_hat_grad, const std::int64_t* sums, const double* scale, int batch, int dim) {
  for (int n = 0; n < batch; ++n)
    for (int i = 0; i < dim; ++i) {
      const std::size_t at = std::size_t(n) * dim + i;
      x_hat_grad[at] = scale[n] > 0 ? T(double(sums[at]) / scale[n]) : T(0);
    }
}

template <class T>
void cosine_backward(T* x_hat_grad, T* w_hat_grad, const T* cos_grad, const T* x_hat, const T* w_hat, int batch,
                     int dim, int classes) {
  std::vector<double> scale(static_cast<std::size_t>(batch));
  for (int n = 0; n < batch; ++n) {
    double largest = 0;
    for (int k = 0; k < classes; ++k) largest = std::max(largest, std::abs(double(cos_grad[std::size_t(n) * classes + k])));
    scale[n] = cosine_input_scale(largest, classes);
  }
  std::vector<std::int64_t> sums(std::size_t(batch) * dim, 0);
  cosine_input_gradient_add(sums.data(), cos_grad, std::size_t(classes), w_hat, scale.data(), batch, dim, classes);
  cosine_input_gradient_finish(x_hat_grad, sums.data(), scale.data(), batch, dim);
  cosine_weight_gradient(w_hat_grad, cos_grad, std::size_t(classes), x_hat, batch, dim, classes);
}

#define MPICNN_EMBEDDING_KERNELS(T)                                                                      \
  template void l2_normalize_forward<T>(T*, T*, const T*, int, int);                                      \
  template void l2_normalize_backward<T>(T*, const T*, const T*, const T*, int, int, bool);               \
  template void cosine_forward<T>(T*, const T*, const T*, int, int, int);                                 \
  template void cosine_backward<T>(T*, T*, const T*, const T*, const T*, int, int, int);                  \
  template void cosine_weight_gradient<T>(T*, const T*, std::size_t, const T*, int, int, int);            \
  template void cosine_input_gradient_add<T>(std::int64_t*, const T*, std::size_t, const T*, const double*, int, int, \
                                             int);                                                        \
  template void cosine_input_gradient_finish<T>(T*, const std::int64_t*, const double*, int, int);
MPICNN_EMBEDDING_KERNELS(float)
MPICNN_EMBEDDING_KERNELS(double)
#undef MPICNN_EMBEDDING_KERNELS

}  // namespace mpicnn::core
