#pragma once
// Rank-count-independent gradient sums. As backward finishes a layer of a micro-batch, its
// gradients are rounded onto a fixed-point grid of 64-bit integers and added to a per-rank sum;
// integers add exactly, in any grouping and order, so the summed gradient is bitwise the same
// whether one rank computed every micro-batch or many ranks shared them: N ranks give the result
// of one. In a rank's last micro-batch each layer's sums start their allreduce at once, so the
// communication overlaps the rest of backward.
//
// The grid of a parameter tensor holds magnitudes below 2^e. Its exponent e is chosen from the
// previous steps (the largest gradient seen, plus a margin), identically on every rank, so that
// no pass over the gradients is needed before rounding. A step whose gradients outgrow the grid
// (rare: a jump beyond the margin, or the first step) is detected from the allreduced largest
// magnitudes, the grid is widened and the step computed again. The exponents are part of the
// training state: a checkpoint stores them so that a resumed run rounds like an uninterrupted one.
//
// Where ranks share a node, their sums meet in shared memory (NodeSum), summed by the ranks that
// are waiting anyway; across nodes the nodes' leaders then sum the node totals, a layer's
// MPI_Iallreduce starting as soon as its node total is complete. With train.node_sum = mpi (or
// one rank per node) each layer's sums are an MPI_Iallreduce over all ranks.
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/params.hpp"
#include "distributed/comm.hpp"
#include "distributed/node_sum.hpp"
#include "distributed/reducer.hpp"
#include "distributed/watchdog.hpp"

namespace mpicnn::dist {

// One tensor's fixed-point grid as ExactGradientSum applies it, for a tensor kept outside the
// arena that must round exactly as it would inside (the rows of a sharded classifier,
// distributed/sharded_classifier.hpp).
namespace grid {
// The step's limit and scale: with `global_micro_batches` values per element, each below the
// limit, the sum stays below 2^62; the scale maps |g| < 2^exponent below the limit.
double limit(long global_micro_batches);
double scale(int exponent, long global_micro_batches);
// Adds trunc(g * scale) to sum (first: sets it) where |g * scale| < limit and zeroes g; returns
// the largest |g| as float bits.
std::uint32_t add(float* g, std::int64_t* sum, std::size_t n, double scale, double limit, bool first);
bool non_finite(std::uint32_t largest);
bool outgrown(std::uint32_t largest, int exponent);
// The next step's exponent after a step whose largest |g| was `largest`.
int follow(std::uint32_t largest, int exponent);
// The grid a fresh run starts from (|g| < 1); the first step widens it where gradients are larger.
inline constexpr int kInitialExponent = 0;
}  // namespace grid

class ExactGradientSum final : public GradientReducer {
 public:

  // shared_memory: sum through NodeSum where ranks share a node (false: MPI over all ranks).
  ExactGradientSum(const Communicator& comm, core::ParamStore& params, int micro_batch, bool shared_memory = true);
  ~ExactGradientSum();
  ExactGradientSum(const ExactGradientSum&) = delete;
  ExactGradientSum& operator=(const ExactGradientSum&) = delete;

  // A new step of `global_micro_batches` micro-batches over all ranks. The gradient arena must be
  // zero, as it is from the start and after every step (layer_done zeroes what it took).
  int micro_batch(int) const override { return micro_batch_; }
  void begin_step(long global_micro_batches) override;
  // Backward has finished layer `layer` of a micro-batch: its gradients go onto the grid (the
  // step's `first` micro-batch starts the sums, so they need no zeroing) and its part of the arena
  // is zeroed for the next micro-batch. In this rank's last micro-batch (`last`; a rank without
  // samples calls it once per layer, first and last) the layer's sum across ranks starts.
  void layer_done(int layer, bool first, bool last) override;
  // Waits for the sums and for `also` (other requests of this step, e.g. the loss sums). retry:
  // some gradient outgrew its grid, which is now wider; compute the step again (from begin_step).
  // Otherwise call write_gradients next.
  Result finish(Watchdog& watchdog, std::span<MPI_Request> also) override;
  core::GradientSource gradients(double factor) override;
  bool shared_memory() const { return node_ != nullptr; }
  bool across_nodes() const { return across_nodes_; }
  // The summed gradient of the arena's floats [begin, end) times `factor` (1 / the loss
  // normaliser) into out[0, end - begin), identically on every rank; tensors holding a NaN or
  // infinity get NaN, padding between tensors zero. Ranges may be written concurrently: as a
  // core::GradientSource, the optimizer asks for each chunk just before updating it.
  void write_gradients(double factor, std::size_t begin, std::size_t end, float* out) const;

  // Grid exponents per parameter tensor, for checkpoints.
  std::vector<int> grid() const override { return exponent_; }
  void set_grid(const std::vector<int>& exponents) override;

 private:
  struct Tensor {
    std::size_t offset, size;
    int layer;
  };
  void start_allreduce(int layer);
  void start_node_allreduces();
  bool lead_across_nodes();
  void progress();
  void wait(Watchdog& watchdog, std::span<MPI_Request> also);
  void follow_gradients();
  const std::int64_t* summed() const;

  const Communicator& comm_;
  core::ParamStore& params_;
  int micro_batch_;
  std::vector<Tensor> tensors_;
  std::vector<int> exponent_;            // per tensor: the grid holds |g| < 2^exponent
  std::vector<double> scale_;            // per tensor, this step: sum += trunc(g * scale)
  double limit_ = 0;                     // this step: |g * scale| stays below it on the grid
  std::unique_ptr<NodeSum> node_;        // the shared-memory sum, or null: MPI's allreduce
  bool across_nodes_ = false;            // node_ sums each node; the leaders sum the nodes
  bool leader_ = false;                  // across nodes: this rank sums the nodes for its node
  int next_layer_ = -1;                  // the leader, this step: the next layer whose nodes' sum to start
  bool maxima_started_ = false;          // the leader, this step: the nodes' maxima are being reduced
  std::vector<std::int64_t> own_sum_;    // sum_'s storage when it is not in node_'s shared memory
  std::int64_t* sum_ = nullptr;          // arena-sized fixed-point sum of this rank's micro-batches
  // ...and of all ranks' through MPI (on one rank: sum_ itself). Not summed in place: in place, Open MPI's
  // non-blocking allreduce takes a binomial tree at any rank count (rank 0 does every addition);
  // out of place it takes Rabenseifner's algorithm for large buckets from 4 ranks on.
  std::vector<std::int64_t> total_;
  std::vector<std::uint32_t> largest_;   // per tensor: the largest |g| seen this step, as float bits
  std::vector<std::uint32_t> chunk_largest_;  // layer_done's per-chunk largest |g| (as bits)
  std::vector<MPI_Request> requests_;    // per layer's sums, then one for the largest magnitudes
  std::vector<MPI_Request> waiting_;     // finish(): requests_ and the caller's; keeps its capacity
};

}  // namespace mpicnn::dist
