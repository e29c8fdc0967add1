// Box IoU, NMS and batched NMS against torchvision.ops on CPU (tests/core/pytorch/make_box_fixtures.py,
// written at test time): identical kept indices and bitwise-identical float32 IoU, on random, grid
// and duplicated boxes with continuous, tied and equal scores; and the detectors' post-processing
// (score threshold, per-class NMS, top detections) against the same composition of torchvision ops.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/boxes.hpp"
#include "core/errors.hpp"
#include "fixture_text.hpp"

namespace {

using mpicnn::core::Box;
using mpicnn::core::values_after;

struct Case {
  std::string name;
  int n = 0;
  double threshold = 0;
  std::vector<double> boxes, scores, iou, class_scores;
  std::vector<std::int64_t> classes, order, nms, batched, select;
};

std::vector<Case> read_cases() {
  std::ifstream in(MPICNN_TEXT_FIXTURE);
  EXPECT_TRUE(in) << MPICNN_TEXT_FIXTURE << " is missing: it is written by pytorch_reference.box_fixtures";
  std::vector<Case> cases;
  for (std::string text; std::getline(in, text);) {
    std::istringstream header(text);
    Case c;
    std::string word;
    header >> word >> c.name >> c.n >> c.threshold;
    c.boxes = values_after<double>(in, "boxes"), c.scores = values_after<double>(in, "scores");
    c.classes = values_after<std::int64_t>(in, "classes"), c.order = values_after<std::int64_t>(in, "order");
    c.nms = values_after<std::int64_t>(in, "nms"), c.batched = values_after<std::int64_t>(in, "batched");
    c.iou = values_after<double>(in, "iou");
    c.class_scores = values_after<double>(in, "class_scores"), c.select = values_after<std::int64_t>(in, "select");
    cases.push_back(c);
  }
  return cases;
}

std::vector<Box> boxes_of(const Case& c) {
  std::vector<Box> boxes(c.n);
  for (int i = 0; i < c.n; ++i)
    boxes[i] = {float(c.boxes[4 * i]), float(c.boxes[4 * i + 1]), float(c.boxes[4 * i + 2]), float(c.boxes[4 * i + 3])};
  return boxes;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

TEST(Boxes, MatchTorchvision) {
  const std::vector<Case> cases = read_cases();
  ASSERT_EQ(cases.size(), 324u);
  int kept_nms = 0, kept_batched = 0, ties = 0, iou_values = 0, iou_differing = 0, selected = 0;
  for (const Case& c : cases) {
    const std::string name = c.name + " N=" + std::to_string(c.n) + " threshold " + std::to_string(c.threshold);
    const std::vector<Box> boxes = boxes_of(c);
    const std::vector<float> scores(c.scores.begin(), c.scores.end());
    const std::vector<std::int32_t> classes(c.classes.begin(), c.classes.end());
    EXPECT_EQ(mpicnn::core::descending_score_order(scores), c.order) << name;
    const std::vector<std::int64_t> kept = mpicnn::core::nms(boxes, scores, c.threshold);
    EXPECT_EQ(kept, c.nms) << name;
    const std::vector<std::int64_t> kept_per_class = mpicnn::core::batched_nms(boxes, scores, classes, c.threshold);
    EXPECT_EQ(kept_per_class, c.batched) << name;
    kept_nms += int(kept.size()), kept_batched += int(kept_per_class.size());
    for (int i = 1; i < c.n; ++i) ties += scores[c.order[i]] == scores[c.order[i - 1]];
    const int rows = std::min(c.n, 12);
    std::vector<float> iou(std::size_t(rows) * c.n);
    mpicnn::core::box_iou_matrix(iou.data(), std::span(boxes).first(rows), boxes);
    ASSERT_EQ(iou.size(), c.iou.size()) << name;
    for (std::size_t k = 0; k < iou.size(); ++k) {
      iou_differing += !same_bits(iou[k], float(c.iou[k]));
      EXPECT_EQ(iou[k], mpicnn::core::box_iou(boxes[k / c.n], boxes[k % c.n])) << name;
    }
    iou_values += int(iou.size());
    const std::vector<float> class_scores(c.class_scores.begin(), c.class_scores.end());
    std::vector<std::int64_t> selected_flat;
    for (const auto& s : mpicnn::core::select_detections(boxes, class_scores, 3, 0.3f, c.threshold, 20)) {
      selected_flat.push_back(s.box * 3 + s.class_index);
      EXPECT_EQ(s.score, class_scores[std::size_t(s.box * 3 + s.class_index)]);
    }
    EXPECT_EQ(selected_flat, c.select) << name << " (select_detections)";
    selected += int(selected_flat.size());
  }
  EXPECT_EQ(iou_differing, 0);
  std::printf("[ figure ] %zu cases: nms kept %d boxes, batched_nms %d, all indices identical to torchvision; "
              "%d tied scores in sort order; %d IoU values, %d not bitwise equal to box_iou; select_detections "
              "kept %d, identical\n",
              cases.size(), kept_nms, kept_batched, ties, iou_values, iou_differing, selected);
}

TEST(Boxes, HandValues) {
  const Box a{0, 0, 10, 10}, b{5, 0, 15, 10}, far{20, 20, 30, 30};
  EXPECT_EQ(mpicnn::core::box_area(a), 100.f);
  EXPECT_FLOAT_EQ(mpicnn::core::box_iou(a, b), 50.f / 150.f);  // no +1 on the sides
  EXPECT_EQ(mpicnn::core::box_iou(a, far), 0.f);
  EXPECT_EQ(mpicnn::core::box_iou(a, a), 1.f);
  const std::vector<Box> boxes = {a, b, far, {0, 0, 10, 9}};
  const std::vector<float> scores = {0.9f, 0.8f, 0.7f, 0.95f};
  // {0,0,10,9} (0.95) suppresses a (IoU 0.9); b overlaps it by 45/145 < 0.5.
  EXPECT_EQ(mpicnn::core::nms(boxes, scores, 0.5), (std::vector<std::int64_t>{3, 1, 2}));
  // Suppression needs IoU strictly above the threshold: b and a meet at exactly 1/3 in float.
  EXPECT_EQ(mpicnn::core::nms(std::vector<Box>{a, b}, std::vector<float>{0.9f, 0.8f}, double(50.f / 150.f)),
            (std::vector<std::int64_t>{0, 1}));
  const std::vector<std::int32_t> classes = {0, 0, 1, 1};
  EXPECT_EQ(mpicnn::core::batched_nms(boxes, scores, classes, 0.5), (std::vector<std::int64_t>{3, 0, 1, 2}));
}

TEST(Boxes, SizeMismatchIsAnError) {
  const std::vector<Box> boxes(3);
  const std::vector<float> scores(2);
  EXPECT_THROW(mpicnn::core::nms(boxes, scores, 0.5), mpicnn::ShapeError);
}

}  // namespace
