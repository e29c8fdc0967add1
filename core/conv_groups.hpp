#pragma once
// Internal to core's convolution kernels: convolutions with small output maps (ResNet's 7x7 and
// 4x4 stages, 3x3 pad 1 and the strided ones) run as one matrix product over a group of images.
// Image by image, such a layer multiplies all its weights (9.4 MB at 512 channels of 3x3) with 16
// or 49 output pixels: half a register tile wide, and the weights stream from memory for every
// image. Side by side, a group's columns fill whole tiles and each packed weight panel serves
// about 256 output pixels.
//
// Threads split each product over blocks of its output rows (filters, or input taps for the
// input gradient), never over the summed dimension, so results do not depend on the thread
// count. Outputs and input gradients do not depend on how images are grouped; weight gradients
// sum a group's pixels in one k-blocked product, then the groups in order.
#include <cstddef>

#include "kernels.hpp"

namespace mpicnn::core::conv_groups {

// Output maps up to this many pixels (8x8) gain from grouping; larger ones fill tiles alone.
constexpr std::size_t kMaxPixels = 64;

std::size_t workspace_size(const ConvGeometry& g, int batch);

template <class T>
void forward(T* out, T* workspace, const T* in, const T* weight, const T* bias, const ConvGeometry& g, int batch);
template <class T>
void backward(T* in_grad, T* weight_grad, T* bias_grad, T* workspace, const T* out_grad, const T* in,
              const T* weight, const ConvGeometry& g, int batch);

}  // namespace mpicnn::core::conv_groups
