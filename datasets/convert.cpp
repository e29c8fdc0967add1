#include "datasets/convert.hpp"

#include <stb/stb_image.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>

#include "core/errors.hpp"
#include "core/rng.hpp"
#include "datasets/labels.hpp"
#include "datasets/npz.hpp"

namespace mpicnn::data {
namespace fs = std::filesystem;

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

namespace {

constexpr std::size_t kBlock = 1024;  // samples per append while streaming

// ---------------------------------------------------------------------------------------------
// IDX (MNIST family). zlib's gz* functions read gzipped and plain files alike.

class IdxFile {
 public:
  IdxFile(std::string path, int expected_dims) : path_(std::move(path)), file_(gzopen(path_.c_str(), "rb"), &gzclose) {
    if (!file_) throw IoError(path_ + ": cannot open file: " + std::strerror(errno));
    gzbuffer(file_.get(), 1 << 17);
    unsigned char magic[4];
    read(magic, 4, "header");
    if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != expected_dims)
      throw IoError(path_ + ": not an IDX file of unsigned bytes with " + std::to_string(expected_dims) +
                    " dimensions (magic " + hex(magic) + ", expected 00 00 08 0" + std::to_string(expected_dims) + ")");
    for (int d = 0; d < expected_dims; ++d) {
      unsigned char size[4];
      read(size, 4, "header");
      dims_.push_back((std::size_t(size[0]) << 24) | (std::size_t(size[1]) << 16) | (std::size_t(size[2]) << 8) | size[3]);
    }
  }
  const std::string& path() const { return path_; }
  const std::vector<std::size_t>& dims() const { return dims_; }
  void read(unsigned char* out, std::size_t n, const char* what) {
    while (n > 0) {
      const unsigned piece = unsigned(std::min<std::size_t>(n, 1u << 30));
      const int got = gzread(file_.get(), out, piece);
      if (got < 0) {
        int code = 0;
        throw IoError(path_ + ": damaged file (zlib: " + gzerror(file_.get(), &code) + ")");
      }
      if (got == 0) throw IoError(path_ + ": file ends early, in its " + std::string(what));
      out += got;
      n -= std::size_t(got);
    }
  }

 private:
  static std::string hex(const unsigned char* b) {
    char text[16];
    std::snprintf(text, sizeof text, "%02x %02x %02x %02x", b[0], b[1], b[2], b[3]);
    return text;
  }
  std::string path_;
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file_;
  std::vector<std::size_t> dims_;
};

// "<prefix>-<kind>-<idx>-ubyte", or with '.' before <idx> as on the original MNIST page; maybe .gz.
std::string find_idx(const std::string& folder, const std::string& prefix, const std::string& kind,
                     const std::string& idx) {
  for (const char* separator : {"-", "."})
    for (const char* gz : {".gz", ""}) {
      const fs::path path = fs::path(folder) / (prefix + "-" + kind + separator + idx + "-ubyte" + gz);
      if (fs::is_regular_file(path)) return path.string();
    }
  throw IoError(folder + ": no " + prefix + "-" + kind + "-" + idx + "-ubyte[.gz] (expected the four MNIST IDX files " +
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)");
}

std::vector<std::int32_t> read_idx_labels(const std::string& path) {
  IdxFile file(path, 1);
  std::vector<unsigned char> bytes(file.dims()[0]);
  file.read(bytes.data(), bytes.size(), "labels");
  return {bytes.begin(), bytes.end()};
}

int class_count(const std::vector<std::vector<std::int32_t>>& label_sets, const std::vector<std::string>& names,
                const std::string& where) {
  std::int32_t largest = -1;
  for (const auto& labels : label_sets)
    for (std::int32_t l : labels) largest = std::max(largest, l);
  if (names.empty()) return largest + 1;
  if (largest >= std::int32_t(names.size()))
    throw ConfigError(where + ": label " + std::to_string(largest) + " found but only " +
                      std::to_string(names.size()) + " class names given");
  return int(names.size());
}

// ---------------------------------------------------------------------------------------------
// Image folders.

struct ImageFile {
  fs::path path;
  std::int32_t label = 0;
};

bool is_image(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

}  // namespace

// Bilinear with pixel centres aligned (x_in = (x_out + 0.5) * in/out - 0.5, clamped at the
// borders), no antialiasing; rounds to the nearest integer. HWC layout, `channels` per pixel.
void resize_bilinear(const unsigned char* in, int in_h, int in_w, unsigned char* out, int out_h, int out_w,
                     int channels) {
  for (int y = 0; y < out_h; ++y) {
    const double sy = std::clamp((y + 0.5) * in_h / out_h - 0.5, 0.0, double(in_h - 1));
    const int y0 = int(sy), y1 = std::min(y0 + 1, in_h - 1);
    const double fy = sy - y0;
    for (int x = 0; x < out_w; ++x) {
      const double sx = std::clamp((x + 0.5) * in_w / out_w - 0.5, 0.0, double(in_w - 1));
      const int x0 = int(sx), x1 = std::min(x0 + 1, in_w - 1);
      const double fx = sx - x0;
      for (int c = 0; c < channels; ++c) {
        auto at = [&](int yy, int xx) { return double(in[(std::size_t(yy) * in_w + xx) * channels + c]); };
        const double v = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1));
        out[(std::size_t(y) * out_w + x) * channels + c] = (unsigned char)std::lround(std::clamp(v, 0.0, 255.0));
      }
    }
  }
}

