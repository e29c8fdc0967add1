#pragma once
// The parameter arena: every parameter of a model lives in one contiguous aligned buffer, every
// gradient at the same offset in a second one. Layers hold views; the distributed layer reduces the
// gradient buffer (or contiguous buckets of it) in place, with no packing copy.
//
// Beside it, the state area: what a layer keeps that is not trained (BatchNorm's running mean and
// variance, its batch counter). It is never decayed, given optimizer moments or summed as a
// gradient; it is saved in checkpoints and bundles under PyTorch's state_dict names.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tensor.hpp"

namespace mpicnn::core {

// What a parameter is for: initialisation and weight decay depend on it.
enum class ParamRole { weight, bias, bn_scale, bn_shift };

struct ParamInfo {
  std::string name;          // "2.weight", "4.main.1.bias": PyTorch state_dict names
  std::vector<int> dims;     // PyTorch layout: conv (K,C,R,S), dense (out,in), bias (K)
  std::size_t offset = 0;    // in floats, into values() and grads(); 64-byte aligned
  std::size_t size = 0;
  int layer = 0;             // the top-level layer owning it: the unit of gradient reduction
  int fan_in = 0, fan_out = 0;
  ParamRole role = ParamRole::weight;
  bool is_bias() const { return role == ParamRole::bias; }
};

class ParamStore {
 public:
  // Declares a parameter; returns its index. All declarations come before allocate().
  int declare(ParamInfo info);
  void allocate();

  float* value(int index) { return values_.data() + infos_[index].offset; }
  float* grad(int index) { return grads_.data() + infos_[index].offset; }
  const float* value(int index) const { return values_.data() + infos_[index].offset; }
  const ParamInfo& info(int index) const { return infos_[index]; }
  const std::vector<ParamInfo>& infos() const { return infos_; }

  Buffer& values() { return values_; }
  Buffer& grads() { return grads_; }
  const Buffer& values() const { return values_; }
  const Buffer& grads() const { return grads_; }
  std::size_t size() const { return total_; }  // floats, including alignment padding
  std::size_t count() const;                   // real parameters, without padding
  void zero_grads() { grads_.zero(); }

  // A layer-synchronous pass (core/micro_batches.hpp) keeps each of its micro-batches' gradients
  // apart, for the exact sum takes them one micro-batch at a time: `sets` arenas of the same
  // layout (set 0 is the one from the start), zero. select_gradients(k) makes set k the one that
  // grads() and grad() address.
  void reserve_gradient_sets(int sets);
  void select_gradients(int set);
  int gradient_sets() const { return int(parked_.size()); }

  // Float range [begin, end) covering the parameters of layers [first_layer, last_layer].
  std::pair<std::size_t, std::size_t> layer_range(int first_layer, int last_layer) const;

 private:
  std::vector<ParamInfo> infos_;
  std::size_t total_ = 0;
  Buffer values_, grads_;
  std::vector<Buffer> parked_{1};  // per gradient set: its arena while another one is selected
  int selected_ = 0;
};

// One tensor of the state area: float32 values, or an int64 counter (PyTorch's
// num_batches_tracked), each at `offset` in its own array.
struct StateInfo {
  std::string name;       // "1.running_mean", "1.num_batches_tracked"
  std::vector<int> dims;  // empty for a scalar counter
  std::size_t offset = 0, size = 0;
  int layer = 0;
  bool counter = false;
};

// The state area, and the batch statistics of the step in progress: per statistics slot (a
// micro-batch), every layer's region of floats, folded into the state only by commit (so that a
// step computed again, or abandoned, leaves the state as it was).
class StateStore {
 public:
  int declare(StateInfo info);
  // Reserves `floats` per slot for one layer's batch statistics; returns its offset in a slot.
  std::size_t declare_statistics(std::size_t floats);
  // Allocates the state (zero), and room for one slot of statistics.
  void allocate();
  // Room for `slots` slots of statistics (at least one), all zero.
  void reserve_statistics(int slots);

  float* value(int index) { return values_.data() + infos_[index].offset; }
  const float* value(int index) const { return values_.data() + infos_[index].offset; }
  std::int64_t& counter(int index) { return counters_[infos_[index].offset]; }
  std::int64_t counter(int index) const { return counters_[infos_[index].offset]; }
  const std::vector<StateInfo>& infos() const { return infos_; }
  bool empty() const { return infos_.empty(); }

  float* statistics(int slot, std::size_t offset) { return statistics_.data() + std::size_t(slot) * slot_floats_ + offset; }
  const float* statistics(int slot, std::size_t offset) const {
    return statistics_.data() + std::size_t(slot) * slot_floats_ + offset;
  }
  // The first `slots` slots, contiguous: what ranks sum before committing (each slot is written
  // by one rank and zero on the others, so a float sum is exact in any order).
  std::span<float> statistics_slots(int slots) { return {statistics_.data(), std::size_t(slots) * slot_floats_}; }
  int slot_capacity() const { return slots_; }
  std::size_t slot_floats() const { return slot_floats_; }
  void clear_statistics() { statistics_.zero(); }

 private:
  std::vector<StateInfo> infos_;
  std::size_t floats_ = 0, counters_count_ = 0, slot_floats_ = 0;
  int slots_ = 0;
  Buffer values_, statistics_;
  std::vector<std::int64_t> counters_;
};

}  // namespace mpicnn::core
