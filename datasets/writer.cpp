#include "datasets/writer.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/errors.hpp"

namespace mpicnn::data {

const std::vector<std::string>& task_kinds() {
  static const std::vector<std::string> kinds = {"multi-class", "binary", "multi-label", "regression"};
  return kinds;
}

int compression_for(std::size_t chunk_bytes) { return chunk_bytes >= (16u << 10) ? 4 : 0; }

int chunk_samples_for(const core::Shape& shape, bool uint8) {
  const std::size_t sample_bytes = std::max<std::size_t>(1, shape.size() * (uint8 ? 1 : 4));
  const std::size_t samples = std::clamp<std::size_t>((1u << 10) / sample_bytes, 1, 256);
  return int(std::bit_floor(samples));
}

void DatasetWriter::Moments::merge(double n, double block_mean, double block_m2) {
  if (n == 0) return;
  const double total = count + n, delta = block_mean - mean;
  mean += delta * n / total;
  m2 += block_m2 + delta * delta * count * n / total;
  count = total;
}

DatasetWriter::DatasetWriter(const std::string& path, DatasetMeta meta, WriterOptions options)
    : path_(path), partial_path_(path + ".partial"), meta_(std::move(meta)), options_(options) {
  if (meta_.num_classes < 0) throw ConfigError(path_ + ": num_classes must be >= 0, got " + std::to_string(meta_.num_classes));
  if (!meta_.class_names.empty() && int(meta_.class_names.size()) != meta_.num_classes)
    throw ConfigError(path_ + ": " + std::to_string(meta_.class_names.size()) + " class names given for " +
                      std::to_string(meta_.num_classes) + " classes");
  if (!meta_.task.empty() && std::find(task_kinds().begin(), task_kinds().end(), meta_.task) == task_kinds().end())
    throw ConfigError(path_ + ": unknown task '" + meta_.task + "' (known: multi-class, binary, multi-label, regression)");
  if (meta_.task == "binary" && meta_.num_classes != 2)
    throw ConfigError(path_ + ": task binary needs 2 classes, got " + std::to_string(meta_.num_classes));
  if (meta_.task == "regression" && meta_.num_classes != 0)
    throw ConfigError(path_ + ": task regression needs num_classes 0, got " + std::to_string(meta_.num_classes));
  if (options_.compression_level < -1 || options_.compression_level > 9)
    throw ConfigError(path_ + ": compression level must be 0..9 or -1 (automatic), got " +
                      std::to_string(options_.compression_level));
  if (options_.chunk_samples < 0)
    throw ConfigError(path_ + ": chunk samples must be >= 0, got " + std::to_string(options_.chunk_samples));
  if (options_.compression_level > 0 && H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0)
    throw IoError(path_ + ": this HDF5 library has no gzip (deflate) filter");
  const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent))
    throw IoError(path_ + ": output folder " + parent.string() + " does not exist");
  // The HDF5 1.10 file format indexes the chunks of a fixed-size dataset with a fixed array:
  // finding a random sample's chunk is arithmetic, not a B-tree walk (1.8's format). Readable by
  // HDF5 1.10 and later (h5py included).
  h5::Handle access(H5Pcreate(H5P_FILE_ACCESS));
  H5Pset_libver_bounds(access.get(), H5F_LIBVER_V110, H5F_LIBVER_V110);
  file_ = h5::create_file(partial_path_, access.get());
}

DatasetWriter::~DatasetWriter() {
  if (finished_) return;
  images_.reset();
  labels_.reset();
  file_.reset();
  std::error_code ignored;
  std::filesystem::remove(partial_path_, ignored);
}

// (n,C,H,W) for images, (n,C,D,H,W) for volumes.
std::vector<hsize_t> DatasetWriter::image_dims(std::size_t n) const {
  if (shape_.is_volume()) return {n, hsize_t(shape_.c), hsize_t(shape_.d), hsize_t(shape_.h), hsize_t(shape_.w)};
  return {n, hsize_t(shape_.c), hsize_t(shape_.h), hsize_t(shape_.w)};
}

