#include "datasets/reader.hpp"

#include <algorithm>
#include <numeric>
#include <optional>
#include <span>
#include <utility>

#include "core/errors.hpp"
#include "core/rng.hpp"
#include "datasets/pipeline.hpp"
#include "datasets/sample_reader.hpp"

namespace mpicnn::data {

Slice rank_slice(std::size_t total, int rank, int ranks, int group) {
  const std::size_t g = std::size_t(std::max(group, 1)), groups = (total + g - 1) / g;
  const std::size_t base = groups / std::size_t(ranks), extra = groups % std::size_t(ranks), r = std::size_t(rank);
  const std::size_t first = (r * base + std::min(r, extra)) * g, end = first + (base + (r < extra ? 1 : 0)) * g;
  return {std::min(first, total), std::min(end, total) - std::min(first, total)};
}

Slice eval_part(std::size_t count, const EvalOptions& options) {
  return rank_slice(count, options.rank, options.ranks, options.group);
}

std::vector<std::uint32_t> epoch_order(std::size_t count, std::uint64_t seed, int epoch, bool shuffle) {
  std::vector<std::uint32_t> order(count);
  for (std::size_t i = 0; i < count; ++i) order[i] = std::uint32_t(i);
  if (!shuffle) return order;
  core::Rng rng(core::derive_seed(seed, 1000 + std::uint64_t(epoch)));
  for (std::size_t i = count; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  return order;
}

namespace {
void check_rank(int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks)
    throw ConfigError("reader: rank " + std::to_string(rank) + " of " + std::to_string(ranks) +
                      " ranks, expected 0 <= rank < ranks");
}
bool checked_augmentation(const ReaderOptions& options, const DatasetInfo& info) {
  check_augmentation(options.augment, info.shape, options.path);
  return true;
}
// The per-epoch augmentation stream, far from the order streams 1000 + epoch.
}  // namespace

std::uint64_t augment_seed(std::uint64_t seed, int epoch) { return core::derive_seed(seed, (1ull << 40) + std::uint64_t(epoch)); }

namespace {
// The sampler of a balanced order, or none.
std::optional<BalancedSampler> balanced_sampler(const ReaderOptions& options, const SampleReader& samples) {
  if (options.balanced.identities_per_batch == 0) return std::nullopt;
  if (samples.labels().empty())
    throw ConfigError("'data.identities_per_batch' needs identity labels, but " + options.path + " [" + options.split +
                      "] has regression targets");
  return BalancedSampler(samples.labels(), options.balanced);
}

// Ranks are dealt whole micro-batches, and with a balanced order whole P x K groups too.
int dealt_group(const ReaderOptions& options) {
  return options.balanced.identities_per_batch == 0 ? options.micro_batch
                                                    : std::lcm(options.micro_batch, options.balanced.group());
}
}  // namespace

struct TrainReader::Impl {
  ReaderOptions options;
  SampleReader samples;
  bool augmentation_checked;
  std::optional<BalancedSampler> sampler;
  std::size_t epoch_length;  // positions of an epoch's order
  long steps;
  int capacity;
  int order_epoch = -1;
  std::vector<std::uint32_t> order;
  Pipeline pipeline;  // last: its thread uses the members above

  explicit Impl(ReaderOptions o)
      : options(std::move(o)),
        samples(options.path, options.split, options.normalize, options.mean, options.std, options.cache_bytes),
        augmentation_checked(checked_augmentation(options, samples.info())),
        sampler(balanced_sampler(options, samples)),
        epoch_length(sampler ? sampler->samples_per_epoch() : samples.info().count),
        steps(long((epoch_length + std::size_t(options.global_batch) - 1) / std::size_t(options.global_batch))),
        capacity(int(rank_slice(std::size_t(options.global_batch), 0, options.ranks, dealt_group(options)).count)),
        pipeline(steps, [this](int epoch, long step, Batch& batch) { fill(epoch, step, batch); }, options.prefetch) {}

