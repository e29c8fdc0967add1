#pragma once
// Kernels of the 3D layers (conv3d, maxpool3d, avgpool3d) for volumes in NCDHW order, one sample
// contiguous. Same conventions as kernels.hpp: outputs first, float and double, parameter gradients
// accumulate (+=), input gradients are overwritten, and every parallel split is fixed by the sizes
// alone, so results are bitwise identical for any thread count.
#include <cstddef>
#include <cstdint>

namespace mpicnn::core {

// One size per spatial axis: depth, height, width.
struct Extent3 {
  int d = 1, h = 1, w = 1;
  std::size_t volume() const { return std::size_t(d) * h * w; }
  bool operator==(const Extent3&) const = default;
};

// The output extent of a sliding window (floor mode, as PyTorch's default ceil_mode=False).
Extent3 sliding_extent(const Extent3& in, const Extent3& window, const Extent3& stride, const Extent3& pad);

struct Conv3dGeometry {
  int in_channels;   // C
  Extent3 in;        // D, H, W
  int filters;       // K
  Extent3 kernel;    // T, R, S
  Extent3 stride, pad;
  Extent3 out;       // OD, OH, OW
  std::size_t col_rows() const { return std::size_t(in_channels) * kernel.volume(); }  // C*T*R*S
  std::size_t out_voxels() const { return out.volume(); }                               // OD*OH*OW
  std::size_t in_size() const { return std::size_t(in_channels) * in.volume(); }
  std::size_t out_size() const { return std::size_t(filters) * out_voxels(); }
};

// Scratch (the vol2col columns of a block of output voxels) lives in a per-thread buffer that grows
// to the largest layer's need once: it is overwritten before every use, so which thread holds it
// changes nothing. Work splits: forward and input gradient per sample; weight and bias gradient per
// block of kConv3dFilterBlock filters, each summing over the samples in order (no partials to store).
constexpr int kConv3dFilterBlock = 16;

template <class T>
void conv3d_forward(T* out /*N,K,OD,OH,OW*/, const T* in /*N,C,D,H,W*/, const T* weight /*K,C,T,R,S*/,
                    const T* bias /*K or null*/, const Conv3dGeometry& g, int batch);
// in_grad may be null (first layer: no one needs it), bias_grad too (no bias).
template <class T>
void conv3d_backward(T* in_grad /*N,C,D,H,W or null*/, T* weight_grad /*K,C,T,R,S*/, T* bias_grad /*K or null*/,
                     const T* out_grad /*N,K,OD,OH,OW*/, const T* in /*N,C,D,H,W*/, const T* weight /*K,C,T,R,S*/,
                     const Conv3dGeometry& g, int batch);

struct Pool3dGeometry {
  int channels;
  Extent3 in, window, stride, pad, out;
  std::size_t in_size() const { return std::size_t(channels) * in.volume(); }
  std::size_t out_size() const { return std::size_t(channels) * out.volume(); }
};

// argmax: per output element the flat index within the sample's (C,D,H,W) input, for backward.
// Ties go to the first element in (d,h,w) scan order, as PyTorch's MaxPool3d. With `relu` the pool
// also applies the ReLU before it, as maxpool_forward does (kernels.hpp): backward is then given the
// pool's output (`relu_out`) and passes gradient only where it is positive.
template <class T>
void maxpool3d_forward(T* out /*N,C,OD,OH,OW*/, std::int32_t* argmax, const T* in /*N,C,D,H,W*/,
                       const Pool3dGeometry& g, int batch, bool relu = false);
template <class T>
void maxpool3d_backward(T* in_grad, const T* out_grad, const std::int32_t* argmax, const Pool3dGeometry& g,
                        int batch, const T* relu_out = nullptr);
// Padding counts in the divisor (PyTorch's AvgPool3d default count_include_pad=True; in floor mode
// every window ends within the padded input, so the divisor is always T*R*S).
template <class T>
void avgpool3d_forward(T* out, const T* in, const Pool3dGeometry& g, int batch);
template <class T>
void avgpool3d_backward(T* in_grad, const T* out_grad, const Pool3dGeometry& g, int batch);

}  // namespace mpicnn::core
