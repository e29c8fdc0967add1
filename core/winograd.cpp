#include "winograd.hpp"

#include <algorithm>

#include "gemm.hpp"
#include "parallel.hpp"

namespace mpicnn::core::winograd {
namespace {

using gemm::aligned;
using gemm::round_up;

constexpr int kElements = 16;              // transformed elements per tile (4x4), e = 4a + b
constexpr int kMaxTiles = kMaxWidth / 2;   // tiles per tile row
constexpr int kGroupTiles = 256;           // tiles of a group's products: 8 register tiles wide
constexpr int kBlockRows = 64;             // product rows per task: 8 panels of U
constexpr int kChannelBlock = 16;          // channels per transform task

// One run's sizes as the transforms see them: `depth` input channels summed over, `rows` output
// channels (forward: C and K; input gradient: K and C), maps height x width in and out.
struct Problem {
  int depth, rows, height, width;
  std::size_t in_size() const { return std::size_t(depth) * height * width; }
  std::size_t out_size() const { return std::size_t(rows) * height * width; }
};

// Workspace (elements, each part 64-byte aligned), for either direction:
//   weights   U[e] packed as gemm A panels (rows, depth), 16 of them,
//   inputs    V[e] (depth, ldN): tile t of the group's image i at column i * tiles + t,
//   products  M[e] (rows, ldN) = U[e] V[e].
struct Layout {
  int tiles_h, tiles_w, tiles, images;
  std::size_t ld_n, u_stride, v_stride, m_stride, weights, inputs, products, size;
};

Layout layout(const ConvGeometry& g, int batch) {
  Layout l{};
  l.tiles_h = (g.out_h + 1) / 2, l.tiles_w = (g.out_w + 1) / 2, l.tiles = l.tiles_h * l.tiles_w;
  l.images = std::min(batch, std::max(1, kGroupTiles / l.tiles));
  l.ld_n = round_up(std::size_t(l.images) * l.tiles, gemm::kColPad);
  const int channels = std::max(g.in_channels, g.filters);
  l.u_stride = aligned(std::max(gemm::packed_size(g.filters, g.in_channels), gemm::packed_size(g.in_channels, g.filters)));
  l.v_stride = l.m_stride = aligned(channels * l.ld_n);
  l.weights = 0;
  l.inputs = kElements * l.u_stride;
  l.products = l.inputs + kElements * l.v_stride;
  l.size = l.products + kElements * l.m_stride;
  return l;
}

// G g (3 -> 4) of F(2,3), on values or on vectors of them.
template <class V>
void filter_1d(V* out, const V* g, int stride) {
  out[0] = g[0];
  out[1] = (g[0] + g[stride] + g[2 * stride]) * 0.5;
  out[2] = (g[0] - g[stride] + g[2 * stride]) * 0.5;
  out[3] = g[2 * stride];
}

// U[e] = G g G^T of the filter for output row r and input channel d, at element (r, d) of panel
// layout (rows past `rows` zero). Forward: g = w(r, d). Input gradient: g = w(d, r) rotated by 180
// degrees, since the gradient is the correlation of dY with the transposed, rotated filters. A
// panel's 8 rows go through the transform side by side, so each element's 8 results are one
// contiguous run of the panel.
template <class T>
void transform_weights(T* u, std::size_t u_stride, const T* w, const Problem& p, bool rotated) {
  typedef T Rows __attribute__((vector_size(gemm::kRows * sizeof(T))));
  typedef T RowsUnaligned __attribute__((vector_size(gemm::kRows * sizeof(T)), aligned(sizeof(T)), may_alias));
  const int panels = int(round_up(p.rows, gemm::kRows)) / gemm::kRows;
  parallel_for(panels, 400.0 * gemm::kRows * p.depth, [&](std::size_t panel) {
    const int r0 = int(panel) * gemm::kRows;
    T* out = u + std::size_t(r0) * p.depth;
    for (int d = 0; d < p.depth; ++d) {
      Rows g[9] = {}, tmp[4][3], e4[4][4];
      for (int l = 0; l < gemm::kRows && r0 + l < p.rows; ++l) {
        const int r = r0 + l;
        const T* f = rotated ? w + (std::size_t(d) * p.rows + r) * 9 : w + (std::size_t(r) * p.depth + d) * 9;
        for (int i = 0; i < 9; ++i) g[i][l] = rotated ? f[8 - i] : f[i];
      }
      for (int s = 0; s < 3; ++s) {
        Rows column[4];
        filter_1d(column, g + s, 3);
        for (int a = 0; a < 4; ++a) tmp[a][s] = column[a];
      }
      for (int a = 0; a < 4; ++a) filter_1d(e4[a], tmp[a], 1);
      for (int e = 0; e < kElements; ++e)
        *reinterpret_cast<RowsUnaligned*>(out + e * u_stride + d * gemm::kRows) = e4[e / 4][e % 4];
    }
  });
}

// V[e] for one channel's tile row th: the 4x4 tiles start at input row 2th-1 and column 2t-1.
template <class T>
void transform_tile_row(T* v, std::size_t v_stride, const T* plane, const Problem& p, int tiles_w, int th) {
  T u[4][4][kMaxTiles];
  T row[kMaxWidth + 4];  // row[q] = input column q - 1, zeros outside the image
  const int used = 2 * tiles_w + 2;
  for (int i = 0; i < 4; ++i) {
    const int y = 2 * th - 1 + i;
    std::fill(row, row + used, T(0));
    if (y >= 0 && y < p.height) std::copy_n(plane + std::size_t(y) * p.width, p.width, row + 1);
    for (int t = 0; t < tiles_w; ++t) {
      const T d0 = row[2 * t], d1 = row[2 * t + 1], d2 = row[2 * t + 2], d3 = row[2 * t + 3];
      u[i][0][t] = d0 - d2, u[i][1][t] = d1 + d2, u[i][2][t] = d2 - d1, u[i][3][t] = d1 - d3;
    }
  }
  for (int b = 0; b < 4; ++b)
    for (int t = 0; t < tiles_w; ++t) {
      v[b * v_stride + t] = u[0][b][t] - u[2][b][t];
      v[(4 + b) * v_stride + t] = u[1][b][t] + u[2][b][t];
      v[(8 + b) * v_stride + t] = u[2][b][t] - u[1][b][t];
      v[(12 + b) * v_stride + t] = u[1][b][t] - u[3][b][t];
    }
}

template <class T>
void transform_inputs(T* v, const T* x, int images, const Problem& p, const Layout& l) {
  const int blocks = (p.depth + kChannelBlock - 1) / kChannelBlock;
  const double cost = 64.0 * kChannelBlock * l.tiles;
  parallel_for(std::size_t(images) * blocks, cost, [&](std::size_t task) {
    const int i = int(task) / blocks, c0 = int(task) % blocks * kChannelBlock;
    for (int c = c0; c < std::min(p.depth, c0 + kChannelBlock); ++c) {
      const T* plane = x + i * p.in_size() + std::size_t(c) * p.height * p.width;
      for (int th = 0; th < l.tiles_h; ++th)
        transform_tile_row(v + c * l.ld_n + i * l.tiles + th * l.tiles_w, l.v_stride, plane, p, l.tiles_w, th);
    }
  });
}

// M[e] (rows, N) = U[e] (rows, depth) * V[e] (depth, N): tasks over elements and row blocks.
template <class T>
void multiply_elements(T* m, const T* u, const T* v, int columns, const Problem& p, const Layout& l) {
  const int blocks = (p.rows + kBlockRows - 1) / kBlockRows;
  parallel_for(std::size_t(kElements) * blocks, 2.0 * kBlockRows * columns * p.depth, [&](std::size_t task) {
    const int e = int(task) / blocks, r0 = int(task) % blocks * kBlockRows;
    gemm::multiply(m + e * l.m_stride + r0 * l.ld_n, l.ld_n, u + e * l.u_stride + std::size_t(r0) * p.depth,
                   v + e * l.v_stride, l.ld_n, std::min(kBlockRows, p.rows - r0), columns, p.depth, gemm::Start::zero,
                   static_cast<const T*>(nullptr), true);
  });
}

// out rows 2th and 2th+1 of one output channel: Y = A^T M A per tile (plus the bias).
template <class T>
void transform_tile_row_out(T* y_plane, const T* m, std::size_t m_stride, T bias, const Problem& p, int tiles_w,
                            int th) {
  T y[2][kMaxWidth + 2];
  for (int t = 0; t < tiles_w; ++t) {
    T s[2][4];
    for (int b = 0; b < 4; ++b) {
      const T m0 = m[b * m_stride + t], m1 = m[(4 + b) * m_stride + t];
      const T m2 = m[(8 + b) * m_stride + t], m3 = m[(12 + b) * m_stride + t];
      s[0][b] = m0 + m1 + m2, s[1][b] = m1 - m2 - m3;
    }
    for (int q = 0; q < 2; ++q) {
      y[q][2 * t] = s[q][0] + s[q][1] + s[q][2] + bias;
      y[q][2 * t + 1] = s[q][1] - s[q][2] - s[q][3] + bias;
    }
  }
  for (int q = 0; q < 2 && 2 * th + q < p.height; ++q)
    std::copy_n(y[q], p.width, y_plane + std::size_t(2 * th + q) * p.width);
}

template <class T>
void transform_outputs(T* out, const T* m, const T* bias, int images, const Problem& p, const Layout& l) {
  const int blocks = (p.rows + kChannelBlock - 1) / kChannelBlock;
  const double cost = 48.0 * kChannelBlock * l.tiles;
  parallel_for(std::size_t(images) * blocks, cost, [&](std::size_t task) {
    const int i = int(task) / blocks, r0 = int(task) % blocks * kChannelBlock;
    for (int r = r0; r < std::min(p.rows, r0 + kChannelBlock); ++r) {
      T* plane = out + i * p.out_size() + std::size_t(r) * p.height * p.width;
      for (int th = 0; th < l.tiles_h; ++th)
        transform_tile_row_out(plane, m + r * l.ld_n + i * l.tiles + th * l.tiles_w, l.m_stride,
                               bias ? bias[r] : T(0), p, l.tiles_w, th);
    }
  });
}

// out = the 3x3 pad-1 correlation of `in` with the filters already transformed in the workspace.
template <class T>
void convolve(T* out, T* workspace, const T* in, const T* bias, const Problem& p, const Layout& l, int batch) {
  for (int n0 = 0; n0 < batch; n0 += l.images) {
    const int images = std::min(l.images, batch - n0);
    transform_inputs(workspace + l.inputs, in + n0 * p.in_size(), images, p, l);
    multiply_elements(workspace + l.products, workspace + l.weights, workspace + l.inputs, images * l.tiles, p, l);
    transform_outputs(out + n0 * p.out_size(), workspace + l.products, bias, images, p, l);
  }
}

}  // namespace

bool fits(const ConvGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.pad == 1 && g.width <= kMaxWidth;
}

std::size_t workspace_size(const ConvGeometry& g, int batch) { return layout(g, std::max(1, batch)).size; }

template <class T>
void forward(T* out, T* workspace, const T* in, const T* weight, const T* bias, const ConvGeometry& g, int batch) {
  const Layout l = layout(g, batch);
  const Problem p{g.in_channels, g.filters, g.height, g.width};
  transform_weights(workspace + l.weights, l.u_stride, weight, p, false);
  convolve(out, workspace, in, bias, p, l, batch);
}

template <class T>
void input_grad(T* in_grad, T* workspace, const T* out_grad, const T* weight, const ConvGeometry& g, int batch) {
  const Layout l = layout(g, batch);
  const Problem p{g.filters, g.in_channels, g.height, g.width};
  transform_weights(workspace + l.weights, l.u_stride, weight, p, true);
  convolve(in_grad, workspace, out_grad, static_cast<const T*>(nullptr), p, l, batch);
}

#define MPICNN_INSTANTIATE_WINOGRAD(T)                                                        \
  template void forward(T*, T*, const T*, const T*, const T*, const ConvGeometry&, int);     \
  template void input_grad(T*, T*, const T*, const T*, const ConvGeometry&, int);
MPICNN_INSTANTIATE_WINOGRAD(float)
MPICNN_INSTANTIATE_WINOGRAD(double)

}  // namespace mpicnn::core::winograd
