#pragma once
// Internal to core's convolution kernels: the copies between an image and the GEMM operands
// (im2col, im2row, col2im), with leading dimensions chosen by the caller.
#include <algorithm>
#include <cstddef>

#include "gemm.hpp"
#include "kernels.hpp"

namespace mpicnn::core::im2col {

// Copy runs of im2col are written 8 (float) or 4 (double) elements at a time; a run that is
// shorter spills into the next run's place, which is written afterwards. The last run of a buffer
// spills past it: every buffer has this much slack.
constexpr std::size_t kSlack = 64;
// The longest such run: 32 bytes, 8 floats.
constexpr std::size_t kMaxRun = 8;

// Output columns ow whose input column ow*stride - pad + s lies in [0, W).
struct ColumnRange {
  int begin, end;
};
inline ColumnRange inside_columns(const ConvGeometry& g, int s) {
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
// Only the rows of channels [c_begin, c_end) are written (c_end < 0: to the last channel).
template <class T>
void im2col_ld(T* col, const T* image, const ConvGeometry g, std::size_t ld, int c_begin = 0, int c_end = -1) {
  const int OH = g.out_h, OW = g.out_w;
  const T* image_end = image + g.in_size();
  constexpr int kRun = int(32 / sizeof(T));
  const ColumnRanges inside(g);
  for (int c = c_begin; c < (c_end < 0 ? g.in_channels : c_end); ++c)
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
        // An over-long run (kRun elements for S) spills into the runs after it in the same row,
        // written later, or into the row's padding past C*R*S. It must stay inside the row's ld
        // elements: the next row is already written, and a spill can reach more than one run
        // ahead (S = 3 with kRun = 8: two runs), so "not the row's last run" is not enough (with
        // ld = C*R*S, e.g. 64 channels of 3x3, the run before the last overwrote the next row's
        // first taps: ResNet-18's weight gradients were off by 10-40%).
        if (S <= kRun && offset + kRun <= int(ld) && src + (ow_hi - ow_lo - 1) * g.stride + kRun <= image_end) {
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

}  // namespace mpicnn::core::im2col
