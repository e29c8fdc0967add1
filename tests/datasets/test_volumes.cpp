// Volumes (N,C,D,H,W) in the dataset format: what the writer stores (read back by h5py), the
// schema's checks of the rank-5 layout and of the 'task' attribute, the sharded readers and the
// flip of volumes (W mirrored in every slice) and their random crop along D, H and W.
#include <algorithm>
#include <array>
#include <numeric>
#include <set>

#include "core/errors.hpp"
#include "datasets/reader.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using ::testing::HasSubstr;
using testing::run_python;
using testing::TempDir;

const core::Shape kVolume{2, 4, 5, 3};  // C=2, H=4, W=5, D=3

// Pixel (i, c, z, y, x) of the test volumes, as uint8.
std::uint8_t voxel(std::size_t i, int c, int z, int y, int x) { return std::uint8_t((i * 37 + c * 101 + z * 29 + y * 7 + x * 3) % 251); }

void write_volumes(const std::string& path, std::size_t train, std::size_t test, const std::string& task = "multi-class",
                   WriterOptions options = {}) {
  DatasetWriter writer(path, {3, {"a", "b", "c"}, task}, options);
  for (const auto& [split, count] : {std::pair<std::string, std::size_t>{"train", train}, {"test", test}}) {
    writer.begin_split(split, kVolume, count, true);
    std::vector<std::uint8_t> images;
    std::vector<std::int32_t> labels;
    for (std::size_t i = 0; i < count; ++i) {
      labels.push_back(std::int32_t(i % 3));
      for (int c = 0; c < kVolume.c; ++c)
        for (int z = 0; z < kVolume.d; ++z)
          for (int y = 0; y < kVolume.h; ++y)
            for (int x = 0; x < kVolume.w; ++x) images.push_back(voxel(i, c, z, y, x));
    }
    writer.append(images, labels);
  }
  writer.finish();
}

TEST(Volumes, WriterStoresRank5ThatH5pyReads) {
  TempDir dir;
  const std::string path = dir.file("v.h5");
  write_volumes(path, 17, 4);
  // numpy recomputes every voxel and the population statistics over (N,D,H,W) on the 1/255 scale.
  const auto python = run_python(dir, R"(
import h5py, numpy as np
f = h5py.File(")" + path + R"(", "r")
x = f["train/images"][...]
assert x.shape == (17, 2, 3, 4, 5) and x.dtype == np.uint8, x.shape
i, c, z, y, xx = np.indices(x.shape)
assert (x == (i * 37 + c * 101 + z * 29 + y * 7 + xx * 3) % 251).all()
assert f["train/images"].chunks[1:] == (2, 3, 4, 5)
assert f.attrs["task"] == "multi-class", f.attrs["task"]
v = x / 255
print(np.abs(f.attrs["mean"] - v.mean(axis=(0, 2, 3, 4))).max(), np.abs(f.attrs["std"] - v.std(axis=(0, 2, 3, 4))).max())
assert np.allclose(f.attrs["mean"], v.mean(axis=(0, 2, 3, 4)), rtol=1e-12, atol=0)
assert np.allclose(f.attrs["std"], v.std(axis=(0, 2, 3, 4)), rtol=1e-12, atol=0)
)");
  ASSERT_EQ(python.status, 0) << python.output;
  const DatasetInfo info = read_info(path, "train");
  EXPECT_EQ(info.shape, kVolume);
  EXPECT_EQ(info.shape.str(), "(2,3,4,5)");
  EXPECT_EQ(info.task, "multi-class");
  EXPECT_EQ(info.count, 17u);
}

// Every sample comes back once over the ranks' readers, voxel for voxel, W mirrored when flipped.
TEST(Volumes, ShardedReadersAndFlipOfW) {
  TempDir dir;
  const std::string path = dir.file("v.h5");
  for (int chunk : {1, 4})
    for (bool cache : {false, true}) {
      write_volumes(path, 23, 5, "multi-class", {chunk == 1 ? 0 : 6, chunk});
      std::vector<int> seen(23, 0);
      int flipped = 0;
      for (int rank = 0; rank < 2; ++rank) {
        TrainReader reader({path, "train", 8, rank, 2, 5, true, false, {}, {}, {.flip = {.w = true}}, cache ? 1u << 20 : 0, rank == 0});
        Batch batch;
        while (reader.next(batch))
          for (int row = 0; row < batch.count; ++row) {
            const float* v = batch.images.data() + std::size_t(row) * kVolume.size();
            // The sample is the one whose unflipped or flipped voxels match; labels follow it.
            long sample = -1;
            bool mirror = false;
            for (std::size_t i = 0; i < 23 && sample < 0; ++i)
              for (bool m : {false, true}) {
                bool same = true;
                for (int c = 0; c < kVolume.c && same; ++c)
                  for (int z = 0; z < kVolume.d && same; ++z)
                    for (int y = 0; y < kVolume.h && same; ++y)
                      for (int x = 0; x < kVolume.w && same; ++x)
                        same = v[((std::size_t(c) * kVolume.d + z) * kVolume.h + y) * kVolume.w + x] ==
                               float(voxel(i, c, z, y, m ? kVolume.w - 1 - x : x)) / 255.0f;
                if (same) { sample = long(i); mirror = m; break; }
              }
            ASSERT_GE(sample, 0) << "row " << row << " is no sample, flipped or not";
            EXPECT_EQ(batch.labels[std::size_t(row)], sample % 3);
            ++seen[std::size_t(sample)];
            flipped += mirror;
          }
      }
      for (int count : seen) EXPECT_EQ(count, 1);
      EXPECT_GT(flipped, 3);
      EXPECT_LT(flipped, 20);
      EvalReader eval({path, "test", 2, 0, 1, false});
      Batch batch;
      std::size_t i = 0;
      while (eval.next(batch))
        for (int row = 0; row < batch.count; ++row, ++i)
          for (std::size_t p = 0; p < kVolume.size(); ++p) {
            const int x = int(p % 5), y = int(p / 5 % 4), z = int(p / 20 % 3), c = int(p / 60);
            ASSERT_EQ(batch.images[std::size_t(row) * kVolume.size() + p], float(voxel(i, c, z, y, x)) / 255.0f);
          }
      EXPECT_EQ(i, 5u);
    }
}

