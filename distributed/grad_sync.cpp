#include "grad_sync.hpp"

#include <chrono>

#include "core/training.hpp"

namespace mpicnn::dist {

GradientSync::GradientSync(const Communicator& comm, core::ParamStore& params, int layers, std::size_t bucket_bytes)
    : comm_(comm), params_(params) {
  int last = layers - 1;
  for (int layer = layers - 1; layer >= 0; --layer) {
    const auto [begin, end] = params.layer_range(layer, last);
    const bool full = (end - begin) * sizeof(float) >= bucket_bytes && end > begin;
    if (full || (layer == 0 && end > begin)) {
      buckets_.push_back({layer, last, begin, end});
      last = layer - 1;
    }
  }
}

GradientSync::~GradientSync() {
  for (auto& b : buckets_)
    if (b.request != MPI_REQUEST_NULL) MPI_Request_free(&b.request);
}

void GradientSync::layer_done(int layer, bool, bool) {
  if (comm_.size() == 1) return;
  while (next_ < buckets_.size() && layer <= buckets_[next_].first_layer) {
    Bucket& b = buckets_[next_++];
    check(MPI_Iallreduce(MPI_IN_PLACE, params_.grads().data() + b.begin, int(b.end - b.begin), MPI_FLOAT, MPI_SUM,
                         comm_.handle(), &b.request),
          "MPI_Iallreduce");
  }
  // Open MPI progresses non-blocking collectives only inside MPI calls: nudge them between layers.
  for (std::size_t i = 0; i < next_; ++i) {
    int done = 0;
    if (buckets_[i].request != MPI_REQUEST_NULL) check(MPI_Test(&buckets_[i].request, &done, MPI_STATUS_IGNORE), "MPI_Test");
  }
}

GradientReducer::Result GradientSync::finish(Watchdog& watchdog, std::span<MPI_Request> also) {
  const auto start = std::chrono::steady_clock::now();
  if (comm_.size() > 1) layer_done(0, true, true);
  waiting_.clear();  // keeps its capacity: no allocation per step after the first
  for (auto& b : buckets_) waiting_.push_back(b.request);
  waiting_.insert(waiting_.end(), also.begin(), also.end());
  watchdog.wait(waiting_, "the gradient allreduce");
  for (auto& b : buckets_) b.request = MPI_REQUEST_NULL;
  std::fill(also.begin(), also.end(), MPI_REQUEST_NULL);
  next_ = 0;
  return {Outcome::ok, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()};
}

core::GradientSource GradientSync::gradients(double factor) {
  core::scale_gradients(params_, factor);
  return {};
}

}  // namespace mpicnn::dist
