#pragma once
// Internal to core's convolution kernels: 3x3 stride-1 pad-1 convolutions by Winograd's minimal
// filtering F(2x2,3x3) (Lavin and Gray, 2016). Each 2x2 block of outputs comes from a 4x4 input
// tile d and filter g as Y = A^T [(G g G^T) . (B^T d B)] A: 16 multiplies instead of 36, so the
// forward pass and the input gradient (the same convolution with the filters transposed and
// rotated) need 2.25x fewer multiply-adds than direct convolution. The 16 element-wise products
// over all channels become 16 matrix products (filters x channels times channels x tiles), run
// by core/gemm.hpp over groups of images. The weight gradient stays direct.
//
// The transforms only add, subtract and halve, so the rounding error stays a small multiple of
// direct convolution's; every output is computed by a fixed sequence of operations that depends
// on the sizes alone (threads split independent outputs only): bitwise across thread counts.
#include <cstddef>

#include "kernels.hpp"

namespace mpicnn::core::winograd {

// Widest input a task's stack rows hold; wider layers run direct.
constexpr int kMaxWidth = 256;

// 3x3 kernels, stride 1, pad 1 (output maps the size of the input), at most kMaxWidth wide.
bool fits(const ConvGeometry& g);
std::size_t workspace_size(const ConvGeometry& g, int batch);

template <class T>
void forward(T* out, T* workspace, const T* in, const T* weight, const T* bias, const ConvGeometry& g, int batch);
// in_grad (N,C,H,W) = the input gradient of out_grad (N,K,H,W) (overwritten).
template <class T>
void input_grad(T* in_grad, T* workspace, const T* out_grad, const T* weight, const ConvGeometry& g, int batch);

}  // namespace mpicnn::core::winograd
