#pragma once
// Float32 buffers in NCHW (or NCDHW) order with 64-byte-aligned storage, and the per-sample shape.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>

namespace mpicnn::core {

// Shape of one sample, stored C,D,H,W; a dense layer's output is (units,1,1). Depth d is 1 for
// images and comes last so that every 2D Shape{c, h, w} keeps meaning what it did.
struct Shape {
  int c = 0, h = 0, w = 0, d = 1;
  std::size_t size() const { return std::size_t(c) * d * h * w; }
  bool is_volume() const { return d > 1; }
  bool operator==(const Shape&) const = default;
  std::string str() const {
    std::string text = "(";  // built by appending: GCC 12 warns falsely on "(" + std::string (bug 105651)
    text += std::to_string(c) + ",";
    if (is_volume()) text += std::to_string(d) + ",";
    text += std::to_string(h) + "," + std::to_string(w) + ")";
    return text;
  }
};

constexpr std::size_t kAlignment = 64;
constexpr std::size_t kAlignFloats = kAlignment / sizeof(float);

inline std::size_t round_up_floats(std::size_t n) { return (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

struct AlignedFree {
  void operator()(float* p) const { ::operator delete[](p, std::align_val_t(kAlignment)); }
};

// Owning, zero-initialised, 64-byte-aligned float array. Allocated once, reused across steps.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t n) : size_(n) {
    if (n == 0) return;
    data_.reset(static_cast<float*>(::operator new[](round_up_floats(n) * sizeof(float), std::align_val_t(kAlignment))));
    std::memset(data_.get(), 0, round_up_floats(n) * sizeof(float));
  }
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  std::span<float> span() { return {data_.get(), size_}; }
  std::span<const float> span() const { return {data_.get(), size_}; }
  void zero() { if (size_) std::memset(data_.get(), 0, size_ * sizeof(float)); }
  float& operator[](std::size_t i) { return data_.get()[i]; }
  float operator[](std::size_t i) const { return data_.get()[i]; }

 private:
  std::unique_ptr<float[], AlignedFree> data_;
  std::size_t size_ = 0;
};

}  // namespace mpicnn::core
