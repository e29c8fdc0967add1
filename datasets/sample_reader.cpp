#include "datasets/sample_reader.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "core/errors.hpp"
#include "core/rng.hpp"
#include "datasets/direct_chunks.hpp"
#include "datasets/schema.hpp"

namespace mpicnn::data {
namespace {

// File access with HDF5's metadata cache capped at 1 MiB (its default grows to 32 MiB): with one
// sample per chunk, a large file's chunk index would otherwise fill it (measured: +25 MB RSS for
// 160k chunks, +5 MB with a 2 MiB cap), and random reads are no slower with the small cache.
h5::Handle small_metadata_cache() {
  h5::Handle access(H5Pcreate(H5P_FILE_ACCESS));
  H5AC_cache_config_t config{};
  config.version = H5AC__CURR_CACHE_CONFIG_VERSION;
  H5Pget_mdc_config(access.get(), &config);
  config.max_size = 1u << 20;
  config.min_size = std::min<std::size_t>(config.min_size, config.max_size);
  config.initial_size = std::min<std::size_t>(config.initial_size, config.max_size);
  config.set_initial_size = true;
  H5Pset_mdc_config(access.get(), &config);
  return access;
}

}  // namespace

SampleReader::SampleReader(const std::string& path, const std::string& split, bool normalize,
                           std::vector<double> mean, std::vector<double> std, std::size_t cache_bytes)
    : file_(h5::open_file(path, false, small_metadata_cache().get())), info_(inspect(file_.get(), path, split)) {
  if (!mean.empty()) check_statistics(mean, "mean", info_.shape.c);
  if (!std.empty()) check_statistics(std, "std", info_.shape.c);
  const std::vector<double>& m = mean.empty() ? info_.mean : mean;
  const std::vector<double>& s = std.empty() ? info_.std : std;
  const double pixel = info_.uint8 ? 1.0 / 255.0 : 1.0;
  for (int c = 0; c < info_.shape.c; ++c) {
    scale_.push_back(float(normalize ? pixel / s[std::size_t(c)] : pixel));
    bias_.push_back(float(normalize ? -m[std::size_t(c)] / s[std::size_t(c)] : 0.0));
    if (info_.uint8)
      for (int v = 0; v < 256; ++v)
        lut_.push_back(float(normalize ? (v * pixel - m[std::size_t(c)]) / s[std::size_t(c)] : v * pixel));
    black_.push_back(info_.uint8 ? lut_[std::size_t(c) * 256] : bias_.back());
  }
  sample_bytes_ = info_.shape.size() * (info_.uint8 ? 1 : 4);
  images_name_ = "/" + split + "/images";
  labels_name_ = "/" + split + (info_.target_size ? "/targets" : "/labels");
  // Reads take whole chunks, which HDF5 inflates straight into our buffer: its own chunk cache
  // is not needed beyond one chunk.
  block_rows_ = info_.chunk_samples > 0 ? std::size_t(info_.chunk_samples) : 256;
  h5::Handle access(H5Pcreate(H5P_DATASET_ACCESS));
  H5Pset_chunk_cache(access.get(), 521, std::max<std::size_t>(1 << 20, 2 * block_rows_ * sample_bytes_), 1.0);
  images_ = h5::open_dataset(file_.get(), images_name_, access.get());
  direct_ = DirectChunks::open(images_.get(), info_.uint8 ? H5T_NATIVE_UINT8 : H5T_NATIVE_FLOAT, path, images_name_,
                               sample_bytes_);
  labels_ = h5::open_dataset(file_.get(), labels_name_);
  image_space_ = h5::Handle(h5::check(H5Dget_space(images_.get()), images_.get(), "get the shape of"));
  label_space_ = h5::Handle(h5::check(H5Dget_space(labels_.get()), labels_.get(), "get the shape of"));
  // Class labels (4 bytes a sample, like the epoch order) are kept in memory and checked once.
  if (!info_.target_size) {
    labels_all_ = h5::read_dataset<std::int32_t>(file_.get(), labels_name_);
    for (std::size_t i = 0; i < labels_all_.size(); ++i)
      if (labels_all_[i] < 0 || labels_all_[i] >= info_.num_classes)
        throw IoError(info_.path + ": dataset '" + labels_name_ + "' holds label " + std::to_string(labels_all_[i]) +
                      " at sample " + std::to_string(i) + ", expected 0 <= label < " +
                      std::to_string(info_.num_classes) + " (num_classes)");
  }
  const std::size_t target_bytes = info_.count * std::size_t(info_.target_size) * sizeof(float);
  if (cache_bytes > 0 && info_.count * sample_bytes_ + target_bytes <= cache_bytes) {
    load_cache();
    if (info_.target_size) targets_all_ = h5::read_dataset<float>(file_.get(), labels_name_);
  }
}

SampleReader::~SampleReader() = default;

void SampleReader::read(std::span<const std::uint32_t> indices, Batch& batch, const Augment& augment) {
  const std::size_t n = indices.size();
  order_.resize(n);
  for (std::size_t i = 0; i < n; ++i) order_[i] = {indices[i], std::uint32_t(i)};
  std::sort(order_.begin(), order_.end());
  for (std::size_t j = 1; j < n; ++j)
    if (order_[j].first == order_[j - 1].first) throw std::logic_error("SampleReader::read: repeated sample index");
  batch.labels.resize(info_.target_size ? 0 : n);
  if (n == 0) return;
  const bool cached = !cache_.empty();
  if (!cached) read_images();
  const std::size_t k = std::size_t(info_.target_size);
  if (k && !cached) read_targets();
  const std::size_t sample = info_.shape.size();
  for (std::size_t j = 0; j < n; ++j) {
    const auto [index, slot] = order_[j];
    if (k) {
      const float* t = cached ? targets_all_.data() + index * k : target_staging_.data() + j * k;
      for (std::size_t i = 0; i < k; ++i)
        if (!std::isfinite(t[i]))
          throw IoError(info_.path + ": dataset '" + labels_name_ + "' has a NaN or infinite target at sample " +
                        std::to_string(index) + ", expected finite values");
      std::memcpy(batch.targets.data() + slot * k, t, k * sizeof(float));
    } else {
      batch.labels[slot] = labels_all_[index];
    }
    const unsigned char* pixels = cached ? cache_.data() + index * sample_bytes_ : staging_.data() + j * sample_bytes_;
    transform(pixels, index, batch.images.data() + slot * sample, augment);
  }
}

// Rows [first, first + count) of a dataset, whole, into `out` (a plain hyperslab, HDF5's fast path).
void SampleReader::read_rows(hid_t dataset, hid_t space, hsize_t first, hsize_t count, void* out) {
  const int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[5] = {}, start[5] = {first, 0, 0, 0, 0};  // images rank 4 or 5, targets rank 2
  H5Sget_simple_extent_dims(space, dims, nullptr);
  dims[0] = count;
  h5::check(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, dims, nullptr), dataset, "select samples of");
  h5::Handle memory(H5Screate_simple(rank, dims, nullptr));
  const hid_t type = dataset == labels_.get() ? H5T_NATIVE_FLOAT : info_.uint8 ? H5T_NATIVE_UINT8 : H5T_NATIVE_FLOAT;
  h5::check(H5Dread(dataset, type, memory.get(), space, H5P_DEFAULT, out), dataset, "read");
}

