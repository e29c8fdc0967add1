#pragma once
// Internal to core's kernels: a small register-blocked matrix product for the convolution
// kernels, written with GCC vector extensions so the same code serves float (16 lanes per 64-byte
// vector) and double (8 lanes; the gradient checks). Why not OpenBLAS here: a convolution's GEMMs
// are small (per image 64x64x800 in the reference CNN), and OpenBLAS re-packs the weight matrix on
// every call; here the weights are packed once per layer call and the im2col/im2row buffers are
// written directly in the layout the inner loop reads.
//
// C (M,N) = A (M,K) * B (K,N), with
//   A packed in panels of kRows rows: panel i holds rows [i*kRows, i*kRows + kRows) as (K, kRows),
//     rows past M zero (pack_rows / pack_columns write this layout);
//   B row-major (K, N) with leading dimension ldb, read along N in tiles of kCols columns;
//   C row-major (M, N) with leading dimension ldc.
// Every C element is a sum over k in increasing order, whatever the blocking: results depend on the
// sizes alone.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mpicnn::core::gemm {

template <class T>
struct Simd;
template <>
struct Simd<float> {
  typedef float Vec __attribute__((vector_size(64)));
  typedef float Unaligned __attribute__((vector_size(64), aligned(4), may_alias));
  typedef float Half __attribute__((vector_size(32), aligned(4), may_alias));
};
template <>
struct Simd<double> {
  typedef double Vec __attribute__((vector_size(64)));
  typedef double Unaligned __attribute__((vector_size(64), aligned(8), may_alias));
  typedef double Half __attribute__((vector_size(32), aligned(8), may_alias));
};
template <class T>
using Vec = typename Simd<T>::Vec;
template <class T>
constexpr int kLanes = int(64 / sizeof(T));

