// Every bad dataset file gives one line naming the file, the object, and expected versus found.
#include <fstream>
#include <limits>

#include "core/errors.hpp"
#include "datasets/h5.hpp"
#include "datasets/reader.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

template <class Error, class F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown, expected one mentioning " << parts.at(0);
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) EXPECT_THAT(message, HasSubstr(part));
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

// A small file in the dataset format written with the raw helpers, so each test can break one thing.
struct Raw {
  std::vector<hsize_t> image_dims = {10, 1, 2, 2};
  std::string image_type = "uint8";  // "uint8", "float32", "float64"
  std::vector<float> pixels{};       // float images; default 0.5 everywhere
  std::vector<std::int32_t> labels = {0, 1, 2, 3, 4, 0, 1, 2, 3, 4};
  bool images = true, write_labels = true, format = true;
  std::string format_name = kFormatName;
  std::int64_t version = 1;
  std::int64_t num_classes = 5;
  std::vector<double> mean = {0.5}, std = {0.25};
};

void write_raw(const std::string& path, const Raw& raw) {
  h5::Handle file = h5::create_file(path);
  h5::Handle group = h5::create_group(file.get(), "train");
  std::size_t n = 1;
  for (hsize_t d : raw.image_dims) n *= d;
  if (raw.images) {
    if (raw.image_type == "uint8") {
      std::vector<std::uint8_t> pixels(n, 100);
      h5::write_dataset<std::uint8_t>(group.get(), "images", pixels, raw.image_dims);
    } else if (raw.image_type == "float32") {
      std::vector<float> pixels = raw.pixels.empty() ? std::vector<float>(n, 0.5f) : raw.pixels;
      h5::write_dataset<float>(group.get(), "images", pixels, raw.image_dims);
    } else {
      std::vector<double> pixels(n, 0.5);
      h5::write_dataset<double>(group.get(), "images", pixels, raw.image_dims);
    }
  }
  if (raw.write_labels) h5::write_dataset<std::int32_t>(group.get(), "labels", raw.labels, {raw.labels.size()});
  if (raw.format) h5::write_attribute(file.get(), "format", raw.format_name);
  h5::write_attribute(file.get(), "format_version", raw.version);
  h5::write_attribute(file.get(), "num_classes", raw.num_classes);
  h5::write_attribute(file.get(), "mean", std::span<const double>(raw.mean));
  h5::write_attribute(file.get(), "std", std::span<const double>(raw.std));
}

TEST(DatasetErrors, ValidRawFileIsAccepted) {
  TempDir dir;
  const std::string path = dir.file("ok.h5");
  write_raw(path, {});
  const DatasetInfo info = read_info(path, "train");
  EXPECT_EQ(info.count, 10u);
  EXPECT_EQ(info.shape, (core::Shape{1, 2, 2}));
  EXPECT_EQ(info.chunk_samples, 0);
  TrainReader reader({.path = path, .global_batch = 4, .seed = 2, .normalize = false});  // a contiguous dataset
  Batch batch;
  std::vector<int> seen(5, 0);
  while (reader.next(batch))
    for (int i = 0; i < batch.count; ++i) {
      for (int p = 0; p < 4; ++p) EXPECT_FLOAT_EQ(batch.images[std::size_t(i * 4 + p)], 100.f / 255.f);
      ++seen.at(std::size_t(batch.labels[std::size_t(i)]));
    }
  EXPECT_EQ(seen, (std::vector<int>{2, 2, 2, 2, 2}));
}

TEST(DatasetErrors, FileMissing) {
  TempDir dir;
  const std::string path = dir.file("absent.h5");
  expect_error<IoError>([&] { read_info(path, "train"); }, {path, "file not found"});
  expect_error<IoError>([&] { TrainReader({.path = path, .global_batch = 1}); }, {path, "file not found"});
}

