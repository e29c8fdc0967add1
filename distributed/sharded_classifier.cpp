#include "sharded_classifier.hpp"

#include <algorithm>
#include <cmath>

#include "core/embedding_kernels.hpp"
#include "core/errors.hpp"
#include "core/metric_losses.hpp"
#include "core/rng.hpp"
#include "distributed/exact_sum.hpp"

namespace mpicnn::dist {
namespace {
constexpr std::uint64_t kSampleStream = std::uint64_t(1) << 40;  // derive_seed streams of the steps' samples
}  // namespace

RowRange shard_rows(long classes, int rank, int ranks) {
  const long base = classes / ranks, extra = classes % ranks;
  return {int(rank * base + std::min<long>(rank, extra)), int(base + (rank < extra ? 1 : 0))};
}

ShardedClassifier::ShardedClassifier(const Communicator& comm, const Options& options)
    : comm_(comm), options_(options), rows_(shard_rows(options.classes, comm.rank(), comm.size())) {
  if (options.classes < comm.size())
    throw ConfigError("'train.classifier' = sharded splits the " + std::to_string(options.classes) +
                      " identities of cosine(" + std::to_string(options.classes) + ") across " +
                      std::to_string(comm.size()) + " ranks: expected at least one identity per rank");
  // fan_in and fan_out as the cosine layer declares them (the initialisation reads them).
  params_.declare({options.weight_name, {rows_.count, options.dim}, 0, 0, 0, options.dim, options.classes,
                   core::ParamRole::weight});
  params_.allocate();
  optimizer_ = std::make_unique<core::Optimizer>(options.optimizer, params_);
  sum_.assign(params_.size(), 0);
  w_hat_.resize(std::size_t(rows_.count) * options.dim);
  w_norms_.resize(std::size_t(rows_.count));
}

std::size_t ShardedClassifier::state_bytes() {
  return params_.size() * sizeof(float) * (1 + optimizer_->state().size());
}

// Non-blocking, waited for through the hang detector: a stopped rank ends the job, naming it.
template <class Start>
void ShardedClassifier::collective(const char* call, Start&& start) {
  MPI_Request request = MPI_REQUEST_NULL;
  check(start(&request), call);
  watchdog_->wait(std::span<MPI_Request>(&request, 1), "the sharded classifier's exchange");
}

core::LossSum ShardedClassifier::forward_backward(float* embedding_grad, const float* embeddings,
                                                  const std::int32_t* labels, int count, int global_count, long step,
                                                  Watchdog& watchdog, const std::string& context) {
  const int dim = options_.dim, rows = rows_.count, size = comm_.size();
  watchdog_ = &watchdog;
  watchdog.arrived(context);
  counts_.assign(std::size_t(size), 0);
  offsets_.assign(std::size_t(size), 0);
  collective("MPI_Iallgather", [&](MPI_Request* r) {
    return MPI_Iallgather(&count, 1, MPI_INT, counts_.data(), 1, MPI_INT, comm_.handle(), r);
  });
  for (int r = 1; r < size; ++r) offsets_[r] = offsets_[r - 1] + counts_[r - 1];
  const int batch = offsets_[size - 1] + counts_[size - 1];
  if (batch != global_count)
    throw Error("sharded classifier: the ranks hold " + std::to_string(batch) + " samples, the step has " +
                std::to_string(global_count));

  // The global batch in sample order (ranks hold contiguous parts, in rank order).
  std::vector<int> float_counts(counts_), float_offsets(offsets_);
  for (int r = 0; r < size; ++r) float_counts[r] *= dim, float_offsets[r] *= dim;
  cosines_.resize(std::size_t(batch) * dim);  // the raw embeddings first: reused below for the cosines
  collective("MPI_Iallgatherv", [&](MPI_Request* r) {
    return MPI_Iallgatherv(embeddings, count * dim, MPI_FLOAT, cosines_.data(), float_counts.data(),
                           float_offsets.data(), MPI_FLOAT, comm_.handle(), r);
  });
  labels_.resize(std::size_t(batch));
  collective("MPI_Iallgatherv", [&](MPI_Request* r) {
    return MPI_Iallgatherv(labels, count, MPI_INT32_T, labels_.data(), counts_.data(), offsets_.data(), MPI_INT32_T,
                           comm_.handle(), r);
  });
  x_hat_.resize(std::size_t(batch) * dim), x_norms_.resize(std::size_t(batch));
  core::l2_normalize_forward(x_hat_.data(), x_norms_.data(), cosines_.data(), batch, dim);
  core::l2_normalize_forward(w_hat_.data(), w_norms_.data(), params_.value(0), rows, dim);
  cosines_.resize(std::size_t(batch) * rows);
  core::cosine_forward(cosines_.data(), x_hat_.data(), w_hat_.data(), batch, dim, rows);

  const core::MarginBlock block{options_.loss.kind, options_.loss.scale, options_.loss.margin, options_.classes,
                                rows_.first, rows};
  z_.resize(std::size_t(batch) * rows);
  slope_.assign(std::size_t(batch), 1.0);
  core::margin_scores(z_.data(), slope_.data(), cosines_.data(), labels_.data(), block, batch);
  if (options_.sample_rate < 1) leave_out_unsampled(batch, step);
  combine_maxima(batch);

  exp_sums_.resize(std::size_t(batch));
  for (int n = 0; n < batch; ++n)
    exp_sums_[n] = core::exp_sum_on_grid(z_.data() + std::size_t(n) * rows, rows, best_[n].value, options_.classes);
  collective("MPI_Iallreduce", [&](MPI_Request* r) {
    return MPI_Iallreduce(MPI_IN_PLACE, exp_sums_.data(), batch, MPI_INT64_T, MPI_SUM, comm_.handle(), r);
  });
  log_total_.resize(std::size_t(batch));
  core::LossSum result;
  for (int n = 0; n < batch; ++n) {
    log_total_[n] = std::log(core::exp_sum_value(exp_sums_[n], options_.classes)) + best_[n].value;
    const int label = labels_[n] - rows_.first;
    if (label >= 0 && label < rows) result.sum += log_total_[n] - z_[std::size_t(n) * rows + label];
  }
  const int own = offsets_[comm_.rank()];
  for (int n = own; n < own + count; ++n)
    if (best_[std::size_t(batch + n)].index == labels_[n]) result.correct += 1;
  result.normalizer = count;

  cos_grad_.resize(std::size_t(batch) * rows);
  core::margin_gradients(cos_grad_.data(), z_.data(), log_total_.data(), slope_.data(), labels_.data(), block, batch);
  round_row_gradients(batch);
  embedding_gradients(embedding_grad, count, batch);
  return result;
}

// Partial FC's sampling: a row left out this step has the score -inf for every sample, so its exp
// term, probability and gradient are 0 (its momentum and weight decay still act, as on any
// parameter whose gradient is 0). The batch's identities are always in: every maximum is finite.
void ShardedClassifier::leave_out_unsampled(int batch, long step) {
  const int rows = rows_.count;
  sampled_.assign(std::size_t(rows), 0);
  for (int n = 0; n < batch; ++n)
    if (labels_[n] >= rows_.first && labels_[n] < rows_.first + rows) sampled_[labels_[n] - rows_.first] = 1;
  const std::uint64_t step_seed = core::derive_seed(options_.seed, kSampleStream + std::uint64_t(step));
  for (int k = 0; k < rows; ++k) {
    const double u = double(core::derive_seed(step_seed, std::uint64_t(rows_.first + k)) >> 11) * 0x1.0p-53;
    if (u < options_.sample_rate) sampled_[k] = 1;
  }
  for (int n = 0; n < batch; ++n)
    for (int k = 0; k < rows; ++k)
      if (!sampled_[k]) z_[std::size_t(n) * rows + k] = -INFINITY;
}

// best_[n]: sample n's largest margin score (the softmax's shift); best_[batch + n]: its largest
// cosine and, of equal ones, the first class (std::max_element's choice over the whole row).
void ShardedClassifier::combine_maxima(int batch) {
  const int rows = rows_.count;
  best_.resize(2 * std::size_t(batch));
  for (int n = 0; n < batch; ++n) {
    const double* z = z_.data() + std::size_t(n) * rows;
    const float* c = cosines_.data() + std::size_t(n) * rows;
    const int top = int(std::max_element(c, c + rows) - c);
    best_[n] = {*std::max_element(z, z + rows), 0};
    best_[std::size_t(batch + n)] = {double(c[top]), rows_.first + top};
  }
  collective("MPI_Iallreduce", [&](MPI_Request* r) {
    return MPI_Iallreduce(MPI_IN_PLACE, best_.data(), 2 * batch, MPI_DOUBLE_INT, MPI_MAXLOC, comm_.handle(), r);
  });
}

// As the cosine layer's weight gradient reaches the exact sum: per micro-batch of the global
// batch, normalised rows' gradient, then the chain through the rows' normalisation added onto a
// zero arena, rounded onto the grid. The params' gradient buffer plays the arena.
void ShardedClassifier::round_row_gradients(int batch) {
  const int dim = options_.dim, rows = rows_.count, micro = options_.micro_batch;
  const long micro_batches = (batch + micro - 1) / micro;
  const double limit = grid::limit(micro_batches);
  scale_ = grid::scale(exponent_, micro_batches);
  w_hat_grad_.resize(std::size_t(rows) * dim);
  float* row_grad = params_.grad(0);
  std::uint32_t largest = 0;
  for (long m = 0; m < micro_batches; ++m) {
    const int start = int(m) * micro, samples = std::min(micro, batch - start);
    core::cosine_weight_gradient(w_hat_grad_.data(), cos_grad_.data() + std::size_t(start) * rows, std::size_t(rows),
                                 x_hat_.data() + std::size_t(start) * dim, samples, dim, rows);
    core::l2_normalize_backward(row_grad, w_hat_grad_.data(), w_hat_.data(), w_norms_.data(), rows, dim, true);
    largest = std::max(largest, grid::add(row_grad, sum_.data(), std::size_t(rows) * dim, scale_, limit, m == 0));
  }
  collective("MPI_Iallreduce", [&](MPI_Request* r) {
    return MPI_Iallreduce(&largest, &largest_, 1, MPI_UINT32_T, MPI_MAX, comm_.handle(), r);
  });
}

void ShardedClassifier::embedding_gradients(float* embedding_grad, int count, int batch) {
  const int dim = options_.dim, rows = rows_.count, own = offsets_[comm_.rank()];
  input_scale_.assign(std::size_t(batch), 0.0);
  for (int n = 0; n < batch; ++n)
    for (int k = 0; k < rows; ++k)
      input_scale_[n] = std::max(input_scale_[n], std::abs(double(cos_grad_[std::size_t(n) * rows + k])));
  collective("MPI_Iallreduce", [&](MPI_Request* r) {
    return MPI_Iallreduce(MPI_IN_PLACE, input_scale_.data(), batch, MPI_DOUBLE, MPI_MAX, comm_.handle(), r);
  });
  for (double& scale : input_scale_) scale = core::cosine_input_scale(scale, options_.classes);
  input_sums_.assign(std::size_t(batch) * dim, 0);
  core::cosine_input_gradient_add(input_sums_.data(), cos_grad_.data(), std::size_t(rows), w_hat_.data(),
                                  input_scale_.data(), batch, dim, rows);
  std::vector<int> receive(counts_);
  for (int& r : receive) r *= dim;
  own_input_sums_.resize(std::size_t(count) * dim);
  collective("MPI_Ireduce_scatter", [&](MPI_Request* r) {
    return MPI_Ireduce_scatter(input_sums_.data(), own_input_sums_.data(), receive.data(), MPI_INT64_T, MPI_SUM,
                               comm_.handle(), r);
  });
  std::vector<float> x_hat_grad(std::size_t(count) * dim);
  core::cosine_input_gradient_finish(x_hat_grad.data(), own_input_sums_.data(), input_scale_.data() + own, count, dim);
  core::l2_normalize_backward(embedding_grad, x_hat_grad.data(), x_hat_.data() + std::size_t(own) * dim,
                              x_norms_.data() + own, count, dim);
}

GradientReducer::Outcome ShardedClassifier::finish() {
  GradientReducer::Outcome outcome = GradientReducer::Outcome::ok;
  if (grid::non_finite(largest_)) outcome = GradientReducer::Outcome::non_finite;
  else if (grid::outgrown(largest_, exponent_)) outcome = GradientReducer::Outcome::retry;
  exponent_ = grid::follow(largest_, exponent_);
  return outcome;
}

core::GradientSource ShardedClassifier::gradients(double factor) const {
  return [this, factor](std::size_t begin, std::size_t end, float* out) {
    std::fill(out, out + (end - begin), 0.f);
    const double unscale = grid::non_finite(largest_) ? NAN : factor / scale_;
    for (std::size_t i = begin; i < std::min(end, sum_.size()); ++i) out[i - begin] = float(double(sum_[i]) * unscale);
  };
}

}  // namespace mpicnn::dist
