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

// Copy runs of im2col are written 8 (float) or 4 (double) elements at a time; a run that is
// shorter spills into the next run's place, which is written afterwards. The last run of a buffer
// spills past it: every buffer has this much slack.
constexpr std::size_t kSlack = 64;

// The input gradient's register tile: kDxRows rows of W^T by kDxVecs vectors of output pixels
// (64 pixels of float, 32 of double: the whole 8x8 output of the reference CNN's conv2, so each
// row of W^T is read once per image). Measured on conv2 (4 images): 8 rows x 2 vectors with the
// tile stored to a local array and added back as halves 234 us, 4 x 4 with the halves extracted
// from the registers 213 us; without any scattering 192 us.
constexpr int kDxRows = 4, kDxVecs = 4;
constexpr int kDxPad = 64;  // pixels of a tile padded for float and double
template <class T>
constexpr int kDxPixels = kDxVecs * gemm::kLanes<T>;

bool is_pointwise_geometry(const ConvGeometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride == 1 && g.pad == 0;
}
bool is_pointwise(const ConvGeometry& g) { return is_pointwise_geometry(g); }

// Leading dimensions: columns rounded up so a register tile never reads past a row's end.
std::size_t pixels_ld(const ConvGeometry& g) { return round_up(g.out_pixels(), gemm::kColPad); }
std::size_t rows_ld(const ConvGeometry& g) { return round_up(g.col_rows(), gemm::kColPad); }
std::size_t filters_ld(const ConvGeometry& g) { return round_up(g.filters, gemm::kColPad); }
// Filters of dY^T and of the transposed weight gradient partial: whole register tiles (32 filters
// of 2 float vectors for up to 32 filters, else 64 of 4; for double 16/32, which these cover).
std::size_t taps_ld(const ConvGeometry& g) { return round_up(g.filters, g.filters > 32 ? 64 : 32); }

// Stride 1, no padding, whole rows of 8 output pixels: the forward pass reads its input straight
// from the image, and the input gradient is scattered from the register tiles (no im2col, no
// col_grad buffer). Forward only for deep enough filters: each tile ends with a transposing store.
bool is_dense_rows(const ConvGeometry& g) {
  return g.stride == 1 && g.pad == 0 && g.out_w % gemm::kRows == 0 && !is_pointwise_geometry(g);
}
bool forward_reads_image(const ConvGeometry& g) { return is_dense_rows(g) && g.col_rows() >= 128; }


// Workspace layout (elements; every part starts 64-byte aligned for float and double):
//   packed weights (K rows, C*R*S deep) for the forward pass,
//   packed transposed weights (C*R*S rows, K deep) for the input gradient,
//   transposed weights (C*R*S, ldK) and the bias padded to ldK, for the forward pass from the image,
//   per chunk: columns  im2col (C*R*S, ldP) or an im2row tile (kDepthBlock, kColPad), plus slack
//              col_grad (C*R*S, ldP), or the forward pass's partial tiles (kConvChunk, OH*OW, ldK)
//              packed output gradient (K rows, OH*OW deep), or dY^T (OH*OW, ldT)
//              weight gradient partial (K, ldCRS) or its transpose (C*R*S, ldT); bias partial (K)
//              padded copies of the output gradient's last pixels (kConvChunk, K, kDxPad)
struct Layout {
  std::size_t packed_w, packed_wt, weight_rows, bias_row, chunk_base, chunk_size;
  std::size_t columns, col_grad, packed_dy, weight_part, bias_part, dy_tail;
};

std::size_t aligned(std::size_t n) { return round_up(n, 16); }

