#pragma once
// Everything that talks MPI. Ranks find each other only through MPI_COMM_WORLD, so the same binary
// runs from a hostfile or a SLURM allocation across nodes.
#include <mpi.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

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
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }
  // Ranks sharing this node's memory (MPI_COMM_TYPE_SHARED), for choosing threads per rank.
  int ranks_on_node() const { return ranks_on_node_; }
  MPI_Comm handle() const { return MPI_COMM_WORLD; }
  // Non-blocking allreduces run as a ring (chosen on 2 and 3 ranks where Open MPI allows it).
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
  std::vector<std::int32_t> gather_to_root(std::span<const std::int32_t> values) const;

 private:
  int rank_ = 0, size_ = 1, ranks_on_node_ = 1;
  bool ring_allreduce_ = false;
};

// A 64-bit FNV-1a hash of raw bytes, for checking that ranks hold identical weights.
std::uint64_t fingerprint(const void* data, std::size_t bytes);

}  // namespace mpicnn::dist
