#include "watchdog.hpp"

#include <chrono>
#include <thread>

namespace mpicnn::dist {
namespace {

constexpr int kArrivalTag = 7301, kPingTag = 7302, kPongTag = 7303;
// Non-root ranks give rank 0 this much longer, so the report that names the missing ranks wins.
constexpr double kRootFirstSeconds = 5.0;
// How long rank 0 waits for answers to its pings.
constexpr double kPingSeconds = 2.0;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string text;
  for (int r : ranks) text += (text.empty() ? "" : ", ") + std::to_string(r);
  return text;
}

}  // namespace

Watchdog::Watchdog(const Communicator& comm, double timeout_seconds) : comm_(comm), timeout_(timeout_seconds) {
  if (comm.is_root()) {
    arrivals_.assign(comm.size(), -1);
    recv_requests_.assign(comm.size(), MPI_REQUEST_NULL);
  }
}

Watchdog::~Watchdog() {
  for (std::vector<MPI_Request>* receives : {&recv_requests_, &pong_requests_})
    for (MPI_Request& r : *receives)
      if (r != MPI_REQUEST_NULL) MPI_Cancel(&r), MPI_Request_free(&r);
  for (MPI_Request& r : ping_requests_)
    if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
  if (send_request_ != MPI_REQUEST_NULL) MPI_Request_free(&send_request_);
}

void Watchdog::arrived(const std::string& context) {
  if (timeout_ <= 0 || comm_.size() == 1) return;
  ++sequence_;
  context_ = context;
  if (!comm_.is_root()) {
    // The previous report went out eagerly (8 bytes); this wait does not block in practice.
    check(MPI_Wait(&send_request_, MPI_STATUS_IGNORE), "MPI_Wait");
    send_buffer_ = sequence_;
    check(MPI_Isend(&send_buffer_, 1, MPI_LONG, 0, kArrivalTag, comm_.handle(), &send_request_), "MPI_Isend");
    return;
  }
  for (int r = 1; r < comm_.size(); ++r) {
    // A report of the previous collective may still be in flight; it has been sent, so this completes.
    check(MPI_Wait(&recv_requests_[r], MPI_STATUS_IGNORE), "MPI_Wait");
    check(MPI_Irecv(&arrivals_[r], 1, MPI_LONG, r, kArrivalTag, comm_.handle(), &recv_requests_[r]), "MPI_Irecv");
  }
}