std::string DatasetWriter::where() const { return path_ + ": split '" + split_ + "'"; }

void DatasetWriter::begin_split(const std::string& split, core::Shape shape, std::size_t count, bool uint8,
                                int target_size) {
  end_split();
  split_ = split;
  if (std::find(splits_done_.begin(), splits_done_.end(), split) != splits_done_.end())
    throw ConfigError(where() + " written twice");
  if (count == 0) throw ConfigError(where() + " is empty: a split needs at least one sample");
  if (shape.c <= 0 || shape.d <= 0 || shape.h <= 0 || shape.w <= 0) throw ShapeError(where() + ": bad image shape " + shape.str());
  if (target_size < 0) throw ConfigError(where() + ": target size must be >= 0");
  if (target_size == 0 && meta_.num_classes == 0)
    throw ConfigError(where() + ": labels need num_classes > 0 (use targets for regression)");
  if (target_size == 0 && (meta_.task == "multi-label" || meta_.task == "regression"))
    throw ConfigError(where() + ": task " + meta_.task + " needs targets (N,K), not class labels");
  if (target_size > 0 && (meta_.task == "multi-class" || meta_.task == "binary"))
    throw ConfigError(where() + ": task " + meta_.task + " needs class labels (N), not targets");
  shape_ = shape;
  count_ = count;
  uint8_ = uint8;
  target_size_ = target_size;
  written_ = buffered_ = labels_written_ = 0;
  chunk_samples_ = int(std::min<std::size_t>(
      count, options_.chunk_samples > 0 ? std::size_t(options_.chunk_samples) : chunk_samples_for(shape, uint8)));
  // Whole chunks, at least 64 KiB, per write: fewer HDF5 calls for small chunks.
  const std::size_t chunk_bytes = std::size_t(chunk_samples_) * shape.size() * (uint8 ? 1 : 4);
  buffer_samples_ = std::size_t(chunk_samples_) * std::max<std::size_t>(1, (64u << 10) / chunk_bytes);
  chunk_.assign(buffer_samples_ * shape.size() * (uint8 ? 1 : 4), 0);
  collect_moments_ = split == "train";
  if (collect_moments_) moments_.assign(std::size_t(shape.c), Moments{});

  h5::Handle group = h5::create_group(file_.get(), split);
  const std::vector<hsize_t> dims = image_dims(count);
  std::vector<hsize_t> chunk = dims;
  chunk[0] = hsize_t(chunk_samples_);
  h5::Handle space(H5Screate_simple(int(dims.size()), dims.data(), nullptr));
  h5::Handle create(H5Pcreate(H5P_DATASET_CREATE));
  h5::check(H5Pset_chunk(create.get(), int(chunk.size()), chunk.data()), group.get(), "set chunking on", "images");
  const int level = options_.compression_level >= 0
                        ? options_.compression_level
                        : compression_for(std::size_t(chunk_samples_) * shape.size() * (uint8 ? 1 : 4));
  if (level > 0) h5::check(H5Pset_deflate(create.get(), unsigned(level)), group.get(), "set gzip on", "images");
  images_ = h5::Handle(h5::check(H5Dcreate2(group.get(), "images", uint8 ? H5T_STD_U8LE : H5T_IEEE_F32LE, space.get(),
                                            H5P_DEFAULT, create.get(), H5P_DEFAULT),
                                 group.get(), "create dataset", "images"));
  // Labels and targets are small and read at random positions: contiguous, uncompressed.
  const hsize_t label_dims[2] = {count, hsize_t(target_size)};
  h5::Handle label_space(H5Screate_simple(target_size ? 2 : 1, label_dims, nullptr));
  const char* name = target_size ? "targets" : "labels";
  labels_ = h5::Handle(h5::check(H5Dcreate2(group.get(), name, target_size ? H5T_IEEE_F32LE : H5T_STD_I32LE,
                                            label_space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                                 group.get(), "create dataset", name));
}

void DatasetWriter::append(std::span<const std::uint8_t> images, std::span<const std::int32_t> labels) {
  if (!images_.valid() || target_size_ != 0 || !uint8_) throw ConfigError(where() + ": append does not match the split");
  if (images.size() != labels.size() * shape_.size())
    throw ShapeError(where() + ": " + std::to_string(images.size()) + " pixels for " + std::to_string(labels.size()) +
                     " labels of images " + shape_.str());
  append_labels(labels.data(), nullptr, labels.size());
  append_images(images.data(), labels.size(), true);
}

void DatasetWriter::append(std::span<const float> images, std::span<const std::int32_t> labels) {
  if (!images_.valid() || target_size_ != 0 || uint8_) throw ConfigError(where() + ": append does not match the split");
  if (images.size() != labels.size() * shape_.size())
    throw ShapeError(where() + ": " + std::to_string(images.size()) + " pixels for " + std::to_string(labels.size()) +
                     " labels of images " + shape_.str());
  append_labels(labels.data(), nullptr, labels.size());
  append_images(images.data(), labels.size(), false);
}

void DatasetWriter::append_targets(std::span<const std::uint8_t> images, std::span<const float> targets) {
  if (!images_.valid() || target_size_ == 0 || !uint8_) throw ConfigError(where() + ": append does not match the split");
  const std::size_t n = targets.size() / std::size_t(target_size_);
  if (targets.size() % std::size_t(target_size_) || images.size() != n * shape_.size())
    throw ShapeError(where() + ": " + std::to_string(images.size()) + " pixels and " + std::to_string(targets.size()) +
                     " target values do not make whole samples");
  append_labels(nullptr, targets.data(), n);
  append_images(images.data(), n, true);
}

void DatasetWriter::append_targets(std::span<const float> images, std::span<const float> targets) {
  if (!images_.valid() || target_size_ == 0 || uint8_) throw ConfigError(where() + ": append does not match the split");
  const std::size_t n = targets.size() / std::size_t(target_size_);
  if (targets.size() % std::size_t(target_size_) || images.size() != n * shape_.size())
    throw ShapeError(where() + ": " + std::to_string(images.size()) + " pixels and " + std::to_string(targets.size()) +
                     " target values do not make whole samples");
  append_labels(nullptr, targets.data(), n);
  append_images(images.data(), n, false);
}

void DatasetWriter::append_labels(const std::int32_t* labels, const float* targets, std::size_t n) {
  if (labels_written_ + n > count_)
    throw ShapeError(where() + ": more than the declared " + std::to_string(count_) + " samples appended");
  if (labels)
    for (std::size_t i = 0; i < n; ++i)
      if (labels[i] < 0 || labels[i] >= meta_.num_classes)
        throw ConfigError(where() + ": label " + std::to_string(labels[i]) + " of sample " +
                          std::to_string(labels_written_ + i) + " is outside [0, " + std::to_string(meta_.num_classes) + ")");
  if (n == 0) return;
  const int rank = target_size_ ? 2 : 1;
  const hsize_t start[2] = {labels_written_, 0}, count[2] = {n, hsize_t(target_size_)};
  h5::Handle file_space(H5Dget_space(labels_.get()));
  H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
  h5::Handle memory_space(H5Screate_simple(rank, count, nullptr));
  h5::check(H5Dwrite(labels_.get(), labels ? H5T_NATIVE_INT32 : H5T_NATIVE_FLOAT, memory_space.get(), file_space.get(),
                     H5P_DEFAULT, labels ? static_cast<const void*>(labels) : targets),
            labels_.get(), "write");
  labels_written_ += n;
}

void DatasetWriter::append_images(const void* images, std::size_t n, bool uint8) {
  // plane: the pixels of one channel, all slices of a volume included
  const std::size_t sample = shape_.size(), element = uint8 ? 1 : 4, plane = sample / std::size_t(shape_.c);
  const auto* bytes = static_cast<const unsigned char*>(images);
  if (!uint8) {
    const auto* values = static_cast<const float*>(images);
    for (std::size_t i = 0; i < n * sample; ++i)
      if (!std::isfinite(values[i]))
        throw ConfigError(where() + ": sample " + std::to_string(written_ + buffered_ + i / sample) +
                          " has a NaN or infinite pixel");
  }
  if (collect_moments_ && n > 0) {
    for (int c = 0; c < shape_.c; ++c) {
      auto value = [&](std::size_t i, std::size_t p) {
        const std::size_t at = i * sample + std::size_t(c) * plane + p;
        return uint8 ? bytes[at] / 255.0 : double(static_cast<const float*>(images)[at]);
      };
      double sum = 0, m2 = 0;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t p = 0; p < plane; ++p) sum += value(i, p);
      const double count = double(n) * double(plane), mean = sum / count;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t p = 0; p < plane; ++p) m2 += (value(i, p) - mean) * (value(i, p) - mean);
      moments_[std::size_t(c)].merge(count, mean, m2);
    }
  }
  while (n > 0) {
    const std::size_t take = std::min(n, buffer_samples_ - buffered_);
    std::memcpy(chunk_.data() + buffered_ * sample * element, bytes, take * sample * element);
    buffered_ += take;
    bytes += take * sample * element;
    n -= take;
    if (buffered_ == buffer_samples_) flush_chunk();
  }
}

