#pragma once
// Kernels of the layers modern networks add: BatchNorm, global pooling, dropout and the residual
// sum. Same conventions as kernels.hpp: outputs first, NCHW batches with one sample contiguous,
// parameter gradients accumulate (+=), input gradients are overwritten, fixed work splits (per
// channel or per sample) so that results are bitwise identical for any thread count.
#include <cstddef>
#include <cstdint>

namespace mpicnn::core {

struct NormGeometry {
  int channels;
  std::size_t spatial;  // values per channel in one sample: H*W (or D*H*W)
  std::size_t sample() const { return std::size_t(channels) * spatial; }
};

// Training: per channel the mean and the biased variance over (N, spatial), computed in double
// (two passes), y = gamma * (x - mean) / sqrt(var + eps) + beta. gamma and beta may be null
// (affine = false: 1 and 0).
template <class T>
void batchnorm_forward_train(T* out, T* mean /*C*/, T* variance /*C*/, const T* in, const T* gamma, const T* beta,
                             const NormGeometry& g, int batch, double eps);
// Evaluation: with the running statistics.
template <class T>
void batchnorm_forward_eval(T* out, const T* in, const T* gamma, const T* beta, const T* running_mean,
                            const T* running_var, const NormGeometry& g, int batch, double eps);
// Training backward through the batch statistics (mean and variance depend on every input).
template <class T>
void batchnorm_backward_train(T* in_grad /*or null*/, T* gamma_grad /*or null*/, T* beta_grad /*or null*/,
                              const T* out_grad, const T* in, const T* mean, const T* variance, const T* gamma,
                              const NormGeometry& g, int batch, double eps);
// Evaluation backward: the statistics are constants.
template <class T>
void batchnorm_backward_eval(T* in_grad, T* gamma_grad, T* beta_grad, const T* out_grad, const T* in,
                             const T* running_mean, const T* running_var, const T* gamma, const NormGeometry& g,
                             int batch, double eps);

// Global-batch BatchNorm (a layer-synchronous pass, core/micro_batches.hpp) in pieces: the
// per-channel partial sums of one micro-batch, which the ranks exchange and add in global
// micro-batch order, then the normalisation and input gradient with the global statistics.
// Sums in double, per channel over (N, spatial), += into `sums`.
template <class T>
void batchnorm_channel_sums(double* sums /*C*/, const T* in, const NormGeometry& g, int batch);
template <class T>
void batchnorm_squared_deviations(double* sums /*C*/, const T* in, const double* mean /*C*/, const NormGeometry& g,
                                  int batch);
// y = gamma * (x - mean) / sqrt(variance + eps) + beta (gamma, beta may be null).
template <class T>
void batchnorm_normalize(T* out, const T* in, const double* mean, const double* variance, const T* gamma, const T* beta,
                         const NormGeometry& g, int batch, double eps);
// sum of dy and of dy * x_hat per channel, += into sum_dy and sum_dy_xhat.
template <class T>
void batchnorm_gradient_sums(double* sum_dy /*C*/, double* sum_dy_xhat /*C*/, const T* out_grad, const T* in,
                             const double* mean, const double* variance, const NormGeometry& g, int batch, double eps);
// dx = gamma / sqrt(variance + eps) * (dy - mean_dy - x_hat * mean_dy_xhat), the means over the global batch.
template <class T>
void batchnorm_input_gradient(T* in_grad, const T* out_grad, const T* in, const double* mean, const double* variance,
                              const T* gamma, const double* mean_dy, const double* mean_dy_xhat, const NormGeometry& g,
                              int batch, double eps);

// Global pooling: (N,C,spatial) -> (N,C). argmax holds the flat index within the sample.
template <class T>
void global_avgpool_forward(T* out, const T* in, const NormGeometry& g, int batch);
template <class T>
void global_avgpool_backward(T* in_grad, const T* out_grad, const NormGeometry& g, int batch);
template <class T>
void global_maxpool_forward(T* out, std::int32_t* argmax, const T* in, const NormGeometry& g, int batch);
template <class T>
void global_maxpool_backward(T* in_grad, const T* out_grad, const std::int32_t* argmax, const NormGeometry& g,
                             int batch);

// Which dropout mask a batch gets: element e of the sample at global position first_sample + n
// is kept iff a hash of (seed, layer, step, position, e) mapped to [0, 1) is >= p.
struct DropoutKey {
  std::uint64_t seed, layer;
  long step, first_sample;
};
// Inverted dropout: kept values are scaled by 1/(1-p), so evaluation is the identity.
template <class T>
void dropout_forward(T* out, const T* in, std::size_t per_sample, int batch, double p, const DropoutKey& key);
template <class T>
void dropout_backward(T* in_grad, const T* out_grad, std::size_t per_sample, int batch, double p,
                      const DropoutKey& key);
bool dropout_keeps(const DropoutKey& key, long sample, std::size_t element, double p);

// out[i] = a[i] + b[i] (the residual sum; out may be a or b).
template <class T>
void add_tensors(T* out, const T* a, const T* b, std::size_t n);

}  // namespace mpicnn::core