  void fill(int epoch, long step, Batch& batch) {
    const DatasetInfo& info = samples.info();
    if (order_epoch != epoch) {
      order = sampler ? sampler->epoch_order(options.seed, epoch) : epoch_order(info.count, options.seed, epoch, options.shuffle);
      order_epoch = epoch;
    }
    reserve_batch(batch, capacity, info);
    const std::size_t first = std::size_t(step) * std::size_t(options.global_batch);
    const std::size_t global = std::min(epoch_length - first, std::size_t(options.global_batch));
    const Slice part = rank_slice(global, options.rank, options.ranks, dealt_group(options));
    const SampleReader::Augment augment{&options.augment, augment_seed(options.seed, epoch)};
    const std::span<const std::uint32_t> rows = std::span(order).subspan(first + part.first, part.count);
    samples.read(rows, batch, augment);
    batch.samples.assign(rows.begin(), rows.end());
    batch.count = int(part.count);
    batch.global_count = int(global);
    batch.first = int(part.first);
    batch.epoch = epoch;
    batch.step = step;
  }
};

namespace {
ReaderOptions checked(ReaderOptions options) {
  check_rank(options.rank, options.ranks);
  if (options.global_batch < 1)
    throw ConfigError("reader: global batch size " + std::to_string(options.global_batch) + ", expected >= 1");
  if (options.micro_batch < 1)
    throw ConfigError("reader: micro-batch " + std::to_string(options.micro_batch) + ", expected >= 1");
  return options;
}
}  // namespace

TrainReader::TrainReader(ReaderOptions options) : impl_(std::make_unique<Impl>(checked(std::move(options)))) {}
TrainReader::~TrainReader() = default;
TrainReader::TrainReader(TrainReader&&) noexcept = default;
TrainReader& TrainReader::operator=(TrainReader&&) noexcept = default;
const DatasetInfo& TrainReader::info() const { return impl_->samples.info(); }
long TrainReader::steps_per_epoch() const { return impl_->steps; }
int TrainReader::capacity() const { return impl_->capacity; }
bool TrainReader::next(Batch& batch) { return impl_->pipeline.next(batch, impl_->samples.info()); }

void TrainReader::seek(int epoch, long step) {
  if (epoch < 0 || step < 0 || step > impl_->steps)
    throw ConfigError(impl_->options.path + ": cannot seek to epoch " + std::to_string(epoch) + " step " +
                      std::to_string(step) + ", expected epoch >= 0 and 0 <= step <= " + std::to_string(impl_->steps));
  impl_->pipeline.seek(epoch, step);
}

struct EvalReader::Impl {
  EvalOptions options;
  SampleReader samples;
  Slice part;
  long steps, max_steps;
  std::vector<std::uint32_t> indices;
  Pipeline pipeline;  // last: its thread uses the members above

  explicit Impl(EvalOptions o)
      : options(std::move(o)),
        samples(options.path, options.split, options.normalize, options.mean, options.std, 0),
        part(eval_part(samples.info().count, options)),
        steps(long((part.count + std::size_t(options.batch) - 1) / std::size_t(options.batch))),
        max_steps(long((rank_slice(samples.info().count, 0, options.ranks, options.group).count + std::size_t(options.batch) - 1) /
                       std::size_t(options.batch))),
        pipeline(steps, [this](int epoch, long step, Batch& batch) { fill(epoch, step, batch); }, options.prefetch) {}

  void fill(int epoch, long step, Batch& batch) {
    reserve_batch(batch, options.batch, samples.info());
    const std::size_t first = std::size_t(step) * std::size_t(options.batch);
    const std::size_t count = std::min(part.count - first, std::size_t(options.batch));
    indices.resize(count);
    for (std::size_t i = 0; i < count; ++i) indices[i] = std::uint32_t(part.first + first + i);
    samples.read(indices, batch, {});
    batch.samples = indices;
    batch.count = int(count);
    batch.global_count = int(count);
    batch.epoch = epoch;
    batch.step = step;
  }
};

namespace {
EvalOptions checked(EvalOptions options) {
  check_rank(options.rank, options.ranks);
  if (options.batch < 1) throw ConfigError("reader: batch size " + std::to_string(options.batch) + ", expected >= 1");
  return options;
}
}  // namespace

EvalReader::EvalReader(EvalOptions options) : impl_(std::make_unique<Impl>(checked(std::move(options)))) {}
EvalReader::~EvalReader() = default;
EvalReader::EvalReader(EvalReader&&) noexcept = default;
EvalReader& EvalReader::operator=(EvalReader&&) noexcept = default;
const DatasetInfo& EvalReader::info() const { return impl_->samples.info(); }
Slice EvalReader::part() const { return impl_->part; }
long EvalReader::steps() const { return impl_->steps; }
long EvalReader::max_steps() const { return impl_->max_steps; }
bool EvalReader::next(Batch& batch) { return impl_->pipeline.next(batch, impl_->samples.info()); }
void EvalReader::rewind() { impl_->pipeline.seek(0, 0); }

}  // namespace mpicnn::data