// The step's pixels into staging_ in sorted order. Runs of consecutive indices are read at
// once; the whole chunks inside a run straight into place, the chunks it only touches (at most
// two per run) whole into chunk_ and copied from there, so a chunk is inflated once per step.
void SampleReader::read_images() {
  const std::size_t n = order_.size();
  staging_.resize(n * sample_bytes_);
  if (direct_) return read_images_direct();
  const bool chunked = info_.chunk_samples > 0;
  std::size_t last_chunk = SIZE_MAX;
  for (std::size_t j = 0; j < n;) {
    std::size_t end = j + 1;
    while (end < n && order_[end].first == order_[end - 1].first + 1) ++end;
    std::size_t i = order_[j].first, position = j;
    const std::size_t stop = order_[end - 1].first + 1;
    while (i < stop) {
      const std::size_t chunk = chunked ? i / block_rows_ : 0;
      const std::size_t chunk_first = chunk * block_rows_;
      const std::size_t chunk_end = chunked ? std::min(info_.count, chunk_first + block_rows_) : info_.count;
      std::size_t take;
      if (!chunked || (i == chunk_first && stop >= chunk_end)) {
        const std::size_t whole = !chunked || stop == info_.count ? stop : chunk_first + (stop - chunk_first) / block_rows_ * block_rows_;
        take = whole - i;
        read_rows(images_.get(), image_space_.get(), i, take, staging_.data() + position * sample_bytes_);
      } else {
        if (chunk != last_chunk) {
          chunk_.resize(block_rows_ * sample_bytes_);
          read_rows(images_.get(), image_space_.get(), chunk_first, chunk_end - chunk_first, chunk_.data());
          last_chunk = chunk;
        }
        take = std::min(stop, chunk_end) - i;
        std::memcpy(staging_.data() + position * sample_bytes_, chunk_.data() + (i - chunk_first) * sample_bytes_,
                    take * sample_bytes_);
      }
      i += take;
      position += take;
    }
    j = end;
  }
}

// The same through direct chunk reads: every chunk the step touches, once, then its samples.
void SampleReader::read_images_direct() {
  chunk_.resize(block_rows_ * sample_bytes_);
  std::size_t last_chunk = SIZE_MAX;
  for (std::size_t j = 0; j < order_.size(); ++j) {
    const std::size_t index = order_[j].first, chunk = index / block_rows_;
    if (chunk != last_chunk) direct_->read(chunk * block_rows_, chunk_.data()), last_chunk = chunk;
    std::memcpy(staging_.data() + j * sample_bytes_, chunk_.data() + (index - chunk * block_rows_) * sample_bytes_,
                sample_bytes_);
  }
}

