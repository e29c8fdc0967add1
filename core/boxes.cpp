#include "core/boxes.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/errors.hpp"

namespace mpicnn::core {

namespace {

// The overlap of one pair, in torchvision's order of float32 operations (nms_kernel.cpp and
// box_iou agree): inter = w * h, then inter / ((area_a + area_b) - inter).
float iou_with_areas(const Box& a, float area_a, const Box& b, float area_b) {
  const float w = std::max(0.f, std::min(a.x2, b.x2) - std::max(a.x1, b.x1));
  const float h = std::max(0.f, std::min(a.y2, b.y2) - std::max(a.y1, b.y1));
  const float inter = w * h;
  return inter / (area_a + area_b - inter);
}

void check_sizes(std::size_t boxes, std::size_t scores, const char* what) {
  if (boxes != scores)
    throw ShapeError(std::string(what) + ": " + std::to_string(boxes) + " boxes but " + std::to_string(scores) +
                     " scores (expected one score per box)");
}

}  // namespace

float box_area(const Box& box) { return (box.x2 - box.x1) * (box.y2 - box.y1); }

float box_iou(const Box& a, const Box& b) { return iou_with_areas(a, box_area(a), b, box_area(b)); }

void box_iou_matrix(float* out, std::span<const Box> a, std::span<const Box> b) {
  for (std::size_t i = 0; i < a.size(); ++i) {
    const float area_a = box_area(a[i]);
    for (std::size_t j = 0; j < b.size(); ++j) out[i * b.size() + j] = iou_with_areas(a[i], area_a, b[j], box_area(b[j]));
  }
}

std::vector<std::int64_t> descending_score_order(std::span<const float> scores) {
  std::vector<std::int64_t> order(scores.size());
  for (std::size_t i = 0; i < scores.size(); ++i) order[i] = std::int64_t(i);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return (std::isnan(scores[a]) && !std::isnan(scores[b])) || scores[a] > scores[b];
  });
  return order;
}

namespace {

// Greedy suppression over `order` (indices into boxes); `same_group(i, j)` says whether box i may
// suppress box j.
template <class SameGroup>
std::vector<std::int64_t> suppress(std::span<const Box> boxes, const std::vector<std::int64_t>& order,
                                   double iou_threshold, SameGroup same_group) {
  std::vector<float> areas(boxes.size());
  for (std::size_t i = 0; i < boxes.size(); ++i) areas[i] = box_area(boxes[i]);
  std::vector<char> suppressed(boxes.size(), 0);
  std::vector<std::int64_t> kept;
  for (std::size_t visit = 0; visit < order.size(); ++visit) {
    const std::int64_t i = order[visit];
    if (suppressed[i]) continue;
    kept.push_back(i);
    for (std::size_t later = visit + 1; later < order.size(); ++later) {
      const std::int64_t j = order[later];
      if (suppressed[j] || !same_group(i, j)) continue;
      // float compared with the double threshold, as torchvision does (the float is widened).
      if (double(iou_with_areas(boxes[i], areas[i], boxes[j], areas[j])) > iou_threshold) suppressed[j] = 1;
    }
  }
  return kept;
}

}  // namespace

std::vector<std::int64_t> nms(std::span<const Box> boxes, std::span<const float> scores, double iou_threshold) {
  check_sizes(boxes.size(), scores.size(), "nms");
  return suppress(boxes, descending_score_order(scores), iou_threshold, [](std::int64_t, std::int64_t) { return true; });
}

std::vector<std::int64_t> batched_nms(std::span<const Box> boxes, std::span<const float> scores,
                                      std::span<const std::int32_t> classes, double iou_threshold) {
  check_sizes(boxes.size(), scores.size(), "batched_nms");
  if (classes.size() != boxes.size())
    throw ShapeError("batched_nms: " + std::to_string(boxes.size()) + " boxes but " + std::to_string(classes.size()) +
                     " classes (expected one class per box)");
  return suppress(boxes, descending_score_order(scores), iou_threshold,
                  [&](std::int64_t i, std::int64_t j) { return classes[i] == classes[j]; });
}

std::vector<SelectedBox> select_detections(std::span<const Box> boxes, std::span<const float> scores, int classes,
                                           float score_threshold, double iou_threshold, int max_detections) {
  if (scores.size() != boxes.size() * std::size_t(classes))
    throw ShapeError("select_detections: " + std::to_string(scores.size()) + " scores for " + std::to_string(boxes.size()) +
                     " boxes and " + std::to_string(classes) + " classes (expected boxes x classes)");
  std::vector<Box> candidate_boxes;
  std::vector<float> candidate_scores;
  std::vector<std::int32_t> candidate_classes;
  std::vector<std::int64_t> source;
  for (std::size_t i = 0; i < scores.size(); ++i)
    if (scores[i] > score_threshold) {
      source.push_back(std::int64_t(i / std::size_t(classes)));
      candidate_boxes.push_back(boxes[std::size_t(source.back())]);
      candidate_scores.push_back(scores[i]);
      candidate_classes.push_back(std::int32_t(i % std::size_t(classes)));
    }
  const std::vector<std::int64_t> kept = batched_nms(candidate_boxes, candidate_scores, candidate_classes, iou_threshold);
  std::vector<SelectedBox> selected;
  for (std::size_t j = 0; j < kept.size() && int(j) < max_detections; ++j)
    selected.push_back({source[kept[j]], candidate_classes[kept[j]], candidate_scores[kept[j]]});
  return selected;
}

}  // namespace mpicnn::core
