// 3D max and average pooling, parallel over samples (each sample's result is computed alone).
#include <algorithm>
#include <limits>

#include "kernels.hpp"
#include "parallel.hpp"
#include "volume_kernels.hpp"

namespace mpicnn::core {
namespace {

// The window of output (od,oh,ow) clipped to the input: [begin, end) per axis.
struct Window {
  Extent3 begin, end;
};
Window window_at(const Pool3dGeometry& g, int od, int oh, int ow) {
  const int d0 = od * g.stride.d - g.pad.d, h0 = oh * g.stride.h - g.pad.h, w0 = ow * g.stride.w - g.pad.w;
  return {{std::max(d0, 0), std::max(h0, 0), std::max(w0, 0)},
          {std::min(d0 + g.window.d, g.in.d), std::min(h0 + g.window.h, g.in.h), std::min(w0 + g.window.w, g.in.w)}};
}

// Calls f(output index, window, channel's first input index) for every output of one sample.
template <class F>
void each_output(const Pool3dGeometry& g, F&& f) {
  std::size_t o = 0;
  for (int c = 0; c < g.channels; ++c) {
    const std::size_t base = std::size_t(c) * g.in.volume();
    for (int od = 0; od < g.out.d; ++od)
      for (int oh = 0; oh < g.out.h; ++oh)
        for (int ow = 0; ow < g.out.w; ++ow, ++o) f(o, window_at(g, od, oh, ow), base);
  }
}

// Calls f(input index) over a window in (d,h,w) scan order.
template <class F>
void each_in_window(const Pool3dGeometry& g, const Window& win, std::size_t base, F&& f) {
  for (int d = win.begin.d; d < win.end.d; ++d)
    for (int h = win.begin.h; h < win.end.h; ++h) {
      const std::size_t line = base + (std::size_t(d) * g.in.h + h) * g.in.w;
      for (int w = win.begin.w; w < win.end.w; ++w) f(line + w);
    }
}

double window_flops(const Pool3dGeometry& g) { return double(g.out_size()) * g.window.volume(); }

}  // namespace

template <class T>
void maxpool3d_forward(T* out, std::int32_t* argmax, const T* in, const Pool3dGeometry& g, int batch, bool relu) {
  parallel_for(batch, window_flops(g), [&](std::size_t n) {
    const T* x = in + n * g.in_size();
    T* y = out + n * g.out_size();
    std::int32_t* arg = argmax + n * g.out_size();
    each_output(g, [&](std::size_t o, const Window& win, std::size_t base) {
      T best = -std::numeric_limits<T>::infinity();
      std::int32_t best_index = -1;
      each_in_window(g, win, base, [&](std::size_t i) {
        if (x[i] > best || best_index < 0) best = x[i], best_index = std::int32_t(i);
      });
      y[o] = relu && !(best > T(0)) ? T(0) : best;
      arg[o] = best_index;
    });
  });
}

template <class T>
void maxpool3d_backward(T* in_grad, const T* out_grad, const std::int32_t* argmax, const Pool3dGeometry& g,
                        int batch, const T* relu_out) {
  parallel_for(batch, double(g.in_size()), [&](std::size_t n) {
    scatter_max_gradient(in_grad + n * g.in_size(), g.in_size(), out_grad + n * g.out_size(), argmax + n * g.out_size(),
                         g.out_size(), relu_out ? relu_out + n * g.out_size() : nullptr);
  });
}

template <class T>
void avgpool3d_forward(T* out, const T* in, const Pool3dGeometry& g, int batch) {
  const T scale = T(1) / T(g.window.volume());
  parallel_for(batch, window_flops(g), [&](std::size_t n) {
    const T* x = in + n * g.in_size();
    T* y = out + n * g.out_size();
    each_output(g, [&](std::size_t o, const Window& win, std::size_t base) {
      T sum = T(0);
      each_in_window(g, win, base, [&](std::size_t i) { sum += x[i]; });
      y[o] = sum * scale;
    });
  });
}

template <class T>
void avgpool3d_backward(T* in_grad, const T* out_grad, const Pool3dGeometry& g, int batch) {
  const T scale = T(1) / T(g.window.volume());
  parallel_for(batch, window_flops(g), [&](std::size_t n) {
    T* dx = in_grad + n * g.in_size();
    const T* dy = out_grad + n * g.out_size();
    std::fill(dx, dx + g.in_size(), T(0));
    each_output(g, [&](std::size_t o, const Window& win, std::size_t base) {
      const T share = dy[o] * scale;
      each_in_window(g, win, base, [&](std::size_t i) { dx[i] += share; });
    });
  });
}

#define MPICNN_INSTANTIATE(T)                                                                                \
  template void maxpool3d_forward(T*, std::int32_t*, const T*, const Pool3dGeometry&, int, bool);            \
  template void maxpool3d_backward(T*, const T*, const std::int32_t*, const Pool3dGeometry&, int, const T*); \
  template void avgpool3d_forward(T*, const T*, const Pool3dGeometry&, int);                                 \
  template void avgpool3d_backward(T*, const T*, const Pool3dGeometry&, int);
MPICNN_INSTANTIATE(float)
MPICNN_INSTANTIATE(double)

}  // namespace mpicnn::core
