// Boxes in the dataset format: a round trip through write_boxes/read_boxes and h5py, the box
// schedules against what TrainReader and EvalReader really return on 1, 2 and 3 ranks, and every
// bad box array giving one line naming the file, the split and the box. Augmented boxes:
// test_box_augment.cpp.
#include <cmath>

#include "core/errors.hpp"
#include "datasets/boxes.hpp"
#include "datasets/h5.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

constexpr core::Shape kShape{1, 12, 16};  // H 12, W 16
constexpr int kClasses = 3;

// Sample i has i % 4 boxes (none for some), the first of them crowd when i % 5 == 0.
SplitBoxes boxes_for(std::size_t samples) {
  SplitBoxes b;
  b.offsets.push_back(0);
  for (std::size_t i = 0; i < samples; ++i) {
    for (std::size_t k = 0; k < i % 4; ++k) {
      const float x = float(k * 3), y = float(i % 5);
      b.boxes.push_back({x, y, x + 2.5f + float(k), std::min(12.f, y + 4.f)});
      b.classes.push_back(std::int32_t((i + k) % kClasses));
      b.crowd.push_back(k == 0 && i % 5 == 0);
    }
    b.offsets.push_back(std::int64_t(b.boxes.size()));
    b.image_ids.push_back(std::int64_t(1000 + 7 * i));
  }
  return b;
}

// Every pixel of sample i is i (see testing::sample_of); labels i % kClasses.
void write_dataset_with_boxes(const std::string& path, std::size_t train, std::size_t test, bool with_boxes = true) {
  DatasetWriter writer(path, {kClasses, {"a", "b", "c"}}, {0, 1});
  for (const auto& [split, count] : {std::pair<std::string, std::size_t>{"train", train}, {"test", test}}) {
    writer.begin_split(split, kShape, count, false);
    std::vector<float> images(count * kShape.size());
    std::vector<std::int32_t> labels(count);
    for (std::size_t i = 0; i < count; ++i) {
      labels[i] = std::int32_t(i % kClasses);
      std::fill_n(images.begin() + std::ptrdiff_t(i * kShape.size()), kShape.size(), float(i));
    }
    writer.append(images, labels);
    if (with_boxes) write_boxes(writer.file(), split, boxes_for(count), kShape, kClasses);
  }
  writer.finish();
}

TEST(Boxes, RoundTrip) {
  TempDir dir;
  const std::string path = dir.file("boxes.h5");
  write_dataset_with_boxes(path, 23, 5);
  ASSERT_TRUE(has_boxes(path, "train"));
  const SplitBoxes read = read_boxes(path, "train"), written = boxes_for(23);
  ASSERT_EQ(read.samples(), 23u);
  EXPECT_EQ(read.offsets, written.offsets);
  EXPECT_EQ(read.classes, written.classes);
  EXPECT_EQ(read.crowd, written.crowd);
  EXPECT_EQ(read.image_ids, written.image_ids);
  for (std::size_t m = 0; m < written.boxes.size(); ++m) {
    EXPECT_EQ(read.boxes[m].x1, written.boxes[m].x1);
    EXPECT_EQ(read.boxes[m].y2, written.boxes[m].y2);
  }
  EXPECT_EQ(read.of(3).boxes.size(), 3u);
  EXPECT_EQ(read.of(4).boxes.size(), 0u);
  EXPECT_EQ(read.of(7).classes[1], std::int32_t((7 + 1) % kClasses));
}

TEST(Boxes, GroundTruthForEvaluation) {
  TempDir dir;
  const std::string path = dir.file("boxes.h5");
  write_dataset_with_boxes(path, 23, 5);
  const SplitBoxes boxes = read_boxes(path, "train");
  const std::vector<core::GroundTruthBox> truth = ground_truth(boxes);
  ASSERT_EQ(truth.size(), boxes.boxes.size());
  EXPECT_EQ(truth[0].image, 1007);  // sample 1's first box; sample 0 has none
  // Detections equal to every non-crowd box: AP 1 for each class (crowd boxes are ignored).
  std::vector<core::DetectedBox> detections;
  for (const auto& t : truth)
    if (!t.crowd) detections.push_back({t.image, t.box, t.class_index, 0.9f});
  const core::DetectionMetrics m = core::evaluate_detections(truth, detections, kClasses);
  EXPECT_NEAR(m.mean.ap, 1.0, 1e-12);
  EXPECT_NEAR(m.mean.voc_ap50, 1.0, 1e-12);
}

