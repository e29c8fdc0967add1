#pragma once
// What the convolution tests share: exact reference values carrying the rounding budget of the sums
// that form them, the tolerance of test_conv_direct.cpp's header comment, and the thread-count check.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "core/parallel.hpp"
#include "core/rng.hpp"

namespace mpicnn::core {

// An exact value with the magnitude M and term count n of the sum that forms it.
struct Expected {
  std::vector<double> value, magnitude;
  std::vector<int> terms;
  explicit Expected(std::size_t n) : value(n, 0.0), magnitude(n, 0.0), terms(n, 0) {}
  void add(std::size_t i, double term) { value[i] += term, magnitude[i] += std::abs(term), ++terms[i]; }
};

template <class T>
double allowed_error(int terms, double magnitude) {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  if constexpr (sizeof(T) == sizeof(double)) return 2 * terms * u / (1 - terms * u) * magnitude;
  constexpr double lambda = 6.0;
  return lambda * std::sqrt(double(terms)) * u * magnitude;
}

template <class T>
void expect_close(const std::vector<T>& got, const Expected& want, const char* what) {
  int failures = 0;
  for (std::size_t i = 0; i < want.value.size() && failures < 5; ++i) {
    const double error = std::abs(double(got[i]) - want.value[i]);
    if (error <= allowed_error<T>(want.terms[i], want.magnitude[i])) continue;
    ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want.value[i] << " (error " << error
                  << ", allowed " << allowed_error<T>(want.terms[i], want.magnitude[i]) << ")";
    ++failures;
  }
}

// Inputs rounded to float, so the float and double kernels see the same numbers as the reference.
inline std::vector<double> random_floats(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = double(float(rng.uniform(-1.0, 1.0)));
  return v;
}

// A convolution's reference results from its multiply-adds. Problem has x, w, b, dy, dw0, db0 (the
// gradients backward adds to), `filters`, `pixels` (output positions per filter) and each_term(f),
// which calls f(input index, output index, weight index) for every term inside the input.
template <class Problem>
struct ConvReference {
  const Problem& p;
  Expected forward() const {
    Expected y(p.dy.size());
    for (std::size_t i = 0; i < y.value.size(); ++i) y.add(i, p.b[i / p.pixels() % p.filters()]);
    p.each_term([&](std::size_t xi, std::size_t yi, std::size_t wi) { y.add(yi, p.w[wi] * p.x[xi]); });
    return y;
  }
  Expected input_grad() const {
    Expected dx(p.x.size());
    p.each_term([&](std::size_t xi, std::size_t yi, std::size_t wi) { dx.add(xi, p.w[wi] * p.dy[yi]); });
    return dx;
  }
  Expected weight_grad() const {
    Expected dw(p.w.size());
    for (std::size_t i = 0; i < p.w.size(); ++i) dw.add(i, p.dw0[i]);
    p.each_term([&](std::size_t xi, std::size_t yi, std::size_t wi) { dw.add(wi, p.dy[yi] * p.x[xi]); });
    return dw;
  }
  Expected bias_grad() const {
    Expected db(p.b.size());
    for (int k = 0; k < p.filters(); ++k) db.add(k, p.db0[k]);
    for (std::size_t i = 0; i < p.dy.size(); ++i) db.add(i / p.pixels() % p.filters(), p.dy[i]);
    return db;
  }
};

// Results must not depend on the thread count (the trainer's determinism rests on it): run() returns
// every output of a computation, compared bitwise after runs on 1, 2 and 3 threads.
inline void expect_bitwise_on_one_two_and_three_threads(const std::function<std::vector<float>()>& run) {
  std::vector<float> results[3];
  for (int threads = 1; threads <= 3; ++threads) {
    set_threads(threads);
    results[threads - 1] = run();
  }
  const std::vector<float> &one = results[0], &two = results[1], &three = results[2];
  set_threads(0);
  ASSERT_EQ(one.size(), two.size());
  ASSERT_EQ(one.size(), three.size());
  EXPECT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(one.data(), three.data(), one.size() * sizeof(float)));
}

}  // namespace mpicnn::core