Layout layout(const ConvGeometry& g) {
  const int K = g.filters, CRS = int(g.col_rows()), P = int(g.out_pixels());
  Layout l{};
  l.packed_w = 0;
  l.packed_wt = aligned(gemm::packed_size(K, CRS));
  l.weight_rows = l.packed_wt + aligned(gemm::packed_size(CRS, K));
  l.bias_row = l.weight_rows + aligned(CRS * filters_ld(g));
  l.chunk_base = l.bias_row + aligned(filters_ld(g));
  l.columns = 0;
  l.col_grad = l.columns + aligned(std::max<std::size_t>(CRS * pixels_ld(g), gemm::kDepthBlock * gemm::kColPad) + kSlack);
  l.packed_dy = l.col_grad + aligned(std::max(CRS * pixels_ld(g), kConvChunk * P * filters_ld(g)));
  l.weight_part = l.packed_dy + aligned(std::max(gemm::packed_size(K, P), P * taps_ld(g)));
  l.bias_part = l.weight_part + aligned(std::max(K * rows_ld(g), CRS * taps_ld(g)));
  l.dy_tail = l.bias_part + aligned(K);
  l.chunk_size = aligned(l.dy_tail + std::size_t(kConvChunk) * K * kDxPad);
  return l;
}

struct ChunkSpace {
  template <class T>
  struct Of {
    T *columns, *col_grad, *packed_dy, *weight_part, *bias_part, *dy_tail;
  };
  template <class T>
  static Of<T> at(T* workspace, const Layout& l, int chunk) {
    T* base = workspace + l.chunk_base + std::size_t(chunk) * l.chunk_size;
    return {base + l.columns,     base + l.col_grad,  base + l.packed_dy,
            base + l.weight_part, base + l.bias_part, base + l.dy_tail};
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

// Per filter column s, the output columns whose input column lies inside the image; computed once
// per call (two integer divisions each) for the first kCached columns.
class ColumnRanges {
 public:
  explicit ColumnRanges(const ConvGeometry& g) : g_(g) {
    for (int s = 0; s < std::min(g.kernel_w, kCached); ++s) ranges_[s] = inside_columns(g, s);
  }
  ColumnRange operator[](int s) const { return s < kCached ? ranges_[s] : inside_columns(g_, s); }

 private:
  static constexpr int kCached = 16;
  ConvGeometry g_;
  ColumnRange ranges_[kCached];
};

// Geometry arguments are taken by value in the copy loops below: a reference could alias the
// buffers written, and the compiler would reload its fields after every store.

// col (C*R*S, ld): row (c,r,s) holds the input pixel each output pixel sees through filter tap (r,s).
template <class T>
void im2col_ld(T* col, const T* image, const ConvGeometry g, std::size_t ld) {
  const int OH = g.out_h, OW = g.out_w;
  const T* image_end = image + g.in_size();
  constexpr int kRun = int(32 / sizeof(T));
  const ColumnRanges inside(g);
  for (int c = 0; c < g.in_channels; ++c)
    for (int r = 0; r < g.kernel_h; ++r)
      for (int s = 0; s < g.kernel_w; ++s) {
        T* row = col + ((std::size_t(c) * g.kernel_h + r) * g.kernel_w + s) * ld;
        const T* plane = image + std::size_t(c) * g.height * g.width;
        const auto [ow_begin, ow_end] = inside[s];
        const int n = ow_end - ow_begin;
        for (int oh = 0; oh < OH; ++oh) {
          T* dst = row + std::size_t(oh) * OW;
          const int ih = oh * g.stride - g.pad + r;
          if (ih < 0 || ih >= g.height) {
            std::fill(dst, dst + OW, T(0));
            continue;
          }
          const T* src = plane + std::size_t(ih) * g.width - g.pad + s + ow_begin * g.stride;
          for (int ow = 0; ow < ow_begin; ++ow) dst[ow] = T(0);
          if (g.stride == 1) {
            // Runs are written in increasing order, so an over-long write is overwritten later.
            copy_run(dst + ow_begin, src, n, src + kRun <= image_end);
          } else {
            for (int i = 0; i < n; ++i) dst[ow_begin + i] = src[i * g.stride];
          }
          for (int ow = ow_end; ow < OW; ++ow) dst[ow] = T(0);
        }
      }
}

// rows (OH*OW, ld): row p holds the input patch output pixel p sees, in (c,r,s) order. Loops run
// over one input row at a time, writing its S-element run into each output pixel's row.
template <class T>
void im2row(T* rows, const T* image, const ConvGeometry g, std::size_t ld) {
  const int R = g.kernel_h, S = g.kernel_w, OW = g.out_w;
  const T* image_end = image + g.in_size();
  constexpr int kRun = int(32 / sizeof(T));
  // Output columns whose whole run lies inside the input row.
  const int ow_lo = std::min(OW, (g.pad + g.stride - 1) / g.stride);
  const int ow_hi = std::max(ow_lo, std::min(OW, (g.width + g.pad - S) / g.stride + 1));
  for (int oh = 0; oh < g.out_h; ++oh) {
    T* row0 = rows + std::size_t(oh) * OW * ld;
    for (int c = 0; c < g.in_channels; ++c)
      for (int r = 0; r < R; ++r) {
        const int offset = (c * R + r) * S;
        const int ih = oh * g.stride - g.pad + r;
        if (ih < 0 || ih >= g.height) {
          for (int ow = 0; ow < OW; ++ow) std::fill_n(row0 + ow * ld + offset, S, T(0));
          continue;
        }
        const T* src_row = image + (std::size_t(c) * g.height + ih) * g.width;
        auto edge = [&](int ow) {
          T* d = row0 + ow * ld + offset;
          const int w0 = ow * g.stride - g.pad;
          for (int s = 0; s < S; ++s) d[s] = (w0 + s >= 0 && w0 + s < g.width) ? src_row[w0 + s] : T(0);
        };
        for (int ow = 0; ow < ow_lo; ++ow) edge(ow);
        const T* src = src_row + ow_lo * g.stride - g.pad;
        T* d = row0 + ow_lo * ld + offset;
        // Over-long runs spill into the next run of the same row, written later; the row's last
        // run would spill into the next row, already written.
        const bool last = c == g.in_channels - 1 && r == R - 1;
        if (S <= kRun && !last && src + (ow_hi - ow_lo - 1) * g.stride + kRun <= image_end) {
          using H = typename gemm::Simd<T>::Half;
          for (int ow = ow_lo; ow < ow_hi; ++ow, src += g.stride, d += ld)
            *reinterpret_cast<H*>(d) = *reinterpret_cast<const H*>(src);
        } else {
          for (int ow = ow_lo; ow < ow_hi; ++ow, src += g.stride, d += ld) gemm::copy_short(d, src, S);
        }
        for (int ow = ow_hi; ow < OW; ++ow) edge(ow);
      }
  }
}

// Weight gradient straight from the image (stride 1, no padding, S <= 6): for one image,
// part^T (C*R*S, ldT) (+)= sum over output pixels of its patch (C*R*S) x its dY^T row (ldT). A
// register tile is the S taps of one filter row (c,r) by NV vectors of filters: per pixel, S
// neighbouring input values broadcast, NV vectors of dY^T loaded. No im2row.
bool weight_grad_reads_image(const ConvGeometry& g) {
  return g.stride == 1 && g.pad == 0 && g.kernel_w <= 6;
}

template <class T, int TAPS, int NV>
void taps_tiles(T* part, const T* image, const T* dyt, const ConvGeometry g, bool first) {
  constexpr int L = gemm::kLanes<T>;
  const std::size_t ldk = taps_ld(g), plane = std::size_t(g.height) * g.width;
  for (int k0 = 0; k0 < g.filters; k0 += NV * L)
    for (int c = 0; c < g.in_channels; ++c)
      for (int r = 0; r < g.kernel_h; ++r) {
        T* out = part + std::size_t((c * g.kernel_h + r) * TAPS) * ldk + k0;
        gemm::Vec<T> acc[TAPS][NV];
#pragma GCC unroll 8
        for (int t = 0; t < TAPS; ++t)
#pragma GCC unroll 4
          for (int j = 0; j < NV; ++j) acc[t][j] = first ? gemm::Vec<T>{} : gemm::load(out + t * ldk + j * L);
        const T* b = dyt + k0;
        for (int oh = 0; oh < g.out_h; ++oh) {
          const T* a = image + c * plane + std::size_t(oh + r) * g.width;
          for (int ow = 0; ow < g.out_w; ++ow, ++a, b += ldk) {
            gemm::Vec<T> bv[NV];
#pragma GCC unroll 4
            for (int j = 0; j < NV; ++j) bv[j] = gemm::load(b + j * L);
#pragma GCC unroll 8
            for (int t = 0; t < TAPS; ++t) {
              const gemm::Vec<T> at = gemm::splat(a[t]);
#pragma GCC unroll 4
              for (int j = 0; j < NV; ++j) acc[t][j] += at * bv[j];
            }
          }
        }
#pragma GCC unroll 8
        for (int t = 0; t < TAPS; ++t)
#pragma GCC unroll 4
          for (int j = 0; j < NV; ++j) gemm::store(out + t * ldk + j * L, acc[t][j]);
      }
}

template <class T, int NV>
void weight_grad_from_image_nv(T* part, const T* image, const T* dyt, const ConvGeometry g, bool first) {
  switch (g.kernel_w) {
    case 1: return taps_tiles<T, 1, NV>(part, image, dyt, g, first);
    case 2: return taps_tiles<T, 2, NV>(part, image, dyt, g, first);
    case 3: return taps_tiles<T, 3, NV>(part, image, dyt, g, first);
    case 4: return taps_tiles<T, 4, NV>(part, image, dyt, g, first);
    case 5: return taps_tiles<T, 5, NV>(part, image, dyt, g, first);
    default: return taps_tiles<T, 6, NV>(part, image, dyt, g, first);
  }
}

// Columns of part^T past the K filters hold zeros (dY^T is zero-padded).
template <class T>
void weight_grad_from_image(T* part, const T* image, const T* dyt, const ConvGeometry g, bool first) {
  if (g.filters > 32) weight_grad_from_image_nv<T, 4>(part, image, dyt, g, first);
  else weight_grad_from_image_nv<T, 2>(part, image, dyt, g, first);
}

// image_grad (C,H,W) += col_grad (C*R*S, ld) scattered back. Taps s run outside r, so the
// read-modify-writes of one image row repeat at the same address and size (store forwarding works).
template <class T>
void col2im_add_ld(T* image_grad, const T* col_grad, const ConvGeometry g, std::size_t ld) {
  const int OH = g.out_h, OW = g.out_w;
  const ColumnRanges inside(g);
  for (int c = 0; c < g.in_channels; ++c)
    for (int s = 0; s < g.kernel_w; ++s) {
      const auto [ow_begin, ow_end] = inside[s];
      const int n = ow_end - ow_begin;
      T* plane = image_grad + std::size_t(c) * g.height * g.width - g.pad + s + ow_begin * g.stride;
      for (int r = 0; r < g.kernel_h; ++r) {
        const T* row = col_grad + ((std::size_t(c) * g.kernel_h + r) * g.kernel_w + s) * ld + ow_begin;
        for (int oh = 0; oh < OH; ++oh) {
          const int ih = oh * g.stride - g.pad + r;
          if (ih < 0 || ih >= g.height) continue;
          const T* src = row + std::size_t(oh) * OW;
          T* dst = plane + std::size_t(ih) * g.width;
          if (g.stride == 1) {
            gemm::add_short(dst, src, n);
          } else {
            for (int i = 0; i < n; ++i) dst[i * g.stride] += src[i];
          }
        }
      }
    }
}

}  // namespace

std::size_t conv2d_workspace_size(const ConvGeometry& g, int batch) {
  const Layout l = layout(g);
  return l.chunk_base + std::size_t(conv_chunks(batch)) * l.chunk_size;
}

// Y^T tile: the 8 output pixels of one row whose first input pixel is x0 (kRows rows) by kCols
// filters; A is read straight from the image (8 neighbouring input pixels per filter tap), B is
// the weights transposed, (C*R*S, ldk).
template <class T>
[[gnu::always_inline]] inline void image_tile(gemm::Tile<T>& t, const T* x0, const T* wt, std::size_t ldk,
                                              const ConvGeometry g, int c0, int c1) {
  constexpr int L = gemm::kLanes<T>;
  const std::size_t plane = std::size_t(g.height) * g.width;
  for (int c = c0; c < c1; ++c)
    for (int r = 0; r < g.kernel_h; ++r) {
      const T* a = x0 + c * plane + r * g.width;
      const T* b = wt + std::size_t((c * g.kernel_h + r) * g.kernel_w) * ldk;
      for (int s = 0; s < g.kernel_w; ++s, ++a, b += ldk) {
        gemm::Vec<T> bv[gemm::kColVecs];
#pragma GCC unroll 4
        for (int j = 0; j < gemm::kColVecs; ++j) bv[j] = gemm::load(b + j * L);
#pragma GCC unroll 16
        for (int i = 0; i < gemm::kRows; ++i) {
          const gemm::Vec<T> ai = gemm::splat(a[i]);
#pragma GCC unroll 4
          for (int j = 0; j < gemm::kColVecs; ++j) t.acc[i][j] += ai * bv[j];
        }
      }
    }
}

// out (K, OH*OW) for `count` images (consecutive in `x` and `out`), tile by tile from image_tile;
// bias_row (ldk) holds the bias or zeros. Channels run in blocks whose weight rows stay in L1 while
// every pixel tile of every image uses them; between blocks the tiles wait in `partial`
// (count, OH*OW, ldk), and the last block stores them transposed into `out`.
template <class T>
void forward_from_image(T* out, const T* x, int count, const T* wt, const T* bias_row, T* partial,
                        const ConvGeometry g) {
  constexpr int L = gemm::kLanes<T>, NR = gemm::kCols<T>;
  constexpr int kBlockRows = 176;  // rows of NR weights per block: 22 KB of float
  const std::size_t ldk = filters_ld(g), P = g.out_pixels();
  const int taps = g.kernel_h * g.kernel_w;
  const int block = std::max(1, kBlockRows / taps);
  for (int c0 = 0; c0 < g.in_channels; c0 += block) {
    const int c1 = std::min(g.in_channels, c0 + block);
    for (int k0 = 0; k0 < g.filters; k0 += NR) {
      const int filters = std::min(NR, g.filters - k0);
      for (int n = 0; n < count; ++n)
        for (int oh = 0; oh < g.out_h; ++oh)
          for (int ow = 0; ow < g.out_w; ow += gemm::kRows) {
            T* part = partial + (n * P + std::size_t(oh) * g.out_w + ow) * ldk + k0;
            gemm::Tile<T> t;
#pragma GCC unroll 16
            for (int i = 0; i < gemm::kRows; ++i)
#pragma GCC unroll 4
              for (int j = 0; j < gemm::kColVecs; ++j)
                t.acc[i][j] = c0 == 0 ? gemm::load(bias_row + k0 + j * L) : gemm::load(part + i * ldk + j * L);
            image_tile(t, x + n * g.in_size() + std::size_t(oh) * g.width + ow, wt + k0, ldk, g, c0, c1);
            if (c1 < g.in_channels) {
#pragma GCC unroll 16
              for (int i = 0; i < gemm::kRows; ++i)
#pragma GCC unroll 4
                for (int j = 0; j < gemm::kColVecs; ++j) gemm::store(part + i * ldk + j * L, t.acc[i][j]);
              continue;
            }
            alignas(64) T local[gemm::kRows][NR];
            for (int i = 0; i < gemm::kRows; ++i)
              for (int j = 0; j < gemm::kColVecs; ++j) gemm::store(&local[i][j * L], t.acc[i][j]);
            T* y = out + n * g.out_size() + std::size_t(k0) * P + std::size_t(oh) * g.out_w + ow;
            for (int k = 0; k < filters; ++k)
              for (int i = 0; i < gemm::kRows; ++i) y[k * P + i] = local[i][k];
          }
    }
  }
}

template <class T>
void conv2d_forward(T* out, T* workspace, const T* in, const T* weight, const T* bias, const ConvGeometry& g,
                    int batch) {
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  const Layout l = layout(g);
  const bool from_image = forward_reads_image(g);
  T* packed_w = workspace + l.packed_w;
  T* weight_rows = workspace + l.weight_rows;
  T* bias_row = workspace + l.bias_row;
  if (from_image) {
    const std::size_t ldk = filters_ld(g);
    for (int crs = 0; crs < CRS; ++crs) {
      for (int k = 0; k < K; ++k) weight_rows[crs * ldk + k] = weight[std::size_t(k) * CRS + crs];
      std::fill(weight_rows + crs * ldk + K, weight_rows + (crs + 1) * ldk, T(0));
    }
    for (std::size_t k = 0; k < ldk; ++k) bias_row[k] = bias && int(k) < K ? bias[k] : T(0);
  } else {
    gemm::pack_rows(packed_w, weight, CRS, K, CRS);
  }
  const std::size_t ld = pixels_ld(g);
  const double flops = 2.0 * K * P * CRS * kConvChunk;
  parallel_for(conv_chunks(batch), flops, [&](std::size_t chunk) {
    const auto ws = ChunkSpace::at(workspace, l, int(chunk));
    const int begin = int(chunk) * kConvChunk, end = std::min(batch, begin + kConvChunk);
    if (from_image) {
      forward_from_image(out + begin * g.out_size(), in + begin * g.in_size(), end - begin, weight_rows, bias_row,
                         ws.col_grad, g);
      return;
    }
    for (int n = begin; n < end; ++n) {
      const T* x = in + n * g.in_size();
      T* y = out + n * g.out_size();
      const gemm::Start start = bias ? gemm::Start::row_bias : gemm::Start::zero;
      if (is_pointwise(g)) {
        gemm::multiply(y, P, packed_w, x, P, K, P, CRS, start, bias, false);
      } else {
        im2col_ld(ws.columns, x, g, ld);
        gemm::multiply(y, P, packed_w, ws.columns, ld, K, P, CRS, start, bias, true);
      }
    }
  });
}

// W^T (C*R*S, K) packed in kDxRows-row panels (K, kDxRows) with its rows in tap order: s
// outermost, then c, r. The rows of a register tile then share s and differ in (c,r), so the
// read-modify-writes that scatter them touch different image rows; in (c,r,s) order neighbouring
// rows overlap shifted by one element, and each load waits for the previous store to reach the
// cache (no forwarding).
template <class T>
void pack_transposed_by_tap(T* packed, const T* weight, const ConvGeometry g) {
  const int K = g.filters, CRS = int(g.col_rows()), CR = g.in_channels * g.kernel_h, S = g.kernel_w;
  for (int m0 = 0; m0 < CRS; m0 += kDxRows) {
    T* panel = packed + std::size_t(m0) * K;
    int crs[kDxRows];  // row m is tap (c,r) = m % CR, s = m / CR; -1: a zero row past the end
    for (int i = 0; i < kDxRows; ++i) crs[i] = m0 + i < CRS ? (m0 + i) % CR * S + (m0 + i) / CR : -1;
    // k outermost: the panel's rows lie close together in each filter's weights.
    for (int k = 0; k < K; ++k)
      for (int i = 0; i < kDxRows; ++i) panel[k * kDxRows + i] = crs[i] < 0 ? T(0) : weight[std::size_t(k) * CRS + crs[i]];
  }
}

// Adds vector v of a tile row to the image: each group of 8 pixels (two per float vector, one
// per double vector) lies in one output row and goes to base + group_at[q]; groups past `groups`
// are padding.
template <class T>
[[gnu::always_inline]] inline void scatter_vector(T* base, const std::size_t* group_at, int groups, gemm::Vec<T> v) {
  if constexpr (gemm::kLanes<T> == 2 * gemm::kRows) {
    using Half = typename gemm::Simd<T>::Half;
    typedef T HalfVec __attribute__((vector_size(32)));
    const HalfVec lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    const HalfVec hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    if (groups > 0) *reinterpret_cast<Half*>(base + group_at[0]) += lo;
    if (groups > 1) *reinterpret_cast<Half*>(base + group_at[1]) += hi;
  } else {
    static_assert(gemm::kLanes<T> == gemm::kRows);
    if (groups > 0) gemm::store(base + group_at[0], gemm::load(base + group_at[0]) + v);
  }
}

// Copies of the last, partial tile of pixels of each image's dY, zero-padded to a whole tile:
// (count, K, kDxPixels).
template <class T>
void pad_last_pixels(T* dy_tail, const T* dy, int count, const ConvGeometry g) {
  constexpr int NP = kDxPixels<T>;
  const int K = g.filters, P = int(g.out_pixels()), tail = P % NP;
  for (int n = 0; n < count; ++n)
    for (int k = 0; k < K; ++k) {
      const T* src = dy + n * g.out_size() + std::size_t(k) * P + (P - tail);
      T* dst = dy_tail + (std::size_t(n) * K + k) * NP;
      std::copy(src, src + tail, dst);
      std::fill(dst + tail, dst + NP, T(0));
    }
}

// dx (C,H,W) = col2im(W^T (C*R*S, K) * dY (K, P)) for `count` images (consecutive in dx and dy),
// each register tile scattered as it is computed (is_dense_rows geometry: every output pixel's
// patch lies inside the image). A tile of dY stays in L1 while the packed W^T streams past it
// (panels outermost, reading dY from L2, measured 30% slower). dy_tail: (count, K, kDxPad)
// scratch for pad_last_pixels. packed_wt: from pack_transposed_by_tap.
template <class T>
void input_grad_scattered(T* dx, const T* dy, int count, const T* packed_wt, T* dy_tail, const ConvGeometry g) {
  constexpr int NP = kDxPixels<T>, G8 = gemm::kRows;
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  const std::size_t plane = std::size_t(g.height) * g.width;
  std::fill(dx, dx + count * g.in_size(), T(0));
  if (P % NP) pad_last_pixels(dy_tail, dy, count, g);
  for (int n = 0; n < count; ++n) {
    T* dxn = dx + n * g.in_size();
    int oh = 0, ow = 0;  // the output pixel of n0
    for (int n0 = 0; n0 < P; n0 += NP) {
      const int pixels = std::min(NP, P - n0);
      const T* b = pixels == NP ? dy + n * g.out_size() + n0 : dy_tail + std::size_t(n) * K * NP;
      const std::size_t ldb = pixels == NP ? P : NP;
      // Where the patch of each group of 8 pixels starts in the image.
      std::size_t group_at[NP / G8];
      for (int q = 0; q * G8 < pixels; ++q) {
        group_at[q] = std::size_t(oh) * g.width + ow;
        if ((ow += G8) == g.out_w) ow = 0, ++oh;
      }
      constexpr int groups_per_vector = gemm::kLanes<T> / G8;
      int c = 0, r = 0, s = 0;  // the filter tap of row m0, rows in tap order
      for (int m0 = 0; m0 < CRS; m0 += kDxRows) {
        gemm::Block<T, kDxRows, kDxVecs> t{};
        gemm::multiply_block(t, K, packed_wt + std::size_t(m0) * K, b, ldb);
#pragma GCC unroll 8
        for (int i = 0; i < kDxRows; ++i) {
          if (m0 + i == CRS) break;  // zero rows of the last panel
          T* base = dxn + c * plane + r * g.width + s;
#pragma GCC unroll 4
          for (int j = 0; j < kDxVecs; ++j)
            scatter_vector(base, group_at + j * groups_per_vector, pixels / G8 - j * groups_per_vector, t.acc[i][j]);
          if (++r == g.kernel_h) {
            r = 0;
            if (++c == g.in_channels) c = 0, ++s;
          }
        }
      }
    }
  }
}

template <class T>
void conv2d_backward(T* in_grad, T* weight_grad, T* bias_grad, T* workspace, const T* out_grad, const T* in,
                     const T* weight, const ConvGeometry& g, int batch) {
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  const Layout l = layout(g);
  const int chunks = conv_chunks(batch);
  T* packed_wt = workspace + l.packed_wt;
  if (in_grad && is_dense_rows(g)) pack_transposed_by_tap(packed_wt, weight, g);
  else if (in_grad) gemm::pack_columns(packed_wt, weight, CRS, CRS, K);
  const std::size_t ld_p = pixels_ld(g), ld_crs = rows_ld(g);
  const bool transposed_part = weight_grad_reads_image(g);
  const double flops = (in_grad ? 4.0 : 2.0) * K * P * CRS * kConvChunk;
  parallel_for(chunks, flops, [&](std::size_t chunk) {
    const auto ws = ChunkSpace::at(workspace, l, int(chunk));
    const int begin = int(chunk) * kConvChunk, end = std::min(batch, begin + kConvChunk);
    for (int n = begin; n < end; ++n) {
      const T* dy = out_grad + n * g.out_size();
      const T* x = in + n * g.in_size();
      const bool first = n == begin;
      if (transposed_part) {
        const std::size_t ldt = taps_ld(g);
        gemm::transpose(ws.packed_dy, ldt, dy, P, K, P);
        for (int p = 0; p < P; ++p) std::fill(ws.packed_dy + p * ldt + K, ws.packed_dy + (p + 1) * ldt, T(0));
        weight_grad_from_image(ws.weight_part, x, ws.packed_dy, g, first);
      } else {
        // weight_part (K, CRS) (+)= dY (K, P) * im2row (P, CRS)
        gemm::pack_rows(ws.packed_dy, dy, P, K, P);
        im2row(ws.columns, x, g, ld_crs);
        gemm::multiply(ws.weight_part, ld_crs, ws.packed_dy, ws.columns, ld_crs, K, CRS, P,
                       first ? gemm::Start::zero : gemm::Start::accumulate, static_cast<const T*>(nullptr), true);
      }
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
      if (is_dense_rows(g)) continue;  // after the loop, for the whole chunk
      gemm::multiply(ws.col_grad, ld_p, packed_wt, dy, P, CRS, P, K, gemm::Start::zero, static_cast<const T*>(nullptr),
                     false);
      std::fill(dx, dx + g.in_size(), T(0));
      col2im_add_ld(dx, ws.col_grad, g, ld_p);
    }
    if (in_grad && is_dense_rows(g))
      input_grad_scattered(in_grad + begin * g.in_size(), out_grad + begin * g.out_size(), end - begin, packed_wt,
                           ws.dy_tail, g);
  });
  // Sum the chunk partials in chunk order.
  if (transposed_part) {
    // Blocks of 16 patch elements by 64 filters: sum the part^T blocks, then add them transposed
    // into dW (K, CRS).
    const std::size_t ldt = taps_ld(g);
    constexpr int kBlock = 16, kFilters = 64;
    parallel_for((CRS + kBlock - 1) / kBlock, 2.0 * kBlock * K * chunks, [&](std::size_t block) {
      const int i0 = int(block) * kBlock, rows = std::min(kBlock, CRS - i0);
      for (int k0 = 0; k0 < K; k0 += kFilters) {
        const int filters = std::min(kFilters, K - k0);
        alignas(64) T total[kBlock][kFilters];
        for (int c = 0; c < chunks; ++c) {
          const T* part = ChunkSpace::at(workspace, l, c).weight_part + std::size_t(i0) * ldt + k0;
          for (int i = 0; i < rows; ++i)
            for (int k = 0; k < filters; ++k) total[i][k] = (c ? total[i][k] : T(0)) + part[i * ldt + k];
        }
        for (int k = 0; k < filters; ++k)
          for (int i = 0; i < rows; ++i) weight_grad[std::size_t(k0 + k) * CRS + i0 + i] += total[i][k];
      }
    });
    if (bias_grad)
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < chunks; ++c) bias_grad[k] += ChunkSpace::at(workspace, l, c).bias_part[k];
    return;
  }
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