void SampleReader::read_targets() {
  const std::size_t n = order_.size(), k = std::size_t(info_.target_size);
  target_staging_.resize(n * k);
  for (std::size_t j = 0; j < n;) {
    std::size_t end = j + 1;
    while (end < n && order_[end].first == order_[end - 1].first + 1) ++end;
    read_rows(labels_.get(), label_space_.get(), order_[j].first, end - j, target_staging_.data() + j * k);
    j = end;
  }
}

// The whole split's stored pixels, read before training starts (as an in-memory dataset is), in
// blocks of whole chunks of at least 64 KiB.
void SampleReader::load_cache() {
  cache_.resize(info_.count * sample_bytes_);
  const std::size_t rows = block_rows_ * std::max<std::size_t>(1, (64u << 10) / (block_rows_ * sample_bytes_));
  for (std::size_t first = 0; first < info_.count; first += rows)
    read_rows(images_.get(), image_space_.get(), first, std::min(rows, info_.count - first),
              cache_.data() + first * sample_bytes_);
}

// One sample from stored pixels to normalised floats, with its seeded augmentation: crop and flips,
// then the affine transform, then the intensity scale and shift (augment.hpp).
void SampleReader::transform(const unsigned char* pixels, std::uint32_t index, float* out, const Augment& augment) {
  const std::size_t size = info_.shape.size();
  const float* values = reinterpret_cast<const float*>(pixels);
  if (!info_.uint8)
    for (std::size_t i = 0; i < size; ++i)
      if (!std::isfinite(values[i]))
        throw IoError(info_.path + ": dataset '" + images_name_ + "' has a NaN or infinite pixel in sample " +
                      std::to_string(index) + ", expected finite values");
  const bool augmented = augment.options && augment.options->any();
  const SampleDraw draw =
      augmented ? draw_augmentation(*augment.options, info_.shape, core::derive_seed(augment.seed, index)) : SampleDraw{};
  if (!draw.affine) {
    normalise(pixels, draw, out);
  } else {
    unwarped_.resize(size);
    normalise(pixels, draw, unwarped_.data());
    resample_affine(out, unwarped_.data(), info_.shape, draw.map, black_.data());
  }
  if (draw.intensity_scale != 1 || draw.intensity_shift != 0)
    for (std::size_t i = 0; i < size; ++i) out[i] = float(out[i] * draw.intensity_scale + draw.intensity_shift);
}

// Stored pixels to normalised floats through the crop window and flips of `draw`.
void SampleReader::normalise(const unsigned char* pixels, const SampleDraw& draw, float* out) const {
  // A volume's channel is d slices of h rows; an image is one slice.
  const int channels = info_.shape.c, height = info_.shape.h, width = info_.shape.w, slices = info_.shape.d;
  const std::size_t plane = std::size_t(slices) * height * width;
  const float* values = reinterpret_cast<const float*>(pixels);
  const auto [dx, dy, dz] = draw.crop_offset;
  const auto [flip_x, flip_y, flip_z] = draw.flip;
  const bool moved = flip_x || flip_y || flip_z || dx != 0 || dy != 0 || dz != 0;
  for (int c = 0; c < channels; ++c) {
    float* o = out + std::size_t(c) * plane;
    const float scale = scale_[std::size_t(c)], bias = bias_[std::size_t(c)];
    const float* lut = info_.uint8 ? lut_.data() + std::size_t(c) * 256 : nullptr;
    const unsigned char* p8 = pixels + std::size_t(c) * plane;
    const float* pf = values + std::size_t(c) * plane;
    auto value = [&](std::size_t at) { return lut ? lut[p8[at]] : pf[at] * scale + bias; };
    if (!moved) {
      for (std::size_t i = 0; i < plane; ++i) o[i] = value(i);
      continue;
    }
    const float pad_value = black_[std::size_t(c)];
    for (int z = 0; z < slices; ++z) {
      const int sz = (flip_z ? slices - 1 - z : z) + dz;
      float* slice = o + std::size_t(z) * height * width;
      if (sz < 0 || sz >= slices) {
        std::fill(slice, slice + std::size_t(height) * width, pad_value);
        continue;
      }
      const std::size_t source_slice = std::size_t(sz) * height * width;
      for (int y = 0; y < height; ++y) {
        const int sy = (flip_y ? height - 1 - y : y) + dy;
        float* row = slice + std::size_t(y) * width;
        if (sy < 0 || sy >= height) {
          std::fill(row, row + width, pad_value);
          continue;
        }
        for (int x = 0; x < width; ++x) {
          const int sx = (flip_x ? width - 1 - x : x) + dx;
          row[x] = sx < 0 || sx >= width ? pad_value : value(source_slice + std::size_t(sy) * width + std::size_t(sx));
        }
      }
    }
  }
}

}  // namespace mpicnn::data