TEST(DatasetErrors, ZeroByteFile) {
  TempDir dir;
  const std::string path = dir.file("empty.h5");
  std::ofstream{path};
  expect_error<IoError>([&] { read_info(path, "train"); }, {path, "file is empty (0 bytes), expected an HDF5 file"});
}

TEST(DatasetErrors, NotAnHdf5File) {
  TempDir dir;
  const std::string path = dir.file("text.h5");
  std::ofstream(path) << "label,pixel\n1,2\n";
  expect_error<IoError>([&] { read_info(path, "train"); }, {path, "not an HDF5 file"});
}

TEST(DatasetErrors, TruncatedFile) {
  TempDir dir;
  const std::string path = dir.file("cut.h5");
  testing::write_indexed_dataset(path, 2000);
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  expect_error<IoError>([&] { read_info(path, "train"); }, {path, "truncated"});
}

TEST(DatasetErrors, DamagedChunkIsReportedWhenRead) {
  TempDir dir;
  const std::string path = dir.file("damaged.h5");
  testing::write_indexed_dataset(path, 2000, 3, {2, 3, 4}, 5, {6, 64});
  haddr_t address = 0;  // where the chunk holding sample 1000 is stored
  hsize_t stored = 0;
  {
    h5::Handle file = h5::open_file(path);
    h5::Handle images = h5::open_dataset(file.get(), "/train/images");
    const hsize_t offset[4] = {1000 / 64 * 64, 0, 0, 0};
    unsigned filters = 0;
    ASSERT_GE(H5Dget_chunk_info_by_coord(images.get(), offset, &filters, &address, &stored), 0);
  }
  {  // overwrite that compressed chunk with garbage
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(address));
    const std::string junk(std::size_t(stored), '\x5a');
    f.write(junk.data(), std::streamsize(junk.size()));
  }
  expect_error<IoError>(
      [&] {
        TrainReader reader({.path = path, .global_batch = 2000});
        Batch batch;
        reader.next(batch);
      },
      {path, "'/train/images'"});
}

TEST(DatasetErrors, MissingSplitGroup) {
  TempDir dir;
  const std::string path = dir.file("data.h5");
  write_raw(path, {});
  expect_error<IoError>([&] { read_info(path, "val"); }, {path, "no split '/val'", "splits in the file: train"});
}

TEST(DatasetErrors, MissingImagesOrLabels) {
  TempDir dir;
  const std::string images = dir.file("no-images.h5"), labels = dir.file("no-labels.h5");
  write_raw(images, {.images = false});
  write_raw(labels, {.write_labels = false});
  expect_error<IoError>([&] { read_info(images, "train"); }, {images, "no dataset '/train/images'"});
  expect_error<IoError>([&] { read_info(labels, "train"); }, {labels, "no dataset '/train/labels' or '/train/targets'"});
}

TEST(DatasetErrors, ImagesOfTheWrongRank) {
  TempDir dir;
  const std::string path = dir.file("rank3.h5");
  write_raw(path, {.image_dims = {10, 28, 28}});
  expect_error<ShapeError>([&] { read_info(path, "train"); },
                           {path, "'/train/images'", "shape (10,28,28) (rank 3), expected rank 4 (N,C,H,W)"});
}

TEST(DatasetErrors, UnsupportedDtype) {
  TempDir dir;
  const std::string path = dir.file("float64.h5");
  write_raw(path, {.image_type = "float64"});
  expect_error<IoError>([&] { read_info(path, "train"); },
                        {path, "'/train/images'", "dtype float64, expected uint8 or float32"});
}

TEST(DatasetErrors, LabelOutsideTheClasses) {
  TempDir dir;
  for (std::int32_t bad : {5, -1}) {
    const std::string path = dir.file("label" + std::to_string(bad) + ".h5");
    write_raw(path, {.labels = {0, 1, 2, bad, 4, 0, 1, 2, 3, 4}});
    for (bool prefetch : {true, false})
      expect_error<IoError>(
          [&] {
            TrainReader reader({.path = path, .global_batch = 10, .prefetch = prefetch});
            Batch batch;
            reader.next(batch);
          },
          {path, "'/train/labels'", "label " + std::to_string(bad) + " at sample 3", "expected 0 <= label < 5"});
  }
}

