#pragma once
// The hang detector. Before waiting on a collective every rank reports its arrival to rank 0
// with a tiny message, and waits poll with a timeout. When a wait exceeds it, rank 0 names the
// ranks that have not arrived; if all arrived (a rank stopped inside the collective), it pings
// every rank and names those that do not answer. Then the job is ended, instead of every rank
// blocking forever behind one stopped or stalled peer.
#include <mpi.h>

#include <chrono>
#include <span>
#include <string>
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

  // This rank has reached the next collectives (every rank calls this in the same sequence);
  // `context` ("step 12", "evaluation after epoch 3") starts the messages of the waits that follow.
  void arrived(const std::string& context);
  // Waits for `requests`; throws HangError after the timeout (rank 0's message names the ranks
  // missing; other ranks wait a little longer so that rank 0 reports first). `what` names the
  // collective for the message, e.g. "the gradient allreduce".
  void wait(std::span<MPI_Request> requests, const char* what);
  // The same for a condition: polls `done` (which may do work, and must call MPI for the
  // detector's messages to progress) until it returns true. A template, not std::function: the
  // gradient sum's condition would be a heap allocation on every step.
  template <class Done>
  void wait_until(Done&& done, const char* what) {
    const auto start = std::chrono::steady_clock::now();
    while (!done()) between_polls(start, what);
  }
  // A blocking allreduce (sum) through the detector, after arrived(context).
  void allreduce_sum(std::span<float> values, const std::string& context);
  void allreduce_sum(std::span<double> values, const std::string& context);
  void allreduce_sum(std::span<std::int64_t> values, const std::string& context);
  // Every rank's values, concatenated in rank order, on every rank, through the detector (the
  // evaluation's scores: a rank stopped before this gather must end the job, not hang it).
  std::vector<float> allgather(std::span<const float> values, const std::string& context);
  std::vector<std::int32_t> allgather(std::span<const std::int32_t> values, const std::string& context);
  std::vector<double> allgather(std::span<const double> values, const std::string& context);

 private:
  void allreduce_sum(void* values, int count, MPI_Datatype type, const std::string& context);
  template <class T>
  std::vector<T> allgather(std::span<const T> values, MPI_Datatype type, const std::string& context);
  // wait_until's work between two polls: the timeout, pings from rank 0, yielding the core.
  // `what` a literal, not a std::string: most names are past the small-string buffer, and every
  // step waits, so a string would be a heap allocation per step.
  void between_polls(std::chrono::steady_clock::time_point start, const char* what);
  [[noreturn]] void hang(const char* what);
  void answer_pings();
  std::vector<int> missing_ranks();
  std::vector<int> silent_ranks();
  const Communicator& comm_;
  double timeout_;
  long sequence_ = 0;  // arrivals so far
  std::string context_;
  long send_buffer_ = 0;
  MPI_Request send_request_ = MPI_REQUEST_NULL;
  std::vector<long> arrivals_;              // rank 0: the sequence number each rank last reported
  std::vector<MPI_Request> recv_requests_;  // rank 0: one per other rank
  int ping_ = 1;                            // rank 0, after a timeout: every ping's message
  std::vector<int> pongs_;                  // ...and their answers
  std::vector<MPI_Request> ping_requests_, pong_requests_;
};

}  // namespace mpicnn::dist
