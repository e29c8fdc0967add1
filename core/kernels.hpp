#pragma once
// The maths of every layer as free functions: outputs first, then inputs, then sizes.
// Batches are NCHW; one sample is contiguous. Backward kernels accumulate (+=) into parameter
// gradients and overwrite input gradients. Every parallel split is fixed by the sizes alone (never
// by the thread count), so results are bitwise identical for any number of threads.
#include <cstddef>
#include <cstdint>

namespace mpicnn::core {

struct ConvGeometry {
  int in_channels, height, width;   // C, H, W
  int filters, kernel_h, kernel_w;  // K, R, S
  int stride, pad;
  int out_h, out_w;                 // OH, OW
  std::size_t col_rows() const { return std::size_t(in_channels) * kernel_h * kernel_w; }  // C*R*S
  std::size_t out_pixels() const { return std::size_t(out_h) * out_w; }                   // OH*OW
  std::size_t in_size() const { return std::size_t(in_channels) * height * width; }
  std::size_t out_size() const { return std::size_t(filters) * out_pixels(); }
};

// Kernels are templates over float (training) and double (gradient checks in the tests).

// Samples per task in convolution; a chunk's gradient partial is summed in chunk order.
constexpr int kConvChunk = 4;
inline int conv_chunks(int batch) { return (batch + kConvChunk - 1) / kConvChunk; }
// How a convolution's forward pass and input gradient run, chosen once per layer at bind time
// (like oneDNN's primitives): Winograd F(2x2,3x3) for 3x3 stride-1 pad-1 layers with enough
// channels (core/winograd.hpp), else direct convolution (im2col or the image itself, then GEMM).
// The weight gradient is always direct.
enum class ConvAlgorithm { direct, winograd };
// The plan for this geometry; direct for every layer while Winograd is not allowed.
ConvAlgorithm choose_conv_algorithm(const ConvGeometry& g);
// Process-wide (config model.winograd, default false): whether layers bound after it may use
// Winograd.
void allow_winograd(bool allowed);

// Workspace elements (of the kernel's element type; need not be aligned) a convolution needs for
// `batch` samples: packed weights, and per chunk the im2col/im2row columns, the column gradient,
// the packed output gradient and the weight and bias gradient partials (core/conv_kernels.cpp);
// with Winograd also its transformed weights, inputs and products. Nothing in it outlives a call.
std::size_t conv2d_workspace_size(const ConvGeometry& g, int batch, ConvAlgorithm a = ConvAlgorithm::direct);

template <class T>
void conv2d_forward(T* out /*N,K,OH,OW*/, T* workspace, const T* in /*N,C,H,W*/,
                    const T* weight /*K,C,R,S*/, const T* bias /*K or null*/,
                    const ConvGeometry& g, int batch, ConvAlgorithm a = ConvAlgorithm::direct);
// in_grad may be null (first layer: no one needs it).
template <class T>
void conv2d_backward(T* in_grad /*N,C,H,W or null*/, T* weight_grad /*K,C,R,S*/,
                     T* bias_grad /*K or null*/, T* workspace,
                     const T* out_grad /*N,K,OH,OW*/, const T* in /*N,C,H,W*/,
                     const T* weight /*K,C,R,S*/, const ConvGeometry& g, int batch,
                     ConvAlgorithm a = ConvAlgorithm::direct);

struct PoolGeometry {
  int channels, height, width;
  int window, stride, pad;
  int out_h, out_w;
  std::size_t in_size() const { return std::size_t(channels) * height * width; }
  std::size_t out_size() const { return std::size_t(channels) * out_h * out_w; }
};

// argmax: per output element the flat index within the sample's (C,H,W) input, for backward.
// With `relu` the pool also applies the ReLU that precedes it: for finite inputs relu(max(window))
// equals max(relu(window)) exactly, with the same argmax wherever the gradient is not zero, and it
// spares a pass over the larger input in each direction. Backward is then given the pool's output (`relu_out`)
// and passes gradient only where it is positive.
template <class T>
void maxpool_forward(T* out, std::int32_t* argmax, const T* in, const PoolGeometry& g, int batch,
                     bool relu = false);
template <class T>
void maxpool_backward(T* in_grad, const T* out_grad, const std::int32_t* argmax,
                      const PoolGeometry& g, int batch, const T* relu_out = nullptr);
// One sample of a max pool's backward from its argmax, for any geometry (2D's general case, 3D):
// dx (in_size) = 0, then dy[o] added at argmax[o], except where the absorbed ReLU's output y is 0.
template <class T>
void scatter_max_gradient(T* dx, std::size_t in_size, const T* dy, const std::int32_t* argmax, std::size_t out_size,
                          const T* relu_out) {
  for (std::size_t i = 0; i < in_size; ++i) dx[i] = T(0);
  for (std::size_t o = 0; o < out_size; ++o)
    if (!relu_out || relu_out[o] > T(0)) dx[argmax[o]] += dy[o];
}
// Padding counts in the divisor (PyTorch's count_include_pad=True).
template <class T>
void avgpool_forward(T* out, const T* in, const PoolGeometry& g, int batch);
template <class T>
void avgpool_backward(T* in_grad, const T* out_grad, const PoolGeometry& g, int batch);

// Fully connected: out (N,O) = in (N,I) * weight(O,I)^T + bias(O).
template <class T>
void dense_forward(T* out, const T* in, const T* weight, const T* bias,
                   int batch, int inputs, int outputs);
template <class T>
void dense_backward(T* in_grad /*N,I or null*/, T* weight_grad /*O,I*/, T* bias_grad /*O*/,
                    const T* out_grad /*N,O*/, const T* in /*N,I*/, const T* weight /*O,I*/,
                    int batch, int inputs, int outputs);

enum class Activation { relu, leaky_relu, sigmoid, tanh };
template <class T>
void activation_forward(T* out, const T* in, std::size_t n, Activation kind, T slope);
// Uses the forward output (and input for leaky ReLU's sign) to form the input gradient.
template <class T>
void activation_backward(T* in_grad, const T* out_grad, const T* in, const T* out,
                         std::size_t n, Activation kind, T slope);

}  // namespace mpicnn::core
