#pragma once
// Sums the gradient arena across ranks in buckets of whole layers, starting each bucket's
// non-blocking allreduce as soon as backward has finished its layers (last layer first), so that
// communication overlaps the rest of backward. Buckets are contiguous ranges of the arena: no
// packing copies.
#include <mpi.h>

#include <algorithm>

#include <vector>

#include "core/params.hpp"
#include "distributed/comm.hpp"
#include "distributed/reducer.hpp"
#include "distributed/watchdog.hpp"

namespace mpicnn::dist {

class GradientSync final : public GradientReducer {
 public:
  // bucket_bytes: a bucket closes once it holds at least this much (0 = one bucket per layer
  // with parameters).
  GradientSync(const Communicator& comm, core::ParamStore& params, int layers, std::size_t bucket_bytes);
  ~GradientSync();

  int micro_batch(int local) const override { return std::max(local, 1); }
  void begin_step(long) override { params_.zero_grads(); }
  // Called by backward when layer `layer` has final gradients (one micro-batch per step).
  void layer_done(int layer, bool first, bool last) override;
  // Waits for every bucket and for `also` (other requests of this step, e.g. the loss sums)
  // through the watchdog; the wait is the communication that backward did not hide.
  Result finish(Watchdog& watchdog, std::span<MPI_Request> also) override;
  // Divides the summed arena by the normaliser in place.
  core::GradientSource gradients(double factor) override;
  int buckets() const { return int(buckets_.size()); }

 private:
  struct Bucket {
    int first_layer, last_layer;  // the bucket is ready once first_layer is done (backward runs downwards)
    std::size_t begin, end;       // float range in the arena
    MPI_Request request = MPI_REQUEST_NULL;
  };
  const Communicator& comm_;
  core::ParamStore& params_;
  std::vector<Bucket> buckets_;  // in backward order: the last layers' bucket first
  std::size_t next_ = 0;          // first bucket not yet started
  std::vector<MPI_Request> waiting_;  // finish(): the buckets' requests and the caller's
};

}  // namespace mpicnn::dist
