// The writer produces the documented format: h5py sees chunked gzip datasets and the attributes,
// and mean/std follow the stated convention (numpy computes them independently).
#include "datasets/writer.hpp"

#include "core/errors.hpp"
#include "datasets/reader.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

TEST(Writer, FormatAsDocumentedForH5py) {
  TempDir dir;
  const std::string path = dir.file("rgb.h5");
  const core::Shape shape{3, 5, 4};
  {
    DatasetWriter writer(path, {4, {"a", "b", "c", "d"}}, {.compression_level = 7, .chunk_samples = 8});
    for (const auto& [split, count] : {std::pair<std::string, int>{"train", 45}, {"test", 6}, {"val", 5}}) {
      writer.begin_split(split, shape, std::size_t(count), true);
      std::vector<std::uint8_t> images;
      std::vector<std::int32_t> labels;
      for (int i = 0; i < count; ++i) {
        for (std::size_t p = 0; p < shape.size(); ++p) images.push_back(std::uint8_t((i * 37 + p * 11 + (p / 20) * 60) % 256));
        labels.push_back(i % 4);
        if (i % 10 == 9 || i + 1 == count) {  // appends of uneven sizes across chunk borders
          writer.append(images, labels);
          images.clear();
          labels.clear();
        }
      }
    }
    writer.finish();
  }
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
  const auto python = testing::run_python(dir, R"(
import h5py, numpy as np
f = h5py.File(")" + path + R"(", "r")
assert f.attrs["format"] == "mpicnn-dataset"
assert f.attrs["format_version"] == 1 and f.attrs["num_classes"] == 4
assert list(f.attrs["class_names"]) == ["a", "b", "c", "d"]
assert sorted(f.keys()) == ["test", "train", "val"]
for split, n in (("train", 45), ("test", 6), ("val", 5)):
    images, labels = f[split + "/images"], f[split + "/labels"]
    assert images.shape == (n, 3, 5, 4) and images.dtype == np.uint8
    assert images.chunks == (min(8, n), 3, 5, 4), images.chunks
    assert images.compression == "gzip" and images.compression_opts == 7
    assert labels.shape == (n,) and labels.dtype == np.int32
    i = np.arange(n)[:, None]
    p = np.arange(60)[None, :]
    want = ((i * 37 + p * 11 + (p // 20) * 60) % 256).reshape(n, 3, 5, 4)
    assert (images[...] == want).all()
    assert (labels[...] == np.arange(n) % 4).all()
x = f["train/images"][...].astype(np.float64) / 255
assert np.allclose(f.attrs["mean"], x.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12), (f.attrs["mean"], x.mean(axis=(0, 2, 3)))
assert np.allclose(f.attrs["std"], x.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
print("ok")
)");
  EXPECT_EQ(python.status, 0) << python.output;
  const DatasetInfo info = read_info(path, "val");
  EXPECT_EQ(info.chunk_samples, 5);
  EXPECT_EQ(info.class_names, (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_EQ(info.splits, (std::vector<std::string>{"test", "train", "val"}));
}

TEST(Writer, FloatImagesStatisticsAndAutomaticChunks) {
  TempDir dir;
  const std::string path = dir.file("float.h5");
  {
    DatasetWriter writer(path, {2, {}}, {.compression_level = 0});
    writer.begin_split("train", {1, 2, 2}, 300, false);
    std::vector<float> images;
    std::vector<std::int32_t> labels;
    for (int i = 0; i < 300; ++i) {
      for (int p = 0; p < 4; ++p) images.push_back(1000.f + float(i % 3) + 0.5f * float(p));
      labels.push_back(i % 2);
    }
    writer.append(images, labels);
    writer.finish();
  }
  const DatasetInfo info = read_info(path, "train");
  EXPECT_FALSE(info.uint8);
  EXPECT_EQ(info.chunk_samples, 64);  // 16-byte samples: 1 KiB chunks
  // values 1000 + {0,1,2} + {0,0.5,1,1.5}: mean 1001.75, variance 2/3 + 0.3125
  EXPECT_NEAR(info.mean[0], 1001.75, 1e-9);
  EXPECT_NEAR(info.std[0], std::sqrt(2.0 / 3.0 + 0.3125), 1e-9);
  EXPECT_EQ(chunk_samples_for({1, 28, 28}, true), 1);
  EXPECT_EQ(chunk_samples_for({3, 32, 32}, true), 1);
  EXPECT_EQ(chunk_samples_for({1, 10, 10}, true), 8);
  EXPECT_EQ(chunk_samples_for({1, 1, 2}, true), 256);
}

TEST(Writer, RejectsBadInputAndLeavesNoFile) {
  TempDir dir;
  const std::string path = dir.file("bad.h5");
  {
    DatasetWriter writer(path, {3, {}});
    writer.begin_split("train", {1, 2, 2}, 2, true);
    const std::vector<std::uint8_t> images(8, 0);
    EXPECT_THROW(writer.append(images, std::vector<std::int32_t>{0, 3}), ConfigError);
    EXPECT_THROW(writer.append(images, std::vector<std::int32_t>{0}), ShapeError);
    writer.append(std::span(images.data(), 4), std::vector<std::int32_t>{0});
    try {
      writer.finish();  // one sample short
      FAIL();
    } catch (const ShapeError& e) {
      EXPECT_THAT(e.what(), HasSubstr(path + ": split 'train': 1 samples written, 2 declared"));
    }
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
  EXPECT_THROW(DatasetWriter(dir.file("x.h5"), {2, {"only one"}}), ConfigError);
  EXPECT_THROW(DatasetWriter(dir.file("missing/x.h5"), {2, {}}), IoError);
}

}  // namespace
}  // namespace mpicnn::data
