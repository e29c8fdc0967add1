#include "datasets/direct_chunks.hpp"

#include <cstring>
#include <utility>

#include "core/errors.hpp"
#include "datasets/h5.hpp"

namespace mpicnn::data {

std::unique_ptr<DirectChunks> DirectChunks::open(hid_t dataset, hid_t memory_type, const std::string& path,
                                                 const std::string& name, std::size_t sample_bytes) {
  h5::Handle create(H5Dget_create_plist(dataset)), type(H5Dget_type(dataset));
  if (!create.valid() || H5Pget_layout(create.get()) != H5D_CHUNKED) return nullptr;
  if (!type.valid() || H5Tequal(type.get(), memory_type) <= 0) return nullptr;
  h5::Handle space(H5Dget_space(dataset));
  hsize_t dims[5] = {}, chunk[5] = {};  // (N,C,H,W) images or (N,C,D,H,W) volumes
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if ((rank != 4 && rank != 5) || H5Pget_chunk(create.get(), 5, chunk) != rank) return nullptr;
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  if (chunk[0] == 0) return nullptr;
  for (int d = 1; d < rank; ++d)
    if (chunk[d] != dims[d]) return nullptr;
  const int filters = H5Pget_nfilters(create.get());
  for (int i = 0; i < filters; ++i) {
    unsigned flags = 0, config = 0;
    std::size_t values = 0;
    if (H5Pget_filter2(create.get(), unsigned(i), &flags, &values, nullptr, 0, nullptr, &config) != H5Z_FILTER_DEFLATE)
      return nullptr;
  }
  // A chunk beyond 256 MiB (crafted, or not made for random sample reads) is left to HDF5.
  if (filters > 1 || sample_bytes == 0 || chunk[0] > (std::size_t(1) << 28) / sample_bytes) return nullptr;
  const std::size_t chunk_bytes = std::size_t(chunk[0]) * sample_bytes;
  return std::unique_ptr<DirectChunks>(
      new DirectChunks(dataset, path + ": dataset '" + name + "'", chunk_bytes, filters == 1));
}

DirectChunks::DirectChunks(hid_t dataset, std::string where, std::size_t chunk_bytes, bool deflated)
    : dataset_(dataset), where_(std::move(where)), chunk_bytes_(chunk_bytes), deflated_(deflated) {
  if (inflateInit(&zstream_) != Z_OK) throw IoError(where_ + ": zlib initialisation failed");
  stored_.resize(compressBound(uLong(chunk_bytes_)));
}

DirectChunks::~DirectChunks() { inflateEnd(&zstream_); }

void DirectChunks::damaged(std::size_t first, const std::string& what) const {
  throw IoError(where_ + ": the chunk of sample " + std::to_string(first) + " " + what);
}

void DirectChunks::read(std::size_t first, unsigned char* out) {
  const hsize_t offset[5] = {hsize_t(first), 0, 0, 0, 0};  // rank 4 or 5: HDF5 reads the dataset's rank
  hsize_t size = 0;
  if (H5Dget_chunk_storage_size(dataset_, offset, &size) < 0 || size == 0) damaged(first, "is missing");
  // A stored chunk is at most what deflate can make of one chunk: anything larger is damage, and
  // checking it first keeps H5Dread_chunk inside our buffer.
  if (size > stored_.size())
    damaged(first, "takes " + std::to_string(size) + " bytes, more than a chunk of " + std::to_string(chunk_bytes_) + " can");
  std::uint32_t skipped = 0;
  if (H5Dread_chunk(dataset_, H5P_DEFAULT, offset, &skipped, stored_.data()) < 0) damaged(first, "cannot be read");
  if (!deflated_ || (skipped & 1u)) {  // no filter, or deflate skipped for this chunk: stored as is
    if (size != chunk_bytes_) damaged(first, "is stored raw with " + std::to_string(size) + " bytes, expected " + std::to_string(chunk_bytes_));
    std::memcpy(out, stored_.data(), chunk_bytes_);
    return;
  }
  if (inflateReset(&zstream_) != Z_OK) damaged(first, "cannot be inflated (zlib reset failed)");
  zstream_.next_in = stored_.data();
  zstream_.avail_in = uInt(size);
  zstream_.next_out = out;
  zstream_.avail_out = uInt(chunk_bytes_);
  const int status = inflate(&zstream_, Z_FINISH);
  if (status != Z_STREAM_END || zstream_.avail_out != 0)
    damaged(first, std::string("does not inflate to ") + std::to_string(chunk_bytes_) + " bytes (zlib: " +
                       (zstream_.msg ? zstream_.msg : status == Z_STREAM_END ? "too short" : "truncated") + ")");
}

}  // namespace mpicnn::data
