#pragma once
// A 2D convolution problem for the kernel tests (test_conv_direct.cpp, test_winograd.cpp): random
// inputs rounded to float, the multiply-adds of the naive convolution, and guarded buffers.
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "core/kernels.hpp"
#include "direct_reference.hpp"

namespace mpicnn::core::conv_test {

struct ConvCase {
  std::string name;
  int C, H, W, K, R, S, stride, pad, batch;
  ConvGeometry geometry() const {
    return {C, H, W, K, R, S, stride, pad, (H + 2 * pad - R) / stride + 1, (W + 2 * pad - S) / stride + 1};
  }
};

// Test names show the case's name, not its bytes (which hold a pointer).
inline void PrintTo(const ConvCase& c, std::ostream* os) { *os << c.name; }

struct Problem {
  ConvGeometry g;
  int batch;
  std::vector<double> x, w, b, dy, dw0, db0;  // dw0, db0: gradients the backward pass adds to
  explicit Problem(const ConvCase& c)
      : g(c.geometry()), batch(c.batch), x(random_floats(batch * g.in_size(), 1)),
        w(random_floats(g.filters * g.col_rows(), 2)), b(random_floats(g.filters, 3)),
        dy(random_floats(batch * g.out_size(), 4)), dw0(random_floats(w.size(), 5)), db0(random_floats(b.size(), 6)) {}

  // Calls f(input index, output index, weight index) for every multiply-add of the convolution
  // whose input pixel lies inside the image (padding contributes no term).
  template <class F>
  void each_term(F&& f) const {
    for (int n = 0; n < batch; ++n)
      for (int k = 0; k < g.filters; ++k)
        for (int oh = 0; oh < g.out_h; ++oh)
          for (int ow = 0; ow < g.out_w; ++ow)
            for (int c = 0; c < g.in_channels; ++c)
              for (int r = 0; r < g.kernel_h; ++r)
                for (int s = 0; s < g.kernel_w; ++s) {
                  const int ih = oh * g.stride - g.pad + r, iw = ow * g.stride - g.pad + s;
                  if (ih < 0 || ih >= g.height || iw < 0 || iw >= g.width) continue;
                  const std::size_t xi = n * g.in_size() + (std::size_t(c) * g.height + ih) * g.width + iw;
                  const std::size_t yi = n * g.out_size() + (std::size_t(k) * g.out_h + oh) * g.out_w + ow;
                  const std::size_t wi = ((std::size_t(k) * g.in_channels + c) * g.kernel_h + r) * g.kernel_w + s;
                  f(xi, yi, wi);
                }
  }

  int filters() const { return g.filters; }
  std::size_t pixels() const { return g.out_pixels(); }
};

// Buffers carry a guard zone after their end that the kernels must leave alone.
inline constexpr std::size_t kGuard = 256;
template <class T>
std::vector<T> guarded(std::size_t n, const std::vector<double>& init = {}) {
  std::vector<T> v(n + kGuard, T(-7.25));
  for (std::size_t i = 0; i < init.size(); ++i) v[i] = T(init[i]);
  return v;
}
template <class T>
void expect_guard_intact(const std::vector<T>& v, const char* what) {
  for (std::size_t i = v.size() - kGuard; i < v.size(); ++i)
    if (v[i] != T(-7.25)) return (void)(ADD_FAILURE() << what << " written past its end");
}
template <class T>
std::vector<T> as(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

}  // namespace mpicnn::core::conv_test
