#pragma once
// Writes the mpicnn dataset format (datasets/README.md): one HDF5 file, splits /train, /test and
// optional /val, each with images (N,C,H,W), or (N,C,D,H,W) for volumes (Shape::d > 1), uint8 or
// float32 chunked along N and gzip-compressed,
// and labels (N) int32 or targets (N,K) float32. The converters and the tests write through here.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.hpp"
#include "datasets/h5.hpp"

namespace mpicnn::data {

inline constexpr const char* kFormatName = "mpicnn-dataset";
inline constexpr int kFormatVersion = 1;

struct WriterOptions {
  int compression_level = -1;  // gzip 1..9; 0 writes chunks uncompressed; -1 = automatic (see compression_for)
  int chunk_samples = 0;       // samples per chunk; 0 = automatic (see chunk_samples_for)
};

// The automatic gzip level for chunks of `chunk_bytes` stored pixels: 4 from 16 KiB on, else none.
// A training step reads random samples, each inflating its chunk, and small chunks inflate slowly
// per byte (zlib rebuilds its tables for every one): measured here, reading a random 784-byte
// Fashion-MNIST sample costs 7.7 us of CPU from deflated chunks against 2.1 us from raw ones
// (bench/reader_bench, preprocessing included), while deflate saves only 1.7:1 (34 vs 56 MB). On
// 2 ranks x 1 thread with no spare core, that CPU is taken from training. Larger images compress
// better and cost far more compute per byte read.
int compression_for(std::size_t chunk_bytes);

// The automatic chunk length: about 1 KiB of stored pixels, so one sample for any image of 28x28
// or more, at most 256 samples, rounded down to a power of two. The readers shuffle globally, so
// a random sample costs the inflation of its whole chunk: measured here, a 784-byte sample costs
// 10 us alone in its chunk and 45 us in a chunk of 8 (bench/reader_bench.sh); one sample per
// chunk makes the Fashion-MNIST file 17% larger than chunks of 256.
int chunk_samples_for(const core::Shape& shape, bool uint8);

// The task kinds a dataset may record in its root attribute 'task' (datasets/README.md).
const std::vector<std::string>& task_kinds();  // multi-class, binary, multi-label, regression

struct DatasetMeta {
  // A constructor rather than an aggregate, so {classes, names} keeps working without naming the task.
  DatasetMeta(int classes = 0, std::vector<std::string> names = {}, std::string task_kind = {})
      : num_classes(classes), class_names(std::move(names)), task(std::move(task_kind)) {}
  int num_classes = 0;                   // 0 for regression
  std::vector<std::string> class_names;  // empty or num_classes names
  std::string task;                      // one of task_kinds(), or empty: no 'task' attribute
};

// Usage: DatasetWriter w(path, meta); w.begin_split("train", shape, n, true); w.append(...) until
// n samples; w.begin_split("test", ...); ...; w.finish(). The file is written as "<path>.partial"
// and renamed to `path` by finish(), so an interrupted conversion never leaves a file that looks
// complete. Memory: whole chunks of at least 64 KiB.
class DatasetWriter {
 public:
  DatasetWriter(const std::string& path, DatasetMeta meta, WriterOptions options = {});
  ~DatasetWriter();  // without finish(): removes the partial file
  DatasetWriter(const DatasetWriter&) = delete;
  DatasetWriter& operator=(const DatasetWriter&) = delete;

  // target_size 0: the split has labels (N) int32; K > 0: targets (N,K) float32.
  void begin_split(const std::string& split, core::Shape shape, std::size_t count, bool uint8, int target_size = 0);
  // Appends samples: images (n,C,H,W) or (n,C,D,H,W) in the split's dtype, with n labels or n*K targets.
  void append(std::span<const std::uint8_t> images, std::span<const std::int32_t> labels);
  void append(std::span<const float> images, std::span<const std::int32_t> labels);
  void append_targets(std::span<const std::uint8_t> images, std::span<const float> targets);
  void append_targets(std::span<const float> images, std::span<const float> targets);
  // Writes the root attributes (mean and std from the train split) and renames the file.
  void finish();
  // The open file, for datasets written beside a split before finish() (datasets/boxes.hpp).
  hid_t file() const { return file_.get(); }

 private:
  struct Moments {  // per channel, merged with Chan et al.'s pairwise formula
    double count = 0, mean = 0, m2 = 0;
    void merge(double n, double block_mean, double block_m2);
  };
  void append_images(const void* images, std::size_t n, bool uint8);
  void append_labels(const std::int32_t* labels, const float* targets, std::size_t n);
  void flush_chunk();
  void end_split();
  std::string where() const;
  std::vector<hsize_t> image_dims(std::size_t n) const;

  std::string path_, partial_path_;
  DatasetMeta meta_;
  WriterOptions options_;
  h5::Handle file_;
  // the open split
  std::string split_;
  core::Shape shape_;
  std::size_t count_ = 0, written_ = 0, buffered_ = 0, labels_written_ = 0;
  bool uint8_ = true;
  int target_size_ = 0;
  int chunk_samples_ = 1;
  h5::Handle images_, labels_;
  std::size_t buffer_samples_ = 0;    // whole chunks, >= 64 KiB
  std::vector<unsigned char> chunk_;  // buffer_samples_ samples in the stored dtype
  std::vector<Moments> moments_;      // train split only
  bool collect_moments_ = false;
  std::vector<std::string> splits_done_;
  bool finished_ = false;
};

}  // namespace mpicnn::data
