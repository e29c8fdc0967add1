#include "metric_losses.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "embedding_kernels.hpp"
#include "errors.hpp"

namespace mpicnn::core {
namespace {

// phi(c) and d(phi)/dc for the label's cosine c.
struct Phi {
  double value, slope;
};

Phi margin_phi(double c, MarginKind kind, double m) {
  if (kind == MarginKind::cosface) return {c - m, 1.0};
  if (c <= std::cos(M_PI - m)) return {c - m * std::sin(m), 1.0};
  const double sin_theta = std::sqrt(std::max(0.0, 1 - c * c));
  // At c = 1 (theta = 0) the slope is unbounded; the sample is then as right as it can be and
  // only the sin-free part is kept.
  return {c * std::cos(m) - sin_theta * std::sin(m), std::cos(m) + (sin_theta > 0 ? c * std::sin(m) / sin_theta : 0.0)};
}

int checked_label(const std::int32_t* labels, int n, int classes) {
  const int label = labels[n];
  if (label < 0 || label >= classes)
    throw ShapeError("label " + std::to_string(label) + " is outside [0, " + std::to_string(classes) + ")");
  return label;
}

double checked_cosine(float value, MarginKind kind) {
  if (!(std::abs(value) <= 1.001f))
    throw ShapeError(std::string("loss '") + (kind == MarginKind::arcface ? "arcface" : "cosface") +
                     "' needs cosines in [-1, 1] (end model.spec with cosine(classes)), got an output of " +
                     std::to_string(value));
  return std::clamp(double(value), -1.0, 1.0);
}

}  // namespace

void margin_scores(double* z, double* slope, const float* cosines, const std::int32_t* labels, const MarginBlock& b,
                   int batch) {
  for (int n = 0; n < batch; ++n) {
    const float* c = cosines + std::size_t(n) * b.rows;
    double* row = z + std::size_t(n) * b.rows;
    const int label = checked_label(labels, n, int(b.classes)) - b.first;
    for (int k = 0; k < b.rows; ++k) row[k] = b.scale * checked_cosine(c[k], b.kind);
    if (label < 0 || label >= b.rows) continue;
    const Phi phi = margin_phi(std::clamp(double(c[label]), -1.0, 1.0), b.kind, b.margin);
    row[label] = b.scale * phi.value;
    slope[n] = phi.slope;
  }
}

namespace {
// Bits below 1 of the grid of exp terms: `classes` terms of at most 1 stay below 2^62.
int exp_sum_shift(long classes) { return 62 - int(std::bit_width(std::uint64_t(std::max(1L, classes) - 1))); }
}  // namespace

std::int64_t exp_sum_on_grid(const double* z, int rows, double top, long classes) {
  const double scale = std::ldexp(1.0, exp_sum_shift(classes));
  std::int64_t sum = 0;
  for (int k = 0; k < rows; ++k) sum += static_cast<std::int64_t>(std::exp(z[k] - top) * scale);
  return sum;
}

double exp_sum_value(std::int64_t sum, long classes) { return std::ldexp(double(sum), -exp_sum_shift(classes)); }

void margin_gradients(float* grad, const double* z, const double* log_total, const double* slope,
                      const std::int32_t* labels, const MarginBlock& b, int batch) {
  for (int n = 0; n < batch; ++n) {
    const double* row = z + std::size_t(n) * b.rows;
    float* g = grad + std::size_t(n) * b.rows;
    const int label = labels[n] - b.first;
    for (int k = 0; k < b.rows; ++k) {
      const double p = std::exp(row[k] - log_total[n]);
      g[k] = float(k == label ? b.scale * (p - 1) * slope[n] : b.scale * p);
    }
  }
}

LossSum margin_softmax_loss(float* grad, const float* cosines, const std::int32_t* labels, MarginKind kind,
                            double scale, double margin, int batch, int classes) {
  const MarginBlock block{kind, scale, margin, classes, 0, classes};
  std::vector<double> z(std::size_t(batch) * classes), slope(std::size_t(batch), 1.0), log_total(static_cast<std::size_t>(batch));
  margin_scores(z.data(), slope.data(), cosines, labels, block, batch);
  LossSum result;
  for (int n = 0; n < batch; ++n) {
    const double* row = z.data() + std::size_t(n) * classes;
    const double top = *std::max_element(row, row + classes);
    log_total[n] = std::log(exp_sum_value(exp_sum_on_grid(row, classes, top, classes), classes)) + top;
    result.sum += log_total[n] - row[labels[n]];
    const float* c = cosines + std::size_t(n) * classes;
    if (std::max_element(c, c + classes) - c == labels[n]) result.correct += 1;
  }
  if (grad) margin_gradients(grad, z.data(), log_total.data(), slope.data(), labels, block, batch);
  result.normalizer = batch;
  return result;
}

namespace {

// Distances between the normalised embeddings u (N,D), row-major (N,N); 0 on the diagonal.
std::vector<double> pairwise_distances(const std::vector<double>& u, int batch, int dim) {
  std::vector<double> d(std::size_t(batch) * batch, 0.0);
  for (int i = 0; i < batch; ++i)
    for (int j = i + 1; j < batch; ++j) {
      double squares = 0;
      for (int k = 0; k < dim; ++k) {
        const double diff = u[std::size_t(i) * dim + k] - u[std::size_t(j) * dim + k];
        squares += diff * diff;
      }
      d[std::size_t(i) * batch + j] = d[std::size_t(j) * batch + i] = std::sqrt(squares);
    }
  return d;
}

// Adds w * d(d(i,j))/du into du (N,D): (u_i - u_j) / d for i, the opposite for j.
void add_distance_gradient(std::vector<double>& du, const std::vector<double>& u, const std::vector<double>& d, int i,
                           int j, double w, int batch, int dim) {
  const double distance = d[std::size_t(i) * batch + j];
  if (distance == 0) return;  // identical embeddings: no direction (PyTorch's cdist gives 0 too)
  for (int k = 0; k < dim; ++k) {
    const double step = w * (u[std::size_t(i) * dim + k] - u[std::size_t(j) * dim + k]) / distance;
    du[std::size_t(i) * dim + k] += step;
    du[std::size_t(j) * dim + k] -= step;
  }
}

}  // namespace

LossSum triplet_loss(float* grad, const float* embeddings, const std::int32_t* labels, double margin, Mining mining,
                     int batch, int dim) {
  const std::vector<double> x(embeddings, embeddings + std::size_t(batch) * dim);
  std::vector<double> u(x.size()), norms(x.size() / std::size_t(dim));
  l2_normalize_forward(u.data(), norms.data(), x.data(), batch, dim);
  const std::vector<double> d = pairwise_distances(u, batch, dim);
  std::vector<double> du(u.size(), 0.0);
  auto dist = [&](int i, int j) { return d[std::size_t(i) * batch + j]; };
  LossSum result;
  for (int a = 0; a < batch; ++a) {
    int nearest = -1;
    for (int j = 0; j < batch; ++j)
      if (j != a && (nearest < 0 || dist(a, j) < dist(a, nearest))) nearest = j;
    if (nearest >= 0 && labels[nearest] == labels[a]) result.correct += 1;
    std::vector<int> positives, negatives;
    for (int j = 0; j < batch; ++j)
      if (j != a) (labels[j] == labels[a] ? positives : negatives).push_back(j);
    if (positives.empty() || negatives.empty()) continue;
    if (mining == Mining::batch_hard) {
      // The first of equal distances, as torch.max / torch.min return.
      int p = positives[0], n = negatives[0];
      for (int j : positives) if (dist(a, j) > dist(a, p)) p = j;
      for (int j : negatives) if (dist(a, j) < dist(a, n)) n = j;
      const double hinge = margin + dist(a, p) - dist(a, n);
      if (hinge <= 0) continue;
      result.sum += hinge;
      add_distance_gradient(du, u, d, a, p, 1.0, batch, dim);
      add_distance_gradient(du, u, d, a, n, -1.0, batch, dim);
      continue;
    }
    const double share = 1.0 / double(positives.size());
    for (int p : positives) {
      int outside = -1, farthest = negatives[0];
      for (int j : negatives) {
        if (dist(a, j) > dist(a, p) && (outside < 0 || dist(a, j) < dist(a, outside))) outside = j;
        if (dist(a, j) > dist(a, farthest)) farthest = j;
      }
      const int n = outside >= 0 ? outside : farthest;
      const double hinge = margin + dist(a, p) - dist(a, n);
      if (hinge <= 0) continue;
      result.sum += share * hinge;
      add_distance_gradient(du, u, d, a, p, share, batch, dim);
      add_distance_gradient(du, u, d, a, n, -share, batch, dim);
    }
  }
  result.normalizer = batch;
  if (grad) {
    std::vector<double> dx(du.size());
    l2_normalize_backward(dx.data(), du.data(), u.data(), norms.data(), batch, dim);
    for (std::size_t i = 0; i < dx.size(); ++i) grad[i] = float(dx[i]);
  }
  return result;
}

}  // namespace mpicnn::core