TEST(Boxes, ReadableByH5py) {
  TempDir dir;
  const std::string path = dir.file("boxes.h5");
  write_dataset_with_boxes(path, 23, 5);
  const auto result = testing::run_python(dir, R"(
import h5py, numpy as np
with h5py.File(")" + path + R"(") as f:
    s = f["train"]
    b, o, k = s["boxes"][...], s["box_offsets"][...], s["box_classes"][...]
    assert b.dtype == np.float32 and b.shape[1] == 4 and o.dtype == np.int64 and k.dtype == np.int32, (b.dtype, o.dtype, k.dtype)
    assert o[0] == 0 and o[-1] == len(b) == len(k) and len(o) == len(s["images"]) + 1
    i = 7
    assert list(k[o[i]:o[i + 1]]) == [(i + j) % 3 for j in range(i % 4)]
    assert (b[:, 0] < b[:, 2]).all() and (b[:, 3] <= 12).all()
    assert list(s["image_ids"][:2]) == [1000, 1007] and s["box_iscrowd"][o[5]] == 1 and s["box_iscrowd"][o[1]] == 0
print("ok")
)");
  EXPECT_EQ(result.status, 0) << result.output;
}

TEST(Boxes, BatchSamplesNameTheReadersRows) {
  TempDir dir;
  const std::string path = dir.file("boxes.h5");
  write_dataset_with_boxes(path, 37, 11);
  int rows = 0;
  for (int ranks : {1, 2, 3})
    for (int micro : {1, 2})
      for (int rank = 0; rank < ranks; ++rank) {
        ReaderOptions o{.path = path, .global_batch = 8, .rank = rank, .ranks = ranks, .seed = 5, .normalize = false,
                        .micro_batch = micro};
        TrainReader reader(o);
        Batch batch;
        for (int epoch = 0; epoch < 2; ++epoch)
          for (long step = 0; reader.next(batch); ++step) {
            ASSERT_EQ(int(batch.samples.size()), batch.count) << "rank " << rank << " of " << ranks << " step " << step;
            for (int r = 0; r < batch.count; ++r, ++rows)
              EXPECT_EQ(testing::sample_of(batch.images.data() + std::size_t(r) * kShape.size()), long(batch.samples[r]));
          }
        EvalOptions e{.path = path, .split = "test", .batch = 2, .rank = rank, .ranks = ranks, .normalize = false};
        EvalReader eval(e);
        while (eval.next(batch)) {
          ASSERT_EQ(int(batch.samples.size()), batch.count);
          for (int r = 0; r < batch.count; ++r, ++rows)
            EXPECT_EQ(testing::sample_of(batch.images.data() + std::size_t(r) * kShape.size()), long(batch.samples[r]));
        }
      }
  std::printf("[ figure ] %d batch rows on 1, 2, 3 ranks: Batch::samples names the row's sample every time\n", rows);
}

// A dataset without boxes, then raw box arrays written by hand so each test can break one thing.
struct RawBoxes {
  std::vector<float> corners = {1, 1, 5, 5, 2, 3, 16, 12, 0, 0, 1, 1};  // 3 boxes
  std::vector<hsize_t> corner_dims = {3, 4};
  std::vector<std::int32_t> classes = {0, 2, 1};
  std::vector<std::int64_t> offsets = {0, 2, 2, 3};  // 3 samples
  std::vector<std::int32_t> crowd = {0, 1, 0};
  bool write_classes = true;
};

std::string write_raw(const TempDir& dir, const RawBoxes& raw) {
  const std::string path = dir.file("raw.h5");
  write_dataset_with_boxes(path, 3, 1, false);
  h5::Handle file = h5::open_file(path, true);
  h5::write_dataset<float>(file.get(), "train/boxes", raw.corners, raw.corner_dims);
  if (raw.write_classes) h5::write_dataset<std::int32_t>(file.get(), "train/box_classes", raw.classes, {raw.classes.size()});
  h5::write_dataset<std::int64_t>(file.get(), "train/box_offsets", raw.offsets, {raw.offsets.size()});
  h5::write_dataset<std::int32_t>(file.get(), "train/box_iscrowd", raw.crowd, {raw.crowd.size()});
  return path;
}

