// Convolution kernels: im2col/im2row into buffers laid out for core/gemm.hpp's inner loop, the
// weights packed once per call, parallel over fixed chunks of kConvChunk images.
#include <algorithm>
#include <cstring>

#include "gemm.hpp"
#include "kernels.hpp"
#include "parallel.hpp"

namespace mpicnn::core {
namespace {

using gemm::round_up;

// Copy runs of im2row/im2col are written 8 (float) or 4 (double) elements at a time; a run that is
// shorter spills into the next run's place, which is written afterwards. The last run of a buffer
// spills past it: every buffer has this much slack.
constexpr std::size_t kSlack = 64;

// Leading dimensions: columns rounded up so a register tile never reads past a row's end.
std::size_t pixels_ld(const ConvGeometry& g) { return round_up(g.out_pixels(), gemm::kColPad); }
std::size_t rows_ld(const ConvGeometry& g) { return round_up(g.col_rows(), gemm::kColPad); }

bool is_pointwise(const ConvGeometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride == 1 && g.pad == 0;
}

// Workspace layout (elements; every part starts 64-byte aligned for float and double):
//   packed weights (K rows, C*R*S deep) for the forward pass,
//   packed transposed weights (C*R*S rows, K deep) for the input gradient,
//   per chunk: columns  max of im2col (C*R*S, ldP) and im2row (OH*OW, ldCRS), plus slack
//              col_grad (C*R*S, ldP)
//              packed output gradient (K rows, OH*OW deep)
//              weight gradient partial (K, ldCRS), then bias gradient partial (K)
struct Layout {
  std::size_t packed_w, packed_wt, chunk_base, chunk_size;
  std::size_t columns, col_grad, packed_dy, weight_part, bias_part;
};

std::size_t aligned(std::size_t n) { return round_up(n, 16); }

Layout layout(const ConvGeometry& g) {
  const int K = g.filters, CRS = int(g.col_rows()), P = int(g.out_pixels());
  Layout l{};
  l.packed_w = 0;
  l.packed_wt = aligned(gemm::packed_size(K, CRS));
  l.chunk_base = l.packed_wt + aligned(gemm::packed_size(CRS, K));
  l.columns = 0;
  l.col_grad = l.columns + aligned(std::max(CRS * pixels_ld(g), P * rows_ld(g)) + kSlack);
  l.packed_dy = l.col_grad + aligned(CRS * pixels_ld(g));
  l.weight_part = l.packed_dy + aligned(gemm::packed_size(K, P));
  l.bias_part = l.weight_part + K * rows_ld(g);
  l.chunk_size = aligned(l.bias_part + K);
  return l;
}

struct ChunkSpace {
  template <class T>
  struct Of {
    T *columns, *col_grad, *packed_dy, *weight_part, *bias_part;
  };
  template <class T>
  static Of<T> at(T* workspace, const Layout& l, int chunk) {
    T* base = workspace + l.chunk_base + std::size_t(chunk) * l.chunk_size;
    return {base + l.columns, base + l.col_grad, base + l.packed_dy, base + l.weight_part, base + l.bias_part};
  }
};

// Output columns ow whose input column ow*stride - pad + s lies in [0, W).
struct ColumnRange {
  int begin, end;
};
ColumnRange inside_columns(const ConvGeometry& g, int s) {
  const int begin = std::clamp((g.pad - s + g.stride - 1) / g.stride, 0, g.out_w);
  const int end = std::clamp((g.width + g.pad - s + g.stride - 1) / g.stride, begin, g.out_w);
  return {begin, end};
}

// Copies n <= run elements where reading and writing `run` elements is allowed.
template <class T>
[[gnu::always_inline]] inline void copy_run(T* dst, const T* src, int n, bool may_overread) {
  if (may_overread && n <= int(32 / sizeof(T))) {
    using H = typename gemm::Simd<T>::Half;
    *reinterpret_cast<H*>(dst) = *reinterpret_cast<const H*>(src);
  } else {
    gemm::copy_short(dst, src, n);
  }
}

// col (C*R*S, ld): row (c,r,s) holds the input pixel each output pixel sees through filter tap (r,s).
template <class T>
void im2col_ld(T* col, const T* image, const ConvGeometry& g, std::size_t ld) {
  const int OH = g.out_h, OW = g.out_w;
  const T* image_end = image + g.in_size();
  constexpr int kRun = int(32 / sizeof(T));
  for (int c = 0; c < g.in_channels; ++c)
    for (int r = 0; r < g.kernel_h; ++r)
      for (int s = 0; s < g.kernel_w; ++s) {
        T* row = col + ((std::size_t(c) * g.kernel_h + r) * g.kernel_w + s) * ld;
        const T* plane = image + std::size_t(c) * g.height * g.width;
        const auto [ow_begin, ow_end] = inside_columns(g, s);
        for (int oh = 0; oh < OH; ++oh) {
          T* dst = row + std::size_t(oh) * OW;
          const int ih = oh * g.stride - g.pad + r;
          if (ih < 0 || ih >= g.height) {
            std::fill(dst, dst + OW, T(0));
            continue;
          }
          const T* src = plane + std::size_t(ih) * g.width - g.pad + s;
          std::fill(dst, dst + ow_begin, T(0));
          if (g.stride == 1) {
            // Runs are written in increasing order, so an over-long write is overwritten later.
            const int n = ow_end - ow_begin;
            copy_run(dst + ow_begin, src + ow_begin, n, src + ow_begin + kRun <= image_end);
          } else {
            for (int ow = ow_begin; ow < ow_end; ++ow) dst[ow] = src[ow * g.stride];
          }
          std::fill(dst + ow_end, dst + OW, T(0));
        }
      }
}

// rows (OH*OW, ld): row p holds the input patch output pixel p sees, in (c,r,s) order.
template <class T>
void im2row(T* rows, const T* image, const ConvGeometry& g, std::size_t ld) {
  const int R = g.kernel_h, S = g.kernel_w;
  const T* image_end = image + g.in_size();
  constexpr int kRun = int(32 / sizeof(T));
  for (int oh = 0; oh < g.out_h; ++oh)
    for (int ow = 0; ow < g.out_w; ++ow) {
      T* dst = rows + (std::size_t(oh) * g.out_w + ow) * ld;
      const int h0 = oh * g.stride - g.pad, w0 = ow * g.stride - g.pad;
      const bool inside_w = w0 >= 0 && w0 + S <= g.width;
      for (int c = 0; c < g.in_channels; ++c)
        for (int r = 0; r < R; ++r) {
          T* d = dst + (c * R + r) * S;
          const int ih = h0 + r;
          if (ih < 0 || ih >= g.height) {
            std::fill(d, d + S, T(0));
            continue;
          }
          const T* src = image + (std::size_t(c) * g.height + ih) * g.width + w0;
          if (inside_w) {
            copy_run(d, src, S, src + kRun <= image_end);
          } else {
            for (int s = 0; s < S; ++s) d[s] = (w0 + s >= 0 && w0 + s < g.width) ? src[s] : T(0);
          }
        }
    }
}

template <class T>
void col2im_add_ld(T* image_grad, const T* col_grad, const ConvGeometry& g, std::size_t ld) {
  const int OH = g.out_h, OW = g.out_w;
  for (int c = 0; c < g.in_channels; ++c)
    for (int r = 0; r < g.kernel_h; ++r)
      for (int s = 0; s < g.kernel_w; ++s) {
        const T* row = col_grad + ((std::size_t(c) * g.kernel_h + r) * g.kernel_w + s) * ld;
        T* plane = image_grad + std::size_t(c) * g.height * g.width;
        const auto [ow_begin, ow_end] = inside_columns(g, s);
        for (int oh = 0; oh < OH; ++oh) {
          const int ih = oh * g.stride - g.pad + r;
          if (ih < 0 || ih >= g.height) continue;
          const T* src = row + std::size_t(oh) * OW;
          T* dst = plane + std::size_t(ih) * g.width - g.pad + s;
          if (g.stride == 1) {
            gemm::add_short(dst + ow_begin, src + ow_begin, ow_end - ow_begin);
          } else {
            for (int ow = ow_begin; ow < ow_end; ++ow) dst[ow * g.stride] += src[ow];
          }
        }
      }
}

}  // namespace

std::size_t conv2d_workspace_size(const ConvGeometry& g, int batch) {
  const Layout l = layout(g);
  return l.chunk_base + std::size_t(conv_chunks(batch)) * l.chunk_size;
}

template <class T>
void conv2d_forward(T* out, T* workspace, const T* in, const T* weight, const T* bias, const ConvGeometry& g,
                    int batch) {
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  const Layout l = layout(g);
  T* packed_w = workspace + l.packed_w;
  gemm::pack_rows(packed_w, weight, CRS, K, CRS);
  const std::size_t ld = pixels_ld(g);
  const double flops = 2.0 * K * P * CRS * kConvChunk;
  parallel_for(conv_chunks(batch), flops, [&](std::size_t chunk) {
    const auto ws = ChunkSpace::at(workspace, l, int(chunk));
    const int end = std::min(batch, int(chunk + 1) * kConvChunk);
    for (int n = int(chunk) * kConvChunk; n < end; ++n) {
      const T* x = in + n * g.in_size();
      const gemm::Start start = bias ? gemm::Start::row_bias : gemm::Start::zero;
      if (is_pointwise(g)) {
        gemm::multiply(out + n * g.out_size(), P, packed_w, x, P, K, P, CRS, start, bias, false);
      } else {
        im2col_ld(ws.columns, x, g, ld);
        gemm::multiply(out + n * g.out_size(), P, packed_w, ws.columns, ld, K, P, CRS, start, bias, true);
      }
    }
  });
}

template <class T>
void conv2d_backward(T* in_grad, T* weight_grad, T* bias_grad, T* workspace, const T* out_grad, const T* in,
                     const T* weight, const ConvGeometry& g, int batch) {
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  const Layout l = layout(g);
  const int chunks = conv_chunks(batch);
  T* packed_wt = workspace + l.packed_wt;
  if (in_grad) gemm::pack_columns(packed_wt, weight, CRS, CRS, K);
  const std::size_t ld_p = pixels_ld(g), ld_crs = rows_ld(g);
  const double flops = (in_grad ? 4.0 : 2.0) * K * P * CRS * kConvChunk;
  parallel_for(chunks, flops, [&](std::size_t chunk) {
    const auto ws = ChunkSpace::at(workspace, l, int(chunk));
    const int begin = int(chunk) * kConvChunk, end = std::min(batch, begin + kConvChunk);
    for (int n = begin; n < end; ++n) {
      const T* dy = out_grad + n * g.out_size();
      const T* x = in + n * g.in_size();
      const bool first = n == begin;
      // weight_part (K, CRS) (+)= dY (K, P) * im2row (P, CRS)
      gemm::pack_rows(ws.packed_dy, dy, P, K, P);
      im2row(ws.columns, x, g, ld_crs);
      gemm::multiply(ws.weight_part, ld_crs, ws.packed_dy, ws.columns, ld_crs, K, CRS, P,
                     first ? gemm::Start::zero : gemm::Start::accumulate, static_cast<const T*>(nullptr), true);
      for (int k = 0; k < K; ++k) {
        const T sum = gemm::sum(dy + std::size_t(k) * P, P);
        ws.bias_part[k] = first ? sum : ws.bias_part[k] + sum;
      }
      if (!in_grad) continue;
      T* dx = in_grad + n * g.in_size();
      // col_grad (CRS, P) = W^T (CRS, K) * dY (K, P), then scattered onto the image.
      if (is_pointwise(g)) {
        gemm::multiply(dx, P, packed_wt, dy, P, CRS, P, K, gemm::Start::zero, static_cast<const T*>(nullptr), false);
        continue;
      }
      gemm::multiply(ws.col_grad, ld_p, packed_wt, dy, P, CRS, P, K, gemm::Start::zero, static_cast<const T*>(nullptr),
                     false);
      std::fill(dx, dx + g.in_size(), T(0));
      col2im_add_ld(dx, ws.col_grad, g, ld_p);
    }
  });
  // Sum the chunk partials in chunk order, split over filters.
  parallel_for(K, 2.0 * CRS * chunks, [&](std::size_t k) {
    T* __restrict dw = weight_grad + k * CRS;
    for (int c = 0; c < chunks; ++c) {
      const auto ws = ChunkSpace::at(workspace, l, c);
      const T* __restrict part = ws.weight_part + k * ld_crs;
      for (int i = 0; i < CRS; ++i) dw[i] += part[i];
      if (bias_grad) bias_grad[k] += ws.bias_part[k];
    }
  });
}

#define MPICNN_INSTANTIATE_CONV(T)                                                                       \
  template void conv2d_forward(T*, T*, const T*, const T*, const T*, const ConvGeometry&, int);          \
  template void conv2d_backward(T*, T*, T*, T*, const T*, const T*, const T*, const ConvGeometry&, int);
MPICNN_INSTANTIATE_CONV(float)
MPICNN_INSTANTIATE_CONV(double)

}  // namespace mpicnn::core
