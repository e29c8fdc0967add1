#include "block_kernels.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "parallel.hpp"
#include "rng.hpp"

namespace mpicnn::core {
namespace {

// Calls body(c, x) for every channel plane x (spatial values) of every sample, channel-major:
// the per-channel sums then run in a fixed order whatever the thread count.
template <class T, class Body>
void for_channel_planes(const T* data, const NormGeometry& g, int batch, int c, Body&& body) {
  for (int n = 0; n < batch; ++n) body(data + std::size_t(n) * g.sample() + std::size_t(c) * g.spatial);
}

double channel_flops(const NormGeometry& g, int batch) { return 4.0 * double(batch) * double(g.spatial); }

// Channel c's sum of dy and of dy * x_hat over the batch (x_hat = (x - mean) * inv_std): the
// gradients of shift and scale, and what the training backward subtracts.
template <class T>
std::pair<double, double> channel_gradient_sums(const T* out_grad, const T* in, double mean, double inv_std,
                                                const NormGeometry& g, int batch, std::size_t c) {
  double sum_dy = 0, sum_dy_xhat = 0;
  for (int n = 0; n < batch; ++n) {
    const std::size_t at = std::size_t(n) * g.sample() + c * g.spatial;
    for (std::size_t i = 0; i < g.spatial; ++i) {
      const double dy = double(out_grad[at + i]);
      sum_dy += dy;
      sum_dy_xhat += dy * (double(in[at + i]) - mean) * inv_std;
    }
  }
  return {sum_dy, sum_dy_xhat};
}

}  // namespace

template <class T>
void batchnorm_forward_train(T* out, T* mean, T* variance, const T* in, const T* gamma, const T* beta,
                             const NormGeometry& g, int batch, double eps) {
  const double count = double(batch) * double(g.spatial);
  parallel_for(g.channels, channel_flops(g, batch), [&](std::size_t c) {
    double sum = 0;
    for_channel_planes(in, g, batch, int(c), [&](const T* x) {
      for (std::size_t i = 0; i < g.spatial; ++i) sum += double(x[i]);
    });
    const double m = sum / count;
    double squares = 0;
    for_channel_planes(in, g, batch, int(c), [&](const T* x) {
      for (std::size_t i = 0; i < g.spatial; ++i) squares += (double(x[i]) - m) * (double(x[i]) - m);
    });
    const double var = squares / count;
    mean[c] = T(m), variance[c] = T(var);
    const double inv_std = 1.0 / std::sqrt(var + eps);
    const double scale = (gamma ? double(gamma[c]) : 1.0) * inv_std;
    const double shift = (beta ? double(beta[c]) : 0.0) - m * scale;
    for (int n = 0; n < batch; ++n) {
      const std::size_t at = std::size_t(n) * g.sample() + c * g.spatial;
      for (std::size_t i = 0; i < g.spatial; ++i) out[at + i] = T(double(in[at + i]) * scale + shift);
    }
  });
}

template <class T>
void batchnorm_forward_eval(T* out, const T* in, const T* gamma, const T* beta, const T* running_mean,
                            const T* running_var, const NormGeometry& g, int batch, double eps) {
  parallel_for(g.channels, channel_flops(g, batch) / 2, [&](std::size_t c) {
    const double scale = (gamma ? double(gamma[c]) : 1.0) / std::sqrt(double(running_var[c]) + eps);
    const double shift = (beta ? double(beta[c]) : 0.0) - double(running_mean[c]) * scale;
    for (int n = 0; n < batch; ++n) {
      const std::size_t at = std::size_t(n) * g.sample() + c * g.spatial;
      for (std::size_t i = 0; i < g.spatial; ++i) out[at + i] = T(double(in[at + i]) * scale + shift);
    }
  });
}

template <class T>
void batchnorm_backward_train(T* in_grad, T* gamma_grad, T* beta_grad, const T* out_grad, const T* in, const T* mean,
                              const T* variance, const T* gamma, const NormGeometry& g, int batch, double eps) {
  const double count = double(batch) * double(g.spatial);
  parallel_for(g.channels, channel_flops(g, batch), [&](std::size_t c) {
    const double m = double(mean[c]), inv_std = 1.0 / std::sqrt(double(variance[c]) + eps);
    const auto [sum_dy, sum_dy_xhat] = channel_gradient_sums(out_grad, in, m, inv_std, g, batch, c);
    if (gamma_grad) gamma_grad[c] += T(sum_dy_xhat);
    if (beta_grad) beta_grad[c] += T(sum_dy);
    if (!in_grad) return;
    const double scale = (gamma ? double(gamma[c]) : 1.0) * inv_std;
    const double mean_dy = sum_dy / count, mean_dy_xhat = sum_dy_xhat / count;
    for (int n = 0; n < batch; ++n) {
      const std::size_t at = std::size_t(n) * g.sample() + c * g.spatial;
      for (std::size_t i = 0; i < g.spatial; ++i) {
        const double xhat = (double(in[at + i]) - m) * inv_std;
        in_grad[at + i] = T(scale * (double(out_grad[at + i]) - mean_dy - xhat * mean_dy_xhat));
      }
    }
  });
}

template <class T>
void batchnorm_backward_eval(T* in_grad, T* gamma_grad, T* beta_grad, const T* out_grad, const T* in,
                             const T* running_mean, const T* running_var, const T* gamma, const NormGeometry& g,
                             int batch, double eps) {
  parallel_for(g.channels, channel_flops(g, batch), [&](std::size_t c) {
    const double m = double(running_mean[c]), inv_std = 1.0 / std::sqrt(double(running_var[c]) + eps);
    const double scale = (gamma ? double(gamma[c]) : 1.0) * inv_std;
    const auto [sum_dy, sum_dy_xhat] = channel_gradient_sums(out_grad, in, m, inv_std, g, batch, c);
    if (in_grad)
      for (int n = 0; n < batch; ++n) {
        const std::size_t at = std::size_t(n) * g.sample() + c * g.spatial;
        for (std::size_t i = 0; i < g.spatial; ++i) in_grad[at + i] = T(scale * double(out_grad[at + i]));
      }
    if (gamma_grad) gamma_grad[c] += T(sum_dy_xhat);
    if (beta_grad) beta_grad[c] += T(sum_dy);
  });
}

template <class T>
void batchnorm_channel_sums(double* sums, const T* in, const NormGeometry& g, int batch) {
  parallel_for(g.channels, channel_flops(g, batch) / 4, [&](std::size_t c) {
    double sum = 0;
    for_channel_planes(in, g, batch, int(c), [&](const T* x) {
      for (std::size_t i = 0; i < g.spatial; ++i) sum += double(x[i]);
    });
    sums[c] += sum;
  });
}

template <class T>
void batchnorm_squared_deviations(double* sums, const T* in, const double* mean, const NormGeometry& g, int batch) {
  parallel_for(g.channels, channel_flops(g, batch) / 2, [&](std::size_t c) {
    double squares = 0;
    for_channel_planes(in, g, batch, int(c), [&](const T* x) {
      for (std::size_t i = 0; i < g.spatial; ++i) squares += (double(x[i]) - mean[c]) * (double(x[i]) - mean[c]);
    });
    sums[c] += squares;
  });
}

template <class T>
void batchnorm_normalize(T* out, const T* in, const double* mean, const double* variance, const T* gamma, const T* beta,
                         const NormGeometry& g, int batch, double eps) {
  parallel_for(g.channels, channel_flops(g, batch) / 2, [&](std::size_t c) {
    const double scale = (gamma ? double(gamma[c]) : 1.0) / std::sqrt(variance[c] + eps);
    const double shift = (beta ? double(beta[c]) : 0.0) - mean[c] * scale;
    for (int n = 0; n < batch; ++n) {
      const std::size_t at = std::size_t(n) * g.sample() + c * g.spatial;
      for (std::size_t i = 0; i < g.spatial; ++i) out[at + i] = T(double(in[at + i]) * scale + shift);
    }
  });
}

template <class T>
void batchnorm_gradient_sums(double* sum_dy, double* sum_dy_xhat, const T* out_grad, const T* in, const double* mean,
                             const double* variance, const NormGeometry& g, int batch, double eps) {
  parallel_for(g.channels, channel_flops(g, batch) / 2, [&](std::size_t c) {
    const double inv_std = 1.0 / std::sqrt(variance[c] + eps);
    const auto [dy, dy_xhat] = channel_gradient_sums(out_grad, in, mean[c], inv_std, g, batch, c);
    sum_dy[c] += dy, sum_dy_xhat[c] += dy_xhat;
  });
}

template <class T>
void batchnorm_input_gradient(T* in_grad, const T* out_grad, const T* in, const double* mean, const double* variance,
                              const T* gamma, const double* mean_dy, const double* mean_dy_xhat, const NormGeometry& g,
                              int batch, double eps) {
  parallel_for(g.channels, channel_flops(g, batch) / 2, [&](std::size_t c) {
    const double inv_std = 1.0 / std::sqrt(variance[c] + eps), scale = (gamma ? double(gamma[c]) : 1.0) * inv_std;
    for (int n = 0; n < batch; ++n) {
      const std::size_t at = std::size_t(n) * g.sample() + c * g.spatial;
      for (std::size_t i = 0; i < g.spatial; ++i) {
        const double xhat = (double(in[at + i]) - mean[c]) * inv_std;
        in_grad[at + i] = T(scale * (double(out_grad[at + i]) - mean_dy[c] - xhat * mean_dy_xhat[c]));
      }
    }
  });
}

template <class T>
void global_avgpool_forward(T* out, const T* in, const NormGeometry& g, int batch) {
  parallel_for(batch, 2.0 * double(g.sample()), [&](std::size_t n) {
    for (int c = 0; c < g.channels; ++c) {
      const T* x = in + n * g.sample() + std::size_t(c) * g.spatial;
      double sum = 0;
      for (std::size_t i = 0; i < g.spatial; ++i) sum += double(x[i]);
      out[n * g.channels + c] = T(sum / double(g.spatial));
    }
  });
}

template <class T>
void global_avgpool_backward(T* in_grad, const T* out_grad, const NormGeometry& g, int batch) {
  parallel_for(batch, 2.0 * double(g.sample()), [&](std::size_t n) {
    for (int c = 0; c < g.channels; ++c) {
      const T value = T(double(out_grad[n * g.channels + c]) / double(g.spatial));
      T* dx = in_grad + n * g.sample() + std::size_t(c) * g.spatial;
      std::fill(dx, dx + g.spatial, value);
    }
  });
}

template <class T>
void global_maxpool_forward(T* out, std::int32_t* argmax, const T* in, const NormGeometry& g, int batch) {
  parallel_for(batch, 2.0 * double(g.sample()), [&](std::size_t n) {
    for (int c = 0; c < g.channels; ++c) {
      const std::size_t base = std::size_t(c) * g.spatial;
      const T* x = in + n * g.sample() + base;
      std::size_t best = 0;
      for (std::size_t i = 1; i < g.spatial; ++i)  // first maximum wins; NaN propagates as PyTorch's
        if (x[i] > x[best] || std::isnan(x[i])) best = i;
      out[n * g.channels + c] = x[best];
      argmax[n * g.channels + c] = std::int32_t(base + best);
    }
  });
}

template <class T>
void global_maxpool_backward(T* in_grad, const T* out_grad, const std::int32_t* argmax, const NormGeometry& g,
                             int batch) {
  parallel_for(batch, 2.0 * double(g.sample()), [&](std::size_t n) {
    T* dx = in_grad + n * g.sample();
    std::fill(dx, dx + g.sample(), T(0));
    for (int c = 0; c < g.channels; ++c) dx[argmax[n * g.channels + c]] = out_grad[n * g.channels + c];
  });
}

namespace {

// The hash of a sample's key: (seed, layer, step, global position); an element's draw hashes it once more.
std::uint64_t sample_hash(const DropoutKey& key, long sample) {
  std::uint64_t h = derive_seed(key.seed, key.layer);
  h = derive_seed(h, std::uint64_t(key.step));
  return derive_seed(h, std::uint64_t(key.first_sample + sample));
}

bool keeps(std::uint64_t sample, std::size_t element, double p) {
  return double(derive_seed(sample, element) >> 11) * 0x1.0p-53 >= p;
}

// Calls body(n, e, keep) over the batch, one sample per task; the sample's key is hashed once.
template <class Body>
void for_each_mask(std::size_t per_sample, int batch, double p, const DropoutKey& key, Body&& body) {
  parallel_for(batch, 8.0 * double(per_sample), [&](std::size_t n) {
    const std::uint64_t h = sample_hash(key, long(n));
    for (std::size_t e = 0; e < per_sample; ++e) body(n, e, keeps(h, e, p));
  });
}

}  // namespace

bool dropout_keeps(const DropoutKey& key, long sample, std::size_t element, double p) {
  return keeps(sample_hash(key, sample), element, p);
}

template <class T>
void dropout_forward(T* out, const T* in, std::size_t per_sample, int batch, double p, const DropoutKey& key) {
  const T scale = T(1.0 / (1.0 - p));
  for_each_mask(per_sample, batch, p, key, [&](std::size_t n, std::size_t e, bool keep) {
    const std::size_t i = n * per_sample + e;
    out[i] = keep ? in[i] * scale : T(0);
  });
}

template <class T>
void dropout_backward(T* in_grad, const T* out_grad, std::size_t per_sample, int batch, double p,
                      const DropoutKey& key) {
  const T scale = T(1.0 / (1.0 - p));
  for_each_mask(per_sample, batch, p, key, [&](std::size_t n, std::size_t e, bool keep) {
    const std::size_t i = n * per_sample + e;
    in_grad[i] = keep ? out_grad[i] * scale : T(0);
  });
}

template <class T>
void add_tensors(T* out, const T* a, const T* b, std::size_t n) {
  constexpr std::size_t chunk = 1 << 14;
  parallel_for((n + chunk - 1) / chunk, 2.0 * chunk, [&](std::size_t k) {
    const std::size_t end = std::min(n, (k + 1) * chunk);
    for (std::size_t i = k * chunk; i < end; ++i) out[i] = a[i] + b[i];
  });
}

#define MPICNN_INSTANTIATE(T)                                                                                    \
  template void batchnorm_forward_train(T*, T*, T*, const T*, const T*, const T*, const NormGeometry&, int,      \
                                        double);                                                                 \
  template void batchnorm_forward_eval(T*, const T*, const T*, const T*, const T*, const T*, const NormGeometry&, \
                                       int, double);                                                             \
  template void batchnorm_backward_train(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,          \
                                         const NormGeometry&, int, double);                                      \
  template void batchnorm_backward_eval(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,           \
                                        const NormGeometry&, int, double);                                       \
  template void batchnorm_channel_sums(double*, const T*, const NormGeometry&, int);                              \
  template void batchnorm_squared_deviations(double*, const T*, const double*, const NormGeometry&, int);         \
  template void batchnorm_normalize(T*, const T*, const double*, const double*, const T*, const T*,              \
                                    const NormGeometry&, int, double);                                          \
  template void batchnorm_gradient_sums(double*, double*, const T*, const T*, const double*, const double*,      \
                                        const NormGeometry&, int, double);                                      \
  template void batchnorm_input_gradient(T*, const T*, const T*, const double*, const double*, const T*,         \
                                         const double*, const double*, const NormGeometry&, int, double);       \
  template void global_avgpool_forward(T*, const T*, const NormGeometry&, int);                                  \
  template void global_avgpool_backward(T*, const T*, const NormGeometry&, int);                                 \
  template void global_maxpool_forward(T*, std::int32_t*, const T*, const NormGeometry&, int);                   \
  template void global_maxpool_backward(T*, const T*, const std::int32_t*, const NormGeometry&, int);            \
  template void dropout_forward(T*, const T*, std::size_t, int, double, const DropoutKey&);                      \
  template void dropout_backward(T*, const T*, std::size_t, int, double, const DropoutKey&);                     \
  template void add_tensors(T*, const T*, const T*, std::size_t);
MPICNN_INSTANTIATE(float)
MPICNN_INSTANTIATE(double)

}  // namespace mpicnn::core