std::vector<int> Watchdog::missing_ranks() {
  std::vector<int> missing;
  for (int r = 1; r < comm_.size(); ++r) {
    int done = 0;
    check(MPI_Test(&recv_requests_[r], &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (!done || arrivals_[r] < sequence_) missing.push_back(r);
  }
  return missing;
}

// Rank 0: the ranks that do not answer a ping within kPingSeconds (stopped, or stuck outside MPI).
std::vector<int> Watchdog::silent_ranks() {
  // Members, not locals: a silent rank may still answer later, into buffers that must then exist.
  const int size = comm_.size();
  pongs_.assign(size, 0);
  ping_requests_.assign(size, MPI_REQUEST_NULL), pong_requests_.assign(size, MPI_REQUEST_NULL);
  for (int r = 1; r < size; ++r) {
    check(MPI_Isend(&ping_, 1, MPI_INT, r, kPingTag, comm_.handle(), &ping_requests_[r]), "MPI_Isend");
    check(MPI_Irecv(&pongs_[r], 1, MPI_INT, r, kPongTag, comm_.handle(), &pong_requests_[r]), "MPI_Irecv");
  }
  // MPI_Test one by one, not MPI_Testall: Testall leaves every request as it is until all are
  // complete, so with one rank silent the ranks that did answer would look silent too.
  const auto all_answered = [&] {
    bool all = true;
    for (MPI_Request& request : pong_requests_) {
      int done = 0;
      if (request != MPI_REQUEST_NULL) check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
      all = all && request == MPI_REQUEST_NULL;
    }
    return all;
  };
  const auto start = std::chrono::steady_clock::now();
  while (!all_answered() && seconds_since(start) < kPingSeconds) std::this_thread::yield();
  std::vector<int> silent;
  for (int r = 1; r < size; ++r)
    if (pong_requests_[r] != MPI_REQUEST_NULL) silent.push_back(r);
  return silent;  // the job ends next; the destructor frees what is still open
}

void Watchdog::answer_pings() {
  int waiting = 0;
  check(MPI_Iprobe(0, kPingTag, comm_.handle(), &waiting, MPI_STATUS_IGNORE), "MPI_Iprobe");
  if (!waiting) return;
  int ping = 0;
  check(MPI_Recv(&ping, 1, MPI_INT, 0, kPingTag, comm_.handle(), MPI_STATUS_IGNORE), "MPI_Recv");
  check(MPI_Send(&ping, 1, MPI_INT, 0, kPongTag, comm_.handle()), "MPI_Send");
}

void Watchdog::wait(std::span<MPI_Request> requests, const char* what) {
  if (timeout_ <= 0 || comm_.size() == 1) {
    check(MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    return;
  }
  wait_until(
      [&] {
        int done = 0;
        check(MPI_Testall(int(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
        return done != 0;
      },
      what);
}

void Watchdog::between_polls(std::chrono::steady_clock::time_point start, const char* what) {
  const double waited = seconds_since(start);
  if (timeout_ > 0 && comm_.size() > 1) {
    if (waited > timeout_ + (comm_.is_root() ? 0.0 : kRootFirstSeconds)) hang(what);
    if (!comm_.is_root()) answer_pings();
  }
  // Past a millisecond the peer is computing, not in flight: stop spinning on a core it may need.
  if (waited > 1e-3) std::this_thread::yield();
}

void Watchdog::hang(const char* what) {
  std::string message = context_ + ": " + what + " waited more than " + std::to_string(int(timeout_)) + " s (train.collective_timeout)";
  if (comm_.is_root()) {
    const std::vector<int> missing = missing_ranks();
    const std::vector<int> silent = missing.empty() ? silent_ranks() : std::vector<int>{};
    if (!missing.empty()) message += "; ranks not arrived: " + rank_list(missing) + " (stopped, stalled or much slower)";
    else if (!silent.empty()) message += "; every rank arrived, but ranks not responding: " + rank_list(silent) + " (stopped?)";
    else message += "; every rank arrived and responds: the network may be stalled";
  }
  throw HangError(message);
}

void Watchdog::allreduce_sum(std::span<float> values, const std::string& context) {
  allreduce_sum(values.data(), int(values.size()), MPI_FLOAT, context);
}

void Watchdog::allreduce_sum(std::span<double> values, const std::string& context) {
  allreduce_sum(values.data(), int(values.size()), MPI_DOUBLE, context);
}

void Watchdog::allreduce_sum(std::span<std::int64_t> values, const std::string& context) {
  allreduce_sum(values.data(), int(values.size()), MPI_INT64_T, context);
}

void Watchdog::allreduce_sum(void* values, int count, MPI_Datatype type, const std::string& context) {
  arrived(context);
  MPI_Request request;
  check(MPI_Iallreduce(MPI_IN_PLACE, values, count, type, MPI_SUM, comm_.handle(), &request), "MPI_Iallreduce");
  wait(std::span<MPI_Request>(&request, 1), "an allreduce");
}

template <class T>
std::vector<T> Watchdog::allgather(std::span<const T> values, MPI_Datatype type, const std::string& context) {
  arrived(context);
  return allgather_concatenated(values, type, comm_.handle(), comm_.size(), [this](MPI_Request& request, const char* what) {
    wait(std::span<MPI_Request>(&request, 1), what);
  });
}

std::vector<float> Watchdog::allgather(std::span<const float> values, const std::string& context) {
  return allgather(values, MPI_FLOAT, context);
}

std::vector<std::int32_t> Watchdog::allgather(std::span<const std::int32_t> values, const std::string& context) {
  return allgather(values, MPI_INT32_T, context);
}
std::vector<double> Watchdog::allgather(std::span<const double> values, const std::string& context) {
  return allgather(values, MPI_DOUBLE, context);
}

}  // namespace mpicnn::dist
