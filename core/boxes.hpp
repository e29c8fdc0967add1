#pragma once
// Boxes, their overlap and non-maximum suppression, with torchvision.ops' semantics so that a
// detector decoded here keeps exactly the boxes torchvision would: corners x1,y1,x2,y2 in pixels,
// area (x2 - x1) * (y2 - y1) with no +1, float32 arithmetic in torchvision's order of operations.
#include <cstdint>
#include <span>
#include <vector>

namespace mpicnn::core {

// Top-left (x1, y1) and bottom-right (x2, y2) corners, in pixels; a valid box has x1 < x2, y1 < y2.
struct Box {
  float x1 = 0, y1 = 0, x2 = 0, y2 = 0;
};

// The boxes of one image: views into arrays its owner keeps (a dataset split's, or a batch row's
// after augmentation).
struct ImageBoxes {
  std::span<const Box> boxes;              // pixels x1,y1,x2,y2 of the image the network sees
  std::span<const std::int32_t> classes;   // 0..classes-1
  std::span<const std::uint8_t> crowd;     // COCO's iscrowd, 0 or 1
};

float box_area(const Box& box);
// Intersection over union, as torchvision.ops.box_iou: NaN when both boxes have zero area.
float box_iou(const Box& a, const Box& b);
// Every pair: out (A, B) row-major, out[i * B + j] = box_iou(a[i], b[j]).
void box_iou_matrix(float* out /*A,B*/, std::span<const Box> a, std::span<const Box> b);

// Indices of `scores` from the highest to the lowest (NaN first), equal scores in input order (a
// stable sort, as torchvision's NMS kernel sorts): that order decides which of two tied boxes NMS
// keeps.
std::vector<std::int64_t> descending_score_order(std::span<const float> scores);

// torchvision.ops.nms: visits boxes in descending_score_order, keeps a box unless a kept box
// overlaps it with IoU > iou_threshold. Returns the kept indices in the order visited.
std::vector<std::int64_t> nms(std::span<const Box> boxes, std::span<const float> scores, double iou_threshold);

// torchvision.ops.batched_nms: NMS within each class only (boxes of different classes never
// suppress each other); the kept indices of all classes in one descending_score_order. Overlaps
// are computed in each box's own coordinates (torchvision's shortcut of offsetting each class's
// boxes apart rounds the coordinates, so it can differ by one rounding near the threshold).
std::vector<std::int64_t> batched_nms(std::span<const Box> boxes, std::span<const float> scores,
                                      std::span<const std::int32_t> classes, double iou_threshold);

// One detection after post-processing: which box it came from, its class and score.
struct SelectedBox {
  std::int64_t box = 0;  // index into the candidate boxes
  std::int32_t class_index = 0;
  float score = 0;
};

// The post-processing torchvision's detectors apply (FCOS/RetinaNet postprocess_detections, without
// their per-level top-k): every (box n, class k) with scores[n * classes + k] > score_threshold,
// in that flat order; batched_nms per class; the best max_detections. In score order.
std::vector<SelectedBox> select_detections(std::span<const Box> boxes, std::span<const float> scores /*N,K*/,
                                           int classes, float score_threshold, double iou_threshold,
                                           int max_detections);

}  // namespace mpicnn::core
