#include "exact_sum.hpp"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>

#include "core/errors.hpp"
#include "core/parallel.hpp"

namespace mpicnn::dist {
namespace {

// How far (as a power of two) gradients may grow from one step to the next without a recomputed
// step. The grid keeps 62 - log2(micro-batches) - margin bits below its top: far finer than float.
constexpr int kMargin = 4;
constexpr std::uint32_t kNonFiniteBits = 0x7f800000u;  // |g| as bits at or above this: inf or NaN
constexpr std::size_t kChunk = 1 << 13;

// Adds trunc(g * scale) to `sum` (kFirst: sets it) for the values on the grid (|g * scale| <
// limit; others, NaN included, add nothing: their step is recomputed or rejected) and zeroes g.
// Returns the largest |g| as float bits. Truncation toward zero: any fixed rule is exact enough at
// 2^-50 of the grid's top, and this one is one vector instruction (llrint is a library call).
template <bool kFirst>
std::uint32_t add_to_grid(float* g, std::int64_t* sum, std::size_t n, double scale, double limit) {
  std::uint32_t largest = 0;
  for (std::size_t i = 0; i < n; ++i) {
    largest = std::max(largest, std::bit_cast<std::uint32_t>(g[i]) & 0x7fffffffu);
    const double x = double(g[i]) * scale;
    const auto on_grid = static_cast<std::int64_t>(std::fabs(x) < limit ? x : 0.0);
    sum[i] = kFirst ? on_grid : sum[i] + on_grid;
    g[i] = 0.f;
  }
  return largest;
}

}  // namespace

namespace grid {
double limit(long global_micro_batches) {
  const int headroom = int(std::ceil(std::log2(double(std::max(1L, global_micro_batches))))) + 1;
  return std::ldexp(1.0, 62 - headroom);
}
double scale(int exponent, long global_micro_batches) { return std::ldexp(limit(global_micro_batches), -exponent); }
std::uint32_t add(float* g, std::int64_t* sum, std::size_t n, double scale, double limit, bool first) {
  return first ? add_to_grid<true>(g, sum, n, scale, limit) : add_to_grid<false>(g, sum, n, scale, limit);
}
bool non_finite(std::uint32_t largest) { return largest >= kNonFiniteBits; }
bool outgrown(std::uint32_t largest, int exponent) {
  return !non_finite(largest) && std::bit_cast<float>(largest) >= std::ldexp(1.f, exponent);
}
int follow(std::uint32_t largest, int exponent) {
  if (largest == 0 || non_finite(largest)) return exponent;
  int top = 0;
  std::frexp(std::bit_cast<float>(largest), &top);  // largest < 2^top
  return top + kMargin;
}
}  // namespace grid

ExactGradientSum::ExactGradientSum(const Communicator& comm, core::ParamStore& params, int micro_batch,
                                   bool shared_memory)
    : comm_(comm), params_(params), micro_batch_(micro_batch) {
  int layers = 0;
  std::size_t chunks = 0;
  for (const core::ParamInfo& info : params.infos()) {
    tensors_.push_back({info.offset, info.size, info.layer});
    layers = std::max(layers, info.layer + 1);
    chunks = std::max(chunks, (info.size + kChunk - 1) / kChunk);
  }
  exponent_.assign(tensors_.size(), grid::kInitialExponent);
  scale_.assign(tensors_.size(), 1.0);
  largest_.assign(tensors_.size(), 0);
  chunk_largest_.resize(chunks);
  requests_.assign(std::size_t(layers) + 1, MPI_REQUEST_NULL);
  // Every rank takes the same branch: the choice depends only on the job's layout.
  if (shared_memory && comm.size() > 1 && comm.most_ranks_on_a_node() > 1) {
    std::vector<std::pair<std::size_t, std::size_t>> ranges;
    for (int layer = 0; layer < layers; ++layer) ranges.push_back(params.layer_range(layer, layer));
    across_nodes_ = comm.nodes() > 1;
    leader_ = across_nodes_ && comm.node_rank() == 0;
    node_ = std::make_unique<NodeSum>(comm, std::move(ranges), params.size(), tensors_.size(), across_nodes_);
    sum_ = node_->mine();
    return;
  }
  own_sum_.assign(params.size(), 0);
  sum_ = own_sum_.data();
  if (comm.size() > 1) total_.assign(params.size(), 0);
}

const std::int64_t* ExactGradientSum::summed() const {
  if (node_) return across_nodes_ ? node_->result() : node_->total();
  return comm_.size() > 1 ? total_.data() : sum_;
}

ExactGradientSum::~ExactGradientSum() {
  for (MPI_Request& r : requests_)
    if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
}

void ExactGradientSum::set_grid(const std::vector<int>& exponents) {
  if (exponents.size() != exponent_.size())
    throw Error("gradient grid has " + std::to_string(exponents.size()) + " exponents, expected " +
                std::to_string(exponent_.size()) + " (one per parameter tensor)");
  exponent_ = exponents;
}

void ExactGradientSum::begin_step(long global_micro_batches) {
  if (node_) node_->begin();
  next_layer_ = int(requests_.size()) - 2;  // the last layer with parameters
  maxima_started_ = false;
  limit_ = grid::limit(global_micro_batches);
  for (std::size_t t = 0; t < tensors_.size(); ++t) scale_[t] = grid::scale(exponent_[t], global_micro_batches);
  std::fill(largest_.begin(), largest_.end(), 0u);
}

void ExactGradientSum::layer_done(int layer, bool first, bool last) {
  float* grads = params_.grads().data();
  for (std::size_t t = 0; t < tensors_.size(); ++t) {
    if (tensors_[t].layer != layer) continue;
    const Tensor& tensor = tensors_[t];
    const std::size_t chunks = (tensor.size + kChunk - 1) / kChunk;
    core::parallel_for(chunks, 4.0 * kChunk, [&](std::size_t c) {
      const std::size_t begin = c * kChunk, n = std::min(kChunk, tensor.size - begin);
      float* g = grads + tensor.offset + begin;
      std::int64_t* sum = sum_ + tensor.offset + begin;
      chunk_largest_[c] = first ? add_to_grid<true>(g, sum, n, scale_[t], limit_)
                                : add_to_grid<false>(g, sum, n, scale_[t], limit_);
    });
    for (std::size_t c = 0; c < chunks; ++c) largest_[t] = std::max(largest_[t], chunk_largest_[c]);
  }
  if (!last || comm_.size() == 1) return;
  if (node_) {
    if (layer == 0) node_->set_maxima(largest_);  // backward ends with layer 0: all magnitudes known
    node_->publish(layer);
    if (leader_) {
      // The leader sums what its node has published so far (on a node of one rank: nothing to do),
      // so that the nodes' sums start during backward, not only once the node's ranks wait.
      node_->help();
      start_node_allreduces();
      progress();
    }
    return;
  }
  start_allreduce(layer);
  progress();
}

void ExactGradientSum::start_allreduce(int layer) {
  const auto [begin, end] = params_.layer_range(layer, layer);
  if (end > begin)
    check(MPI_Iallreduce(sum_ + begin, total_.data() + begin, int(end - begin), MPI_INT64_T, MPI_SUM,
                         comm_.handle(), &requests_[std::size_t(layer)]),
          "MPI_Iallreduce");
  if (layer == 0)  // backward ends with layer 0: every tensor's largest magnitude is known
    check(MPI_Iallreduce(MPI_IN_PLACE, largest_.data(), int(largest_.size()), MPI_UINT32_T, MPI_MAX, comm_.handle(),
                         &requests_.back()),
          "MPI_Iallreduce");
}

// The leader: starts the nodes' sum of each layer whose node total is complete. The leaders start
// them in the same order, the last layer first, as collectives on one communicator must be.
void ExactGradientSum::start_node_allreduces() {
  for (; next_layer_ >= 0 && node_->layer_summed(next_layer_); --next_layer_) {
    const auto [begin, end] = params_.layer_range(next_layer_, next_layer_);
    if (end > begin)
      check(MPI_Iallreduce(node_->node_total() + begin, node_->result() + begin, int(end - begin), MPI_INT64_T, MPI_SUM,
                           comm_.leaders_handle(), &requests_[std::size_t(next_layer_)]),
            "MPI_Iallreduce");
  }
}

// The leader: true once the nodes' sums and maxima are complete and released to the node.
bool ExactGradientSum::lead_across_nodes() {
  start_node_allreduces();
  if (next_layer_ >= 0) return false;
  if (!maxima_started_) {  // every layer published on the node: so are its ranks' maxima
    node_->maxima(largest_);
    check(MPI_Iallreduce(MPI_IN_PLACE, largest_.data(), int(largest_.size()), MPI_UINT32_T, MPI_MAX,
                         comm_.leaders_handle(), &requests_.back()),
          "MPI_Iallreduce");
    maxima_started_ = true;
  }
  int done = 0;
  check(MPI_Testall(int(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
  if (done) node_->release(largest_);
  return done;
}

// Open MPI progresses non-blocking collectives only inside MPI calls: nudge them between layers.
void ExactGradientSum::progress() {
  for (MPI_Request& r : requests_) {
    int done = 0;
    if (r != MPI_REQUEST_NULL) check(MPI_Test(&r, &done, MPI_STATUS_IGNORE), "MPI_Test");
  }
}

ExactGradientSum::Result ExactGradientSum::finish(Watchdog& watchdog, std::span<MPI_Request> also) {
  Result result;
  const auto start = std::chrono::steady_clock::now();
  wait(watchdog, also);
  result.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Every rank decides from the same allreduced magnitudes, so all take the same branch.
  for (std::size_t t = 0; t < tensors_.size(); ++t) {
    if (grid::non_finite(largest_[t])) result.outcome = Outcome::non_finite;
    else if (grid::outgrown(largest_[t], exponent_[t]) && result.outcome == Outcome::ok) result.outcome = Outcome::retry;
  }
  follow_gradients();  // scale_ keeps this step's grid for write_gradients
  return result;
}

core::GradientSource ExactGradientSum::gradients(double factor) {
  return [this, factor](std::size_t begin, std::size_t end, float* out) { write_gradients(factor, begin, end, out); };
}

void ExactGradientSum::write_gradients(double factor, std::size_t begin, std::size_t end, float* out) const {
  std::fill(out, out + (end - begin), 0.f);
  const std::int64_t* sum = summed();
  for (std::size_t t = 0; t < tensors_.size(); ++t) {
    const std::size_t from = std::max(begin, tensors_[t].offset), to = std::min(end, tensors_[t].offset + tensors_[t].size);
    const double unscale = largest_[t] >= kNonFiniteBits ? NAN : factor / scale_[t];
    for (std::size_t i = from; i < to; ++i) out[i - begin] = float(double(sum[i]) * unscale);
  }
}

// Waits for the sums (in shared memory: sums what has arrived meanwhile) and for `also`.
void ExactGradientSum::wait(Watchdog& watchdog, std::span<MPI_Request> also) {
  if (node_) {
    bool summed = false, released = !across_nodes_;
    watchdog.wait_until(
        [&] {
          summed = summed || node_->help();
          released = released || (leader_ ? lead_across_nodes() : node_->released());
          int done = 0;
          check(MPI_Testall(int(also.size()), also.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
          return summed && released && done;
        },
        across_nodes_ ? "the gradient sum across nodes" : "the gradient sum");
    if (across_nodes_) node_->released_maxima(largest_);
    else node_->maxima(largest_);
    return;
  }
  waiting_.assign(requests_.begin(), requests_.end());  // within its capacity after the first step
  waiting_.insert(waiting_.end(), also.begin(), also.end());
  watchdog.wait(waiting_, "the gradient allreduce");
  std::fill(requests_.begin(), requests_.end(), MPI_REQUEST_NULL);
  std::fill(also.begin(), also.end(), MPI_REQUEST_NULL);
}

// The next step's grid: the largest gradient of this one plus the margin. After a retry the
// recomputed step fits by construction.
void ExactGradientSum::follow_gradients() {
  for (std::size_t t = 0; t < tensors_.size(); ++t) exponent_[t] = grid::follow(largest_[t], exponent_[t]);
}

}  // namespace mpicnn::dist
