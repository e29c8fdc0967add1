#pragma once
// Rank-count-independent gradient sums. Each micro-batch's gradient (a float copy of the arena) is
// rounded onto a fixed-point grid of 64-bit integers whose scale all ranks agree on, and integers
// add exactly, in any grouping and order. So the summed gradient is bitwise the same whether one
// rank computed every micro-batch or many ranks shared them: N ranks give the result of one.
#include <cstdint>
#include <vector>

#include "core/params.hpp"
#include "distributed/comm.hpp"
#include "distributed/watchdog.hpp"

namespace mpicnn::dist {

class ExactGradientSum {
 public:
  // Room for `max_partials` micro-batch gradients of this rank per step.
  ExactGradientSum(const Communicator& comm, const core::ParamStore& params, int max_partials);

  void begin_step() { partials_ = 0; }
  // Keeps a copy of the arena's gradients: one micro-batch's contribution.
  void add(const core::ParamStore& params);
  // Sums every rank's contributions of this step (`global_partials` of them) into params' gradient
  // arena, identically on every rank. Returns false when some contribution was not finite (then
  // the tensors holding one are filled with NaN, on every rank).
  bool reduce(core::ParamStore& params, long global_partials, Watchdog& watchdog);

 private:
  const Communicator& comm_;
  std::vector<core::ParamInfo> infos_;
  std::size_t arena_size_;
  int max_partials_, partials_ = 0;
  core::Buffer stored_;               // (max_partials, arena) floats
  std::vector<std::int64_t> fixed_;   // arena-sized fixed-point sum
  std::vector<double> scales_;        // per parameter tensor: fixed = round(value * scale)
};

}  // namespace mpicnn::dist
