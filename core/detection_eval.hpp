#pragma once
// Detection metrics over a whole split, by COCO's rules (pycocotools' COCOeval with iouType
// "bbox" and its default parameters) and VOC's all-points AP@.5, so that figures reported here
// compare with the literature's.
//
// COCO: per image and class, detections sorted by score (stable) and cut to the 100 best; per IoU
// threshold .50:.05:.95, each detection in turn takes the unmatched ground truth of highest IoU >=
// the threshold (crowd ground truth can be taken again and again; a detection matched to crowd or
// to ground truth outside the area range is ignored, as is an unmatched detection outside it);
// over the split, precision made monotone and read at 101 recall points. AP sums all of that;
// AR is the recall reached with at most 1, 10 or 100 detections per image. Area ranges
// (pixels^2): small < 32^2 <= medium < 96^2 <= large, taken from the boxes' areas (COCO's ground
// truth has a segment area; our datasets hold boxes only).
//
// VOC AP@.5 (the devkit's rule since 2010): every detection of a class over the split, by score,
// takes the ground truth it overlaps most in its image; IoU > 0.5 and that ground truth not yet
// taken: a true positive; taken already, or IoU <= 0.5: a false positive; crowd ("difficult")
// ground truth: neither. AP is the area under the monotone precision envelope at every recall.
// IoU as torchvision (no +1), in double precision.
#include <cstdint>
#include <span>
#include <vector>

#include "core/boxes.hpp"

namespace mpicnn::core {

struct GroundTruthBox {
  std::int64_t image = 0;  // any id; images are taken in increasing id order, as COCOeval does
  Box box;
  std::int32_t class_index = 0;  // 0..classes-1
  bool crowd = false;            // COCO's iscrowd
};

struct DetectedBox {
  std::int64_t image = 0;
  Box box;
  std::int32_t class_index = 0;
  float score = 0;
};

// COCOeval's twelve summary figures plus VOC's AP@.5. NaN where a figure is undefined (COCO's -1):
// a class without non-crowd ground truth in the area range.
struct DetectionSummary {
  double ap = 0, ap50 = 0, ap75 = 0, ap_small = 0, ap_medium = 0, ap_large = 0;
  double ar1 = 0, ar10 = 0, ar100 = 0, ar_small = 0, ar_medium = 0, ar_large = 0;
  double voc_ap50 = 0;
};

struct DetectionMetrics {
  std::vector<DetectionSummary> per_class;  // one per class index
  DetectionSummary mean;                    // each figure's mean over the classes where it is defined
};

DetectionMetrics evaluate_detections(std::span<const GroundTruthBox> truth, std::span<const DetectedBox> detections,
                                     int classes);

// COCO's IoU thresholds (np.linspace(.5, .95, 10), bit for bit) and recall points (linspace(0, 1, 101)).
std::vector<double> coco_iou_thresholds();
std::vector<double> coco_recall_points();

}  // namespace mpicnn::core
