#pragma once
// The hang detector. Before waiting on a step's collectives every rank reports its arrival to
// rank 0 with a tiny message; waits poll with a timeout. When a wait exceeds it, rank 0 names the
// ranks that have not arrived and the job is ended, instead of every rank blocking forever
// behind one stopped or stalled peer.
#include <mpi.h>

#include <span>
#include <vector>

#include "core/errors.hpp"
#include "distributed/comm.hpp"

namespace mpicnn::dist {

struct HangError : mpicnn::Error {
  using mpicnn::Error::Error;
};

class Watchdog {
 public:
  // timeout_seconds <= 0 disables the detector (waits block as MPI_Waitall does).
  Watchdog(const Communicator& comm, double timeout_seconds);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // This rank has finished computing `step` and is about to wait on its collectives.
  void arrived(long step);
  // Waits for `requests`; throws HangError after the timeout (rank 0's message names the ranks
  // missing; other ranks wait a little longer so that rank 0 reports first).
  void wait(std::span<MPI_Request> requests, const char* what);

 private:
  std::vector<int> missing_ranks();
  const Communicator& comm_;
  double timeout_;
  long step_ = -1;
  long send_buffer_ = 0;
  MPI_Request send_request_ = MPI_REQUEST_NULL;
  std::vector<long> arrivals_;             // rank 0: the step each rank last reported
  std::vector<MPI_Request> recv_requests_;  // rank 0: one per other rank
};

}  // namespace mpicnn::dist
