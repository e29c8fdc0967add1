#pragma once
// The parameter arena: every parameter of a model lives in one contiguous aligned buffer, every
// gradient at the same offset in a second one. Layers hold views; the distributed layer reduces the
// gradient buffer (or contiguous buckets of it) in place, with no packing copy.
#include <string>
#include <vector>

#include "tensor.hpp"

namespace mpicnn::core {

struct ParamInfo {
  std::string name;          // "2.weight": layer index and role, as in PyTorch's state_dict
  std::vector<int> dims;     // PyTorch layout: conv (K,C,R,S), dense (out,in), bias (K)
  std::size_t offset = 0;    // in floats, into values() and grads(); 64-byte aligned
  std::size_t size = 0;
  int layer = 0;             // index of the owning layer
  int fan_in = 0, fan_out = 0;
  bool is_bias = false;
};

class ParamStore {
 public:
  // Declares a parameter; returns its index. All declarations come before allocate().
  int declare(ParamInfo info);
  void allocate();

  float* value(int index) { return values_.data() + infos_[index].offset; }
  float* grad(int index) { return grads_.data() + infos_[index].offset; }
  const ParamInfo& info(int index) const { return infos_[index]; }
  const std::vector<ParamInfo>& infos() const { return infos_; }

  Buffer& values() { return values_; }
  Buffer& grads() { return grads_; }
  const Buffer& values() const { return values_; }
  const Buffer& grads() const { return grads_; }
  std::size_t size() const { return total_; }  // floats, including alignment padding
  std::size_t count() const;                   // real parameters, without padding
  void zero_grads() { grads_.zero(); }

  // Float range [begin, end) covering the parameters of layers [first_layer, last_layer].
  std::pair<std::size_t, std::size_t> layer_range(int first_layer, int last_layer) const;

 private:
  std::vector<ParamInfo> infos_;
  std::size_t total_ = 0;
  Buffer values_, grads_;
};

}  // namespace mpicnn::core
