// The detection head's geometry, target assignment and decoding on hand-made cases, and the
// detection task's bad inputs (core/detection_head.hpp, core/detection_task.cpp). Its loss and
// gradient are checked against torchvision in test_pytorch_detection.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/detection_head.hpp"
#include "core/errors.hpp"
#include "core/task.hpp"

namespace {

using namespace mpicnn::core;
using ::testing::HasSubstr;

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const mpicnn::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(DetectionHead, Geometry) {
  const DetectionHead head = detection_head({1, 96, 96}, {15, 12, 12}, 10);
  EXPECT_EQ(head.stride, 8);
  EXPECT_TRUE(head.centerness);
  EXPECT_EQ(head.cells(), 144u);
  EXPECT_FALSE(detection_head({3, 32, 48}, {7, 8, 12}, 3).centerness);
  EXPECT_THAT(error_of([] { detection_head({1, 96, 96}, {13, 12, 12}, 10); }),
              HasSubstr("the model's output has 13 channels, expected 14 or 15 (10 classes + 4 box distances, + 1 "
                        "centerness); end model.spec with conv(15,1)"));
  EXPECT_THAT(error_of([] { detection_head({1, 96, 96}, {15, 12, 10}, 10); }),
              HasSubstr("needs one stride s along H and W (input = s x output), but model input (1,96,96), output (15,12,10)"));
  EXPECT_THAT(error_of([] { detection_head({1, 96, 96}, {15, 5, 5}, 10); }), HasSubstr("one stride"));
  EXPECT_THAT(error_of([] { detection_head({1, 8, 96, 96}, {15, 2, 12, 12}, 10); }), HasSubstr("needs an image model"));
}

TEST(DetectionHead, BoxNarrowerThanTheStrideKeepsItsCentreCell) {
  const DetectionHead head = detection_head({1, 32, 32}, {6, 4, 4}, 1);  // points at 4, 12, 20, 28
  const std::vector<Box> boxes = {{13, 2, 15, 30}};                      // no point inside along x
  const std::vector<std::int32_t> classes = {0};
  const std::vector<std::uint8_t> crowd = {0};
  const std::vector<int> assigned = assign_cells(head, {boxes, classes, crowd});
  for (std::size_t q = 0; q < assigned.size(); ++q) EXPECT_EQ(assigned[q], q == 2 * 4 + 1 ? 0 : -1) << "cell " << q;
  const std::vector<std::uint8_t> crowded = {1};  // a crowd box is never a target
  EXPECT_EQ(count_positives(head, std::vector<ImageBoxes>{{boxes, classes, crowded}}), 0);
}

TEST(DetectionHead, SmallerBoxWinsASharedCell) {
  const DetectionHead head = detection_head({1, 32, 32}, {6, 4, 4}, 1);
  const std::vector<Box> boxes = {{0, 0, 32, 32}, {8, 8, 24, 24}};
  const std::vector<std::int32_t> classes = {0, 0};
  const std::vector<std::uint8_t> crowd = {0, 0};
  const std::vector<int> assigned = assign_cells(head, {boxes, classes, crowd});
  // The big box's centre (16, 16) is within 1.5 strides of points 4..28 only at 12 and 20: cells
  // (1..2, 1..2), which the small box also takes; it holds no other cell.
  for (std::size_t q = 0; q < assigned.size(); ++q) {
    const int i = int(q) / 4, j = int(q) % 4;
    EXPECT_EQ(assigned[q], (i == 1 || i == 2) && (j == 1 || j == 2) ? 1 : -1) << "cell " << q;
  }
}

TEST(DetectionHead, DecodesOneConfidentCell) {
  const DetectionHead head = detection_head({1, 32, 32}, {7, 4, 4}, 2);
  std::vector<float> out(7 * 16, -10.f);  // every class and centerness logit far below any threshold
  const std::size_t cell = 1 * 4 + 2;       // point (20, 12)
  out[1 * 16 + cell] = 5.f;                 // class 1
  out[6 * 16 + cell] = 5.f;                 // centerness
  const float distances[4] = {6, 4, 40, 2};  // the right edge beyond the image: clipped to 32
  for (int k = 0; k < 4; ++k) out[(2 + k) * 16 + cell] = float(std::log(distances[k] / 8.0));
  const std::vector<DetectedBox> found = decode_detections(out.data(), head, {}, 42);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].image, 42);
  EXPECT_EQ(found[0].class_index, 1);
  EXPECT_NEAR(found[0].score, 1 / (1 + std::exp(-5.0)), 1e-6);
  EXPECT_NEAR(found[0].box.x1, 14, 1e-4);
  EXPECT_NEAR(found[0].box.y1, 8, 1e-4);
  EXPECT_EQ(found[0].box.x2, 32);
  EXPECT_NEAR(found[0].box.y2, 14, 1e-4);
  DecodeOptions strict;
  strict.score_threshold = 0.999f;
  EXPECT_TRUE(decode_detections(out.data(), head, strict, 42).empty());
}

TEST(DetectionHead, GiouLossOfHandBoxes) {
  const double same[4] = {1, 2, 5, 6};
  double slope[4];
  EXPECT_NEAR(giou_loss(same, same, slope), 0, 1e-7);
  // Disjoint unit squares one apart: IoU 0, enclosing 3 x 1, union 2: loss 1 + 1/3.
  const double a[4] = {0, 0, 1, 1}, b[4] = {2, 0, 3, 1};
  EXPECT_NEAR(giou_loss(a, b, slope), 1 + 1.0 / 3, 1e-7);
}

TEST(DetectionTask, BadInputsAreOneLine) {
  auto task = make_task("detection");
  EXPECT_TRUE(task->needs_boxes());
  EXPECT_EQ(error_of([&] { task->check({false, 10, 10, false}, 15 * 144, "d.h5 split 'train'"); }),
            "loss 'detection' needs boxes, but d.h5 split 'train' has none (mpicnn convert --format coco writes them)");
  EXPECT_THAT(error_of([&] { task->configure({false, 10, 10, true}, {1, 96, 96}, {16, 12, 12}, "d.h5"); }),
              HasSubstr("has 16 channels, expected 14 or 15"));
  task->configure({false, 10, 10, true}, {1, 96, 96}, {15, 12, 12}, "d.h5");
  const std::vector<float> outputs(15 * 144);
  EXPECT_THAT(error_of([&] { task->loss(nullptr, outputs.data(), BatchView{nullptr, nullptr, nullptr, 1}, 15 * 144); }),
              HasSubstr("needs every row's boxes, but the batch of 1 rows has 0"));
  EXPECT_EQ(task->normalizer(std::vector<double>{0.0}, 8, 0), 1.0);
  EXPECT_EQ(task->normalizer(std::vector<double>{37.0}, 8, 0), 37.0);
  TaskOptions weighted;
  weighted.class_weights = {1, 2};
  EXPECT_THAT(error_of([&] { make_task("detection", weighted); }), HasSubstr("takes loss.focal_gamma and loss.focal_alpha only"));
}

}  // namespace
