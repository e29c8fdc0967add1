#pragma once
// Central-difference gradient checking in double precision, shared by the kernel tests.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/rng.hpp"

namespace mpicnn::core {

using Vec = std::vector<double>;

inline Vec random_vec(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  Vec v(n);
  for (auto& x : v) x = rng.uniform(-scale, scale);
  return v;
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks analytic gradients of L(x) = <f(x), r> against (L(x+h) - L(x-h)) / 2h for every element
// of `x` that `skip` does not exclude. Relative error: |a - n| / max(1, |a|, |n|).
inline void expect_gradient(const std::function<Vec(const Vec&)>& f, Vec x, const Vec& analytic, const Vec& r,
                     const std::function<bool(const Vec& plus, const Vec& minus, std::size_t)>& skip = {}) {
  constexpr double h = 1e-6, tolerance = 1e-6;
  ASSERT_EQ(x.size(), analytic.size());
  int checked = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const Vec plus = x;
    const double up = dot(f(x), r);
    x[i] = keep - h;
    const Vec minus = x;
    const double down = dot(f(x), r);
    x[i] = keep;
    if (skip && skip(plus, minus, i)) continue;
    const double numeric = (up - down) / (2 * h);
    const double error = std::abs(analytic[i] - numeric) / std::max({1.0, std::abs(analytic[i]), std::abs(numeric)});
    EXPECT_LT(error, tolerance) << "element " << i << ": analytic " << analytic[i] << " numeric " << numeric;
    ++checked;
  }
  EXPECT_GT(checked, int(x.size()) / 2) << "too many points skipped";
}

}  // namespace mpicnn::core
