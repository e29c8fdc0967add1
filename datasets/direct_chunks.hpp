#pragma once
// Direct chunk reads for the images of a dataset file: HDF5 finds a chunk and hands over its
// stored bytes (H5Dread_chunk), and zlib inflates them straight into our buffer. A random sample
// then costs an index lookup, one read and one inflate, without HDF5's selection, filter
// pipeline, chunk cache and type conversion around every H5Dread (measured with bench/reader_bench
// on 1-sample Fashion-MNIST chunks: 5.5 -> 3.9 us of CPU per sample raw, 12 -> 9.7 us deflated).
// Used only for what it fully understands: chunks of whole samples along N, stored raw or with the
// deflate filter alone; other layouts keep HDF5's general path.
#include <hdf5.h>
#include <zlib.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace mpicnn::data {

class DirectChunks {
 public:
  // Null when `dataset` (N,C,H,W) is not chunked as (k,C,H,W), has a filter other than deflate,
  // or stores another type than `memory_type` (whose bytes the caller reads).
  static std::unique_ptr<DirectChunks> open(hid_t dataset, hid_t memory_type, const std::string& path,
                                            const std::string& name, std::size_t sample_bytes);
  ~DirectChunks();
  DirectChunks(const DirectChunks&) = delete;
  DirectChunks& operator=(const DirectChunks&) = delete;

  // The chunk starting at sample `first` (a multiple of the chunk length), whole, into `out`
  // (one chunk of samples). Throws IoError naming the file, dataset and sample when the chunk
  // is missing, too large or does not inflate to exactly one chunk.
  void read(std::size_t first, unsigned char* out);

 private:
  DirectChunks(hid_t dataset, std::string where, std::size_t chunk_bytes, bool deflated);
  [[noreturn]] void damaged(std::size_t first, const std::string& what) const;

  hid_t dataset_;
  std::string where_;  // "<file>: dataset '<name>'"
  std::size_t chunk_bytes_;
  bool deflated_;  // the deflate filter is in the pipeline
  std::vector<unsigned char> stored_;  // one stored (compressed) chunk
  z_stream zstream_{};
};

}  // namespace mpicnn::data
