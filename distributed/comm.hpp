#pragma once
// Everything that talks MPI. Ranks find each other only through MPI_COMM_WORLD, so the same binary
// runs from a hostfile or a SLURM allocation across nodes.
#include <mpi.h>

#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include "core/errors.hpp"

namespace mpicnn::dist {

// The one checking helper: a failed MPI call becomes mpicnn::Error naming the call.
void check(int status, const char* call);

// Initialises MPI (funneled: only the main thread calls MPI; TBB workers and the prefetch thread
// never do) and finalises it on destruction. Errors return codes instead of aborting so that
// they can be reported with a message.
class Environment {
 public:
  Environment(int* argc, char*** argv);
  ~Environment();
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;
};

class Communicator {
 public:
  Communicator();  // MPI_COMM_WORLD
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }
  MPI_Comm handle() const { return MPI_COMM_WORLD; }

  // The ranks sharing this node's memory (MPI_COMM_TYPE_SHARED), in the order of their ranks.
  MPI_Comm node_handle() const { return node_; }
  int ranks_on_node() const { return ranks_on_node_; }
  int node_rank() const { return node_rank_; }
  // Nodes of the job, and the most ranks any of them holds.
  int nodes() const { return nodes_; }
  int most_ranks_on_a_node() const { return most_ranks_on_a_node_; }
  // The first rank of every node, in rank order; MPI_COMM_NULL on the other ranks.
  MPI_Comm leaders_handle() const { return leaders_; }
  // Non-blocking allreduces run as a ring (chosen where Open MPI allows it when the gradient sums
  // cross 2 or 3 ranks: all ranks, or the nodes' first ranks where nodes hold several ranks).
  bool ring_allreduce() const { return ring_allreduce_; }

  void allreduce_sum(std::span<float> values) const;
  void allreduce_sum(std::span<double> values) const;
  void allreduce_sum(std::span<std::int64_t> values) const;
  double allreduce_max(double value) const;
  // True when every rank passed the same value (e.g. a fingerprint of its weights).
  bool same_on_all_ranks(std::uint64_t value) const;
  void broadcast(std::span<float> values, int root = 0) const;
  void broadcast(std::string& text, int root = 0) const;
  void barrier() const;
  // Concatenates every rank's values on rank 0, in rank order (empty on other ranks).
  std::vector<float> gather_to_root(std::span<const float> values) const;
  // Every rank's values, concatenated in rank order, on every rank.
  std::vector<float> allgather(std::span<const float> values) const;
  std::vector<std::int32_t> allgather(std::span<const std::int32_t> values) const;
  std::vector<double> allgather(std::span<const double> values) const;
  std::vector<std::int32_t> gather_to_root(std::span<const std::int32_t> values) const;

  // Runs `work` (file work, no MPI) on rank 0 alone and gives every rank its outcome: when it
  // throws, rank 0 rethrows and the other ranks throw mpicnn::Error with the same message. The
  // ranks then fail alike and end together, instead of waiting for rank 0 in their next collective.
  template <class Work>
  void on_root(Work&& work) const {
    std::string message;
    std::exception_ptr error;
    if (is_root()) {
      try {
        work();
      } catch (const std::exception& e) {
        error = std::current_exception();
        message = *e.what() ? e.what() : "unknown error";
      }
    }
    if (size_ > 1) broadcast(message);
    if (error) std::rethrow_exception(error);
    if (!message.empty()) throw Error(message);
  }

  // After an error on this rank, once per process: every rank's `error_id` (a fingerprint of its
  // message), in rank order, when every rank reports an error within `seconds`; empty when some
  // rank does not. That rank is working on, or waiting for this one in a collective, and only
  // MPI_Abort ends the job then. Through a communicator of its own, so that no collective left
  // pending on MPI_COMM_WORLD by the failed work can match it.
  std::vector<std::uint64_t> errors_on_every_rank(std::uint64_t error_id, double seconds) const;

 private:
  int rank_ = 0, size_ = 1, ranks_on_node_ = 1, node_rank_ = 0, nodes_ = 1, most_ranks_on_a_node_ = 1;
  MPI_Comm node_ = MPI_COMM_NULL, leaders_ = MPI_COMM_NULL, errors_ = MPI_COMM_NULL;
  bool ring_allreduce_ = false;
  // errors_on_every_rank's buffers: members, as its collective may still be under way, after the
  // wait gave up, until MPI_Abort ends this rank.
  mutable std::uint64_t error_id_ = 0;
  mutable std::vector<std::uint64_t> error_ids_;
};

// Every rank's values concatenated in rank order, on every rank of `comm` (`size` ranks): the
// counts, then the values, each a non-blocking collective completed by wait(request, what) (`what`
// names it for a hang message), so that the communicator can block in MPI_Wait and the watchdog
// poll with its timeout through one implementation.
template <class T, class Wait>
std::vector<T> allgather_concatenated(std::span<const T> values, MPI_Datatype type, MPI_Comm comm, int size, Wait&& wait) {
  int mine = int(values.size());
  std::vector<int> counts(size), offsets(size);
  MPI_Request request;
  check(MPI_Iallgather(&mine, 1, MPI_INT, counts.data(), 1, MPI_INT, comm, &request), "MPI_Iallgather");
  wait(request, "the gather of the counts");
  for (int r = 1; r < size; ++r) offsets[r] = offsets[r - 1] + counts[r - 1];
  std::vector<T> all(std::size_t(offsets[size - 1]) + counts[size - 1]);
  check(MPI_Iallgatherv(values.data(), mine, type, all.data(), counts.data(), offsets.data(), type, comm, &request),
        "MPI_Iallgatherv");
  wait(request, "the gather of the values");
  return all;
}

// A 64-bit FNV-1a hash of raw bytes, for checking that ranks hold identical weights.
std::uint64_t fingerprint(const void* data, std::size_t bytes);

}  // namespace mpicnn::dist
