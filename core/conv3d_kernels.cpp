// 3D convolution as vol2col and one GEMM per sample, parallel over fixed chunks of kConv3dChunk
// samples. Volumes are small next to images in channel count per voxel, so the plain im2col form
// is kept (no packed paths as conv_kernels.cpp has for 2D).
#include <algorithm>

#include "blas.hpp"
#include "parallel.hpp"
#include "volume_kernels.hpp"

namespace mpicnn::core {
namespace {

using blas::gemm;

int chunks_of(int batch) { return (batch + kConv3dChunk - 1) / kConv3dChunk; }

// Workspace of one chunk: columns (C*T*R*S, P), weight partial (K, C*T*R*S), bias partial (K).
struct ChunkLayout {
  std::size_t columns, weight_part, bias_part, size;
};
ChunkLayout chunk_layout(const Conv3dGeometry& g) {
  ChunkLayout l{};
  l.columns = 0;
  l.weight_part = g.col_rows() * g.out_voxels();
  l.bias_part = l.weight_part + std::size_t(g.filters) * g.col_rows();
  l.size = l.bias_part + std::size_t(g.filters);
  return l;
}

// Calls f(row, column, input index or -1 in the padding) for every element of the columns matrix
// (C*T*R*S, OD*OH*OW): row (c,t,r,s), column (od,oh,ow).
template <class F>
void each_column_element(const Conv3dGeometry& g, F&& f) {
  const Extent3 &k = g.kernel, &in = g.in, &out = g.out, &st = g.stride, &pd = g.pad;
  std::size_t row = 0;
  for (int c = 0; c < g.in_channels; ++c)
    for (int t = 0; t < k.d; ++t)
      for (int r = 0; r < k.h; ++r)
        for (int s = 0; s < k.w; ++s, ++row) {
          std::size_t column = 0;
          for (int od = 0; od < out.d; ++od) {
            const int id = od * st.d - pd.d + t;
            for (int oh = 0; oh < out.h; ++oh) {
              const int ih = oh * st.h - pd.h + r;
              const bool plane_inside = id >= 0 && id < in.d && ih >= 0 && ih < in.h;
              const std::ptrdiff_t line = plane_inside ? ((std::ptrdiff_t(c) * in.d + id) * in.h + ih) * in.w : -1;
              for (int ow = 0; ow < out.w; ++ow, ++column) {
                const int iw = ow * st.w - pd.w + s;
                f(row, column, plane_inside && iw >= 0 && iw < in.w ? line + iw : std::ptrdiff_t(-1));
              }
            }
          }
        }
}

template <class T>
void vol2col(T* columns /*C*T*R*S, P*/, const T* x /*C,D,H,W*/, const Conv3dGeometry& g) {
  const std::size_t P = g.out_voxels();
  each_column_element(g, [&](std::size_t row, std::size_t column, std::ptrdiff_t index) {
    columns[row * P + column] = index < 0 ? T(0) : x[index];
  });
}

template <class T>
void col2vol(T* dx /*C,D,H,W*/, const T* columns /*C*T*R*S, P*/, const Conv3dGeometry& g) {
  const std::size_t P = g.out_voxels();
  std::fill(dx, dx + g.in_size(), T(0));
  each_column_element(g, [&](std::size_t row, std::size_t column, std::ptrdiff_t index) {
    if (index >= 0) dx[index] += columns[row * P + column];
  });
}

}  // namespace

Extent3 sliding_extent(const Extent3& in, const Extent3& window, const Extent3& stride, const Extent3& pad) {
  auto axis = [](int n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; };
  return {axis(in.d, window.d, stride.d, pad.d), axis(in.h, window.h, stride.h, pad.h),
          axis(in.w, window.w, stride.w, pad.w)};
}

std::size_t conv3d_workspace_size(const Conv3dGeometry& g, int batch) {
  return std::size_t(chunks_of(batch)) * chunk_layout(g).size;
}

template <class T>
void conv3d_forward(T* out, T* workspace, const T* in, const T* weight, const T* bias, const Conv3dGeometry& g,
                    int batch) {
  const ChunkLayout l = chunk_layout(g);
  const int K = g.filters, CRS = int(g.col_rows()), P = int(g.out_voxels());
  const double flops = 2.0 * kConv3dChunk * g.out_size() * g.col_rows();
  parallel_for(chunks_of(batch), flops, [&](std::size_t chunk) {
    T* columns = workspace + chunk * l.size + l.columns;
    const int first = int(chunk) * kConv3dChunk, last = std::min(batch, first + kConv3dChunk);
    for (int n = first; n < last; ++n) {
      T* y = out + std::size_t(n) * g.out_size();
      vol2col(columns, in + std::size_t(n) * g.in_size(), g);
      for (int k = 0; k < K; ++k) std::fill(y + std::size_t(k) * P, y + std::size_t(k + 1) * P, bias ? bias[k] : T(0));
      gemm(CblasNoTrans, CblasNoTrans, K, P, CRS, T(1), weight, CRS, columns, P, T(1), y, P);
    }
  });
}

// Per chunk: the weight and bias gradient partials over its samples in order, then the input
// gradient through the same columns buffer; the partials are added to the gradients in chunk order.
template <class T>
void conv3d_backward(T* in_grad, T* weight_grad, T* bias_grad, T* workspace, const T* out_grad, const T* in,
                     const T* weight, const Conv3dGeometry& g, int batch) {
  const ChunkLayout l = chunk_layout(g);
  const int K = g.filters, CRS = int(g.col_rows()), P = int(g.out_voxels());
  const double flops = (in_grad ? 4.0 : 2.0) * kConv3dChunk * g.out_size() * g.col_rows();
  parallel_for(chunks_of(batch), flops, [&](std::size_t chunk) {
    T* space = workspace + chunk * l.size;
    T *columns = space + l.columns, *weight_part = space + l.weight_part, *bias_part = space + l.bias_part;
    const int first = int(chunk) * kConv3dChunk, last = std::min(batch, first + kConv3dChunk);
    std::fill(bias_part, bias_part + K, T(0));
    for (int n = first; n < last; ++n) {
      const T* dy = out_grad + std::size_t(n) * g.out_size();
      vol2col(columns, in + std::size_t(n) * g.in_size(), g);
      gemm(CblasNoTrans, CblasTrans, K, CRS, P, T(1), dy, P, columns, P, n == first ? T(0) : T(1), weight_part, CRS);
      for (int k = 0; k < K; ++k) {
        T sum = T(0);
        for (int p = 0; p < P; ++p) sum += dy[std::size_t(k) * P + p];
        bias_part[k] += sum;
      }
      if (!in_grad) continue;
      gemm(CblasTrans, CblasNoTrans, CRS, P, K, T(1), weight, CRS, dy, P, T(0), columns, P);
      col2vol(in_grad + std::size_t(n) * g.in_size(), columns, g);
    }
  });
  const std::size_t weights = std::size_t(K) * CRS;
  for (int chunk = 0; chunk < chunks_of(batch); ++chunk) {
    const T* space = workspace + std::size_t(chunk) * l.size;
    for (std::size_t i = 0; i < weights; ++i) weight_grad[i] += space[l.weight_part + i];
    if (bias_grad)
      for (int k = 0; k < K; ++k) bias_grad[k] += space[l.bias_part + k];
  }
}

#define MPICNN_INSTANTIATE(T)                                                                             \
  template void conv3d_forward(T*, T*, const T*, const T*, const T*, const Conv3dGeometry&, int);         \
  template void conv3d_backward(T*, T*, T*, T*, const T*, const T*, const T*, const Conv3dGeometry&, int);
MPICNN_INSTANTIATE(float)
MPICNN_INSTANTIATE(double)

}  // namespace mpicnn::core
