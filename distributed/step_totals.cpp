#include "distributed/step_totals.hpp"

namespace mpicnn::dist {

std::span<MPI_Request> StepTotals::start() {
  check(MPI_Iallreduce(MPI_IN_PLACE, sums_.data(), int(sums_.size()), MPI_DOUBLE, MPI_SUM, comm_.handle(), &requests_[0]),
        "MPI_Iallreduce");
  check(MPI_Iallreduce(MPI_IN_PLACE, &minimum_, 1, MPI_DOUBLE, MPI_MIN, comm_.handle(), &requests_[1]), "MPI_Iallreduce");
  return requests_;
}

}  // namespace mpicnn::dist
