#include "datasets/pipeline.hpp"

#include <cstring>
#include <utility>

#include "datasets/h5.hpp"

namespace mpicnn::data {
namespace {

void copy_batch(const Batch& from, Batch& to, const DatasetInfo& info) {
  if (to.images.size() != from.images.size()) to.images = core::Buffer(from.images.size());
  if (to.targets.size() != from.targets.size()) to.targets = core::Buffer(from.targets.size());
  if (from.count > 0) {
    std::memcpy(to.images.data(), from.images.data(), std::size_t(from.count) * info.shape.size() * sizeof(float));
    if (info.target_size)
      std::memcpy(to.targets.data(), from.targets.data(), std::size_t(from.count) * info.target_size * sizeof(float));
  }
  to.labels.assign(from.labels.begin(), from.labels.end());
  to.samples.assign(from.samples.begin(), from.samples.end());
  to.count = from.count;
  to.global_count = from.global_count;
  to.first = from.first;
  to.epoch = from.epoch;
  to.step = from.step;
}

}  // namespace

void reserve_batch(Batch& batch, int capacity, const DatasetInfo& info) {
  const std::size_t images = std::size_t(capacity) * info.shape.size();
  if (batch.images.size() != images) batch.images = core::Buffer(images);
  const std::size_t targets = std::size_t(capacity) * std::size_t(info.target_size);
  if (batch.targets.size() != targets) batch.targets = core::Buffer(targets);
  batch.labels.reserve(std::size_t(capacity));
}

Pipeline::Pipeline(long steps, Fill fill, bool background) : steps_(steps), fill_(std::move(fill)) {
  if (background) thread_ = std::thread([this] { run(); });
}
Pipeline::~Pipeline() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Pipeline::seek(int epoch, long step) {
  std::lock_guard lock(mutex_);
  ++generation_;
  epoch_ = epoch;
  step_ = step;
  slot_full_ = false;
  slot_error_ = nullptr;
  cv_.notify_all();
}

bool Pipeline::next(Batch& out, const DatasetInfo& info) {
  if (!thread_.joinable()) {
    if (step_ >= steps_) {
      ++epoch_;
      step_ = 0;
      return false;
    }
    fill_(epoch_, step_, out);
    ++step_;
    return true;
  }
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return slot_full_; });
  slot_full_ = false;
  if (slot_error_) {
    std::exception_ptr error = std::exchange(slot_error_, nullptr);
    cv_.notify_all();
    std::rethrow_exception(error);
  }
  const bool end = slot_end_;
  if (!end) copy_batch(slot_, out, info);
  cv_.notify_all();
  return !end;
}

void Pipeline::run() {
  h5::silence_errors();
  std::unique_lock lock(mutex_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !slot_full_; });
    if (stop_) return;
    const std::uint64_t generation = generation_;
    const int epoch = epoch_;
    const long step = step_;
    lock.unlock();
    const bool end = step >= steps_;
    std::exception_ptr error;
    if (!end) {
      try {
        fill_(epoch, step, slot_);
      } catch (...) {
        error = std::current_exception();
      }
    }
    lock.lock();
    if (generation != generation_) continue;  // a seek came in meanwhile: this batch is stale
    slot_full_ = true;
    slot_end_ = end;
    slot_error_ = error;
    if (!error && end) {
      ++epoch_;
      step_ = 0;
    } else if (!error) {
      ++step_;
    }
    cv_.notify_all();
  }
}

}  // namespace mpicnn::data
