#pragma once
// The margin-softmax classifier of a face-recognition model split by rows across ranks
// (train.classifier = sharded, issue 18; insightface's Partial FC without the sampling): rank r
// holds the class centres of its block of identities, with their optimizer state, and nothing of
// the others, so the classifier's memory per rank falls as 1 / ranks.
//
// A step: every rank's embeddings (the backbone's outputs) are gathered in rank order, which is
// global sample order, so every rank holds the global batch; each rank computes its rows'
// cosines, applies the margin where a sample's identity is one of its rows, and the softmax
// normaliser is combined across ranks: the maximum (exact in any order) and the sum of exp(z -
// max) on a fixed-point grid (core/metric_losses.hpp), summed as int64. Each rank then has the
// gradient of its rows, summed over the global batch's micro-batches on the exact sum's grid
// (distributed/exact_sum.hpp: the same rounding the rows would get in the arena) and updated
// locally, and its classes' share of every embedding's gradient, on a fixed-point grid too; the
// shares are summed across ranks as int64 (MPI_Reduce_scatter: each rank receives its own
// samples'). Every value is computed with the arithmetic of the unsplit model (core/
// embedding_kernels.hpp), so 1 rank with the whole matrix and N ranks sharded are bitwise equal.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/optimizer.hpp"
#include "core/params.hpp"
#include "core/task.hpp"
#include "distributed/comm.hpp"
#include "distributed/reducer.hpp"
#include "distributed/watchdog.hpp"

namespace mpicnn::dist {

// Rows [first, first + count) of `classes` on `rank` of `ranks`: contiguous blocks in rank order,
// the first classes % ranks ranks one row more.
struct RowRange {
  int first = 0, count = 0;
};
RowRange shard_rows(long classes, int rank, int ranks);

class ShardedClassifier {
 public:
  struct Options {
    core::Task::MarginSoftmax loss;
    int classes = 0, dim = 0;
    int micro_batch = 1;          // the exact sum's: the rows' gradients are rounded per micro-batch
    std::string weight_name;      // the full model's name of the matrix, "5.weight"
    core::OptimizerConfig optimizer;
    // Partial FC: each step's softmax takes every identity of the global batch and each other
    // identity with this probability, drawn from (seed, step, identity): the same for any split.
    double sample_rate = 1;
    std::uint64_t seed = 0;
  };
  ShardedClassifier(const Communicator& comm, const Options& options);

  // The step's loss over the global batch from this rank's `count` embeddings and labels (the
  // rank's contiguous part of the global batch of `global_count`): writes d(loss sum)/d(embedding)
  // of its samples into embedding_grad (count, dim) and rounds its rows' gradients onto the grid.
  // Returns the loss of the samples whose identity is in this rank's rows and the correct count of
  // its own samples: summed over ranks, the batch's.
  // `step`: the global step (the sampled identities). Its collectives go through `watchdog`,
  // after arrived(context).
  core::LossSum forward_backward(float* embedding_grad, const float* embeddings, const std::int32_t* labels, int count,
                                 int global_count, long step, Watchdog& watchdog, const std::string& context);
  // As ExactGradientSum::finish decides for a tensor, the same on every rank; the grid follows
  // the step's largest gradient.
  GradientReducer::Outcome finish();
  // The rows' summed gradient times `factor`, for the optimizer.
  core::GradientSource gradients(double factor) const;

  const RowRange& rows() const { return rows_; }
  int dim() const { return options_.dim; }
  const Options& options() const { return options_; }
  core::ParamStore& params() { return params_; }
  core::Optimizer& optimizer() { return *optimizer_; }
  // The run's seed (a resumed run's comes from its checkpoint): the sampled identities derive from it.
  void set_seed(std::uint64_t seed) { options_.seed = seed; }
  int grid_exponent() const { return exponent_; }
  void set_grid_exponent(int exponent) { exponent_ = exponent; }
  // Weights and optimizer state of the rows (what the classifier costs this rank).
  std::size_t state_bytes();

 private:
  template <class Start>
  void collective(const char* call, Start&& start);
  void combine_maxima(int batch);
  void leave_out_unsampled(int batch, long step);
  void round_row_gradients(int batch);
  void embedding_gradients(float* embedding_grad, int count, int batch);

  const Communicator& comm_;
  Watchdog* watchdog_ = nullptr;  // this step's
  Options options_;
  RowRange rows_;
  core::ParamStore params_;                    // one tensor: the rows (rows, dim)
  std::unique_ptr<core::Optimizer> optimizer_;
  int exponent_ = 0;                           // the rows' grid: |g| < 2^exponent
  double scale_ = 1;                           // this step's grid scale
  std::uint32_t largest_ = 0;                  // this step's largest |g| over all ranks' rows, as float bits
  std::vector<std::int64_t> sum_;              // the rows' gradient on the grid, summed over micro-batches
  // This step's buffers: the global batch's embeddings normalised, its labels, the rows normalised,
  // cosines and their gradients (batch, rows), the margin scores and per-sample figures.
  std::vector<float> x_hat_, x_norms_, w_hat_, w_norms_, cosines_, cos_grad_, w_hat_grad_;
  std::vector<std::int32_t> labels_;
  std::vector<char> sampled_;  // per row, this step (Partial FC)
  std::vector<double> z_, slope_, log_total_, input_scale_;
  std::vector<std::int64_t> exp_sums_, input_sums_, own_input_sums_;
  struct Best {  // MPI_DOUBLE_INT: the larger value, the smaller index on ties
    double value;
    int index;
  };
  std::vector<Best> best_;  // per sample: the top margin score, then the largest cosine with its class
  std::vector<int> counts_, offsets_;  // samples per rank and their first position in the global batch
};

}  // namespace mpicnn::dist
