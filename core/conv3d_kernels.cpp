// 3D convolution as vol2col and GEMM over blocks of output voxels. The columns of one block
// (C*T*R*S rows) are capped at kColumnElements, so a layer needs no workspace of the size of its
// whole vol2col matrix (a 64-channel 3x3x3 layer on 28^3 voxels would need 38M values per sample).
#include <algorithm>
#include <vector>

#include "blas.hpp"
#include "parallel.hpp"
#include "volume_kernels.hpp"

namespace mpicnn::core {
namespace {

using blas::gemm;

constexpr std::size_t kColumnElements = std::size_t(1) << 20;

// Output voxels per block: as many as fit kColumnElements, at least one; fixed by the geometry.
int voxel_block(const Conv3dGeometry& g) {
  const std::size_t fit = std::max<std::size_t>(1, kColumnElements / g.col_rows());
  return int(std::min(fit, g.out_voxels()));
}
int blocks_of(std::size_t n, std::size_t block) { return int((n + block - 1) / block); }

template <class T>
T* thread_scratch(std::size_t n) {
  thread_local std::vector<T> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}

// A run of a columns-matrix row: the consecutive columns [column, column + count) of one output row
// (od,oh), whose inputs lie on one input line at iw = iw0 + i * stride_w. `line` is that line's
// first input index, or -1 when the line lies in the padding; inputs i in [inside_begin,
// inside_end) lie within the line, the others in the padding.
struct Run {
  std::size_t row;
  int column, count;
  std::ptrdiff_t line;
  int iw0, inside_begin, inside_end;
};

// Calls f(run) for the columns [first, first + count) of the vol2col matrix (C*T*R*S, OD*OH*OW):
// row (c,t,r,s), column (od,oh,ow) counted from `first`.
template <class F>
void each_column_run(const Conv3dGeometry& g, std::size_t first, int count, F&& f) {
  const Extent3 &k = g.kernel, &in = g.in, &out = g.out, &st = g.stride, &pd = g.pad;
  const int first_ow = int(first % out.w), first_oh = int(first / out.w % out.h), first_od = int(first / out.w / out.h);
  std::size_t row = 0;
  for (int c = 0; c < g.in_channels; ++c)
    for (int t = 0; t < k.d; ++t)
      for (int r = 0; r < k.h; ++r)
        for (int s = 0; s < k.w; ++s, ++row) {
          int od = first_od, oh = first_oh, ow = first_ow;
          for (int column = 0; column < count;) {
            const int length = std::min(count - column, out.w - ow);
            const int id = od * st.d - pd.d + t, ih = oh * st.h - pd.h + r, iw0 = ow * st.w - pd.w + s;
            const bool plane_inside = id >= 0 && id < in.d && ih >= 0 && ih < in.h;
            // i in [begin, end) has 0 <= iw0 + i * stride < W.
            const int begin = std::min(length, iw0 >= 0 ? 0 : (-iw0 + st.w - 1) / st.w);
            const int end = iw0 > in.w - 1 ? 0 : std::min(length, (in.w - 1 - iw0) / st.w + 1);
            const std::ptrdiff_t line = plane_inside ? (std::ptrdiff_t(c) * in.d + id) * in.h * in.w + std::ptrdiff_t(ih) * in.w : -1;
            f(Run{row, column, length, line, iw0, begin, plane_inside ? std::max(begin, end) : begin});
            column += length;
            ow = 0;
            if (++oh == out.h) oh = 0, ++od;
          }
        }
}

template <class T>
void vol2col(T* columns /*C*T*R*S, count*/, const T* x /*C,D,H,W*/, const Conv3dGeometry& g, std::size_t first,
             int count) {
  const int sw = g.stride.w;
  each_column_run(g, first, count, [&](const Run& run) {
    T* __restrict to = columns + run.row * count + run.column;
    std::fill(to, to + run.inside_begin, T(0));
    if (run.inside_end > run.inside_begin) {
      const T* __restrict from = x + run.line + run.iw0;
      if (sw == 1)
        std::copy(from + run.inside_begin, from + run.inside_end, to + run.inside_begin);
      else
        for (int i = run.inside_begin; i < run.inside_end; ++i) to[i] = from[std::ptrdiff_t(i) * sw];
    }
    std::fill(to + run.inside_end, to + run.count, T(0));
  });
}

template <class T>
void col2vol_add(T* dx /*C,D,H,W*/, const T* columns /*C*T*R*S, count*/, const Conv3dGeometry& g, std::size_t first,
                 int count) {
  const int sw = g.stride.w;
  each_column_run(g, first, count, [&](const Run& run) {
    if (run.inside_end <= run.inside_begin) return;  // all in the padding
    const T* __restrict from = columns + run.row * count + run.column;
    T* __restrict to = dx + run.line + run.iw0;
    for (int i = run.inside_begin; i < run.inside_end; ++i) to[std::ptrdiff_t(i) * sw] += from[i];
  });
}

// Calls f(first voxel, voxel count, columns of that block of sample x) for each block in order.
template <class T, class F>
void each_voxel_block(const Conv3dGeometry& g, const T* x, F&& f) {
  const int block = voxel_block(g);
  T* columns = thread_scratch<T>(g.col_rows() * std::size_t(block));
  for (std::size_t first = 0; first < g.out_voxels(); first += std::size_t(block)) {
    const int count = int(std::min<std::size_t>(block, g.out_voxels() - first));
    if (x) vol2col(columns, x, g, first, count);
    f(first, count, columns);
  }
}

double conv_flops_per_sample(const Conv3dGeometry& g) { return 2.0 * double(g.out_size()) * double(g.col_rows()); }

}  // namespace

Extent3 sliding_extent(const Extent3& in, const Extent3& window, const Extent3& stride, const Extent3& pad) {
  auto axis = [](int n, int k, int s, int p) { return (n + 2 * p - k) / s + 1; };
  return {axis(in.d, window.d, stride.d, pad.d), axis(in.h, window.h, stride.h, pad.h),
          axis(in.w, window.w, stride.w, pad.w)};
}

template <class T>
void conv3d_forward(T* out, const T* in, const T* weight, const T* bias, const Conv3dGeometry& g, int batch) {
  const int K = g.filters, CRS = int(g.col_rows());
  const std::size_t P = g.out_voxels();
  parallel_for(batch, conv_flops_per_sample(g), [&](std::size_t n) {
    T* y = out + n * g.out_size();
    for (int k = 0; k < K; ++k) std::fill(y + k * P, y + (k + 1) * P, bias ? bias[k] : T(0));
    each_voxel_block(g, in + n * g.in_size(), [&](std::size_t first, int count, const T* columns) {
      gemm(CblasNoTrans, CblasNoTrans, K, count, CRS, T(1), weight, CRS, columns, count, T(1), y + first, int(P));
    });
  });
}

template <class T>
void conv3d_backward(T* in_grad, T* weight_grad, T* bias_grad, const T* out_grad, const T* in, const T* weight,
                     const Conv3dGeometry& g, int batch) {
  const int K = g.filters, CRS = int(g.col_rows());
  const std::size_t P = g.out_voxels();
  const int filter_blocks = blocks_of(std::size_t(K), kConv3dFilterBlock);
  const double block_flops = conv_flops_per_sample(g) * batch * kConv3dFilterBlock / K;
  parallel_for(filter_blocks, block_flops, [&](std::size_t fb) {
    const int k0 = int(fb) * kConv3dFilterBlock, rows = std::min(kConv3dFilterBlock, K - k0);
    for (int n = 0; n < batch; ++n) {
      const T* dy = out_grad + std::size_t(n) * g.out_size() + std::size_t(k0) * P;
      each_voxel_block(g, in + std::size_t(n) * g.in_size(), [&](std::size_t first, int count, const T* columns) {
        gemm(CblasNoTrans, CblasTrans, rows, CRS, count, T(1), dy + first, int(P), columns, count, T(1),
             weight_grad + std::size_t(k0) * CRS, CRS);
      });
      if (bias_grad)
        for (int k = 0; k < rows; ++k) {
          T sum = T(0);
          for (std::size_t p = 0; p < P; ++p) sum += dy[k * P + p];
          bias_grad[k0 + k] += sum;
        }
    }
  });
  if (!in_grad) return;
  parallel_for(batch, conv_flops_per_sample(g), [&](std::size_t n) {
    T* dx = in_grad + n * g.in_size();
    const T* dy = out_grad + n * g.out_size();
    std::fill(dx, dx + g.in_size(), T(0));
    each_voxel_block(g, static_cast<const T*>(nullptr), [&](std::size_t first, int count, T* columns) {
      gemm(CblasTrans, CblasNoTrans, CRS, count, K, T(1), weight, CRS, dy + first, int(P), T(0), columns, count);
      col2vol_add(dx, columns, g, first, count);
    });
  });
}

#define MPICNN_INSTANTIATE(T)                                                                         \
  template void conv3d_forward(T*, const T*, const T*, const T*, const Conv3dGeometry&, int);         \
  template void conv3d_backward(T*, T*, T*, const T*, const T*, const T*, const Conv3dGeometry&, int);
MPICNN_INSTANTIATE(float)
MPICNN_INSTANTIATE(double)

}  // namespace mpicnn::core
