#pragma once
// Sharded readers for the mpicnn dataset format (datasets/README.md). MPI-free: the rank and the
// rank count are plain integers, so every rank constructs its own reader on the same file.
//
// TrainReader: every epoch a permutation of [0, N) computed from (seed, epoch) alone; step s takes
// the global positions [s*B, min(N, (s+1)*B)) of it and rank r reads its contiguous, near-equal
// slice (rank_slice). The union over ranks is the global batch whatever the rank count, and no
// sample is dropped or repeated within an epoch. A background thread reads the next batch while
// the caller computes.
// EvalReader: each rank reads a contiguous part of the split, in order; together exactly once.
//
// Behind them, internal to datasets/: schema.hpp checks a file against the format (read_info and
// check_input_shape are defined in schema.cpp), sample_reader.hpp reads and preprocesses samples,
// pipeline.hpp prefetches batches.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "datasets/augment.hpp"
#include "datasets/balanced_sampler.hpp"

namespace mpicnn::data {

// One split of a dataset file, validated against the whole schema by read_info.
struct DatasetInfo {
  std::string path, split;
  core::Shape shape;                     // (C,H,W) of one image, or (C,D,H,W) of a volume (d > 1)
  std::size_t count = 0;                 // samples in the split
  int num_classes = 0;                   // 0 for regression
  int target_size = 0;                   // K of targets (N,K); 0 when the split has labels
  bool uint8 = true;                     // stored pixels: uint8 (scaled by 1/255 on read) or float32
  std::vector<std::string> class_names;  // empty or num_classes names
  std::string task;                      // root attribute 'task' (multi-class, ...); empty when absent
  std::vector<double> mean, std;         // per channel, on the scale the reader produces before normalising
  int chunk_samples = 0;                 // samples per stored chunk; 0 when not chunked
  std::vector<std::string> splits;       // every split group in the file ("train", "test", ...)
};

// Throws IoError/ShapeError naming the file, the object, and what was expected versus found.
DatasetInfo read_info(const std::string& path, const std::string& split);

// ShapeError "<path>: image shape (1,28,28) is different from the model's input (3,32,32)".
void check_input_shape(const DatasetInfo& info, const core::Shape& model_input, const std::string& path);

// Part `rank` of `total` items split into `ranks` contiguous parts whose sizes differ by at most
// one (the first total % ranks parts are one larger). With group > 1 the items are first cut into
// groups of `group` (the last may be shorter) and whole groups are split that way.
struct Slice {
  std::size_t first = 0, count = 0;
};
Slice rank_slice(std::size_t total, int rank, int ranks, int group = 1);

// The epoch's global order: Fisher-Yates over [0, count) with core::Rng seeded by
// core::derive_seed(seed, 1000 + epoch); the identity when shuffle is false.
std::vector<std::uint32_t> epoch_order(std::size_t count, std::uint64_t seed, int epoch, bool shuffle);

// One step's samples of this rank. The buffers are allocated on the first next() and then reused:
// their addresses stay the same across calls.
struct Batch {
  core::Buffer images;               // (capacity,C,H,W) or (capacity,C,D,H,W) float; rows [0, count) are valid
  std::vector<std::int32_t> labels;  // count class indices (splits with labels)
  core::Buffer targets;              // (capacity,K) float; rows [0, count) valid (splits with targets)
  int count = 0;                     // this rank's samples this step (may be 0 in the last step)
  int global_count = 0;              // samples of all ranks this step (EvalReader: = count)
  int first = 0;                     // global position, within the step, of this rank's first sample
  std::vector<std::uint32_t> samples;  // count: each row's index in the split (what a task keyed on samples needs, e.g. boxes)
  int epoch = 0;
  long step = 0;
};

struct ReaderOptions {
  std::string path{}, split = "train";
  int global_batch = 0;  // B: samples of all ranks per step
  int rank = 0, ranks = 1;
  std::uint64_t seed = 0;
  bool shuffle = true;
  bool normalize = true;               // (x - mean) / std per channel, after uint8 -> x/255
  std::vector<double> mean{}, std{};   // override the file's; empty = the file's
  Augmentation augment{};              // seeded per sample (augment.hpp); checked against the split's shape
  std::size_t cache_bytes = 0;         // keep the whole split in memory if it fits in this many bytes
  bool prefetch = true;                // read the next batch in a background thread
  // Ranks get whole micro-batches: each step's positions are cut into groups of this many (the
  // last may be shorter) and whole groups are dealt out, so that micro-batch j of a step holds the
  // same samples for any rank count. 1: sample by sample.
  int micro_batch = 1;
  // identities_per_batch > 0: the epoch's order is BalancedSampler's (P identities x K images per
  // group; datasets/balanced_sampler.hpp) instead of a shuffle, and ranks get whole groups.
  BalancedSampling balanced{};
};

// The seed of an epoch's augmentation; sample i's draws come from core::derive_seed(it, i)
// (draw_augmentation). Boxes (datasets/boxes.hpp) follow the pixels through the same draws.
std::uint64_t augment_seed(std::uint64_t seed, int epoch);

class TrainReader {
 public:
  explicit TrainReader(ReaderOptions options);
  ~TrainReader();
  TrainReader(TrainReader&&) noexcept;
  TrainReader& operator=(TrainReader&&) noexcept;

  const DatasetInfo& info() const;
  long steps_per_epoch() const;  // ceil(N / B); balanced: ceil(groups * P * K / B)
  int capacity() const;          // the most samples a rank gets in one step: ceil(B / ranks) for micro_batch 1
  // Positions the reader so that the next call to next() returns (epoch, step); step may equal
  // steps_per_epoch() (then next() ends that epoch). The order is recomputed, never stored.
  void seek(int epoch, long step);
  // Fills `batch` with the next step; false when the epoch ends, then the next call starts epoch+1.
  // Read errors (bad label, NaN pixel, damaged chunk) are thrown here.
  bool next(Batch& batch);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct EvalOptions {
  std::string path{}, split = "test";
  int batch = 256;  // samples per next() on this rank
  int rank = 0, ranks = 1;
  bool normalize = true;
  std::vector<double> mean{}, std{};  // override the file's; empty = the file's
  bool prefetch = true;
  // Parts are whole multiples of this many samples (the split's last, partial group aside): the
  // evaluator's chunks of the model's batch then sit at fixed global positions, so every sample's
  // outputs are the same for any rank count (a dense layer's GEMM rounds by its batch's size).
  int group = 1;
};

// Rank `options.rank`'s part of a split in evaluation: rank_slice with group = options.group, so
// every part starts at a multiple of the group and chunks cut at global multiples of it hold the
// same samples on any rank count.
Slice eval_part(std::size_t count, const EvalOptions& options);

class EvalReader {
 public:
  explicit EvalReader(EvalOptions options);
  ~EvalReader();
  EvalReader(EvalReader&&) noexcept;
  EvalReader& operator=(EvalReader&&) noexcept;

  const DatasetInfo& info() const;
  Slice part() const;        // this rank's samples [first, first + count) of the split
  long steps() const;        // this rank's batches: ceil(part().count / batch)
  long max_steps() const;    // the most batches any rank has (for ranks that must step together)
  // The next batch of this rank's part in order; false at its end, then the next call starts over.
  bool next(Batch& batch);
  void rewind();             // start this rank's part again

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpicnn::data
