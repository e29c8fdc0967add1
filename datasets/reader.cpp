#include "datasets/reader.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <span>
#include <thread>
#include <utility>

#include "core/errors.hpp"
#include "core/rng.hpp"
#include "datasets/direct_chunks.hpp"
#include "datasets/h5.hpp"
#include "datasets/writer.hpp"

namespace mpicnn::data {
namespace {

std::vector<std::string> group_names(hid_t file) {
  std::vector<std::string> names;
  auto visit = [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
    return 0;
  };
  h5::check(H5Literate(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, visit, &names), file, "list the groups of");
  std::vector<std::string> groups;
  for (const std::string& name : names) {
    h5::Handle object(H5Oopen(file, name.c_str(), H5P_DEFAULT));
    if (object.valid() && H5Iget_type(object.get()) == H5I_GROUP) groups.push_back(name);
  }
  return groups;
}

std::string joined(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& n : names) text += (text.empty() ? "" : ", ") + n;
  return text.empty() ? "none" : text;
}

DatasetInfo inspect(hid_t file, const std::string& path, const std::string& split) {
  auto bad = [&](const std::string& what) { throw IoError(path + ": " + what); };
  DatasetInfo info;
  info.path = path;
  info.split = split;
  if (!h5::has_attribute(file, "format"))
    bad(std::string("not an mpicnn dataset: missing attribute 'format' on '/', expected \"") + kFormatName + "\"");
  const std::string format = h5::read_string_attribute(file, "format");
  if (format != kFormatName) bad("attribute 'format' is \"" + format + "\", expected \"" + kFormatName + "\"");
  if (!h5::has_attribute(file, "format_version")) bad("missing attribute 'format_version' on '/', expected 1");
  const std::int64_t version = h5::read_attribute<std::int64_t>(file, "format_version");
  if (version != kFormatVersion)
    bad("unsupported format_version " + std::to_string(version) + ", expected " + std::to_string(kFormatVersion));
  for (const char* name : {"num_classes", "mean", "std"})
    if (!h5::has_attribute(file, name)) bad(std::string("missing attribute '") + name + "' on '/'");
  const std::int64_t classes = h5::read_attribute<std::int64_t>(file, "num_classes");
  if (classes < 0 || classes > std::numeric_limits<int>::max())
    bad("attribute 'num_classes' is " + std::to_string(classes) + ", expected a count >= 0");
  info.num_classes = int(classes);
  if (h5::has_attribute(file, "class_names")) {
    info.class_names = h5::read_string_array_attribute(file, "class_names");
    if (int(info.class_names.size()) != info.num_classes)
      bad("attribute 'class_names' has " + std::to_string(info.class_names.size()) + " names, expected " +
          std::to_string(info.num_classes) + " (num_classes)");
  }

  info.splits = group_names(file);
  if (std::find(info.splits.begin(), info.splits.end(), split) == info.splits.end())
    bad("no split '/" + split + "' (splits in the file: " + joined(info.splits) + ")");
  const std::string images_name = "/" + split + "/images";
  h5::Handle images = h5::open_dataset(file, images_name);
  const std::vector<hsize_t> dims = h5::dims(images.get());
  if (dims.size() != 4)
    throw ShapeError(path + ": dataset '" + images_name + "' has shape " + h5::dims_text(dims) + " (rank " +
                     std::to_string(dims.size()) + "), expected rank 4 (N,C,H,W)");
  const std::string type = h5::type_text(images.get());
  if (type != "uint8" && type != "float32")
    bad("dataset '" + images_name + "' has dtype " + type + ", expected uint8 or float32");
  info.uint8 = type == "uint8";
  if (dims[0] == 0)
    bad("split '/" + split + "' is empty: dataset '" + images_name + "' has shape " + h5::dims_text(dims) +
        ", expected at least one sample");
  if (dims[0] >= std::numeric_limits<std::uint32_t>::max())
    bad("dataset '" + images_name + "' has " + std::to_string(dims[0]) + " samples, more than this reader supports");
  for (int d = 1; d < 4; ++d)
    if (dims[std::size_t(d)] == 0 || dims[std::size_t(d)] > (1u << 20))
      throw ShapeError(path + ": dataset '" + images_name + "' has shape " + h5::dims_text(dims) +
                       ", expected C,H,W between 1 and 2^20");
  info.count = dims[0];
  info.shape = core::Shape{int(dims[1]), int(dims[2]), int(dims[3])};
  {
    h5::Handle create(H5Dget_create_plist(images.get()));
    if (H5Pget_layout(create.get()) == H5D_CHUNKED) {
      hsize_t chunk[4] = {};
      if (H5Pget_chunk(create.get(), 4, chunk) == 4) info.chunk_samples = int(chunk[0]);
    }
  }

  const std::string labels_name = "/" + split + "/labels", targets_name = "/" + split + "/targets";
  const bool has_labels = h5::exists(file, labels_name), has_targets = h5::exists(file, targets_name);
  if (!has_labels && !has_targets) bad("no dataset '" + labels_name + "' or '" + targets_name + "'");
  if (has_labels && has_targets) bad("both '" + labels_name + "' and '" + targets_name + "' exist, expected one");
  const std::string& name = has_labels ? labels_name : targets_name;
  h5::Handle labels = h5::open_dataset(file, name);
  const std::vector<hsize_t> label_dims = h5::dims(labels.get());
  const std::string label_type = h5::type_text(labels.get());
  if (has_labels) {
    if (label_dims.size() != 1)
      throw ShapeError(path + ": dataset '" + name + "' has shape " + h5::dims_text(label_dims) + ", expected (" +
                       std::to_string(info.count) + ")");
    if (!label_type.starts_with("int") && !label_type.starts_with("uint"))
      bad("dataset '" + name + "' has dtype " + label_type + ", expected int32 class indices");
    if (info.num_classes == 0) bad("dataset '" + name + "' holds class labels but attribute 'num_classes' is 0");
  } else {
    if (label_dims.size() != 2 || label_dims[1] == 0)
      throw ShapeError(path + ": dataset '" + name + "' has shape " + h5::dims_text(label_dims) + ", expected (" +
                       std::to_string(info.count) + ",K)");
    if (!label_type.starts_with("float")) bad("dataset '" + name + "' has dtype " + label_type + ", expected float32");
    info.target_size = int(label_dims[1]);
    if (info.num_classes != 0 && info.num_classes != info.target_size)
      bad("attribute 'num_classes' is " + std::to_string(info.num_classes) + ", expected 0 (regression) or " +
          std::to_string(info.target_size) + " (the K of '" + name + "')");
  }
  if (label_dims[0] != info.count)
    throw ShapeError(path + ": dataset '" + name + "' has " + std::to_string(label_dims[0]) + " entries, expected " +
                     std::to_string(info.count) + " (one per image of '" + images_name + "')");

  info.mean = h5::read_array_attribute<double>(file, "mean");
  info.std = h5::read_array_attribute<double>(file, "std");
  for (const char* attribute : {"mean", "std"}) {
    const std::vector<double>& values = attribute[0] == 'm' ? info.mean : info.std;
    if (int(values.size()) != info.shape.c)
      bad(std::string("attribute '") + attribute + "' has " + std::to_string(values.size()) + " values, expected " +
          std::to_string(info.shape.c) + " (one per channel of '" + images_name + "')");
    for (double v : values)
      if (!std::isfinite(v) || (attribute[0] == 's' && v <= 0))
        bad(std::string("attribute '") + attribute + "' holds " + std::to_string(v) + ", expected a finite" +
            (attribute[0] == 's' ? " positive" : "") + " number");
  }
  return info;
}

void check_statistics(const std::vector<double>& values, const char* name, int channels) {
  if (int(values.size()) != channels)
    throw ConfigError(std::string("reader option '") + name + "' has " + std::to_string(values.size()) +
                      " values, expected " + std::to_string(channels) + " (one per image channel)");
  for (double v : values)
    if (!std::isfinite(v) || (name[0] == 's' && v <= 0))
      throw ConfigError(std::string("reader option '") + name + "' holds " + std::to_string(v) +
                        ", expected a finite" + (name[0] == 's' ? " positive" : "") + " number");
}

void reserve_batch(Batch& batch, int capacity, const DatasetInfo& info) {
  const std::size_t images = std::size_t(capacity) * info.shape.size();
  if (batch.images.size() != images) batch.images = core::Buffer(images);
  const std::size_t targets = std::size_t(capacity) * std::size_t(info.target_size);
  if (batch.targets.size() != targets) batch.targets = core::Buffer(targets);
  batch.labels.reserve(std::size_t(capacity));
}

void copy_batch(const Batch& from, Batch& to, const DatasetInfo& info) {
  if (to.images.size() != from.images.size()) to.images = core::Buffer(from.images.size());
  if (to.targets.size() != from.targets.size()) to.targets = core::Buffer(from.targets.size());
  if (from.count > 0) {
    std::memcpy(to.images.data(), from.images.data(), std::size_t(from.count) * info.shape.size() * sizeof(float));
    if (info.target_size)
      std::memcpy(to.targets.data(), from.targets.data(), std::size_t(from.count) * info.target_size * sizeof(float));
  }
  to.labels.assign(from.labels.begin(), from.labels.end());
  to.count = from.count;
  to.global_count = from.global_count;
  to.first = from.first;
  to.epoch = from.epoch;
  to.step = from.step;
}

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

// Reads given samples of one split and preprocesses them into a Batch. Used by one thread at a time.
class SampleReader {
 public:
  struct Augment {
    bool flip = false;
    int pad = 0;
    std::uint64_t seed = 0;  // the epoch's augmentation seed; each sample derives its own from it
  };

