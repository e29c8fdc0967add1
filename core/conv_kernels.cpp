// Convolution kernels: im2col/im2row into buffers laid out for core/gemm.hpp's inner loop, the
// weights packed once per call, parallel over fixed chunks of kConvChunk images; small output maps
// go to core/conv_groups.cpp instead (one product per group of images).
#include <algorithm>
#include <cstring>

#include "conv_groups.hpp"
#include "gemm.hpp"
#include "im2col.hpp"
#include "kernels.hpp"
#include "parallel.hpp"
#include "winograd.hpp"

namespace mpicnn::core {
namespace {

using gemm::aligned;
using gemm::round_up;
using namespace im2col;


// The input gradient's register tile: kDxRows rows of W^T by kDxVecs vectors of output pixels
// (64 pixels of float, 32 of double: the whole 8x8 output of the reference CNN's conv2, so each
// row of W^T is read once per image), each tile's rows scattered onto the image straight from
// the registers (an 8 x 2 tile went through a local array: 10% slower on conv2).
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

// Stride 1 with shallow filters (C*R*S < 128; the reference CNN's conv1 is 25 deep): a tap's
// inputs for consecutive output pixels are read from S shifted copies of the image (see
// shift_copy), so the forward pass needs no im2col and the weight gradient no dY transpose; both
// vectorise over pixels. The weight gradient keeps one vector of partial sums per weight, hence
// the bound on K*C*R*S (workspace).
bool is_shallow(const ConvGeometry& g) { return g.stride == 1 && !is_pointwise_geometry(g) && g.col_rows() < 128; }
constexpr std::size_t kShallowWeights = 8192;
bool weight_grad_shallow(const ConvGeometry& g) { return is_shallow(g) && g.filters * g.col_rows() <= kShallowWeights; }
constexpr int kMaxLanes = gemm::kLanes<float>;
// The shallow weight gradient tile: kGradFilters filters by kGradTaps consecutive taps (c,r,s),
// each accumulating one vector of lane partial sums over the pixels of every image of a chunk.
constexpr int kGradFilters = 4, kGradTaps = 5;
// The lane partials (K, C*R*S, L), both padded to whole tiles.
std::size_t grad_filters(const ConvGeometry& g) { return round_up(g.filters, kGradFilters); }
std::size_t grad_taps(const ConvGeometry& g) { return round_up(g.col_rows(), kGradTaps); }

// Zeros after each shifted plane: a register tile reads up to a tile of pixels past its end.
constexpr std::size_t kShiftSlack = 64;
std::size_t shifted_plane(const ConvGeometry& g) {
  return std::size_t(g.height + 2 * g.pad) * g.out_w + kShiftSlack;
}
std::size_t shifted_size(const ConvGeometry& g) {
  return is_shallow(g) ? std::size_t(g.in_channels) * g.kernel_w * shifted_plane(g) : 0;
}

// Workspace layout (elements; every part starts 64-byte aligned for float and double):
//   packed weights (K rows, C*R*S deep) for the forward pass,
//   packed transposed weights (C*R*S rows, K deep) for the input gradient,
//   transposed weights (C*R*S, ldK) and the bias padded to ldK, for the forward pass from the image,
//   per chunk: columns  im2col (C*R*S, ldP), an im2row tile (kDepthBlock, kColPad) or the
//                       shifted copies (C, S, shifted_plane), plus slack
//              col_grad (C*R*S, ldP), or the forward pass's partial tiles (kConvChunk, OH*OW, ldK)
//              packed output gradient (K rows, OH*OW deep), or dY^T (OH*OW, ldT)
//              weight gradient partial (K, ldCRS), its transpose (C*R*S, ldT), or lane partials
//                       (grad_filters, grad_taps, lanes); bias partial (K)
//              padded copies of the output gradient's last pixels (kConvChunk, K, kDxPad), or
//                       (K, lanes) for the shallow weight gradient
struct Layout {
  std::size_t packed_w, packed_wt, weight_rows, bias_row, chunk_base, chunk_size;
  std::size_t columns, col_grad, packed_dy, weight_part, bias_part, dy_tail;
};

Layout layout(const ConvGeometry& g) {
  const int K = g.filters, CRS = int(g.col_rows()), P = int(g.out_pixels());
  Layout l{};
  l.packed_w = 0;
  l.packed_wt = aligned(gemm::packed_size(K, CRS));
  l.weight_rows = l.packed_wt + aligned(gemm::packed_size(CRS, K));
  l.bias_row = l.weight_rows + aligned(CRS * filters_ld(g));
  l.chunk_base = l.bias_row + aligned(filters_ld(g));
  l.columns = 0;
  l.col_grad = l.columns + aligned(std::max({CRS * pixels_ld(g), std::size_t(gemm::kDepthBlock) * gemm::kColPad,
                                              shifted_size(g)}) + kSlack);
  l.packed_dy = l.col_grad + aligned(std::max(CRS * pixels_ld(g), kConvChunk * P * filters_ld(g)));
  l.weight_part = l.packed_dy + aligned(std::max(gemm::packed_size(K, P), P * taps_ld(g)));
  l.bias_part = l.weight_part + aligned(std::max({K * rows_ld(g), CRS * taps_ld(g),
                                                   weight_grad_shallow(g) ? grad_filters(g) * grad_taps(g) * kMaxLanes : 0}));
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


// Shifted copies of one image for stride 1: plane (c,s) holds H + 2*pad rows of OW elements, row
// i being x[c][i - pad][ow + s - pad] (zero outside the image), then kShiftSlack zeros. The input
// that output pixel p = oh*OW + ow sees through tap (c,r,s) is then plane(c,s)[p + r*OW]: each tap
// reads a contiguous run of pixels. S planes per channel instead of im2col's R*S rows.
template <class T>
void shift_copy(T* shifted, const T* image, const ConvGeometry g) {
  const int OW = g.out_w, rows = g.height + 2 * g.pad;
  const std::size_t plane = shifted_plane(g);
  const ColumnRanges inside(g);
  for (int c = 0; c < g.in_channels; ++c)
    for (int s = 0; s < g.kernel_w; ++s) {
      T* dst = shifted + (std::size_t(c) * g.kernel_w + s) * plane;
      const auto [ow_begin, ow_end] = inside[s];
      for (int i = 0; i < rows; ++i, dst += OW) {
        const int ih = i - g.pad;
        if (ih < 0 || ih >= g.height) {
          std::fill(dst, dst + OW, T(0));
          continue;
        }
        const T* src = image + (std::size_t(c) * g.height + ih) * g.width + ow_begin + s - g.pad;
        std::fill(dst, dst + ow_begin, T(0));
        gemm::copy_short(dst + ow_begin, src, ow_end - ow_begin);
        std::fill(dst + ow_end, dst + OW, T(0));
      }
      std::fill(dst, dst + kShiftSlack, T(0));
    }
}

// The shallow forward tile: 8 filters (broadcast from the packed weights, pack_rows panels) by
// kShallowVecs vectors of consecutive output pixels (loaded from the shifted planes), started at
// the bias. 24 accumulators for 25 taps of the reference CNN's conv1.
constexpr int kShallowVecs = 3;
template <class T>
using ShallowTile = gemm::Block<T, gemm::kRows, kShallowVecs>;

template <class T>
[[gnu::always_inline]] inline void shallow_forward_taps(ShallowTile<T>& t, const T* panel, const T* shifted,
                                                        const ConvGeometry g) {
  constexpr int L = gemm::kLanes<T>;
  const std::size_t plane = shifted_plane(g);
  for (int c = 0; c < g.in_channels; ++c)
    for (int r = 0; r < g.kernel_h; ++r) {
      const T* b = shifted + std::size_t(c) * g.kernel_w * plane + r * g.out_w;
      for (int s = 0; s < g.kernel_w; ++s, b += plane, panel += gemm::kRows) {
        gemm::Vec<T> bv[kShallowVecs];
#pragma GCC unroll 4
        for (int j = 0; j < kShallowVecs; ++j) bv[j] = gemm::load(b + j * L);
#pragma GCC unroll 8
        for (int i = 0; i < gemm::kRows; ++i) {
          const gemm::Vec<T> ai = gemm::splat(panel[i]);
#pragma GCC unroll 4
          for (int j = 0; j < kShallowVecs; ++j) t.acc[i][j] += ai * bv[j];
        }
      }
    }
}

// y (K, OH*OW) of one image from its shifted planes; packed_w: pack_rows of the weights.
template <class T>
void shallow_forward(T* y, const T* packed_w, const T* shifted, const T* bias, const ConvGeometry g) {
  constexpr int L = gemm::kLanes<T>, NP = kShallowVecs * L;
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  for (int p0 = 0; p0 < P; p0 += NP)
    for (int k0 = 0; k0 < K; k0 += gemm::kRows) {
      const int filters = std::min(gemm::kRows, K - k0), pixels = std::min(NP, P - p0);
      ShallowTile<T> t;
#pragma GCC unroll 8
      for (int i = 0; i < gemm::kRows; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < kShallowVecs; ++j) t.acc[i][j] = gemm::splat(bias && i < filters ? bias[k0 + i] : T(0));
      shallow_forward_taps(t, packed_w + std::size_t(k0) * CRS, shifted + p0, g);
      T* out = y + std::size_t(k0) * P + p0;
      const bool full = filters == gemm::kRows && pixels == NP;
      alignas(64) T local[gemm::kRows][NP];
#pragma GCC unroll 8
      for (int i = 0; i < gemm::kRows; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < kShallowVecs; ++j) gemm::store(full ? out + i * P + j * L : &local[i][j * L], t.acc[i][j]);
      if (!full)
        for (int i = 0; i < filters; ++i) std::copy(local[i], local[i] + pixels, out + i * P);
    }
}

// Where tap (c,r,s)'s run of pixels starts in an image's shifted planes.
std::size_t tap_offset(const ConvGeometry& g, int crs) {
  const int c = crs / (g.kernel_h * g.kernel_w), r = crs / g.kernel_w % g.kernel_h, s = crs % g.kernel_w;
  return (std::size_t(c) * g.kernel_w + s) * shifted_plane(g) + std::size_t(r) * g.out_w;
}

// One tile of one image: dy (K, P) and dy_tail (K, L) at filter k0, of which `filters` are real
// (the rest repeat the last); taps: the tile's tap_offsets. Overwrites part if first, else adds.
template <class T>
void grad_tile(T* part, const T* shifted, const std::size_t* taps, const T* dy, const T* dy_tail, int filters,
               const ConvGeometry& g, bool first) {
  constexpr int L = gemm::kLanes<T>;
  const int P = int(g.out_pixels()), full = P / L * L;
  const std::size_t taps_ld = grad_taps(g);
  gemm::Vec<T> acc[kGradFilters][kGradTaps];
#pragma GCC unroll 8
  for (int i = 0; i < kGradFilters; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < kGradTaps; ++t) acc[i][t] = first ? gemm::Vec<T>{} : gemm::load(part + (i * taps_ld + t) * L);
  const T *x[kGradTaps], *rows[kGradFilters], *tails[kGradFilters];
  for (int t = 0; t < kGradTaps; ++t) x[t] = shifted + taps[t];
  for (int i = 0; i < kGradFilters; ++i) rows[i] = dy + std::min(i, filters - 1) * P;
  for (int i = 0; i < kGradFilters; ++i) tails[i] = dy_tail + std::min(i, filters - 1) * L;
  auto step = [&](const T* const* d, int p, int offset) {
    gemm::Vec<T> xv[kGradTaps];
#pragma GCC unroll 8
    for (int t = 0; t < kGradTaps; ++t) xv[t] = gemm::load(x[t] + p);
#pragma GCC unroll 8
    for (int i = 0; i < kGradFilters; ++i) {
      const gemm::Vec<T> dv = gemm::load(d[i] + offset);
#pragma GCC unroll 8
      for (int t = 0; t < kGradTaps; ++t) acc[i][t] += dv * xv[t];
    }
  };
  for (int p = 0; p < full; p += L) step(rows, p, p);
  if (full < P) step(tails, full, 0);
#pragma GCC unroll 8
  for (int i = 0; i < kGradFilters; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < kGradTaps; ++t) gemm::store(part + (i * taps_ld + t) * L, acc[i][t]);
}

// part (grad_filters, grad_taps, L) (+)= lane partials over one image of dY (K, P) times the tap
// runs of its shifted planes (per image, so that a tile's dY rows and the planes stay in L1: over
// a chunk's four images at once, 40% slower). dy_tail (K, L): each filter's last P % L pixels,
// zero-padded. Taps past C*R*S repeat the last one.
template <class T>
void shallow_weight_grad(T* part, const T* shifted, const T* dy, const T* dy_tail, const ConvGeometry g, bool first) {
  constexpr int L = gemm::kLanes<T>;
  const int K = g.filters, CRS = int(g.col_rows());
  std::size_t taps[128 + kGradTaps];  // C*R*S < 128 (is_shallow)
  for (int t = 0; t < int(grad_taps(g)); ++t) taps[t] = tap_offset(g, std::min(t, CRS - 1));
  for (int k0 = 0; k0 < K; k0 += kGradFilters)
    for (int t0 = 0; t0 < CRS; t0 += kGradTaps)
      grad_tile(part + (k0 * grad_taps(g) + t0) * L, shifted, taps + t0, dy + std::size_t(k0) * g.out_pixels(),
                dy_tail + std::size_t(k0) * L, std::min(kGradFilters, K - k0), g, first);
}

// dy_tail (count, K, width): the last P % width pixels of each image's dY per filter, zero-padded
// to `width`, for the last, partial vector or tile of pixels.
template <class T>
void pad_last_pixels(T* dy_tail, const T* dy, int count, int width, const ConvGeometry g) {
  const int K = g.filters, P = int(g.out_pixels()), tail = P % width;
  for (int n = 0; n < count; ++n)
    for (int k = 0; k < K; ++k) {
      const T* src = dy + n * g.out_size() + std::size_t(k) * P + (P - tail);
      T* dst = dy_tail + (std::size_t(n) * K + k) * width;
      std::copy(src, src + tail, dst);
      std::fill(dst + tail, dst + width, T(0));
    }
}

}  // namespace

// Small output maps through im2col: one product per group of images (core/conv_groups.hpp).
bool runs_in_groups(const ConvGeometry& g) {
  return !is_shallow(g) && !is_dense_rows(g) && !is_pointwise(g) && g.out_pixels() <= conv_groups::kMaxPixels;
}

namespace {

// Winograd F(2x2,3x3) needs its transforms (per tile, a few adds per channel) to be small next to
// the 16 products over channels: from 32 channels in and out; and maps of even height and width,
// which 2x2 tiles cover exactly (7x7 takes 16 tiles for 49 outputs: ResNet-18's 256-channel layers
// ran 30-40% slower than direct, layer_profile --winograd). Off unless asked for: it rounds
// differently from direct convolution, and its gain here is small so far (bench/README.md).
constexpr int kWinogradMinChannels = 32;
bool winograd_allowed = false;

std::size_t direct_workspace_size(const ConvGeometry& g, int batch) {
  if (runs_in_groups(g)) return conv_groups::workspace_size(g, batch);
  const Layout l = layout(g);
  return l.chunk_base + std::size_t(conv_chunks(batch)) * l.chunk_size;
}

}  // namespace

void allow_winograd(bool allowed) { winograd_allowed = allowed; }

ConvAlgorithm choose_conv_algorithm(const ConvGeometry& g) {
  const bool pays = winograd::fits(g) && std::min(g.in_channels, g.filters) >= kWinogradMinChannels &&
                    g.out_h % 2 == 0 && g.out_w % 2 == 0;
  return winograd_allowed && pays ? ConvAlgorithm::winograd : ConvAlgorithm::direct;
}

std::size_t conv2d_workspace_size(const ConvGeometry& g, int batch, ConvAlgorithm a) {
  // The weight gradient runs direct in the same workspace.
  const std::size_t direct = direct_workspace_size(g, batch);
  return a == ConvAlgorithm::winograd ? std::max(direct, winograd::workspace_size(g, batch)) : direct;
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
                    int batch, ConvAlgorithm a) {
  if (a == ConvAlgorithm::winograd) return winograd::forward(out, workspace, in, weight, bias, g, batch);
  if (runs_in_groups(g)) return conv_groups::forward(out, workspace, in, weight, bias, g, batch);
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  const Layout l = layout(g);
  const bool from_image = forward_reads_image(g);
  T* packed_w = workspace + l.packed_w;
  T* weight_rows = workspace + l.weight_rows;
  T* bias_row = workspace + l.bias_row;
  if (from_image) {
    const std::size_t ldk = filters_ld(g);
    gemm::transpose(weight_rows, ldk, weight, CRS, K, CRS);  // in 8x8 blocks, not element by element
    for (int crs = 0; crs < CRS; ++crs) std::fill(weight_rows + crs * ldk + K, weight_rows + (crs + 1) * ldk, T(0));
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
      if (is_shallow(g)) {
        shift_copy(ws.columns, x, g);
        shallow_forward(y, packed_w, ws.columns, bias, g);
      } else if (is_pointwise(g)) {
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
  if (P % NP) pad_last_pixels(dy_tail, dy, count, NP, g);
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

// The chunk's weight gradient partial (+)= that of one image (first: the chunk's first image
// overwrites it), through im2row or the image itself (taps_tiles).
template <class T>
void weight_grad_of_image(const ChunkSpace::Of<T>& ws, const T* x, const T* dy, const ConvGeometry& g, bool first) {
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  if (weight_grad_reads_image(g)) {
    const std::size_t ldt = taps_ld(g);
    gemm::transpose(ws.packed_dy, ldt, dy, P, K, P);
    for (int p = 0; p < P; ++p) std::fill(ws.packed_dy + p * ldt + K, ws.packed_dy + (p + 1) * ldt, T(0));
    weight_grad_from_image(ws.weight_part, x, ws.packed_dy, g, first);
    return;
  }
  // weight_part (K, CRS) (+)= dY (K, P) * im2row (P, CRS)
  const std::size_t ld_crs = rows_ld(g);
  gemm::pack_rows(ws.packed_dy, dy, P, K, P);
  im2row(ws.columns, x, g, ld_crs);
  gemm::multiply(ws.weight_part, ld_crs, ws.packed_dy, ws.columns, ld_crs, K, CRS, P,
                 first ? gemm::Start::zero : gemm::Start::accumulate, static_cast<const T*>(nullptr), true);
}

// The chunk's weight and bias gradient partials from its `count` images (x, dy at the first).
template <class T>
void weight_grad_of_chunk(const ChunkSpace::Of<T>& ws, const T* x, const T* dy, int count, const ConvGeometry& g) {
  const int K = g.filters, P = int(g.out_pixels());
  if (weight_grad_shallow(g)) {
    for (int n = 0; n < count; ++n) {
      shift_copy(ws.columns, x + n * g.in_size(), g);
      if (P % gemm::kLanes<T>) pad_last_pixels(ws.dy_tail, dy + n * g.out_size(), 1, gemm::kLanes<T>, g);
      shallow_weight_grad(ws.weight_part, ws.columns, dy + n * g.out_size(), ws.dy_tail, g, n == 0);
    }
  } else {
    for (int n = 0; n < count; ++n) weight_grad_of_image(ws, x + n * g.in_size(), dy + n * g.out_size(), g, n == 0);
  }
  for (int n = 0; n < count; ++n)
    for (int k = 0; k < K; ++k) {
      const T sum = gemm::sum(dy + n * g.out_size() + std::size_t(k) * P, P);
      ws.bias_part[k] = n == 0 ? sum : ws.bias_part[k] + sum;
    }
}

// The input gradient of one image outside the is_dense_rows geometry.
template <class T>
void input_grad_of_image(T* dx, const ChunkSpace::Of<T>& ws, const T* dy, const T* packed_wt, const ConvGeometry& g) {
  const int P = int(g.out_pixels()), CRS = int(g.col_rows());
  if (is_pointwise(g)) {
    gemm::multiply(dx, P, packed_wt, dy, P, CRS, P, g.filters, gemm::Start::zero, static_cast<const T*>(nullptr), false);
    return;
  }
  // col_grad (CRS, P) = W^T (CRS, K) * dY (K, P), then scattered onto the image.
  const std::size_t ld_p = pixels_ld(g);
  gemm::multiply(ws.col_grad, ld_p, packed_wt, dy, P, CRS, P, g.filters, gemm::Start::zero,
                 static_cast<const T*>(nullptr), false);
  std::fill(dx, dx + g.in_size(), T(0));
  col2im_add_ld(dx, ws.col_grad, g, ld_p);
}

// dW (K, C*R*S) += the chunks' weight gradient partials, summed in chunk order; the same for the
// bias.
template <class T>
void add_chunk_partials(T* weight_grad, T* bias_grad, T* workspace, const Layout& l, int chunks,
                        const ConvGeometry& g) {
  const int K = g.filters, CRS = int(g.col_rows());
  auto part_of = [&](int c) { return ChunkSpace::at(workspace, l, c).weight_part; };
  if (bias_grad)
    for (int k = 0; k < K; ++k)
      for (int c = 0; c < chunks; ++c) bias_grad[k] += ChunkSpace::at(workspace, l, c).bias_part[k];
  if (weight_grad_shallow(g)) {
    // Lane partials: summed over the chunks, then over the lanes in order.
    constexpr int L = gemm::kLanes<T>;
    for (int k = 0; k < K; ++k)
      for (int crs = 0; crs < CRS; ++crs) {
        const std::size_t at = (k * grad_taps(g) + crs) * L;
        gemm::Vec<T> total = gemm::load(part_of(0) + at);
        for (int c = 1; c < chunks; ++c) total += gemm::load(part_of(c) + at);
        T sum = T(0);
        for (int j = 0; j < L; ++j) sum += total[j];
        weight_grad[std::size_t(k) * CRS + crs] += sum;
      }
    return;
  }
  if (weight_grad_reads_image(g)) {
    // Blocks of 16 patch elements by 64 filters: sum the part^T (CRS, ldT) blocks, then add them
    // transposed into dW (K, CRS).
    const std::size_t ldt = taps_ld(g);
    constexpr int kBlock = 16, kFilters = 64;
    parallel_for((CRS + kBlock - 1) / kBlock, 2.0 * kBlock * K * chunks, [&](std::size_t block) {
      const int i0 = int(block) * kBlock, rows = std::min(kBlock, CRS - i0);
      for (int k0 = 0; k0 < K; k0 += kFilters) {
        const int filters = std::min(kFilters, K - k0);
        alignas(64) T total[kBlock][kFilters];
        for (int c = 0; c < chunks; ++c) {
          const T* part = part_of(c) + std::size_t(i0) * ldt + k0;
          for (int i = 0; i < rows; ++i)
            for (int k = 0; k < filters; ++k) total[i][k] = (c ? total[i][k] : T(0)) + part[i * ldt + k];
        }
        for (int k = 0; k < filters; ++k)
          for (int i = 0; i < rows; ++i) weight_grad[std::size_t(k0 + k) * CRS + i0 + i] += total[i][k];
      }
    });
    return;
  }
  const std::size_t ld_crs = rows_ld(g);
  parallel_for(K, 2.0 * CRS * chunks, [&](std::size_t k) {
    T* __restrict dw = weight_grad + k * CRS;
    for (int c = 0; c < chunks; ++c) {
      const T* __restrict part = part_of(c) + k * ld_crs;
      for (int i = 0; i < CRS; ++i) dw[i] += part[i];
    }
  });
}

template <class T>
void conv2d_backward(T* in_grad, T* weight_grad, T* bias_grad, T* workspace, const T* out_grad, const T* in,
                     const T* weight, const ConvGeometry& g, int batch, ConvAlgorithm a) {
  if (a == ConvAlgorithm::winograd) {
    conv2d_backward(static_cast<T*>(nullptr), weight_grad, bias_grad, workspace, out_grad, in, weight, g, batch);
    if (in_grad) winograd::input_grad(in_grad, workspace, out_grad, weight, g, batch);
    return;
  }
  if (runs_in_groups(g))
    return conv_groups::backward(in_grad, weight_grad, bias_grad, workspace, out_grad, in, weight, g, batch);
  const int K = g.filters, P = int(g.out_pixels()), CRS = int(g.col_rows());
  const Layout l = layout(g);
  const int chunks = conv_chunks(batch);
  T* packed_wt = workspace + l.packed_wt;
  if (in_grad && is_dense_rows(g)) pack_transposed_by_tap(packed_wt, weight, g);
  else if (in_grad) gemm::pack_columns(packed_wt, weight, CRS, CRS, K);
  const double flops = (in_grad ? 4.0 : 2.0) * K * P * CRS * kConvChunk;
  parallel_for(chunks, flops, [&](std::size_t chunk) {
    const auto ws = ChunkSpace::at(workspace, l, int(chunk));
    const int begin = int(chunk) * kConvChunk, end = std::min(batch, begin + kConvChunk);
    weight_grad_of_chunk(ws, in + begin * g.in_size(), out_grad + begin * g.out_size(), end - begin, g);
    if (!in_grad) return;
    if (is_dense_rows(g))
      input_grad_scattered(in_grad + begin * g.in_size(), out_grad + begin * g.out_size(), end - begin, packed_wt,
                           ws.dy_tail, g);
    else
      for (int n = begin; n < end; ++n)
        input_grad_of_image(in_grad + n * g.in_size(), ws, out_grad + n * g.out_size(), packed_wt, g);
  });
  add_chunk_partials(weight_grad, bias_grad, workspace, l, chunks, g);
}

#define MPICNN_INSTANTIATE_CONV(T)                                                                       \
  template void conv2d_forward(T*, T*, const T*, const T*, const T*, const ConvGeometry&, int, ConvAlgorithm); \
  template void conv2d_backward(T*, T*, T*, T*, const T*, const T*, const T*, const ConvGeometry&, int,        \
                                ConvAlgorithm);
MPICNN_INSTANTIATE_CONV(float)
MPICNN_INSTANTIATE_CONV(double)

}  // namespace mpicnn::core
