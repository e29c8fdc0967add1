#include "node_sum.hpp"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <exception>

#include "core/errors.hpp"
#include "core/parallel.hpp"

namespace mpicnn::dist {
namespace {

constexpr std::size_t kChunk = 1 << 13;  // values per claimed chunk: 64 KiB of each rank's buffer
constexpr int kCountBits = 24;           // a layer of up to 2^24 - 1 chunks (about 2^37 values)
constexpr std::int64_t kCountMask = (std::int64_t(1) << kCountBits) - 1;
constexpr std::size_t kLine = 64;

std::size_t padded(std::size_t bytes) { return (bytes + kLine - 1) / kLine * kLine; }

// Reads a counter tagged with its generation as its count in `generation`, which reaches `limit`:
// 0 while it holds an older one. A newer one cannot be met (a counter moves to generation g+1
// only once every rank has published in g+1, i.e. has left g); were it met, g would be complete.
long count_in(std::int64_t word, std::int64_t generation, long limit) {
  const std::int64_t tag = word >> kCountBits;
  return tag < generation ? 0 : tag > generation ? limit : long(word & kCountMask);
}

// Adds one to a tagged counter unless it has reached `limit`; returns the count before, or -1.
long increment_below(std::int64_t& counter, std::int64_t generation, long limit) {
  std::atomic_ref<std::int64_t> word(counter);
  std::int64_t seen = word.load(std::memory_order_acquire);
  for (;;) {
    const long count = count_in(seen, generation, limit);
    if (count >= limit) return -1;
    if (word.compare_exchange_weak(seen, (generation << kCountBits) | (count + 1), std::memory_order_acq_rel))
      return count;
  }
}

}  // namespace

NodeSum::NodeSum(const Communicator& comm, std::vector<std::pair<std::size_t, std::size_t>> layers, std::size_t values,
                 std::size_t maxima, bool across_nodes)
    : node_(comm.node_handle()),
      rank_(comm.node_rank()),
      ranks_(comm.ranks_on_node()),
      layers_(std::move(layers)),
      values_(values),
      maxima_size_(maxima),
      across_nodes_(across_nodes),
      done_(layers_.size(), false) {
  for (const auto& [begin, end] : layers_)
    if ((end - begin + kChunk - 1) / kChunk > std::size_t(kCountMask))
      throw Error("a layer of " + std::to_string(end - begin) + " parameters is too large for the shared-memory sum");
  allocate_window();
  check(MPI_Barrier(node_), "MPI_Barrier");  // every segment zeroed before anyone reads it
}

// Loads and stores go straight to the window, ordered by C++ atomics: Open MPI's shared windows
// use MPI's unified memory model, where that is valid without MPI_Win_sync on cache-coherent CPUs.
void NodeSum::allocate_window() {
  // Every rank's segment: its sums, its per-layer published generations, two halves of its maxima;
  // rank 0's continues with the total and the per-layer progress, and across nodes with the
  // result, its release flag and the maxima over nodes.
  const std::size_t sums = padded(values_ * sizeof(std::int64_t)), flags = padded(layers_.size() * sizeof(std::int64_t));
  const std::size_t maxima = padded(maxima_size_ * sizeof(std::uint32_t)), own = sums + flags + 2 * maxima;
  const std::size_t progress = layers_.size() * sizeof(Progress), leader = across_nodes_ ? sums + kLine + maxima : 0;
  const std::size_t total = ranks_ > 1 ? sums : 0;  // one rank: its own sums are the total
  const std::size_t extra = rank_ == 0 ? total + progress + leader : 0;
  const std::size_t bytes = own + extra + kLine;  // kLine more: MPI promises no alignment
  MPI_Info info;
  check(MPI_Info_create(&info), "MPI_Info_create");
  check(MPI_Info_set(info, "alloc_shared_noncontig", "true"), "MPI_Info_set");  // each segment near its rank
  char* base = nullptr;
  const int status = MPI_Win_allocate_shared(MPI_Aint(bytes), 1, info, node_, &base, &window_);
  MPI_Info_free(&info);
  check(status, "MPI_Win_allocate_shared");
  std::fill(base, base + bytes, 0);
  for (int r = 0; r < ranks_; ++r) {
    MPI_Aint size = 0;
    int unit = 0;
    char* pointer = nullptr;
    check(MPI_Win_shared_query(window_, r, &size, &unit, &pointer), "MPI_Win_shared_query");
    // Mappings start on a page, so every process finds the same offset to the next line.
    pointer += (kLine - reinterpret_cast<std::uintptr_t>(pointer) % kLine) % kLine;
    segments_.push_back({reinterpret_cast<std::int64_t*>(pointer), reinterpret_cast<std::int64_t*>(pointer + sums),
                         reinterpret_cast<std::uint32_t*>(pointer + sums + flags)});
  }
  char* shared = reinterpret_cast<char*>(segments_[0].sums) + own;
  total_ = ranks_ > 1 ? reinterpret_cast<std::int64_t*>(shared) : segments_[0].sums;
  progress_ = reinterpret_cast<Progress*>(shared + total);
  if (!across_nodes_) return;
  result_ = reinterpret_cast<std::int64_t*>(shared + total + progress);
  released_ = reinterpret_cast<std::int64_t*>(shared + total + progress + sums);
  global_maxima_ = reinterpret_cast<std::uint32_t*>(shared + total + progress + sums + kLine);
}

NodeSum::~NodeSum() {
  // MPI_Win_free waits for every rank: while an error unwinds on this rank alone, the others may
  // never come, and main ends the job with MPI_Abort next anyway.
  if (std::uncaught_exceptions() == 0 && window_ != MPI_WIN_NULL) MPI_Win_free(&window_);
}

void NodeSum::set_maxima(std::span<const std::uint32_t> values) {
  // Alternating halves: a rank that is a generation ahead never overwrites what a slower one reads.
  std::copy(values.begin(), values.end(), mine_segment().maxima + (generation_ % 2) * maxima_size_);
}

void NodeSum::publish(int layer) {
  if (std::size_t(layer) >= layers_.size()) return;  // past the last layer with parameters: nothing to sum
  std::atomic_ref<std::int64_t>(mine_segment().published[layer]).store(generation_, std::memory_order_release);
}

bool NodeSum::published_everywhere(int layer) const {
  for (int r = 0; r < ranks_; ++r)
    // Later generations count too: a rank that was descheduled may find the others a step ahead.
    if (std::atomic_ref<std::int64_t>(segments_[std::size_t(r)].published[layer]).load(std::memory_order_acquire) < generation_)
      return false;
  return true;
}

long NodeSum::chunks(int layer) const {
  const auto [begin, end] = layers_[std::size_t(layer)];
  return long((end - begin + kChunk - 1) / kChunk);
}

long NodeSum::claim(int layer) { return increment_below(progress_[layer].claimed, generation_, chunks(layer)); }

long NodeSum::summed(int layer) const {
  return count_in(std::atomic_ref<std::int64_t>(progress_[layer].summed).load(std::memory_order_acquire), generation_,
                  chunks(layer));
}

void NodeSum::sum_chunk(int layer, long chunk) {
  const std::size_t begin = layers_[std::size_t(layer)].first + std::size_t(chunk) * kChunk;
  const std::size_t n = std::min(kChunk, layers_[std::size_t(layer)].second - begin);
  std::int64_t* out = total_ + begin;
  const std::int64_t* first = segments_[0].sums + begin;
  if (ranks_ > 1) std::copy(first, first + n, out);
  for (int r = 1; r < ranks_; ++r) {
    const std::int64_t* in = segments_[std::size_t(r)].sums + begin;
    for (std::size_t i = 0; i < n; ++i) out[i] += in[i];
  }
  increment_below(progress_[layer].summed, generation_, chunks(layer));
}

void NodeSum::begin() {
  ++generation_;
  std::fill(done_.begin(), done_.end(), false);
}

bool NodeSum::help() {
  bool all = true;
  for (int layer = int(layers_.size()) - 1; layer >= 0; --layer) {  // backward publishes the last layer first
    if (done_[std::size_t(layer)]) continue;
    if (!published_everywhere(layer)) {
      all = false;
      continue;
    }
    // As many tries as chunks, each summing whichever chunk it claims: the rank's threads share
    // the layer, and tries that find everything claimed by other ranks do nothing.
    core::parallel_for(std::size_t(chunks(layer)), double(kChunk) * ranks_, [&](std::size_t) {
      if (const long chunk = claim(layer); chunk >= 0) sum_chunk(layer, chunk);
    });
    done_[std::size_t(layer)] = summed(layer) == chunks(layer);
    all = all && done_[std::size_t(layer)];
  }
  return all;
}

void NodeSum::maxima(std::span<std::uint32_t> out) const {
  std::fill(out.begin(), out.end(), 0u);
  for (int r = 0; r < ranks_; ++r) {
    const std::uint32_t* in = segments_[std::size_t(r)].maxima + (generation_ % 2) * maxima_size_;
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = std::max(out[i], in[i]);
  }
}

bool NodeSum::layer_summed(int layer) const { return published_everywhere(layer) && summed(layer) == chunks(layer); }

void NodeSum::release(std::span<const std::uint32_t> maxima) {
  assert(across_nodes_);
  std::copy(maxima.begin(), maxima.end(), global_maxima_);
  std::atomic_ref<std::int64_t>(*released_).store(generation_, std::memory_order_release);
}

bool NodeSum::released() const {
  assert(across_nodes_);
  return std::atomic_ref<std::int64_t>(*released_).load(std::memory_order_acquire) >= generation_;
}

void NodeSum::released_maxima(std::span<std::uint32_t> out) const {
  std::copy(global_maxima_, global_maxima_ + out.size(), out.begin());
}

}  // namespace mpicnn::dist