  SampleReader(const std::string& path, const std::string& split, bool normalize, std::vector<double> mean,
               std::vector<double> std, std::size_t cache_bytes)
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

  const DatasetInfo& info() const { return info_; }

  // Reads samples `indices` (distinct, any order) into rows 0..n-1 of `batch`, which has room.
  void read(std::span<const std::uint32_t> indices, Batch& batch, const Augment& augment) {
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

 private:
  // Rows [first, first + count) of a dataset, whole, into `out` (a plain hyperslab, HDF5's fast path).
  void read_rows(hid_t dataset, hid_t space, hsize_t first, hsize_t count, void* out) {
    const int rank = H5Sget_simple_extent_ndims(space);
    hsize_t dims[4] = {}, start[4] = {first, 0, 0, 0};
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
  void read_images() {
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
  void read_images_direct() {
    chunk_.resize(block_rows_ * sample_bytes_);
    std::size_t last_chunk = SIZE_MAX;
    for (std::size_t j = 0; j < order_.size(); ++j) {
      const std::size_t index = order_[j].first, chunk = index / block_rows_;
      if (chunk != last_chunk) direct_->read(chunk * block_rows_, chunk_.data()), last_chunk = chunk;
      std::memcpy(staging_.data() + j * sample_bytes_, chunk_.data() + (index - chunk * block_rows_) * sample_bytes_,
                  sample_bytes_);
    }
  }

  void read_targets() {
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
  void load_cache() {
    cache_.resize(info_.count * sample_bytes_);
    const std::size_t rows = block_rows_ * std::max<std::size_t>(1, (64u << 10) / (block_rows_ * sample_bytes_));
    for (std::size_t first = 0; first < info_.count; first += rows)
      read_rows(images_.get(), image_space_.get(), first, std::min(rows, info_.count - first),
                cache_.data() + first * sample_bytes_);
  }

  // One sample from stored pixels to normalised floats, with its seeded augmentation.
  void transform(const unsigned char* pixels, std::uint32_t index, float* out, const Augment& augment) const {
    const int channels = info_.shape.c, height = info_.shape.h, width = info_.shape.w;
    const std::size_t plane = std::size_t(height) * width;
    const float* values = reinterpret_cast<const float*>(pixels);
    if (!info_.uint8)
      for (std::size_t i = 0; i < plane * channels; ++i)
        if (!std::isfinite(values[i]))
          throw IoError(info_.path + ": dataset '" + images_name_ + "' has a NaN or infinite pixel in sample " +
                        std::to_string(index) + ", expected finite values");
    bool flip = false;
    int dy = 0, dx = 0;  // source offset of the crop window
    if (augment.flip || augment.pad > 0) {
      core::Rng rng(core::derive_seed(augment.seed, index));
      if (augment.pad > 0) {
        dy = int(rng.below(2 * std::uint64_t(augment.pad) + 1)) - augment.pad;
        dx = int(rng.below(2 * std::uint64_t(augment.pad) + 1)) - augment.pad;
      }
      if (augment.flip) flip = rng.below(2) == 1;
    }
    for (int c = 0; c < channels; ++c) {
      float* o = out + std::size_t(c) * plane;
      const float scale = scale_[std::size_t(c)], bias = bias_[std::size_t(c)];
      const float* lut = info_.uint8 ? lut_.data() + std::size_t(c) * 256 : nullptr;
      const unsigned char* p8 = pixels + std::size_t(c) * plane;
      const float* pf = values + std::size_t(c) * plane;
      auto value = [&](std::size_t at) { return lut ? lut[p8[at]] : pf[at] * scale + bias; };
      if (!flip && dy == 0 && dx == 0) {
        for (std::size_t i = 0; i < plane; ++i) o[i] = value(i);
        continue;
      }
      const float pad_value = lut ? lut[0] : bias;  // a black pixel after normalisation
      for (int y = 0; y < height; ++y) {
        const int sy = y + dy;
        float* row = o + std::size_t(y) * width;
        if (sy < 0 || sy >= height) {
          std::fill(row, row + width, pad_value);
          continue;
        }
        for (int x = 0; x < width; ++x) {
          const int sx = (flip ? width - 1 - x : x) + dx;
          row[x] = sx < 0 || sx >= width ? pad_value : value(std::size_t(sy) * width + std::size_t(sx));
        }
      }
    }
  }

  h5::Handle file_;
  DatasetInfo info_;
  h5::Handle images_, labels_, image_space_, label_space_;
  std::unique_ptr<DirectChunks> direct_;  // null: HDF5's general read path
  std::string images_name_, labels_name_;
  std::size_t sample_bytes_ = 0;
  std::size_t block_rows_ = 0;  // samples per stored chunk; 256 when not chunked
  std::vector<float> scale_, bias_, lut_;  // y = x * scale + bias per channel; lut_: C x 256 for uint8
  std::vector<std::pair<std::uint32_t, std::uint32_t>> order_;  // (sample index, batch row), sorted
  std::vector<unsigned char> staging_;  // stored pixels of the step in sorted order
  std::vector<unsigned char> chunk_;    // one whole chunk
  std::vector<float> target_staging_;
  std::vector<std::int32_t> labels_all_;  // class labels of the whole split
  std::vector<unsigned char> cache_;    // the whole split's stored pixels when cache_bytes allows
  std::vector<float> targets_all_;
};

// Produces batches (epoch, step) for step in [0, steps] where step == steps marks the end of the
// epoch, optionally one ahead in a background thread: the thread fills slot_ while the caller
// works on its own Batch, and next() copies slot_ out (so the caller's buffers never move).
class Pipeline {
 public:
  using Fill = std::function<void(int epoch, long step, Batch& batch)>;

  Pipeline(long steps, Fill fill, bool background) : steps_(steps), fill_(std::move(fill)) {
    if (background) thread_ = std::thread([this] { run(); });
  }
  ~Pipeline() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  void seek(int epoch, long step) {
    std::lock_guard lock(mutex_);
    ++generation_;
    epoch_ = epoch;
    step_ = step;
    slot_full_ = false;
    slot_error_ = nullptr;
    cv_.notify_all();
  }

  bool next(Batch& out, const DatasetInfo& info) {
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

 private:
  void run() {
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

}  // namespace

void check_input_shape(const DatasetInfo& info, const core::Shape& model_input, const std::string& path) {
  if (info.shape != model_input)
    throw ShapeError(path + ": image shape " + info.shape.str() + " of split '" + info.split +
                     "' is different from the model's input " + model_input.str());
}

DatasetInfo read_info(const std::string& path, const std::string& split) {
  h5::Handle file = h5::open_file(path);
  return inspect(file.get(), path, split);
}

Slice rank_slice(std::size_t total, int rank, int ranks, int group) {
  const std::size_t g = std::size_t(std::max(group, 1)), groups = (total + g - 1) / g;
  const std::size_t base = groups / std::size_t(ranks), extra = groups % std::size_t(ranks), r = std::size_t(rank);
  const std::size_t first = (r * base + std::min(r, extra)) * g, end = first + (base + (r < extra ? 1 : 0)) * g;
  return {std::min(first, total), std::min(end, total) - std::min(first, total)};
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
// The per-epoch augmentation stream, far from the order streams 1000 + epoch.
std::uint64_t augment_seed(std::uint64_t seed, int epoch) { return core::derive_seed(seed, (1ull << 40) + std::uint64_t(epoch)); }
}  // namespace

struct TrainReader::Impl {
  ReaderOptions options;
  SampleReader samples;
  long steps;
  int capacity;
  int order_epoch = -1;
  std::vector<std::uint32_t> order;
  Pipeline pipeline;  // last: its thread uses the members above

  explicit Impl(ReaderOptions o)
      : options(std::move(o)),
        samples(options.path, options.split, options.normalize, options.mean, options.std, options.cache_bytes),
        steps(long((samples.info().count + std::size_t(options.global_batch) - 1) / std::size_t(options.global_batch))),
        capacity(int(rank_slice(std::size_t(options.global_batch), 0, options.ranks, options.micro_batch).count)),
        pipeline(steps, [this](int epoch, long step, Batch& batch) { fill(epoch, step, batch); }, options.prefetch) {}

  void fill(int epoch, long step, Batch& batch) {
    const DatasetInfo& info = samples.info();
    if (order_epoch != epoch) {
      order = epoch_order(info.count, options.seed, epoch, options.shuffle);
      order_epoch = epoch;
    }
    reserve_batch(batch, capacity, info);
    const std::size_t first = std::size_t(step) * std::size_t(options.global_batch);
    const std::size_t global = std::min(info.count - first, std::size_t(options.global_batch));
    const Slice part = rank_slice(global, options.rank, options.ranks, options.micro_batch);
    SampleReader::Augment augment{options.random_flip, options.random_crop_pad, augment_seed(options.seed, epoch)};
    samples.read(std::span(order).subspan(first + part.first, part.count), batch, augment);
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
  if (options.random_crop_pad < 0)
    throw ConfigError("reader: random crop padding " + std::to_string(options.random_crop_pad) + ", expected >= 0");
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
        part(rank_slice(samples.info().count, options.rank, options.ranks)),
        steps(long((part.count + std::size_t(options.batch) - 1) / std::size_t(options.batch))),
        max_steps(long((rank_slice(samples.info().count, 0, options.ranks).count + std::size_t(options.batch) - 1) /
                       std::size_t(options.batch))),
        pipeline(steps, [this](int epoch, long step, Batch& batch) { fill(epoch, step, batch); }, options.prefetch) {}

  void fill(int epoch, long step, Batch& batch) {
    reserve_batch(batch, options.batch, samples.info());
    const std::size_t first = std::size_t(step) * std::size_t(options.batch);
    const std::size_t count = std::min(part.count - first, std::size_t(options.batch));
    indices.resize(count);
    for (std::size_t i = 0; i < count; ++i) indices[i] = std::uint32_t(part.first + first + i);
    samples.read(indices, batch, {});
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
