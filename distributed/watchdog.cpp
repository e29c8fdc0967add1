#include "watchdog.hpp"

#include <chrono>
#include <string>
#include <thread>

namespace mpicnn::dist {
namespace {

constexpr int kArrivalTag = 7301;
// Non-root ranks give rank 0 this much longer, so the report that names the missing ranks wins.
constexpr double kRootFirstSeconds = 5.0;

}  // namespace

Watchdog::Watchdog(const Communicator& comm, double timeout_seconds) : comm_(comm), timeout_(timeout_seconds) {
  if (comm.is_root()) {
    arrivals_.assign(comm.size(), -1);
    recv_requests_.assign(comm.size(), MPI_REQUEST_NULL);
  }
}

Watchdog::~Watchdog() {
  for (auto& r : recv_requests_)
    if (r != MPI_REQUEST_NULL) MPI_Cancel(&r), MPI_Request_free(&r);
  if (send_request_ != MPI_REQUEST_NULL) MPI_Request_free(&send_request_);
}

void Watchdog::arrived(long step) {
  if (timeout_ <= 0 || comm_.size() == 1) return;
  step_ = step;
  if (!comm_.is_root()) {
    // The previous report went out eagerly (8 bytes); this wait does not block in practice.
    check(MPI_Wait(&send_request_, MPI_STATUS_IGNORE), "MPI_Wait");
    send_buffer_ = step;
    check(MPI_Isend(&send_buffer_, 1, MPI_LONG, 0, kArrivalTag, comm_.handle(), &send_request_), "MPI_Isend");
    return;
  }
  for (int r = 1; r < comm_.size(); ++r) {
    // A report of the previous step may still be in flight; it has been sent, so this completes.
    check(MPI_Wait(&recv_requests_[r], MPI_STATUS_IGNORE), "MPI_Wait");
    check(MPI_Irecv(&arrivals_[r], 1, MPI_LONG, r, kArrivalTag, comm_.handle(), &recv_requests_[r]), "MPI_Irecv");
  }
}

std::vector<int> Watchdog::missing_ranks() {
  std::vector<int> missing;
  for (int r = 1; r < comm_.size(); ++r) {
    int done = 0;
    check(MPI_Test(&recv_requests_[r], &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (!done || arrivals_[r] < step_) missing.push_back(r);
  }
  return missing;
}

void Watchdog::wait(std::span<MPI_Request> requests, const char* what) {
  if (timeout_ <= 0 || comm_.size() == 1) {
    check(MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  const double limit = timeout_ + (comm_.is_root() ? 0.0 : kRootFirstSeconds);
  int done = 0;
  while (true) {
    check(MPI_Testall(int(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (done) return;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > limit) break;
    // Past a millisecond the peer is computing, not in flight: stop spinning on a core it may need.
    if (waited > 1e-3) std::this_thread::yield();
  }
  std::string message = std::string(what) + " of step " + std::to_string(step_ + 1) + " waited more than " +
                        std::to_string(int(timeout_)) + " s (train.collective_timeout)";
  if (comm_.is_root()) {
    std::string ranks;
    for (int r : missing_ranks()) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    message += ranks.empty() ? "; every rank arrived, the network may be stalled"
                             : "; ranks not arrived: " + ranks + " (stopped, stalled or much slower)";
  }
  throw HangError(message);
}

}  // namespace mpicnn::dist