// Writes whole chunks only (but the split's last), so HDF5 never reads back and recompresses a
// partial chunk.
void DatasetWriter::flush_chunk() {
  if (buffered_ == 0) return;
  const std::vector<hsize_t> count = image_dims(buffered_);
  std::vector<hsize_t> start(count.size(), 0);
  start[0] = written_;
  h5::Handle file_space(H5Dget_space(images_.get()));
  H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  h5::Handle memory_space(H5Screate_simple(int(count.size()), count.data(), nullptr));
  h5::check(H5Dwrite(images_.get(), uint8_ ? H5T_NATIVE_UINT8 : H5T_NATIVE_FLOAT, memory_space.get(), file_space.get(),
                     H5P_DEFAULT, chunk_.data()),
            images_.get(), "write");
  written_ += buffered_;
  buffered_ = 0;
}

void DatasetWriter::end_split() {
  if (!images_.valid()) return;
  flush_chunk();
  if (written_ != count_ || labels_written_ != count_)
    throw ShapeError(where() + ": " + std::to_string(written_) + " samples written, " + std::to_string(count_) +
                     " declared");
  images_.reset();
  labels_.reset();
  chunk_ = {};
  splits_done_.push_back(split_);
}

void DatasetWriter::finish() {
  end_split();
  split_ = "train";
  if (std::find(splits_done_.begin(), splits_done_.end(), "train") == splits_done_.end())
    throw ConfigError(path_ + ": no train split written (mean and std come from it)");
  std::vector<double> mean, std;
  for (const Moments& m : moments_) {
    mean.push_back(m.mean);
    const double deviation = std::sqrt(m.m2 / m.count);
    std.push_back(deviation > 0 ? deviation : 1.0);  // a constant channel: keep normalisation finite
  }
  const hid_t root = file_.get();
  h5::write_attribute(root, "format", kFormatName);
  h5::write_attribute(root, "format_version", kFormatVersion);
  h5::write_attribute(root, "num_classes", meta_.num_classes);
  if (!meta_.class_names.empty()) h5::write_attribute(root, "class_names", meta_.class_names);
  if (!meta_.task.empty()) h5::write_attribute(root, "task", meta_.task);
  h5::write_attribute(root, "mean", std::span<const double>(mean));
  h5::write_attribute(root, "std", std::span<const double>(std));
  h5::check(H5Fflush(root, H5F_SCOPE_GLOBAL), root, "flush");
  file_.reset();
  std::error_code error;
  std::filesystem::rename(partial_path_, path_, error);
  if (error) throw IoError(path_ + ": cannot rename " + partial_path_ + " to it: " + error.message());
  finished_ = true;
}

}  // namespace mpicnn::data