template <class Error>
void expect_box_error(const RawBoxes& raw, const std::vector<std::string>& parts) {
  TempDir dir;
  const std::string path = write_raw(dir, raw);
  try {
    read_boxes(path, "train");
    ADD_FAILURE() << "no error, expected one mentioning " << parts.at(0);
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_THAT(message, HasSubstr(path + ": split 'train'"));
    for (const std::string& part : parts) EXPECT_THAT(message, HasSubstr(part));
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST(BoxErrors, ValidRawFileIsAccepted) {
  TempDir dir;
  const SplitBoxes b = read_boxes(write_raw(dir, RawBoxes{}), "train");
  EXPECT_EQ(b.of(0).boxes.size(), 2u);
  EXPECT_EQ(b.image_ids, (std::vector<std::int64_t>{0, 1, 2}));  // none stored: the sample indices
}

TEST(BoxErrors, OutsideTheImage) {
  RawBoxes raw;
  raw.corners[6] = 16.5f;  // x2 of box 1 past W = 16
  expect_box_error<IoError>(raw, {"box 1 (sample 0)", "[2, 3, 16.5, 12]", "outside the image", "<= 16", "<= 12"});
  raw = {};
  raw.corners[9] = -1;  // y1 of box 2
  expect_box_error<IoError>(raw, {"box 2 (sample 2)", "outside the image"});
}

TEST(BoxErrors, NoArea) {
  RawBoxes raw;
  raw.corners[10] = 0;  // x2 = x1 of box 2
  expect_box_error<IoError>(raw, {"box 2 (sample 2)", "has no area", "x1 < x2"});
  raw = {};
  raw.corners[1] = 6;  // y1 > y2 of box 0
  expect_box_error<IoError>(raw, {"box 0 (sample 0)", "has no area"});
  raw = {};
  raw.corners[0] = std::nanf("");
  expect_box_error<IoError>(raw, {"box 0 (sample 0)", "not finite"});
}

TEST(BoxErrors, ClassOutOfRange) {
  RawBoxes raw;
  raw.classes[2] = 3;
  expect_box_error<IoError>(raw, {"box 2 (sample 2)", "class 3", "0 <= class < 3 (num_classes)"});
}

TEST(BoxErrors, Offsets) {
  RawBoxes raw;
  raw.offsets = {0, 2, 1, 3};
  expect_box_error<IoError>(raw, {"'box_offsets' decreases at sample 1", "2 then 1"});
  raw.offsets = {0, 2, 3};
  expect_box_error<ShapeError>(raw, {"'box_offsets' has 3 entries, expected 4 (images + 1)"});
  raw.offsets = {0, 2, 2, 4};
  expect_box_error<IoError>(raw, {"'box_offsets' ends at 4, expected 3"});
  raw.offsets = {1, 2, 2, 3};
  expect_box_error<IoError>(raw, {"'box_offsets' starts at 1, expected 0"});
}

TEST(BoxErrors, ShapesAndMissingArrays) {
  RawBoxes raw;
  raw.corner_dims = {4, 3};
  expect_box_error<ShapeError>(raw, {"'boxes' has shape (4,3), expected (M,4)"});
  raw = {};
  raw.classes = {0, 1};
  expect_box_error<ShapeError>(raw, {"3 boxes but 2 'box_classes'"});
  raw = {};
  raw.write_classes = false;
  expect_box_error<IoError>(raw, {"no dataset 'box_classes'"});
  raw = {};
  raw.crowd[1] = 2;
  expect_box_error<IoError>(raw, {"box 1 has iscrowd 2, expected 0 or 1"});
}

TEST(BoxErrors, WriterRefusesBadBoxes) {
  TempDir dir;
  DatasetWriter writer(dir.file("w.h5"), {kClasses, {}}, {0, 1});
  writer.begin_split("train", kShape, 1, false);
  writer.append(std::vector<float>(kShape.size()), std::vector<std::int32_t>{0});
  SplitBoxes b = boxes_for(1);
  b.boxes.push_back({0, 0, 20, 5}), b.classes.push_back(0), b.crowd.push_back(0), b.offsets.back() = 1;
  try {
    write_boxes(writer.file(), "train", b, kShape, kClasses);
    ADD_FAILURE() << "no error";
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr("w.h5.partial: split 'train': box 0 (sample 0) [0, 0, 20, 5] is outside the image"));
  }
}

}  // namespace
}  // namespace mpicnn::data