namespace {

void write_image_split(DatasetWriter& writer, const std::string& split, const std::vector<ImageFile>& files,
                       core::Shape shape) {
  if (files.empty()) return;
  writer.begin_split(split, shape, files.size(), true);
  const std::size_t sample = shape.size(), plane = std::size_t(shape.h) * shape.w;
  std::vector<std::uint8_t> images;
  std::vector<std::int32_t> labels;
  std::vector<unsigned char> resized;
  for (std::size_t i = 0; i < files.size(); ++i) {
    int w = 0, h = 0, channels_in_file = 0;
    using Pixels = std::unique_ptr<unsigned char, void (*)(void*)>;
    Pixels pixels(stbi_load(files[i].path.c_str(), &w, &h, &channels_in_file, shape.c), &stbi_image_free);
    if (!pixels)
      throw IoError(files[i].path.string() + ": cannot decode image (stb: " + stbi_failure_reason() + ")");
    const unsigned char* hwc = pixels.get();
    if (h != shape.h || w != shape.w) {
      resized.resize(sample);
      resize_bilinear(pixels.get(), h, w, resized.data(), shape.h, shape.w, shape.c);
      hwc = resized.data();
    }
    const std::size_t base = images.size();
    images.resize(base + sample);
    for (int c = 0; c < shape.c; ++c)
      for (std::size_t p = 0; p < plane; ++p) images[base + std::size_t(c) * plane + p] = hwc[p * shape.c + c];
    labels.push_back(files[i].label);
    if (labels.size() == kBlock / 4 || i + 1 == files.size()) {
      writer.append(images, labels);
      images.clear();
      labels.clear();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NPZ.

struct NpzSplit {
  std::string name;
  const npz::ZipEntry* images = nullptr;
  const npz::ZipEntry* labels = nullptr;
  std::string labels_where;     // "<file>: member '<split>_labels.npy'"
  std::vector<double> values;   // count x columns, as stored
  std::size_t columns = 1;      // 1 for (N) and (N,1)
  std::vector<std::int32_t> label_values;
  std::vector<float> target_values;
  std::size_t count = 0;
};

void read_npz_labels(const npz::ZipFile& zip, NpzSplit& split) {
  npz::MemberReader member(zip, *split.labels);
  split.labels_where = member.where();
  const npz::NpyHeader header = npz::read_npy_header(member);
  const auto& shape = header.shape;
  if (shape.empty() || shape.size() > 2)
    throw ShapeError(member.where() + ": labels have shape of rank " + std::to_string(shape.size()) +
                     ", expected (N), (N,1) or (N,K)");
  split.count = shape[0];
  split.columns = shape.size() == 2 ? shape[1] : 1;
  if (split.columns == 0) throw ShapeError(member.where() + ": labels of shape (N,0), expected (N), (N,1) or (N,K)");
  std::vector<unsigned char> raw(header.count() * header.item_size);
  member.read(raw.data(), raw.size());
  member.expect_end();
  for (std::size_t i = 0; i < header.count(); ++i) {
    const unsigned char* p = raw.data() + i * header.item_size;
    double v = 0;
    if (header.kind == 'f' && header.item_size == 4) { float f; std::memcpy(&f, p, 4); v = f; }
    else if (header.kind == 'f' && header.item_size == 8) std::memcpy(&v, p, 8);
    else if (header.kind == 'u' || header.kind == 'b') { std::uint64_t u = 0; std::memcpy(&u, p, header.item_size); v = double(u); }
    else if (header.kind == 'i') {
      std::int64_t s = 0;
      std::memcpy(&s, p, header.item_size);
      const int shift = 64 - 8 * int(header.item_size);
      v = double(shift ? (s << shift) >> shift : s);
    } else throw IoError(member.where() + ": labels of dtype '" + header.descr + "' not supported");
    split.values.push_back(v);
  }
}

// The image layout of an .npy array of rank 3 or 4 (MedMNIST: (N,H,W) grey, (N,H,W,3) RGB,
// (N,D,H,W) volumes). A rank-4 array whose last axis is 1, 3 or 4 long could be channels or a
// volume's width: the user says which (`layout`), the converter never guesses.
core::Shape npz_image_shape(const std::vector<std::uint64_t>& s, const std::string& layout, const std::string& where) {
  const std::string dims = [&] {
    std::string text = "(";
    for (std::size_t i = 0; i < s.size(); ++i) text += (i ? "," : "") + std::to_string(s[i]);
    return text + ")";
  }();
  if (s.size() != 3 && s.size() != 4)
    throw ShapeError(where + ": images " + dims + " of rank " + std::to_string(s.size()) +
                     ", expected (N,H,W) grey, (N,H,W,C) channels last or (N,D,H,W) volumes");
  for (std::size_t i = 1; i < s.size(); ++i)
    if (s[i] == 0 || s[i] > (1u << 20)) throw ShapeError(where + ": images " + dims + ", expected sizes between 1 and 2^20");
  if (s.size() == 3) {
    if (layout != "auto" && layout != "grey")
      throw ConfigError(where + ": images " + dims + " are (N,H,W) grey, but --layout " + layout + " was given");
    return core::Shape{1, int(s[1]), int(s[2])};
  }
  if (layout == "grey")
    throw ConfigError(where + ": images " + dims + " have rank 4, but --layout grey expects (N,H,W)");
  const bool channel_like = s[3] == 1 || s[3] == 3 || s[3] == 4;
  if (layout == "channels_last") return core::Shape{int(s[3]), int(s[1]), int(s[2])};
  if (layout == "volume") return core::Shape{1, int(s[2]), int(s[3]), int(s[1])};
  if (channel_like)
    throw ConfigError(where + ": images " + dims + " could be " + std::to_string(s[1]) + "x" + std::to_string(s[2]) +
                      " images with " + std::to_string(s[3]) + " channels last (--layout channels_last) or volumes of " +
                      std::to_string(s[1]) + "x" + std::to_string(s[2]) + "x" + std::to_string(s[3]) +
                      " (DxHxW) voxels (--layout volume); say which with --layout");
  return core::Shape{1, int(s[2]), int(s[3]), int(s[1])};  // (N,D,H,W): a last axis this long is no channel count
}

}  // namespace

ConvertSummary convert_idx(const std::string& folder, const std::string& output_path, const ConvertOptions& options) {
  if (!fs::is_directory(folder)) throw IoError(folder + ": folder not found");
  struct Part { std::string split, images, labels; std::vector<std::int32_t> values; };
  std::vector<Part> parts = {
      {"train", find_idx(folder, "train", "images", "idx3"), find_idx(folder, "train", "labels", "idx1"), {}},
      {"test", find_idx(folder, "t10k", "images", "idx3"), find_idx(folder, "t10k", "labels", "idx1"), {}}};
  for (Part& part : parts) part.values = read_idx_labels(part.labels);
  ConvertSummary summary;
  summary.num_classes = class_count({parts[0].values, parts[1].values}, options.class_names, folder);
  DatasetWriter writer(output_path, {summary.num_classes, options.class_names}, options.writer);
  for (Part& part : parts) {
    IdxFile images(part.images, 3);
    const auto& dims = images.dims();
    if (dims[0] != part.values.size())
      throw ShapeError(part.images + ": holds " + std::to_string(dims[0]) + " images but " + part.labels + " holds " +
                       std::to_string(part.values.size()) + " labels, expected the same count");
    const core::Shape shape{1, int(dims[1]), int(dims[2])};
    if (summary.shape.size() != 0 && shape != summary.shape)
      throw ShapeError(part.images + ": images " + shape.str() + ", expected " + summary.shape.str() + " as in train");
    summary.shape = shape;
    writer.begin_split(part.split, shape, dims[0], true);
    std::vector<std::uint8_t> block(kBlock * shape.size());
    for (std::size_t first = 0; first < dims[0]; first += kBlock) {
      const std::size_t n = std::min(kBlock, dims[0] - first);
      images.read(block.data(), n * shape.size(), "images");
      writer.append(std::span(block.data(), n * shape.size()), std::span(part.values.data() + first, n));
    }
    summary.split_counts[part.split] = dims[0];
  }
  writer.finish();
  return summary;
}

ConvertSummary convert_npz(const std::string& file, const std::string& output_path, const ConvertOptions& options) {
  if (!fs::is_regular_file(file)) throw IoError(file + ": file not found");
  const npz::ZipFile zip(file);
  std::vector<NpzSplit> splits;
  for (const char* name : {"train", "val", "test"}) {
    NpzSplit split;
    split.name = name;
    split.images = zip.find(split.name + "_images.npy");
    split.labels = zip.find(split.name + "_labels.npy");
    if (!split.images && !split.labels && split.name != "train") continue;
    if (!split.images || !split.labels) {
      std::string members;
      for (const npz::ZipEntry& e : zip.entries()) members += (members.empty() ? "" : ", ") + e.name;
      throw IoError(file + ": no member '" + split.name + (split.images ? "_labels" : "_images") +
                    ".npy' (expected MedMNIST layout: train_images, train_labels, optional val_* and test_*; found " +
                    (members.empty() ? std::string("none") : members) + ")");
    }
    read_npz_labels(zip, split);
    splits.push_back(std::move(split));
  }
  std::vector<LabelSource> sources;
  for (const NpzSplit& s : splits) sources.push_back({s.labels_where, &s.values, s.columns});
  const LabelPlan plan = plan_labels(sources, options.task, options.class_names);
  for (NpzSplit& s : splits) {
    if (plan.target_size) s.target_values = target_values(s.values);
    else s.label_values = class_labels(s.values);
    s.values = {};
  }
  ConvertSummary summary;
  summary.num_classes = plan.num_classes;
  summary.task = plan.task;
  DatasetWriter writer(output_path, {plan.num_classes, options.class_names, plan.task}, options.writer);
  for (NpzSplit& split : splits) {
    npz::MemberReader member(zip, *split.images);
    const npz::NpyHeader header = npz::read_npy_header(member);
    if (header.kind != 'u' || header.item_size != 1)
      throw IoError(member.where() + ": images of dtype '" + header.descr + "', expected uint8 ('|u1')");
    const core::Shape shape = npz_image_shape(header.shape, options.layout, member.where());
    if (header.shape[0] != split.count)
      throw ShapeError(member.where() + ": holds " + std::to_string(header.shape[0]) + " images but '" + split.name +
                       "_labels' holds " + std::to_string(split.count) + ", expected the same count");
    if (summary.shape.size() != 0 && shape != summary.shape)
      throw ShapeError(member.where() + ": images " + shape.str() + ", expected " + summary.shape.str() + " as in train");
    summary.shape = shape;
    writer.begin_split(split.name, shape, split.count, true, plan.target_size);
    // Channels last in the .npy (one channel for grey images and volumes), channels first in the dataset.
    const std::size_t sample = shape.size(), plane = sample / std::size_t(shape.c), k = std::size_t(plan.target_size);
    const std::size_t block = std::max<std::size_t>(1, std::min<std::size_t>(kBlock, (64u << 20) / sample));
    std::vector<std::uint8_t> hwc(block * sample), chw(block * sample);
    for (std::size_t first = 0; first < split.count; first += block) {
      const std::size_t n = std::min(block, split.count - first);
      member.read(hwc.data(), n * sample);
      for (std::size_t i = 0; i < n; ++i)
        for (int c = 0; c < shape.c; ++c)
          for (std::size_t p = 0; p < plane; ++p)
            chw[i * sample + std::size_t(c) * plane + p] = hwc[i * sample + p * std::size_t(shape.c) + std::size_t(c)];
      const std::span images(chw.data(), n * sample);
      if (k) writer.append_targets(images, std::span<const float>(split.target_values.data() + first * k, n * k));
      else writer.append(images, std::span<const std::int32_t>(split.label_values.data() + first, n));
    }
    member.expect_end();
    summary.split_counts[split.name] = split.count;
  }
  writer.finish();
  return summary;
}

ConvertSummary convert_image_folder(const std::string& folder, const std::string& output_path,
                                    const ConvertOptions& options) {
  if (!fs::is_directory(folder)) throw IoError(folder + ": folder not found");
  if ((options.height > 0) != (options.width > 0) || options.height < 0 || options.width < 0)
    throw ConfigError(folder + ": resize target " + std::to_string(options.height) + "x" + std::to_string(options.width) +
                      ", expected both height and width > 0, or both 0");
  if (options.channels != 0 && options.channels != 1 && options.channels != 3)
    throw ConfigError(folder + ": channels " + std::to_string(options.channels) + ", expected 1, 3 or 0 (automatic)");
  if (!(options.test_fraction >= 0 && options.test_fraction < 1))
    throw ConfigError(folder + ": test fraction " + std::to_string(options.test_fraction) + ", expected 0 <= f < 1");
  std::vector<std::string> classes;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.is_directory() && !entry.path().filename().string().starts_with('.'))
      classes.push_back(entry.path().filename().string());
  std::sort(classes.begin(), classes.end());
  if (classes.empty()) throw IoError(folder + ": no class subfolders (expected one folder of images per class)");

  std::vector<ImageFile> train, test;
  int height = options.height, width = options.width, first_h = 0, first_w = 0;
  bool colour = false;
  fs::path first;
  for (std::size_t label = 0; label < classes.size(); ++label) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(fs::path(folder) / classes[label]))
      if (entry.is_regular_file() && is_image(entry.path())) files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    if (files.empty())
      throw IoError((fs::path(folder) / classes[label]).string() + ": class folder holds no .png/.jpg/.jpeg images");
    for (const fs::path& path : files) {
      int w = 0, h = 0, channels = 0;
      if (!stbi_info(path.c_str(), &w, &h, &channels))
        throw IoError(path.string() + ": not a readable PNG/JPEG image (stb: " + stbi_failure_reason() + ")");
      colour = colour || channels >= 3;
      if (first.empty()) {
        first = path;
        first_h = h;
        first_w = w;
      } else if (options.height == 0 && (h != first_h || w != first_w)) {
        throw ShapeError(path.string() + ": image is " + std::to_string(h) + "x" + std::to_string(w) +
                         " (HxW), expected " + std::to_string(first_h) + "x" + std::to_string(first_w) + " like " +
                         first.string() + " (give a resize target to convert images of different sizes)");
      }
    }
    // Each class contributes round(fraction * n) images to /test, chosen by a seeded shuffle.
    core::Rng rng(core::derive_seed(options.seed, label));
    for (std::size_t i = files.size(); i > 1; --i) std::swap(files[i - 1], files[rng.below(i)]);
    const std::size_t test_count = std::size_t(std::lround(options.test_fraction * double(files.size())));
    std::sort(files.begin(), files.begin() + std::ptrdiff_t(test_count));
    std::sort(files.begin() + std::ptrdiff_t(test_count), files.end());
    for (std::size_t i = 0; i < files.size(); ++i)
      (i < test_count ? test : train).push_back({files[i], std::int32_t(label)});
  }
  if (train.empty()) throw ConfigError(folder + ": test fraction leaves no image for /train");
  if (height == 0) {
    height = first_h;
    width = first_w;
  }
  const core::Shape shape{options.channels ? options.channels : (colour ? 3 : 1), height, width};
  DatasetWriter writer(output_path, {int(classes.size()), classes}, options.writer);
  write_image_split(writer, "train", train, shape);
  write_image_split(writer, "test", test, shape);
  writer.finish();
  ConvertSummary summary;
  summary.shape = shape;
  summary.num_classes = int(classes.size());
  summary.split_counts["train"] = train.size();
  if (!test.empty()) summary.split_counts["test"] = test.size();
  return summary;
}

}  // namespace mpicnn::data
