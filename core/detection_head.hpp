#pragma once
// A single-stage, anchor-free detector head on one feature map: FCOS (Tian et al. 2019) as
// torchvision.models.detection.FCOS computes its loss and post-processes, on a single level of
// stride s instead of a feature pyramid (README, "Object detection", says why).
//
// The model's output for one sample is (channels, grid_h, grid_w), channel-major:
//   [0, classes)              class logits,
//   [classes, classes + 4)    box distances r_l, r_t, r_r, r_b (raw),
//   classes + 4 (optional)    the centerness logit.
// Cell (i, j) looks at the point p = ((j + 0.5) s, (i + 0.5) s) of the input image; its box is
// (p_x - d_l, p_y - d_t, p_x + d_r, p_y + d_b) with d = s exp(r) (always positive, smooth).
//
// Targets: a cell is positive for a non-crowd box when p lies inside the box and within 1.5 s of
// the box's centre along both axes (torchvision's centre sampling), or when the cell holds the box's
// centre (so that a box narrower than the stride still has a cell); among several boxes the cell
// takes the one of smallest area (ties: the lower box index). Crowd boxes are never targets.
// Loss sum over cells (torchvision FCOSHead.compute_loss): sigmoid_focal_loss(alpha 0.25, gamma 2)
// of every class logit against the one-hot of the cell's class; on positive cells
// generalized_box_iou_loss of the decoded box against the cell's box, and
// BCEWithLogits(centerness, sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))) of p's distances to the
// box's sides (clamped at 0 for a centre cell whose point lies outside its box). The mean divides
// by the positives of the whole global batch (at least 1).
#include <cstdint>
#include <span>
#include <vector>

#include "boxes.hpp"
#include "detection_eval.hpp"
#include "loss.hpp"
#include "tensor.hpp"

namespace mpicnn::core {

struct DetectionHead {
  int classes = 0, grid_h = 0, grid_w = 0;
  int stride = 0;  // input pixels per cell, the same along H and W
  bool centerness = true;
  int image_h = 0, image_w = 0;

  int channels() const { return classes + 4 + int(centerness); }
  std::size_t cells() const { return std::size_t(grid_h) * grid_w; }
};

// The head of a model with `input` (C,H,W) and `output` (channels, H/s, W/s) for `classes`
// classes: channels must be classes + 4 or classes + 5 (centerness). ConfigError naming the
// shapes otherwise.
DetectionHead detection_head(const Shape& input, const Shape& output, int classes);

// Per cell the index of its box in `image`, or -1 (background), by the rule above.
std::vector<int> assign_cells(const DetectionHead& head, const ImageBoxes& image);
// Positive cells of the rows.
std::int64_t count_positives(const DetectionHead& head, std::span<const ImageBoxes> rows);

struct DetectionLossOptions {
  double focal_gamma = 2, focal_alpha = 0.25;  // torchvision's sigmoid_focal_loss defaults
};

// The loss sum of the rows and d(sum)/d(outputs) (grad may be null); normalizer = their positives.
// Each row's loss is rounded to a multiple of 2^-32 before it is added, so that the sum over a
// split is exact whatever the rank count (up to 2^21 in total).
LossSum detection_loss(float* grad /*N,channels,gh,gw*/, const float* outputs /*N,channels,gh,gw*/,
                       std::span<const ImageBoxes> rows, const DetectionHead& head,
                       const DetectionLossOptions& options = {});

// torchvision.ops.generalized_box_iou_loss (eps 1e-7) of one pair in double precision, and its
// gradient with respect to `predicted` (x1, y1, x2, y2; min and max split ties as PyTorch).
double giou_loss(const double predicted[4], const double target[4], double gradient[4]);

// The box of cell `cell` from one sample's outputs, in input pixels, not clipped.
Box cell_box(const float* outputs, const DetectionHead& head, std::size_t cell);

struct DecodeOptions {
  float score_threshold = 0.05f;  // COCO evaluation keeps low scores; torchvision's FCOS uses 0.2
  double nms_iou = 0.6;           // torchvision FCOS's nms_thresh
  int candidates = 1000;          // torchvision FCOS's topk_candidates (per level; here the one)
  int max_detections = 100;       // torchvision FCOS's detections_per_img, COCO's maxDets
};

// One sample's detections as torchvision's FCOS.postprocess_detections: score sqrt(sigmoid(class)
// * sigmoid(centerness)) (sigmoid(class) without centerness) per (cell, class); above the
// threshold, the best `candidates` (ties in cell-major order); boxes clipped to the image;
// batched_nms per class; the best max_detections. In score order, `image` as their image.
std::vector<DetectedBox> decode_detections(const float* outputs /*channels,gh,gw*/, const DetectionHead& head,
                                           const DecodeOptions& options, std::int64_t image);

}  // namespace mpicnn::core
