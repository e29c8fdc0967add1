#include "params.hpp"

#include <algorithm>

#include "errors.hpp"

namespace mpicnn::core {

int ParamStore::declare(ParamInfo info) {
  if (values_.size()) throw Error("parameter '" + info.name + "' declared after the arena was allocated");
  info.size = 1;
  for (int d : info.dims) info.size *= std::size_t(d);
  info.offset = total_;
  total_ += round_up_floats(info.size);
  infos_.push_back(std::move(info));
  return int(infos_.size()) - 1;
}

void ParamStore::allocate() {
  values_ = Buffer(total_);
  grads_ = Buffer(total_);
}

void ParamStore::reserve_gradient_sets(int sets) {
  select_gradients(0);
  parked_.resize(std::max(parked_.size(), std::size_t(std::max(1, sets))));
  for (std::size_t k = 1; k < parked_.size(); ++k)
    if (parked_[k].size() != total_) parked_[k] = Buffer(total_);
}

void ParamStore::select_gradients(int set) {
  if (set == selected_) return;
  if (set < 0 || set >= gradient_sets())
    throw Error("gradient set " + std::to_string(set) + " of " + std::to_string(gradient_sets()) + " reserved");
  std::swap(grads_, parked_[std::size_t(selected_)]);
  std::swap(grads_, parked_[std::size_t(set)]);
  selected_ = set;
}

std::size_t ParamStore::count() const {
  std::size_t n = 0;
  for (const auto& p : infos_) n += p.size;
  return n;
}

std::pair<std::size_t, std::size_t> ParamStore::layer_range(int first_layer, int last_layer) const {
  std::size_t begin = total_, end = 0;
  for (const auto& p : infos_)
    if (p.layer >= first_layer && p.layer <= last_layer) {
      begin = std::min(begin, p.offset);
      end = std::max(end, p.offset + round_up_floats(p.size));
    }
  return begin < end ? std::make_pair(begin, end) : std::make_pair(std::size_t(0), std::size_t(0));
}

int StateStore::declare(StateInfo info) {
  if (values_.size() || !counters_.empty()) throw Error("state '" + info.name + "' declared after allocation");
  info.size = 1;
  for (int d : info.dims) info.size *= std::size_t(d);
  if (info.counter) {
    info.offset = counters_count_++;
  } else {
    info.offset = floats_;
    floats_ += info.size;
  }
  infos_.push_back(std::move(info));
  return int(infos_.size()) - 1;
}

std::size_t StateStore::declare_statistics(std::size_t floats) {
  const std::size_t offset = slot_floats_;
  slot_floats_ += floats;
  return offset;
}

void StateStore::allocate() {
  values_ = Buffer(floats_);
  counters_.assign(counters_count_, 0);
  reserve_statistics(1);
}

void StateStore::reserve_statistics(int slots) {
  slots_ = std::max(1, slots);
  statistics_ = Buffer(std::size_t(slots_) * slot_floats_);
}

}  // namespace mpicnn::core
