#pragma once
// Sums the int64 buffers of the ranks on one node through memory they share.
//
// Why not MPI's allreduce there: in its ring each rank copies and adds its own share, so the rank
// that finishes backward last does its share after the others have been waiting; that work sits
// on the step's critical path. Here each rank's buffer lives in a shared window and a layer's sum
// is cut into chunks that any rank may claim: ranks already waiting sum each layer as soon as
// every rank has published it, and the last rank finds almost everything done. Nothing is copied:
// the summed buffer is read where it lies.
//
// Every rank calls begin() once per step (the same number of times), publish(layer) as its
// buffer's part for the layer is final, and help() until it returns true. A generation counter
// tags every flag and claim, so nothing needs resetting between steps. A rank rewrites its buffer
// only in the next generation, and the others have then finished reading it: no rank leaves a
// generation before every chunk of it is summed. The total is rewritten in the next generation
// only once every rank has published there, i.e. has finished reading this generation's total.
//
// Across nodes (`across_nodes`) the node's first rank, its leader, sums the nodes' totals (through
// MPI, outside this class) into a shared result and then releases it with the maxima; the node's
// other ranks wait for that release. The leader must write a layer's result only once the layer's
// total is complete (layer_summed), i.e. once every rank of the node has published the layer in
// this generation and so has finished reading the result of the one before.
#include <mpi.h>

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "distributed/comm.hpp"

namespace mpicnn::dist {

class NodeSum {
 public:
  // `layers`: each layer's [begin, end) in buffers of `values` int64s; `maxima`: how many uint32
  // values each rank also contributes to an elementwise maximum (e.g. largest magnitudes).
  // Collective over the communicator; sums over the ranks of each node (comm.node_handle()).
  NodeSum(const Communicator& comm, std::vector<std::pair<std::size_t, std::size_t>> layers, std::size_t values,
          std::size_t maxima, bool across_nodes = false);
  ~NodeSum();
  NodeSum(const NodeSum&) = delete;
  NodeSum& operator=(const NodeSum&) = delete;

  std::int64_t* mine() const { return mine_segment().sums; }
  // The sum over the node's ranks, complete once help() has returned true in this generation (on a
  // node of one rank: its own buffer).
  const std::int64_t* total() const { return total_; }

  void begin();
  // This rank's maxima of this generation; call before the last publish().
  void set_maxima(std::span<const std::uint32_t> values);
  // This rank's values in `layer` are final for this generation (layers past those given hold
  // nothing: ignored).
  void publish(int layer);
  // Sums chunks whose layer every rank has published; true once every layer is summed.
  bool help();
  // The elementwise maximum over the node's ranks, after help() has returned true.
  void maxima(std::span<std::uint32_t> out) const;

  // Across nodes. Whether `layer`'s total over the node is complete in this generation.
  bool layer_summed(int layer) const;
  // The leader's buffers for MPI: the node's total (as total()), summed with the other nodes' into
  // result().
  std::int64_t* node_total() { return total_; }
  std::int64_t* result() { return result_; }
  const std::int64_t* result() const { return result_; }
  // The leader: result() and `maxima` (the maxima over all nodes) are final for this generation.
  void release(std::span<const std::uint32_t> maxima);
  // Whether the leader has released this generation; then released_maxima() gives its maxima.
  bool released() const;
  void released_maxima(std::span<std::uint32_t> out) const;

 private:
  struct Segment {
    std::int64_t* sums;
    std::int64_t* published;  // per layer: the generation whose values are final
    std::uint32_t* maxima;    // two generations' maxima, alternating
  };
  struct alignas(64) Progress {
    std::int64_t claimed, summed;  // (generation << kCountBits) | chunks claimed / summed
  };
  void allocate_window();
  const Segment& mine_segment() const { return segments_[std::size_t(rank_)]; }
  bool published_everywhere(int layer) const;
  long claim(int layer);
  void sum_chunk(int layer, long chunk);
  long summed(int layer) const;
  long chunks(int layer) const;

  MPI_Comm node_;
  int rank_, ranks_;  // on the node
  std::vector<std::pair<std::size_t, std::size_t>> layers_;
  std::size_t values_, maxima_size_;
  bool across_nodes_;
  std::vector<Segment> segments_;  // every rank's, in rank order
  std::int64_t* total_ = nullptr;
  Progress* progress_ = nullptr;  // per layer, in rank 0's segment
  std::int64_t* result_ = nullptr;      // across nodes: the sum over nodes, in rank 0's segment
  std::int64_t* released_ = nullptr;    // across nodes: the generation whose result is final
  std::uint32_t* global_maxima_ = nullptr;  // across nodes: the maxima over nodes
  std::int64_t generation_ = 0;
  std::vector<bool> done_;  // per layer, this generation: seen fully summed
  MPI_Win window_ = MPI_WIN_NULL;
};

}  // namespace mpicnn::dist
