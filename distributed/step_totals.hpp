#pragma once
// The step's small allreduce beside the gradients: sums of doubles (loss sums, the stop request,
// the task's totals) and one minimum, started without blocking and waited for together with the
// gradient sums, so that every rank leaves the step with the same totals.
#include <mpi.h>

#include <span>
#include <vector>

#include "distributed/comm.hpp"

namespace mpicnn::dist {

class StepTotals {
 public:
  explicit StepTotals(const Communicator& comm) : comm_(comm) {}
  // Filled by the caller before start(); summed (and minimised) in place.
  std::vector<double>& sums() { return sums_; }
  double& minimum() { return minimum_; }
  // Starts both allreduces; the caller waits for the requests (e.g. in GradientReducer::finish).
  std::span<MPI_Request> start();

 private:
  const Communicator& comm_;
  std::vector<double> sums_;  // kept to reuse its allocation step after step
  double minimum_ = 0;
  MPI_Request requests_[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
};

}  // namespace mpicnn::dist
