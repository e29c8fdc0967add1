#pragma once
// What the trainer asks of a gradient reduction, whichever it is: the exact sum (fixed-point
// micro-batch sums, bitwise the same for any rank count; distributed/exact_sum.hpp) or the fast
// one (float allreduce of the arena in buckets overlapping backward; distributed/grad_sync.hpp).
#include <mpi.h>

#include <span>
#include <vector>

#include "core/optimizer.hpp"
#include "distributed/watchdog.hpp"

namespace mpicnn::dist {

class GradientReducer {
 public:
  enum class Outcome { ok, retry, non_finite };
  struct Result {
    Outcome outcome = Outcome::ok;
    double wait_seconds = 0;  // blocked on communication that backward did not hide
  };
  virtual ~GradientReducer() = default;

  // Samples per micro-batch of `local` samples of this rank: the whole local batch (fast), or
  // the fixed global micro-batch (exact).
  virtual int micro_batch(int local) const = 0;
  // A new step of `global_micro_batches` micro-batches over all ranks; the arena is zero.
  virtual void begin_step(long global_micro_batches) = 0;
  // Backward finished `layer` of a micro-batch; `first`, `last`: this rank's first and last
  // micro-batch of the step (a rank without samples calls it once per layer, first and last).
  virtual void layer_done(int layer, bool first, bool last) = 0;
  // Waits for the sums and for `also` (the step's other requests). retry: compute the step again.
  virtual Result finish(Watchdog& watchdog, std::span<MPI_Request> also) = 0;
  // The summed gradient times `factor` for the optimizer: a source writing it chunk by chunk
  // (exact), or empty when it is in the arena, already scaled (fast).
  virtual core::GradientSource gradients(double factor) = 0;
  // Training state to checkpoint (the exact sum's grid exponents per tensor); empty otherwise.
  virtual std::vector<int> grid() const { return {}; }
  virtual void set_grid(const std::vector<int>&) {}
};

}  // namespace mpicnn::dist
