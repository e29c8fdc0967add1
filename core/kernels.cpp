#include "kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "blas.hpp"
#include "parallel.hpp"
#include "tensor.hpp"

namespace mpicnn::core {
namespace {

// Per task, fixed for determinism: outputs of a dense layer (forward), inputs (input gradient),
// rows of the weight gradient.
constexpr int kDenseCols = 32, kDenseInputs = 256, kDenseRows = 16;
// Floats per task in element-wise loops.
constexpr std::size_t kElementChunk = 1 << 14;

using blas::gemm;

int blocks_of(int n, int block) { return (n + block - 1) / block; }

}  // namespace

// The common pooling window: 2x2, stride 2, no padding, vectorised eight windows at a time as two
// "quads" of four neighbouring windows in one row of windows (8 inputs from each of two input
// rows). Quads run over the sample in output order, across row and channel ends, so rows of 4 or
// 12 windows need no scalar tail. Branch-free: with random data a branch per comparison
// mispredicts half the time. Ties go to the first element in scan order, as in the general loop.
bool is_pool_2x2(const PoolGeometry& g) { return g.window == 2 && g.stride == 2 && g.pad == 0; }

template <class T>
struct Pool8 {
  typedef T V __attribute__((vector_size(8 * sizeof(T))));
  typedef T Vu __attribute__((vector_size(8 * sizeof(T)), aligned(sizeof(T)), may_alias));
  typedef std::int32_t I __attribute__((vector_size(32)));
  typedef std::int32_t Iu __attribute__((vector_size(32), aligned(4), may_alias));
  using Index = decltype(V{} > V{});  // eight signed integers of T's width
  static V load(const T* p) { return *reinterpret_cast<const Vu*>(p); }
  static void store(T* p, V v) { *reinterpret_cast<Vu*>(p) = v; }
  // The 4 values of quad a and the 4 of quad b, which follows it (`both`) or repeats it for a lone
  // last quad: one vector load, or exactly 4 + 4 elements, as nothing may follow the last quad of a
  // buffer. Vec: V for T, I for argmaxes.
  template <class Vec, class E>
  static Vec quads(const E* p, std::size_t a, bool both) {
    typedef Vec Unaligned __attribute__((aligned(alignof(E)), may_alias));
    if (both) return *reinterpret_cast<const Unaligned*>(p + a);
    E pair[8];
    std::memcpy(pair, p + a, 4 * sizeof(E));
    std::memcpy(pair + 4, p + a, 4 * sizeof(E));
    return *reinterpret_cast<const Unaligned*>(pair);
  }
};

// Quads of a sample in output order: where each starts (its top-left input's flat index, and its
// first output).
struct Quad {
  std::int32_t input;
  std::size_t output;
};
class QuadWalk {
 public:
  explicit QuadWalk(const PoolGeometry& g) : g_(g) {}
  Quad next() {
    const Quad q{row_input_ + 2 * ow_, output_};
    output_ += 4, ow_ += 4;
    if (ow_ == g_.out_w) {
      ow_ = 0;
      if (++oh_ == g_.out_h) oh_ = 0, ++c_;
      row_input_ = (c_ * g_.height + 2 * oh_) * g_.width;
    }
    return q;
  }