// Volumes are padded along D, H and W alike and cropped back: every output is its volume shifted by
// (dz, dy, dx) in [-2, 2]^3 with black filling, and the offsets vary.
TEST(Volumes, RandomCropShiftsAlongEveryAxis) {
  TempDir dir;
  const std::string path = dir.file("v.h5");
  write_volumes(path, 30, 1);
  TrainReader reader({path, "train", 30, 0, 1, 5, false, false, {}, {}, {.crop_pad = 2}});
  Batch batch;
  ASSERT_TRUE(reader.next(batch));
  std::set<std::array<int, 3>> offsets;
  for (int i = 0; i < 30; ++i) {
    const float* v = batch.images.data() + std::size_t(i) * kVolume.size();
    bool found = false;
    for (int dz = -2; dz <= 2 && !found; ++dz)
      for (int dy = -2; dy <= 2 && !found; ++dy)
        for (int dx = -2; dx <= 2 && !found; ++dx) {
          bool same = true;
          for (std::size_t p = 0; p < kVolume.size() && same; ++p) {
            const int x = int(p % 5), y = int(p / 5 % 4), z = int(p / 20 % 3), c = int(p / 60);
            const int sx = x + dx, sy = y + dy, sz = z + dz;
            const bool inside = sx >= 0 && sx < 5 && sy >= 0 && sy < 4 && sz >= 0 && sz < 3;
            same = v[p] == (inside ? float(voxel(std::size_t(i), c, sz, sy, sx)) / 255.0f : 0.0f);
          }
          if (same) found = true, offsets.insert({dz, dy, dx});
        }
    EXPECT_TRUE(found) << "sample " << i << " is no crop of its volume";
  }
  EXPECT_GT(offsets.size(), 10u);
  EXPECT_TRUE(std::any_of(offsets.begin(), offsets.end(), [](const auto& o) { return o[0] != 0; }));
}

TEST(Volumes, SchemaChecksRankAndTask) {
  TempDir dir;
  const std::string path = dir.file("v.h5");
  auto fails = [&](const std::string& body, const std::string& expected) {
    const auto python = run_python(dir, "import h5py, numpy as np\nf = h5py.File('" + path + "', 'w')\n"
                                        "f.attrs['format'] = 'mpicnn-dataset'; f.attrs['format_version'] = 1\n"
                                        "f.attrs['num_classes'] = 2; f.attrs['mean'] = [0.5]; f.attrs['std'] = [0.2]\n"
                                        "f['train/labels'] = np.zeros(3, np.int32)\n" + body);
    ASSERT_EQ(python.status, 0) << python.output;
    try {
      read_info(path, "train");
      FAIL() << expected;
    } catch (const std::exception& e) {
      EXPECT_EQ(std::string(e.what()), path + ": " + expected);
    }
  };
  fails("f['train/images'] = np.zeros((3, 1, 2, 2, 2, 2), np.uint8)\n",
        "dataset '/train/images' has shape (3,1,2,2,2,2) (rank 6), expected rank 4 (N,C,H,W) or 5 (N,C,D,H,W)");
  fails("f['train/images'] = np.zeros((3, 1, 0, 2, 2), np.uint8)\n",
        "dataset '/train/images' has shape (3,1,0,2,2), expected C,D,H,W between 1 and 2^20");
  fails("f['train/images'] = np.zeros((3, 1, 2, 2, 2), np.uint8); f.attrs['task'] = 'segmentation'\n",
        "attribute 'task' is \"segmentation\", expected one of multi-class, binary, multi-label, regression");
  fails("f['train/images'] = np.zeros((3, 1, 2, 2, 2), np.uint8); f.attrs['task'] = 'multi-label'\n",
        "attribute 'task' is \"multi-label\" but split '/train' has class labels, expected targets (N,K)");
  fails("f['train/images'] = np.zeros((3, 1, 2, 2, 2), np.uint8); f.attrs['task'] = 'binary'; f.attrs['num_classes'] = 3\n",
        "attribute 'task' is \"binary\" but 'num_classes' is 3, expected 2");
}

}  // namespace
}  // namespace mpicnn::data
