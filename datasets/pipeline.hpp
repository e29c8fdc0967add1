#pragma once
// The prefetch pipeline behind TrainReader and EvalReader, internal to datasets/, and the Batch
// buffers it moves. reserve_batch and copy_batch (pipeline.cpp) are the two places that know every
// field of a Batch: a new field gets its room in the one and its copy in the other.
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "datasets/reader.hpp"

namespace mpicnn::data {

// Sizes `batch` for `capacity` samples of `info` (a no-op when it already is: addresses stay).
void reserve_batch(Batch& batch, int capacity, const DatasetInfo& info);

// Produces batches (epoch, step) for step in [0, steps] where step == steps marks the end of the
// epoch, optionally one ahead in a background thread: the thread fills slot_ while the caller
// works on its own Batch, and next() copies slot_ out (so the caller's buffers never move).
class Pipeline {
 public:
  using Fill = std::function<void(int epoch, long step, Batch& batch)>;

  Pipeline(long steps, Fill fill, bool background);
  ~Pipeline();

  void seek(int epoch, long step);
  bool next(Batch& out, const DatasetInfo& info);

 private:
  void run();

  const long steps_;
  const Fill fill_;
  // Next (epoch, step) to produce; owned by the thread when there is one.
  int epoch_ = 0;
  long step_ = 0;
  std::mutex mutex_;
  std::condition_variable cv_;
  Batch slot_;
  bool slot_full_ = false, slot_end_ = false, stop_ = false;
  std::exception_ptr slot_error_;
  std::uint64_t generation_ = 0;
  std::thread thread_;
};

}  // namespace mpicnn::data
