#include "conv_groups.hpp"

#include <algorithm>

#include "gemm.hpp"
#include "im2col.hpp"
#include "parallel.hpp"

namespace mpicnn::core::conv_groups {
namespace {

using gemm::aligned;
using gemm::round_up;

constexpr int kGroupColumns = 256;  // output pixels of a group's product: 8 register tiles wide
constexpr int kBlockRows = 64;      // output rows per task: 8 panels of the packed operand
constexpr int kChannelBlock = 16;   // input channels per im2col task

int group_images(const ConvGeometry& g, int batch) {
  return std::min(batch, std::max(1, kGroupColumns / int(g.out_pixels())));
}

// Workspace layout for groups of `images` (elements, each part 64-byte aligned):
//   weights  the packed weights (forward) or packed transposed weights (input gradient),
//   operand  im2col of the group (C*R*S, ldN) for the forward pass, or im2row (N, ldCRS) for the
//            weight gradient, plus slack for over-long copy runs,
//   result   the product's output before it is spread over the images (K, ldN), or the column
//            gradient (C*R*S, ldN),
//   dy       the group's output gradient side by side (K, ldN), and packed (K rows, N deep).
// ldN leaves room past the group's N = images * OH*OW columns for an image row's over-long last
// run, so threads writing different rows never touch the same element.
struct Layout {
  int images;
  std::size_t ld_n, ld_crs;
  std::size_t weights, operand, result, dy, packed_dy, size;
};

Layout layout(const ConvGeometry& g, int batch) {
  const int K = g.filters, CRS = int(g.col_rows());
  Layout l{};
  l.images = group_images(g, batch);
  const std::size_t n = std::size_t(l.images) * g.out_pixels();
  l.ld_n = round_up(n + im2col::kMaxRun, gemm::kColPad);
  l.ld_crs = round_up(CRS, gemm::kColPad);
  l.weights = 0;
  l.operand = aligned(std::max(gemm::packed_size(K, CRS), gemm::packed_size(CRS, K)));
  l.result = l.operand + aligned(std::max(CRS * l.ld_n, n * l.ld_crs) + im2col::kSlack);
  l.dy = l.result + aligned(std::max<std::size_t>(K, CRS) * l.ld_n);
  l.packed_dy = l.dy + aligned(K * l.ld_n);
  l.size = l.packed_dy + aligned(gemm::packed_size(K, int(n)));
  return l;
}

int row_blocks(int rows) { return (rows + kBlockRows - 1) / kBlockRows; }

// Calls body(first row, rows) for each block of kBlockRows output rows, in parallel.
template <class Body>
void for_row_blocks(int rows, double flops_per_row, Body&& body) {
  parallel_for(row_blocks(rows), flops_per_row * kBlockRows, [&](std::size_t b) {
    const int m0 = int(b) * kBlockRows;
    body(m0, std::min(kBlockRows, rows - m0));
  });
}

// The group's images side by side: col (C*R*S, ldN), image i's pixels at columns [i*P, (i+1)*P).
// Tasks take blocks of channels (rows); within a row, images are written in order, so an
// over-long run lands on columns written after it or in the row's slack.
template <class T>
void im2col_group(T* col, const T* x, int images, const ConvGeometry& g, std::size_t ld) {
  const int blocks = (g.in_channels + kChannelBlock - 1) / kChannelBlock;
  const double copies = double(kChannelBlock) * g.kernel_h * g.kernel_w * g.out_pixels() * images;
  parallel_for(blocks, copies, [&](std::size_t b) {
    const int c0 = int(b) * kChannelBlock, c1 = std::min(g.in_channels, c0 + kChannelBlock);
    for (int i = 0; i < images; ++i)
      im2col::im2col_ld(col + std::size_t(i) * g.out_pixels(), x + i * g.in_size(), g, ld, c0, c1);
  });
}

template <class T>
void forward_group(T* out, const Layout& l, T* workspace, const T* x, const T* bias, const ConvGeometry& g,
                   int images) {
  const int K = g.filters, CRS = int(g.col_rows()), P = int(g.out_pixels()), N = images * P;
  T* columns = workspace + l.operand;
  T* result = workspace + l.result;
  im2col_group(columns, x, images, g, l.ld_n);
  const gemm::Start start = bias ? gemm::Start::row_bias : gemm::Start::zero;
  for_row_blocks(K, 2.0 * N * CRS, [&](int m0, int rows) {
    gemm::multiply(result + m0 * l.ld_n, l.ld_n, workspace + l.weights + std::size_t(m0) * CRS, columns, l.ld_n, rows,
                   N, CRS, start, bias ? bias + m0 : nullptr, true);
  });
  parallel_for(images, double(K) * P, [&](std::size_t i) {
    for (int k = 0; k < K; ++k)
      std::copy_n(result + k * l.ld_n + i * P, P, out + i * g.out_size() + std::size_t(k) * P);
  });
}

// dy (K, ldN): the group's output gradients side by side, zero up to whole register tiles.
template <class T>
void gather_output_grad(T* dy, const T* out_grad, int images, const Layout& l, const ConvGeometry& g) {
  const int K = g.filters, P = int(g.out_pixels()), N = images * P;
  parallel_for(images, double(K) * P, [&](std::size_t i) {
    for (int k = 0; k < K; ++k) std::copy_n(out_grad + i * g.out_size() + std::size_t(k) * P, P, dy + k * l.ld_n + i * P);
  });
  const std::size_t padded = round_up(N, gemm::kColPad);
  for (int k = 0; k < K; ++k) std::fill(dy + k * l.ld_n + N, dy + k * l.ld_n + padded, T(0));
}

// dW (K, C*R*S) += dY (K, N) * im2row (N, C*R*S); the bias gradient += each image's pixel sums.
template <class T>
void weight_grad_group(T* weight_grad, T* bias_grad, const Layout& l, T* workspace, const T* x, const T* out_grad,
                       int images, const ConvGeometry& g) {
  const int K = g.filters, CRS = int(g.col_rows()), P = int(g.out_pixels()), N = images * P;
  T* rows = workspace + l.operand;
  parallel_for(images, double(P) * CRS, [&](std::size_t i) {
    im2col::im2row(rows + i * P * l.ld_crs, x + i * g.in_size(), g, l.ld_crs);
  });
  const T* dy = workspace + l.dy;
  T* packed_dy = workspace + l.packed_dy;
  for_row_blocks(K, 2.0 * N * CRS, [&](int m0, int filters) {
    gemm::pack_rows(packed_dy + std::size_t(m0) * N, dy + m0 * l.ld_n, l.ld_n, filters, N);
    gemm::multiply(weight_grad + std::size_t(m0) * CRS, CRS, packed_dy + std::size_t(m0) * N, rows, l.ld_crs, filters,
                   CRS, N, gemm::Start::accumulate, static_cast<const T*>(nullptr), true);
    if (bias_grad)
      for (int k = m0; k < m0 + filters; ++k)
        for (int i = 0; i < images; ++i) bias_grad[k] += gemm::sum(out_grad + i * g.out_size() + std::size_t(k) * P, P);
  });
}

// dX = col2im(W^T (C*R*S, K) * dY (K, N)), image by image.
template <class T>
void input_grad_group(T* in_grad, const Layout& l, T* workspace, int images, const ConvGeometry& g) {
  const int K = g.filters, CRS = int(g.col_rows()), P = int(g.out_pixels()), N = images * P;
  T* col_grad = workspace + l.result;
  const T* dy = workspace + l.dy;
  for_row_blocks(CRS, 2.0 * N * K, [&](int m0, int rows) {
    gemm::multiply(col_grad + m0 * l.ld_n, l.ld_n, workspace + l.weights + std::size_t(m0) * K, dy, l.ld_n, rows, N, K,
                   gemm::Start::zero, static_cast<const T*>(nullptr), true);
  });
  parallel_for(images, double(CRS) * P, [&](std::size_t i) {
    T* dx = in_grad + i * g.in_size();
    std::fill(dx, dx + g.in_size(), T(0));
    im2col::col2im_add_ld(dx, col_grad + i * P, g, l.ld_n);
  });
}

}  // namespace

std::size_t workspace_size(const ConvGeometry& g, int batch) { return layout(g, std::max(1, batch)).size; }

template <class T>
void forward(T* out, T* workspace, const T* in, const T* weight, const T* bias, const ConvGeometry& g, int batch) {
  const Layout l = layout(g, batch);
  const int K = g.filters, CRS = int(g.col_rows());
  for_row_blocks(K, double(CRS), [&](int m0, int rows) {
    gemm::pack_rows(workspace + l.weights + std::size_t(m0) * CRS, weight + std::size_t(m0) * CRS, CRS, rows, CRS);
  });
  for (int n0 = 0; n0 < batch; n0 += l.images)
    forward_group(out + n0 * g.out_size(), l, workspace, in + n0 * g.in_size(), bias, g, std::min(l.images, batch - n0));
}

template <class T>
void backward(T* in_grad, T* weight_grad, T* bias_grad, T* workspace, const T* out_grad, const T* in, const T* weight,
              const ConvGeometry& g, int batch) {
  const Layout l = layout(g, batch);
  const int K = g.filters, CRS = int(g.col_rows());
  if (in_grad)
    for_row_blocks(CRS, double(K), [&](int m0, int rows) {
      gemm::pack_columns(workspace + l.weights + std::size_t(m0) * K, weight + m0, CRS, rows, K);
    });
  for (int n0 = 0; n0 < batch; n0 += l.images) {
    const int images = std::min(l.images, batch - n0);
    const T* dy = out_grad + n0 * g.out_size();
    gather_output_grad(workspace + l.dy, dy, images, l, g);
    weight_grad_group(weight_grad, bias_grad, l, workspace, in + n0 * g.in_size(), dy, images, g);
    if (in_grad) input_grad_group(in_grad + n0 * g.in_size(), l, workspace, images, g);
  }
}

#define MPICNN_INSTANTIATE_CONV_GROUPS(T)                                                                    \
  template void forward(T*, T*, const T*, const T*, const T*, const ConvGeometry&, int);                    \
  template void backward(T*, T*, T*, T*, const T*, const T*, const T*, const ConvGeometry&, int);
MPICNN_INSTANTIATE_CONV_GROUPS(float)
MPICNN_INSTANTIATE_CONV_GROUPS(double)

}  // namespace mpicnn::core::conv_groups