TEST(DatasetErrors, ImagesAndLabelsOfDifferentCounts) {
  TempDir dir;
  const std::string path = dir.file("counts.h5");
  write_raw(path, {.labels = {0, 1, 2, 3, 4, 0, 1, 2, 3}});
  expect_error<ShapeError>([&] { read_info(path, "train"); },
                           {path, "'/train/labels' has 9 entries, expected 10", "'/train/images'"});
}

TEST(DatasetErrors, EmptySplit) {
  TempDir dir;
  const std::string path = dir.file("empty-split.h5");
  write_raw(path, {.image_dims = {0, 1, 2, 2}, .labels = {}});
  expect_error<IoError>([&] { read_info(path, "train"); },
                        {path, "split '/train' is empty", "expected at least one sample"});
}

TEST(DatasetErrors, NanOrInfInFloatImagesWhenRead) {
  TempDir dir;
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    const std::string path = dir.file("nan.h5");
    std::vector<float> pixels(40, 0.5f);
    pixels[4 * 7 + 2] = bad;  // sample 7
    write_raw(path, {.image_type = "float32", .pixels = pixels});
    EXPECT_NO_THROW(read_info(path, "train"));
    expect_error<IoError>(
        [&] {
          TrainReader reader({.path = path, .global_batch = 3, .shuffle = false});
          Batch batch;
          while (reader.next(batch)) {}
        },
        {path, "'/train/images'", "NaN or infinite pixel in sample 7", "expected finite values"});
  }
}

TEST(DatasetErrors, WrongFormatAttribute) {
  TempDir dir;
  const std::string other = dir.file("other.h5"), none = dir.file("none.h5");
  write_raw(other, {.format_name = "keras-weights"});
  write_raw(none, {.format = false});
  expect_error<IoError>([&] { read_info(other, "train"); },
                        {other, "attribute 'format' is \"keras-weights\", expected \"mpicnn-dataset\""});
  expect_error<IoError>([&] { read_info(none, "train"); },
                        {none, "not an mpicnn dataset: missing attribute 'format'"});
}

TEST(DatasetErrors, UnsupportedFormatVersion) {
  TempDir dir;
  const std::string path = dir.file("v2.h5");
  write_raw(path, {.version = 2});
  expect_error<IoError>([&] { read_info(path, "train"); }, {path, "unsupported format_version 2, expected 1"});
}

TEST(DatasetErrors, StatisticsOfTheWrongLength) {
  TempDir dir;
  const std::string path = dir.file("mean.h5");
  write_raw(path, {.mean = {0.5, 0.5, 0.5}});
  expect_error<IoError>([&] { read_info(path, "train"); },
                        {path, "attribute 'mean' has 3 values, expected 1 (one per channel of '/train/images')"});
}

TEST(DatasetErrors, LabelsWithoutClasses) {
  TempDir dir;
  const std::string path = dir.file("classes.h5");
  write_raw(path, {.num_classes = 0});
  expect_error<IoError>([&] { read_info(path, "train"); }, {path, "'/train/labels'", "'num_classes' is 0"});
}

TEST(DatasetErrors, BadReaderOptions) {
  TempDir dir;
  const std::string path = dir.file("ok.h5");
  write_raw(path, {});
  expect_error<ConfigError>([&] { TrainReader({.path = path, .global_batch = 0}); }, {"global batch size 0"});
  expect_error<ConfigError>([&] { TrainReader({.path = path, .global_batch = 2, .rank = 2, .ranks = 2}); },
                            {"rank 2 of 2 ranks"});
  expect_error<ConfigError>([&] { EvalReader({.path = path, .batch = 0}); }, {"batch size 0"});
}

}  // namespace
}  // namespace mpicnn::data