 private:
  const PoolGeometry& g_;
  std::int32_t c_ = 0, oh_ = 0, ow_ = 0, row_input_ = 0;
  std::size_t output_ = 0;
};

// Windows of quads a and b (b may repeat a for a lone last quad; then only a's half is stored).
template <class T>
void max_of_quads(T* y, std::int32_t* arg, const T* x, Quad a, Quad b, std::int32_t W, bool both, bool relu) {
  using P = Pool8<T>;
  const typename P::Index even = {0, 2, 4, 6, 8, 10, 12, 14}, odd = even + 1;
  const typename P::V t0 = P::load(x + a.input), t1 = P::load(x + b.input);
  const typename P::V u0 = P::load(x + a.input + W), u1 = P::load(x + b.input + W);
  const typename P::V p = __builtin_shuffle(t0, t1, even), q = __builtin_shuffle(t0, t1, odd);
  const typename P::V r = __builtin_shuffle(u0, u1, even), s = __builtin_shuffle(u0, u1, odd);
  const auto right0 = q > p, right1 = s > r;
  const typename P::V m0 = right0 ? q : p, m1 = right1 ? s : r;
  const auto lower = m1 > m0;
  const typename P::V zero{}, highest = lower ? m1 : m0;
  const typename P::V best = relu ? (highest > zero ? highest : zero) : highest;
  // Masks are -1/0: subtracting one adds one.
  const typename P::I i0 = -__builtin_convertvector(right0, typename P::I);
  const typename P::I i1 = W - __builtin_convertvector(right1, typename P::I);
  const typename P::I pick = __builtin_convertvector(lower, typename P::I);
  const typename P::I start = {a.input, a.input + 2, a.input + 4, a.input + 6,
                               b.input, b.input + 2, b.input + 4, b.input + 6};
  const typename P::I index = start + (pick ? i1 : i0);
  if (both) {  // b follows a in output order
    P::store(y + a.output, best);
    *reinterpret_cast<typename P::Iu*>(arg + a.output) = index;
    return;
  }
  for (int i = 0; i < 4; ++i) y[a.output + i] = best[i], arg[a.output + i] = index[i];
  if (both)
    for (int i = 0; i < 4; ++i) y[b.output + i] = best[4 + i], arg[b.output + i] = index[4 + i];
}

// Every input element lies in exactly one window (even sizes): each is written once, no zeroing.
template <class T>
void unpool_quads(T* dx, const T* dy, const std::int32_t* arg, Quad a, Quad b, std::int32_t W, bool both,
                  const T* relu_out) {
  using P = Pool8<T>;
  using V = typename P::V;
  const V zero{}, given = P::template quads<V>(dy, a.output, both);
  const V v = relu_out ? (P::template quads<V>(relu_out, a.output, both) > zero ? given : zero) : given;
  const typename P::I start = {a.input, a.input + 2, a.input + 4, a.input + 6,
                               b.input, b.input + 2, b.input + 4, b.input + 6};
  const typename P::I rel = P::template quads<typename P::I>(arg, a.output, both) - start;  // 0, 1, W or W+1
  const typename P::V e0 = __builtin_convertvector(rel == 0, typename P::Index) ? v : zero;
  const typename P::V o0 = __builtin_convertvector(rel == 1, typename P::Index) ? v : zero;
  const typename P::V e1 = __builtin_convertvector(rel == W, typename P::Index) ? v : zero;
  const typename P::V o1 = __builtin_convertvector(rel == W + 1, typename P::Index) ? v : zero;
  const typename P::Index lo = {0, 8, 1, 9, 2, 10, 3, 11}, hi = {4, 12, 5, 13, 6, 14, 7, 15};
  P::store(dx + a.input, __builtin_shuffle(e0, o0, lo));
  P::store(dx + a.input + W, __builtin_shuffle(e1, o1, lo));
  if (!both) return;
  P::store(dx + b.input, __builtin_shuffle(e0, o0, hi));
  P::store(dx + b.input + W, __builtin_shuffle(e1, o1, hi));
}

// Calls pair(a, b, both) for the quads of a sample two by two; a lone last quad comes as (a, a, false).
template <class Pair>
void for_each_quad_pair(const PoolGeometry& g, Pair&& pair) {
  const std::size_t quads = g.out_size() / 4;
  QuadWalk walk(g);
  for (std::size_t q = 0; q + 1 < quads; q += 2) {
    const Quad a = walk.next(), b = walk.next();
    pair(a, b, true);
  }
  if (quads % 2) {
    const Quad a = walk.next();
    pair(a, a, false);
  }
}

template <class T>
void maxpool_2x2_forward(T* y, std::int32_t* arg, const T* x, const PoolGeometry& g, bool relu) {
  for_each_quad_pair(g, [&](Quad a, Quad b, bool both) { max_of_quads(y, arg, x, a, b, g.width, both, relu); });
}

template <class T>
void maxpool_2x2_backward(T* dx, const T* dy, const std::int32_t* arg, const PoolGeometry& g, const T* relu_out) {
  for_each_quad_pair(g, [&](Quad a, Quad b, bool both) { unpool_quads(dx, dy, arg, a, b, g.width, both, relu_out); });
}

template <class T>
void maxpool_forward(T* out, std::int32_t* argmax, const T* in, const PoolGeometry& g, int batch, bool relu) {
  parallel_for(batch, double(g.out_size()) * g.window * g.window, [&](std::size_t n) {
    const T* x = in + n * g.in_size();
    T* y = out + n * g.out_size();
    std::int32_t* arg = argmax + n * g.out_size();
    if (is_pool_2x2(g) && g.out_w % 4 == 0) {
      maxpool_2x2_forward(y, arg, x, g, relu);
      return;
    }
    for (int c = 0; c < g.channels; ++c)
      for (int oh = 0; oh < g.out_h; ++oh)
        for (int ow = 0; ow < g.out_w; ++ow) {
          const int h0 = oh * g.stride - g.pad, w0 = ow * g.stride - g.pad;
          T best = -std::numeric_limits<T>::infinity();
          std::int32_t best_index = -1;
          for (int h = std::max(h0, 0); h < std::min(h0 + g.window, g.height); ++h)
            for (int w = std::max(w0, 0); w < std::min(w0 + g.window, g.width); ++w) {
              const std::int32_t index = (c * g.height + h) * g.width + w;
              if (x[index] > best || best_index < 0) best = x[index], best_index = index;
            }
          const std::size_t o = (std::size_t(c) * g.out_h + oh) * g.out_w + ow;
          y[o] = relu && !(best > T(0)) ? T(0) : best;
          arg[o] = best_index;
        }
  });
}

template <class T>
void maxpool_backward(T* in_grad, const T* out_grad, const std::int32_t* argmax, const PoolGeometry& g,
                      int batch, const T* relu_out) {
  parallel_for(batch, double(g.in_size()), [&](std::size_t n) {
    T* dx = in_grad + n * g.in_size();
    const T* dy = out_grad + n * g.out_size();
    const std::int32_t* arg = argmax + n * g.out_size();
    const T* y = relu_out ? relu_out + n * g.out_size() : nullptr;
    if (is_pool_2x2(g) && g.out_w % 4 == 0 && g.height == 2 * g.out_h && g.width == 2 * g.out_w) {
      maxpool_2x2_backward(dx, dy, arg, g, y);
      return;
    }
    scatter_max_gradient(dx, g.in_size(), dy, arg, g.out_size(), y);
  });
}

template <class T>
void avgpool_forward(T* out, const T* in, const PoolGeometry& g, int batch) {
  const T scale = T(1) / T(g.window * g.window);
  parallel_for(batch, double(g.out_size()) * g.window * g.window, [&](std::size_t n) {
    const T* x = in + n * g.in_size();
    T* y = out + n * g.out_size();
    for (int c = 0; c < g.channels; ++c)
      for (int oh = 0; oh < g.out_h; ++oh)
        for (int ow = 0; ow < g.out_w; ++ow) {
          const int h0 = oh * g.stride - g.pad, w0 = ow * g.stride - g.pad;
          T sum = T(0);
          for (int h = std::max(h0, 0); h < std::min(h0 + g.window, g.height); ++h)
            for (int w = std::max(w0, 0); w < std::min(w0 + g.window, g.width); ++w)
              sum += x[(c * g.height + h) * g.width + w];
          y[(std::size_t(c) * g.out_h + oh) * g.out_w + ow] = sum * scale;
        }
  });
}

template <class T>
void avgpool_backward(T* in_grad, const T* out_grad, const PoolGeometry& g, int batch) {
  const T scale = T(1) / T(g.window * g.window);
  parallel_for(batch, double(g.out_size()) * g.window * g.window, [&](std::size_t n) {
    T* dx = in_grad + n * g.in_size();
    const T* dy = out_grad + n * g.out_size();
    std::fill(dx, dx + g.in_size(), T(0));
    for (int c = 0; c < g.channels; ++c)
      for (int oh = 0; oh < g.out_h; ++oh)
        for (int ow = 0; ow < g.out_w; ++ow) {
          const int h0 = oh * g.stride - g.pad, w0 = ow * g.stride - g.pad;
          const T share = dy[(std::size_t(c) * g.out_h + oh) * g.out_w + ow] * scale;
          for (int h = std::max(h0, 0); h < std::min(h0 + g.window, g.height); ++h)
            for (int w = std::max(w0, 0); w < std::min(w0 + g.window, g.width); ++w)
              dx[(c * g.height + h) * g.width + w] += share;
        }
  });
}

// Split over blocks of outputs (and of inputs for the input gradient), not over samples: the
// exact gradient sum feeds micro-batches of 16 samples, one block of rows, which would leave a
// second thread idle.
template <class T>
void dense_forward(T* out, const T* in, const T* weight, const T* bias, int batch, int inputs,
                   int outputs) {
  parallel_for(blocks_of(outputs, kDenseCols), 2.0 * kDenseCols * inputs * batch, [&](std::size_t block) {
    const int o0 = int(block) * kDenseCols, cols = std::min(kDenseCols, outputs - o0);
    for (int n = 0; n < batch; ++n)
      for (int o = o0; o < o0 + cols; ++o) out[std::size_t(n) * outputs + o] = bias ? bias[o] : T(0);
    gemm(CblasNoTrans, CblasTrans, batch, cols, inputs, T(1), in, inputs, weight + std::size_t(o0) * inputs, inputs,
         T(1), out + o0, outputs);
  });
}

template <class T>
void dense_backward(T* in_grad, T* weight_grad, T* bias_grad, const T* out_grad, const T* in,
                    const T* weight, int batch, int inputs, int outputs) {
  if (in_grad) {
    parallel_for(blocks_of(inputs, kDenseInputs), 2.0 * kDenseInputs * outputs * batch, [&](std::size_t block) {
      const int i0 = int(block) * kDenseInputs, cols = std::min(kDenseInputs, inputs - i0);
      gemm(CblasNoTrans, CblasNoTrans, batch, cols, outputs, T(1), out_grad, outputs, weight + i0, inputs, T(0),
           in_grad + i0, inputs);
    });
  }
  parallel_for(blocks_of(outputs, kDenseRows), 2.0 * kDenseRows * inputs * batch, [&](std::size_t block) {
    const int o0 = int(block) * kDenseRows, rows = std::min(kDenseRows, outputs - o0);
    gemm(CblasTrans, CblasNoTrans, rows, inputs, batch, T(1), out_grad + o0, outputs, in, inputs,
                T(1), weight_grad + std::size_t(o0) * inputs, inputs);
  });
  if (bias_grad)
    for (int n = 0; n < batch; ++n)
      for (int o = 0; o < outputs; ++o) bias_grad[o] += out_grad[std::size_t(n) * outputs + o];
}

template <class T>
void activation_forward(T* out, const T* in, std::size_t n, Activation kind, T slope) {
  parallel_for((n + kElementChunk - 1) / kElementChunk, 4.0 * kElementChunk, [&](std::size_t chunk) {
    const std::size_t begin = chunk * kElementChunk, end = std::min(n, begin + kElementChunk);
    // Local restrict pointers: the captured ones may alias as far as the compiler knows.
    T* __restrict y = out;
    const T* __restrict x = in;
    switch (kind) {
      case Activation::relu:
        for (std::size_t i = begin; i < end; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
        break;
      case Activation::leaky_relu:
        for (std::size_t i = begin; i < end; ++i) y[i] = x[i] > T(0) ? x[i] : slope * x[i];
        break;
      case Activation::sigmoid:
        for (std::size_t i = begin; i < end; ++i) y[i] = T(1) / (T(1) + std::exp(-x[i]));
        break;
      case Activation::tanh:
        for (std::size_t i = begin; i < end; ++i) y[i] = std::tanh(x[i]);
        break;
    }
  });
}

template <class T>
void activation_backward(T* in_grad, const T* out_grad, const T* in, const T* out, std::size_t n,
                         Activation kind, T slope) {
  parallel_for((n + kElementChunk - 1) / kElementChunk, 4.0 * kElementChunk, [&](std::size_t chunk) {
    const std::size_t begin = chunk * kElementChunk, end = std::min(n, begin + kElementChunk);
    T* __restrict dx = in_grad;
    const T* __restrict dy = out_grad;
    const T* __restrict x = in;
    const T* __restrict y = out;
    switch (kind) {
      case Activation::relu:
        for (std::size_t i = begin; i < end; ++i) dx[i] = y[i] > T(0) ? dy[i] : T(0);
        break;
      case Activation::leaky_relu:
        for (std::size_t i = begin; i < end; ++i) dx[i] = x[i] > T(0) ? dy[i] : slope * dy[i];
        break;
      case Activation::sigmoid:
        for (std::size_t i = begin; i < end; ++i) dx[i] = dy[i] * y[i] * (T(1) - y[i]);
        break;
      case Activation::tanh:
        for (std::size_t i = begin; i < end; ++i) dx[i] = dy[i] * (T(1) - y[i] * y[i]);
        break;
    }
  });
}

#define MPICNN_INSTANTIATE(T)                                                                                    \
  template void maxpool_forward(T*, std::int32_t*, const T*, const PoolGeometry&, int, bool);                    \
  template void maxpool_backward(T*, const T*, const std::int32_t*, const PoolGeometry&, int, const T*);         \
  template void avgpool_forward(T*, const T*, const PoolGeometry&, int);                                         \
  template void avgpool_backward(T*, const T*, const PoolGeometry&, int);                                        \
  template void dense_forward(T*, const T*, const T*, const T*, int, int, int);                                  \
  template void dense_backward(T*, T*, T*, const T*, const T*, const T*, int, int, int);                         \
  template void activation_forward(T*, const T*, std::size_t, Activation, T);                                   \
  template void activation_backward(T*, const T*, const T*, const T*, std::size_t, Activation, T);
MPICNN_INSTANTIATE(float)
MPICNN_INSTANTIATE(double)

}  // namespace mpicnn::core