template <class T>
[[gnu::always_inline]] inline Vec<T> load(const T* p) {
  return *reinterpret_cast<const typename Simd<T>::Unaligned*>(p);
}
template <class T>
[[gnu::always_inline]] inline void store(T* p, Vec<T> v) {
  *reinterpret_cast<typename Simd<T>::Unaligned*>(p) = v;
}
// Not `Vec<T>{} + x`: adding zero is not an identity for -0.0, so that would cost an add.
[[gnu::always_inline]] inline Vec<float> splat(float x) { return Vec<float>{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
[[gnu::always_inline]] inline Vec<double> splat(double x) { return Vec<double>{x, x, x, x, x, x, x, x}; }

constexpr int kRows = 8;        // rows of A (and C) per register tile
constexpr int kColVecs = 2;     // vectors of B (and C) per register tile row
constexpr int kColPad = 32;     // column padding that covers a tile for float and double
constexpr int kDepthBlock = 128;  // k per block: a B tile (k x cols) stays in L1 across A's panels

template <class T>
constexpr int kCols = kColVecs * kLanes<T>;

inline std::size_t round_up(std::size_t n, std::size_t m) { return (n + m - 1) / m * m; }
inline std::size_t packed_size(int m, int k) { return round_up(m, kRows) * std::size_t(k); }
// Workspace parts start 64-byte aligned for float and double.
inline std::size_t aligned(std::size_t n) { return round_up(n, 16); }

// Copies n elements (short runs: image rows, filter rows) without a library call per run.
template <class T>
[[gnu::always_inline]] inline void copy_short(T* __restrict dst, const T* __restrict src, int n) {
  using H = typename Simd<T>::Half;
  constexpr int h = int(32 / sizeof(T));
  int i = 0;
  for (; i + h <= n; i += h) *reinterpret_cast<H*>(dst + i) = *reinterpret_cast<const H*>(src + i);
  for (; i < n; ++i) dst[i] = src[i];
}
template <class T>
[[gnu::always_inline]] inline void add_short(T* __restrict dst, const T* __restrict src, int n) {
  using H = typename Simd<T>::Half;
  constexpr int h = int(32 / sizeof(T));
  int i = 0;
  for (; i + h <= n; i += h)
    *reinterpret_cast<H*>(dst + i) = *reinterpret_cast<const H*>(dst + i) + *reinterpret_cast<const H*>(src + i);
  for (; i < n; ++i) dst[i] += src[i];
}

// Sum of n elements in a fixed order (lane-wise partial sums, then the lanes in order). Four
// chains of vector adds: two were latency-bound (the bias gradient of conv1, 32 x 576 per image).
template <class T>
T sum(const T* __restrict p, int n) {
  constexpr int L = kLanes<T>;
  Vec<T> a0{}, a1{}, a2{}, a3{};
  int i = 0;
  for (; i + 4 * L <= n; i += 4 * L)
    a0 += load(p + i), a1 += load(p + i + L), a2 += load(p + i + 2 * L), a3 += load(p + i + 3 * L);
  for (; i + L <= n; i += L) a0 += load(p + i);
  a0 += a1, a2 += a3, a0 += a2;
  T total = T(0);
  for (int j = 0; j < L; ++j) total += a0[j];
  for (; i < n; ++i) total += p[i];
  return total;
}

// dst (cols, rows) = transpose of src (rows, cols), in 8x8 blocks of vector shuffles. Blocks run
// down a column of blocks first, so the halves of each destination cache line are written back to
// back (and each source line is read twice in a row).
template <class T>
void transpose(T* __restrict dst, std::size_t ldd, const T* __restrict src, std::size_t lds, int rows, int cols) {
  typedef T V8 __attribute__((vector_size(8 * sizeof(T))));
  typedef T V8u __attribute__((vector_size(8 * sizeof(T)), aligned(sizeof(T)), may_alias));
  using I = decltype(V8{} > V8{});
  const I lo1 = {0, 8, 1, 9, 2, 10, 3, 11}, hi1 = {4, 12, 5, 13, 6, 14, 7, 15};
  const I lo2 = {0, 1, 8, 9, 2, 3, 10, 11}, hi2 = {4, 5, 12, 13, 6, 7, 14, 15};
  const I lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  const int full_rows = rows / 8 * 8, full_cols = cols / 8 * 8;
  for (int j0 = 0; j0 < full_cols; j0 += 8)
    for (int i0 = 0; i0 < full_rows; i0 += 8) {
      V8 r[8], u[8], v[8];
      for (int i = 0; i < 8; ++i) r[i] = *reinterpret_cast<const V8u*>(src + (i0 + i) * lds + j0);
      for (int k = 0; k < 4; ++k) {
        u[2 * k] = __builtin_shuffle(r[2 * k], r[2 * k + 1], lo1);
        u[2 * k + 1] = __builtin_shuffle(r[2 * k], r[2 * k + 1], hi1);
      }
      // v[0..3]: rows 0-3, columns (0,1) (2,3) (4,5) (6,7); v[4..7]: the same for rows 4-7.
      for (int h = 0; h < 2; ++h) {
        v[4 * h + 0] = __builtin_shuffle(u[4 * h], u[4 * h + 2], lo2);
        v[4 * h + 1] = __builtin_shuffle(u[4 * h], u[4 * h + 2], hi2);
        v[4 * h + 2] = __builtin_shuffle(u[4 * h + 1], u[4 * h + 3], lo2);
        v[4 * h + 3] = __builtin_shuffle(u[4 * h + 1], u[4 * h + 3], hi2);
      }
      for (int k = 0; k < 4; ++k) {
        *reinterpret_cast<V8u*>(dst + (j0 + 2 * k) * ldd + i0) = __builtin_shuffle(v[k], v[4 + k], lo4);
        *reinterpret_cast<V8u*>(dst + (j0 + 2 * k + 1) * ldd + i0) = __builtin_shuffle(v[k], v[4 + k], hi4);
      }
    }
  for (int i = 0; i < full_rows; ++i)
    for (int j = full_cols; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
  for (int i = full_rows; i < rows; ++i)
    for (int j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

// Packs rows of a row-major matrix src (M,K), leading dimension lds, into kRows-row panels.
template <class T>
void pack_rows(T* __restrict packed, const T* __restrict src, std::size_t lds, int m, int k) {
  for (int p0 = 0; p0 < m; p0 += kRows) {
    T* panel = packed + std::size_t(p0) * k;
    const int rows = std::min(kRows, m - p0);
    for (int kk = 0; kk < k; ++kk) {
      for (int i = 0; i < rows; ++i) panel[kk * kRows + i] = src[(p0 + i) * lds + kk];
      for (int i = rows; i < kRows; ++i) panel[kk * kRows + i] = T(0);
    }
  }
}

// Packs the transpose of src (K,M) (leading dimension lds): A(m,k) = src(k,m).
template <class T>
void pack_columns(T* __restrict packed, const T* __restrict src, std::size_t lds, int m, int k) {
  for (int p0 = 0; p0 < m; p0 += kRows) {
    T* panel = packed + std::size_t(p0) * k;
    const int rows = std::min(kRows, m - p0);
    if (rows == kRows) {
      for (int kk = 0; kk < k; ++kk)
        for (int i = 0; i < kRows; ++i) panel[kk * kRows + i] = src[kk * lds + p0 + i];
    } else {
      for (int kk = 0; kk < k; ++kk)
        for (int i = 0; i < kRows; ++i) panel[kk * kRows + i] = i < rows ? src[kk * lds + p0 + i] : T(0);
    }
  }
}

enum class Start { zero, accumulate, row_bias };  // C tile starts at 0, at C, or at bias[row]

// A register tile of ROWS rows by VECS vectors of C.
template <class T, int ROWS, int VECS>
struct Block {
  Vec<T> acc[ROWS][VECS];
};
template <class T>
using Tile = Block<T, kRows, kColVecs>;

// t += A * B over k in [0, kc): A a panel (kc, ROWS), B rows of VECS vectors, ldb apart.
template <class T, int ROWS, int VECS>
[[gnu::always_inline]] inline void multiply_block(Block<T, ROWS, VECS>& t, int kc, const T* __restrict a,
                                                  const T* __restrict b, std::size_t ldb) {
  constexpr int L = kLanes<T>;
  for (int p = 0; p < kc; ++p) {
    Vec<T> bv[VECS];
#pragma GCC unroll 4
    for (int j = 0; j < VECS; ++j) bv[j] = load(b + p * ldb + j * L);
#pragma GCC unroll 16
    for (int i = 0; i < ROWS; ++i) {
      const Vec<T> ai = splat(a[p * ROWS + i]);
#pragma GCC unroll 4
      for (int j = 0; j < VECS; ++j) t.acc[i][j] += ai * bv[j];
    }
  }
}

// One C tile of `rows` x `cols` (at most kRows x kCols) over k in [0, kc).
// b_readable: B's rows can be read for a full kCols columns (padding); otherwise a partial tile's
// B columns are copied first.
template <class T>
void tile(T* c, std::size_t ldc, const T* a, const T* b, std::size_t ldb, int rows, int cols, int kc, Start start,
          const T* bias, bool b_readable) {
  constexpr int L = kLanes<T>, NR = kCols<T>;
  Tile<T> t;
  const bool full = rows == kRows && cols == NR;
  alignas(64) T c_local[kRows * NR];
  T* cc = c;
  std::size_t ldcc = ldc;
  if (!full) {
    cc = c_local, ldcc = NR;
    std::fill(c_local, c_local + kRows * NR, T(0));
    if (start == Start::accumulate)
      for (int i = 0; i < rows; ++i) std::copy(c + i * ldc, c + i * ldc + cols, c_local + i * NR);
  }
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kColVecs; ++j) {
      if (start == Start::zero) t.acc[i][j] = Vec<T>{};
      else if (start == Start::row_bias) t.acc[i][j] = splat(bias && i < rows ? bias[i] : T(0));
      else t.acc[i][j] = load(cc + i * ldcc + j * L);
    }
  if (cols == NR || b_readable) {
    multiply_block(t, kc, a, b, ldb);
  } else {
    alignas(64) T b_local[kDepthBlock * NR];
    for (int p = 0; p < kc; ++p) {
      std::copy(b + p * ldb, b + p * ldb + cols, b_local + p * NR);
      std::fill(b_local + p * NR + cols, b_local + (p + 1) * NR, T(0));
    }
    multiply_block(t, kc, a, b_local, NR);
  }
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < kColVecs; ++j) store(cc + i * ldcc + j * L, t.acc[i][j]);
  if (!full)
    for (int i = 0; i < rows; ++i) std::copy(c_local + i * NR, c_local + i * NR + cols, c + i * ldc);
}

// C = A*B (start zero), C += A*B (accumulate) or C = bias[row] + A*B (row_bias), see the top.
template <class T>
void multiply(T* c, std::size_t ldc, const T* a_packed, const T* b, std::size_t ldb, int m, int n, int k, Start start,
              const T* bias = nullptr, bool b_readable = false) {
  constexpr int NR = kCols<T>;
  const int blocks = std::max(1, (k + kDepthBlock - 1) / kDepthBlock);
  for (int blk = 0; blk < blocks; ++blk) {
    const int k0 = int(std::int64_t(k) * blk / blocks), k1 = int(std::int64_t(k) * (blk + 1) / blocks);
    const Start s = blk == 0 ? start : Start::accumulate;
    for (int n0 = 0; n0 < n; n0 += NR)
      for (int m0 = 0; m0 < m; m0 += kRows)
        tile(c + std::size_t(m0) * ldc + n0, ldc, a_packed + std::size_t(m0) * k + std::size_t(k0) * kRows,
             b + std::size_t(k0) * ldb + n0, ldb, std::min(kRows, m - m0), std::min(NR, n - n0), k1 - k0, s,
             bias ? bias + m0 : nullptr, b_readable);
  }
}

}  // namespace mpicnn::core::gemm
