#pragma once
// The sample reader behind TrainReader and EvalReader, internal to datasets/: reads given samples
// of one split (whole chunks, direct chunk reads where direct_chunks.hpp applies, or the split
// cached in memory) and turns them into a Batch (normalisation, seeded augmentation). What a
// sample holds is read in read(); room for it in a Batch is made by reserve_batch (pipeline.hpp).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "datasets/augment.hpp"
#include "datasets/h5.hpp"
#include "datasets/reader.hpp"

namespace mpicnn::data {

class DirectChunks;

// Reads given samples of one split and preprocesses them into a Batch. Used by one thread at a time.
class SampleReader {
 public:
  struct Augment {
    const Augmentation* options = nullptr;  // null: none (evaluation)
    std::uint64_t seed = 0;  // the epoch's augmentation seed; each sample derives its own from it
  };

  // Opens `path` and inspects `split` (schema.hpp); a non-empty mean or std overrides the file's.
  SampleReader(const std::string& path, const std::string& split, bool normalize, std::vector<double> mean,
               std::vector<double> std, std::size_t cache_bytes);
  ~SampleReader();

  const DatasetInfo& info() const { return info_; }
  // Class labels of the whole split (empty for regression targets).
  std::span<const std::int32_t> labels() const { return labels_all_; }

  // Reads samples `indices` (distinct, any order) into rows 0..n-1 of `batch`, which has room.
  void read(std::span<const std::uint32_t> indices, Batch& batch, const Augment& augment);

 private:
  void read_rows(hid_t dataset, hid_t space, hsize_t first, hsize_t count, void* out);
  void read_images();
  void read_images_direct();
  void read_targets();
  void load_cache();
  void transform(const unsigned char* pixels, std::uint32_t index, float* out, const Augment& augment);
  void normalise(const unsigned char* pixels, const SampleDraw& draw, float* out) const;

  h5::Handle file_;
  DatasetInfo info_;
  h5::Handle images_, labels_, image_space_, label_space_;
  std::unique_ptr<DirectChunks> direct_;  // null: HDF5's general read path
  std::string images_name_, labels_name_;
  std::size_t sample_bytes_ = 0;
  std::size_t block_rows_ = 0;  // samples per stored chunk; 256 when not chunked
  std::vector<float> scale_, bias_, lut_;  // y = x * scale + bias per channel; lut_: C x 256 for uint8
  std::vector<float> black_;   // per channel: a stored 0 after normalisation, what padding reads
  std::vector<float> unwarped_;  // one sample before its affine transform
  std::vector<std::pair<std::uint32_t, std::uint32_t>> order_;  // (sample index, batch row), sorted
  std::vector<unsigned char> staging_;  // stored pixels of the step in sorted order
  std::vector<unsigned char> chunk_;    // one whole chunk
  std::vector<float> target_staging_;
  std::vector<std::int32_t> labels_all_;  // class labels of the whole split
  std::vector<unsigned char> cache_;    // the whole split's stored pixels when cache_bytes allows
  std::vector<float> targets_all_;
};

}  // namespace mpicnn::data
