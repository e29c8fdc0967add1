#include "kernels.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "parallel.hpp"
#include "tensor.hpp"

namespace mpicnn::core {
namespace {

// Rows of a dense layer's batch (or of its weight gradient) per task: fixed, for determinism.
constexpr int kDenseRows = 16;
// Floats per task in element-wise loops.
constexpr std::size_t kElementChunk = 1 << 14;

// Each GEMM runs in the TBB task that calls it; a BLAS thread pool on top would oversubscribe.
const bool blas_is_single_threaded = [] {
  openblas_set_num_threads(1);
  return true;
}();

void gemm(CBLAS_TRANSPOSE a_trans, CBLAS_TRANSPOSE b_trans, int m, int n, int k, float alpha, const float* a, int lda,
          const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, a_trans, b_trans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
// Double precision exists for gradient checks in the tests.
void gemm(CBLAS_TRANSPOSE a_trans, CBLAS_TRANSPOSE b_trans, int m, int n, int k, double alpha, const double* a,
          int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, a_trans, b_trans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

int blocks_of(int n, int block) { return (n + block - 1) / block; }

template <class T>
struct ConvWorkspace {  // per-chunk slices of the workspace buffer
  T* col;           // (C*R*S, OH*OW)
  T* col_grad;      // (C*R*S, OH*OW)
  T* weight_part;   // (K, C*R*S) then (K): this chunk's share of the parameter gradients
};

std::size_t conv_chunk_elements(const ConvGeometry& g) {  // 64-byte aligned slices for float and double
  const std::size_t col = round_up_floats(g.col_rows() * g.out_pixels());
  return 2 * col + round_up_floats(g.filters * (g.col_rows() + 1));
}

template <class T>
ConvWorkspace<T> chunk_workspace(T* workspace, const ConvGeometry& g, int chunk) {
  const std::size_t col = round_up_floats(g.col_rows() * g.out_pixels());
  T* base = workspace + chunk * conv_chunk_elements(g);
  return {base, base + col, base + 2 * col};
}

// A 1x1 convolution with stride 1 and no padding reads its input as the column matrix directly.
bool is_pointwise(const ConvGeometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride == 1 && g.pad == 0;
}

template <class T>
const T* columns(T* col, const T* image, const ConvGeometry& g) {
  if (is_pointwise(g)) return image;
  im2col(col, image, g);
  return col;
}

}  // namespace

std::size_t conv2d_workspace_size(const ConvGeometry& g, int batch) {
  return conv_chunks(batch) * conv_chunk_elements(g);
}

template <class T>
void im2col(T* col, const T* image, const ConvGeometry& g) {
  const int OH = g.out_h, OW = g.out_w;
  for (int c = 0; c < g.in_channels; ++c)
    for (int r = 0; r < g.kernel_h; ++r)
      for (int s = 0; s < g.kernel_w; ++s) {
        T* row = col + ((std::size_t(c) * g.kernel_h + r) * g.kernel_w + s) * g.out_pixels();
        const T* plane = image + std::size_t(c) * g.height * g.width;
        // Output columns whose input column iw = ow*stride - pad + s lies inside [0, W).
        const int ow_begin = std::clamp((g.pad - s + g.stride - 1) / g.stride, 0, OW);
        const int ow_end = std::clamp((g.width + g.pad - s + g.stride - 1) / g.stride, ow_begin, OW);
        for (int oh = 0; oh < OH; ++oh) {
          T* dst = row + std::size_t(oh) * OW;
          const int ih = oh * g.stride - g.pad + r;
          if (ih < 0 || ih >= g.height) {
            std::fill(dst, dst + OW, T(0));
            continue;
          }
          const T* src = plane + std::size_t(ih) * g.width;
          std::fill(dst, dst + ow_begin, T(0));
          if (g.stride == 1) {
            std::memcpy(dst + ow_begin, src + ow_begin - g.pad + s, sizeof(T) * (ow_end - ow_begin));
          } else {
            for (int ow = ow_begin; ow < ow_end; ++ow) dst[ow] = src[ow * g.stride - g.pad + s];
          }
          std::fill(dst + ow_end, dst + OW, T(0));
        }
      }
}

template <class T>
void col2im_add(T* image_grad, const T* col_grad, const ConvGeometry& g) {
  const int OH = g.out_h, OW = g.out_w;
  for (int c = 0; c < g.in_channels; ++c)
    for (int r = 0; r < g.kernel_h; ++r)
      for (int s = 0; s < g.kernel_w; ++s) {
        const T* row = col_grad + ((std::size_t(c) * g.kernel_h + r) * g.kernel_w + s) * g.out_pixels();
        T* plane = image_grad + std::size_t(c) * g.height * g.width;
        const int ow_begin = std::clamp((g.pad - s + g.stride - 1) / g.stride, 0, OW);
        const int ow_end = std::clamp((g.width + g.pad - s + g.stride - 1) / g.stride, ow_begin, OW);
        for (int oh = 0; oh < OH; ++oh) {
          const int ih = oh * g.stride - g.pad + r;
          if (ih < 0 || ih >= g.height) continue;
          const T* src = row + std::size_t(oh) * OW;
          T* dst = plane + std::size_t(ih) * g.width - g.pad + s;
          for (int ow = ow_begin; ow < ow_end; ++ow) dst[ow * g.stride] += src[ow];
        }
      }
}

template <class T>
void conv2d_forward(T* out, T* workspace, const T* in, const T* weight, const T* bias,
                    const ConvGeometry& g, int batch) {
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  const double flops = 2.0 * K * P * CRS * kConvChunk;
  parallel_for(conv_chunks(batch), flops, [&](std::size_t chunk) {
    ConvWorkspace<T> ws = chunk_workspace(workspace, g, int(chunk));
    const int end = std::min(batch, int(chunk + 1) * kConvChunk);
    for (int n = int(chunk) * kConvChunk; n < end; ++n) {
      T* y = out + n * g.out_size();
      const T* col = columns(ws.col, in + n * g.in_size(), g);
      for (int k = 0; k < K; ++k) std::fill(y + std::size_t(k) * P, y + std::size_t(k + 1) * P, bias ? bias[k] : T(0));
      gemm(CblasNoTrans, CblasNoTrans, K, P, CRS, T(1), weight, CRS, col, P, T(1), y, P);
    }
  });
}

template <class T>
void conv2d_backward(T* in_grad, T* weight_grad, T* bias_grad, T* workspace, const T* out_grad,
                     const T* in, const T* weight, const ConvGeometry& g, int batch) {
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  const int chunks = conv_chunks(batch);
  const double flops = (in_grad ? 4.0 : 2.0) * K * P * CRS * kConvChunk;
  parallel_for(chunks, flops, [&](std::size_t chunk) {
    ConvWorkspace<T> ws = chunk_workspace(workspace, g, int(chunk));
    T* bias_part = ws.weight_part + std::size_t(K) * CRS;
    const int begin = int(chunk) * kConvChunk, end = std::min(batch, begin + kConvChunk);
    for (int n = begin; n < end; ++n) {
      const T* dy = out_grad + n * g.out_size();
      const T* col = columns(ws.col, in + n * g.in_size(), g);
      const T beta = n == begin ? T(0) : T(1);
      gemm(CblasNoTrans, CblasTrans, K, CRS, P, T(1), dy, P, col, P, beta, ws.weight_part, CRS);
      for (int k = 0; k < K; ++k) {
        T sum = T(0);
        for (int p = 0; p < P; ++p) sum += dy[std::size_t(k) * P + p];
        bias_part[k] = beta * bias_part[k] + sum;
      }
      if (!in_grad) continue;
      T* dx = in_grad + n * g.in_size();
      if (is_pointwise(g)) {
        gemm(CblasTrans, CblasNoTrans, CRS, P, K, T(1), weight, CRS, dy, P, T(0), dx, P);
        continue;
      }
      gemm(CblasTrans, CblasNoTrans, CRS, P, K, T(1), weight, CRS, dy, P, T(0), ws.col_grad, P);
      std::fill(dx, dx + g.in_size(), T(0));
      col2im_add(dx, ws.col_grad, g);
    }
  });
  // Sum the chunk partials in chunk order, split over filters.
  parallel_for(K, 2.0 * CRS * chunks, [&](std::size_t k) {
    T* dw = weight_grad + k * CRS;
    for (int c = 0; c < chunks; ++c) {
      const T* part = chunk_workspace<T>(workspace, g, c).weight_part;
      for (int i = 0; i < CRS; ++i) dw[i] += part[k * CRS + i];
      if (bias_grad) bias_grad[k] += part[std::size_t(K) * CRS + k];
    }
  });
}

template <class T>
void maxpool_forward(T* out, std::int32_t* argmax, const T* in, const PoolGeometry& g, int batch) {
  parallel_for(batch, double(g.out_size()) * g.window * g.window, [&](std::size_t n) {
    const T* x = in + n * g.in_size();
    T* y = out + n * g.out_size();
    std::int32_t* arg = argmax + n * g.out_size();
    for (int c = 0; c < g.channels; ++c)
      for (int oh = 0; oh < g.out_h; ++oh)
        for (int ow = 0; ow < g.out_w; ++ow) {
          const int h0 = oh * g.stride - g.pad, w0 = ow * g.stride - g.pad;
          T best = -std::numeric_limits<T>::infinity();
          std::int32_t best_index = -1;
          for (int h = std::max(h0, 0); h < std::min(h0 + g.window, g.height); ++h)
            for (int w = std::max(w0, 0); w < std::min(w0 + g.window, g.width); ++w) {
              const std::int32_t index = (c * g.height + h) * g.width + w;
              if (x[index] > best || best_index < 0) best = x[index], best_index = index;
            }
          const std::size_t o = (std::size_t(c) * g.out_h + oh) * g.out_w + ow;
          y[o] = best;
          arg[o] = best_index;
        }
  });
}

template <class T>
void maxpool_backward(T* in_grad, const T* out_grad, const std::int32_t* argmax, const PoolGeometry& g,
                      int batch) {
  parallel_for(batch, double(g.in_size()), [&](std::size_t n) {
    T* dx = in_grad + n * g.in_size();
    const T* dy = out_grad + n * g.out_size();
    const std::int32_t* arg = argmax + n * g.out_size();
    std::fill(dx, dx + g.in_size(), T(0));
    for (std::size_t o = 0; o < g.out_size(); ++o) dx[arg[o]] += dy[o];
  });
}

template <class T>
void avgpool_forward(T* out, const T* in, const PoolGeometry& g, int batch) {
  const T scale = T(1) / T(g.window * g.window);
  parallel_for(batch, double(g.out_size()) * g.window * g.window, [&](std::size_t n) {
    const T* x = in + n * g.in_size();
    T* y = out + n * g.out_size();
    for (int c = 0; c < g.channels; ++c)
      for (int oh = 0; oh < g.out_h; ++oh)
        for (int ow = 0; ow < g.out_w; ++ow) {
          const int h0 = oh * g.stride - g.pad, w0 = ow * g.stride - g.pad;
          T sum = T(0);
          for (int h = std::max(h0, 0); h < std::min(h0 + g.window, g.height); ++h)
            for (int w = std::max(w0, 0); w < std::min(w0 + g.window, g.width); ++w)
              sum += x[(c * g.height + h) * g.width + w];
          y[(std::size_t(c) * g.out_h + oh) * g.out_w + ow] = sum * scale;
        }
  });
}

template <class T>
void avgpool_backward(T* in_grad, const T* out_grad, const PoolGeometry& g, int batch) {
  const T scale = T(1) / T(g.window * g.window);
  parallel_for(batch, double(g.out_size()) * g.window * g.window, [&](std::size_t n) {
    T* dx = in_grad + n * g.in_size();
    const T* dy = out_grad + n * g.out_size();
    std::fill(dx, dx + g.in_size(), T(0));
    for (int c = 0; c < g.channels; ++c)
      for (int oh = 0; oh < g.out_h; ++oh)
        for (int ow = 0; ow < g.out_w; ++ow) {
          const int h0 = oh * g.stride - g.pad, w0 = ow * g.stride - g.pad;
          const T share = dy[(std::size_t(c) * g.out_h + oh) * g.out_w + ow] * scale;
          for (int h = std::max(h0, 0); h < std::min(h0 + g.window, g.height); ++h)
            for (int w = std::max(w0, 0); w < std::min(w0 + g.window, g.width); ++w)
              dx[(c * g.height + h) * g.width + w] += share;
        }
  });
}

template <class T>
void dense_forward(T* out, const T* in, const T* weight, const T* bias, int batch, int inputs,
                   int outputs) {
  parallel_for(blocks_of(batch, kDenseRows), 2.0 * kDenseRows * inputs * outputs, [&](std::size_t block) {
    const int n0 = int(block) * kDenseRows, rows = std::min(kDenseRows, batch - n0);
    T* y = out + std::size_t(n0) * outputs;
    for (int n = 0; n < rows; ++n)
      for (int o = 0; o < outputs; ++o) y[std::size_t(n) * outputs + o] = bias ? bias[o] : T(0);
    gemm(CblasNoTrans, CblasTrans, rows, outputs, inputs, T(1), in + std::size_t(n0) * inputs,
                inputs, weight, inputs, T(1), y, outputs);
  });
}

template <class T>
void dense_backward(T* in_grad, T* weight_grad, T* bias_grad, const T* out_grad, const T* in,
                    const T* weight, int batch, int inputs, int outputs) {
  if (in_grad) {
    parallel_for(blocks_of(batch, kDenseRows), 2.0 * kDenseRows * inputs * outputs, [&](std::size_t block) {
      const int n0 = int(block) * kDenseRows, rows = std::min(kDenseRows, batch - n0);
      gemm(CblasNoTrans, CblasNoTrans, rows, inputs, outputs, T(1),
                  out_grad + std::size_t(n0) * outputs, outputs, weight, inputs, T(0), in_grad + std::size_t(n0) * inputs,
                  inputs);
    });
  }
  parallel_for(blocks_of(outputs, kDenseRows), 2.0 * kDenseRows * inputs * batch, [&](std::size_t block) {
    const int o0 = int(block) * kDenseRows, rows = std::min(kDenseRows, outputs - o0);
    gemm(CblasTrans, CblasNoTrans, rows, inputs, batch, T(1), out_grad + o0, outputs, in, inputs,
                T(1), weight_grad + std::size_t(o0) * inputs, inputs);
  });
  if (bias_grad)
    for (int n = 0; n < batch; ++n)
      for (int o = 0; o < outputs; ++o) bias_grad[o] += out_grad[std::size_t(n) * outputs + o];
}

template <class T>
void activation_forward(T* out, const T* in, std::size_t n, Activation kind, T slope) {
  parallel_for((n + kElementChunk - 1) / kElementChunk, 4.0 * kElementChunk, [&](std::size_t chunk) {
    const std::size_t begin = chunk * kElementChunk, end = std::min(n, begin + kElementChunk);
    switch (kind) {
      case Activation::relu:
        for (std::size_t i = begin; i < end; ++i) out[i] = in[i] > T(0) ? in[i] : T(0);
        break;
      case Activation::leaky_relu:
        for (std::size_t i = begin; i < end; ++i) out[i] = in[i] > T(0) ? in[i] : slope * in[i];
        break;
      case Activation::sigmoid:
        for (std::size_t i = begin; i < end; ++i) out[i] = T(1) / (T(1) + std::exp(-in[i]));
        break;
      case Activation::tanh:
        for (std::size_t i = begin; i < end; ++i) out[i] = std::tanh(in[i]);
        break;
    }
  });
}

template <class T>
void activation_backward(T* in_grad, const T* out_grad, const T* in, const T* out, std::size_t n,
                         Activation kind, T slope) {
  parallel_for((n + kElementChunk - 1) / kElementChunk, 4.0 * kElementChunk, [&](std::size_t chunk) {
    const std::size_t begin = chunk * kElementChunk, end = std::min(n, begin + kElementChunk);
    switch (kind) {
      case Activation::relu:
        for (std::size_t i = begin; i < end; ++i) in_grad[i] = out[i] > T(0) ? out_grad[i] : T(0);
        break;
      case Activation::leaky_relu:
        for (std::size_t i = begin; i < end; ++i) in_grad[i] = in[i] > T(0) ? out_grad[i] : slope * out_grad[i];
        break;
      case Activation::sigmoid:
        for (std::size_t i = begin; i < end; ++i) in_grad[i] = out_grad[i] * out[i] * (T(1) - out[i]);
        break;
      case Activation::tanh:
        for (std::size_t i = begin; i < end; ++i) in_grad[i] = out_grad[i] * (T(1) - out[i] * out[i]);
        break;
    }
  });
}

#define MPICNN_INSTANTIATE(T)                                                                                    \
  template void im2col(T*, const T*, const ConvGeometry&);                                                      \
  template void col2im_add(T*, const T*, const ConvGeometry&);                                                  \
  template void conv2d_forward(T*, T*, const T*, const T*, const T*, const ConvGeometry&, int);                  \
  template void conv2d_backward(T*, T*, T*, T*, const T*, const T*, const T*, const ConvGeometry&, int);         \
  template void maxpool_forward(T*, std::int32_t*, const T*, const PoolGeometry&, int);                          \
  template void maxpool_backward(T*, const T*, const std::int32_t*, const PoolGeometry&, int);                   \
  template void avgpool_forward(T*, const T*, const PoolGeometry&, int);                                         \
  template void avgpool_backward(T*, const T*, const PoolGeometry&, int);                                        \
  template void dense_forward(T*, const T*, const T*, const T*, int, int, int);                                  \
  template void dense_backward(T*, T*, T*, const T*, const T*, const T*, int, int, int);                         \
  template void activation_forward(T*, const T*, std::size_t, Activation, T);                                   \
  template void activation_backward(T*, const T*, const T*, const T*, std::size_t, Activation, T);
MPICNN_INSTANTIATE(float)
MPICNN_INSTANTIATE(double)

}  // namespace mpicnn::core
