#pragma once
// Object boxes in the dataset format (datasets/README.md, "Boxes"): per split, flat arrays of
// every sample's boxes with per-sample offsets, validated when read; and the schedules that tell
// which samples a TrainReader or EvalReader step holds, so that a detector gets each batch row's
// boxes by global sample index, on any rank count.
#include <hdf5.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/boxes.hpp"
#include "core/detection_eval.hpp"
#include "datasets/augment.hpp"
#include "datasets/reader.hpp"

namespace mpicnn::data {

// The boxes of one sample: views into a SplitBoxes (pixels of the stored image).
using SampleBoxes = core::ImageBoxes;

// One split's boxes. Sample n owns entries [offsets[n], offsets[n+1]).
struct SplitBoxes {
  std::vector<core::Box> boxes;         // (M)
  std::vector<std::int32_t> classes;    // (M)
  std::vector<std::uint8_t> crowd;      // (M); all 0 when the file has no box_iscrowd
  std::vector<std::int64_t> offsets;    // (N+1), offsets[0] = 0, offsets[N] = M
  std::vector<std::int64_t> image_ids;  // (N); the source's image ids, or 0..N-1 when the file has none

  std::size_t samples() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  SampleBoxes of(std::size_t sample) const;
};

// Whether `split` of the dataset file holds boxes (a `boxes` dataset).
bool has_boxes(const std::string& path, const std::string& split);

// Reads and checks a split's boxes against the file's images and num_classes: offsets monotone
// from 0 to M, N+1 of them; every box finite, 0 <= x1 < x2 <= W, 0 <= y1 < y2 <= H; class in
// range; iscrowd 0 or 1. IoError/ShapeError with one line naming the file, split and box index.
SplitBoxes read_boxes(const std::string& path, const std::string& split);

// Writes a split's box datasets into an open dataset file (DatasetWriter::file() before finish()).
// Checks them as read_boxes does against `image` and `num_classes`.
void write_boxes(hid_t file, const std::string& split, const SplitBoxes& boxes, const core::Shape& image,
                 int num_classes);

// Every box of the split as evaluation ground truth (core::evaluate_detections): image = the
// sample's image id, class, crowd flag.
std::vector<core::GroundTruthBox> ground_truth(const SplitBoxes& boxes);

// One sample's boxes, owned.
struct BoxList {
  std::vector<core::Box> boxes;
  std::vector<std::int32_t> classes;
  std::vector<std::uint8_t> crowd;
};

// A moved box is kept when at least this fraction of its transformed area is still in the image:
// albumentations' min_visibility (filter_bboxes), at the value of YOLOv5's area_thr after its random
// affine. Unlike albumentations (and torchvision's SanitizeBoundingBoxes) there is no 1-pixel
// minimum: a box is degenerate only with no area, so an identity draw keeps every stored box.
inline constexpr double kBoxMinVisibility = 0.1;

// A sample's boxes moved as the reader moves its pixels with `draw` (datasets/augment.hpp), in the
// pixels' order: the crop window and the W/H flips (exact), clipped to the image, because what
// left the window is black before the warp; then, when draw.affine, the four corners of that box
// through draw.forward, their enclosing axis-aligned box clipped to the image again (torchvision.
// transforms.v2's affine of boxes). Box coordinates are pixel edges (pixel x spans [x, x + 1)), the
// map's are pixel centres, so a corner u is moved as the point u - 1/2 and shifted back. A box is
// kept when it has an area and at least `min_visibility` times that of the enclosing box of the
// whole stored box moved without clipping (albumentations' visibility, over the whole chain rather
// than after each step: a box cut by both the crop and the warp is judged on what is left of it).
// W x H from `image`.
BoxList move_boxes(const SampleBoxes& boxes, const SampleDraw& draw, const core::Shape& image,
                   double min_visibility = kBoxMinVisibility);

// Sample `index`'s boxes moved as TrainReader moves its pixels in `epoch` with options.augment (the
// same seeded draw, keyed on (seed, epoch, index)): move_boxes with kBoxMinVisibility. Without
// augmentation the boxes as stored.
BoxList augmented_boxes(const SampleBoxes& boxes, const ReaderOptions& options, int epoch, std::uint32_t index,
                        const core::Shape& image);

}  // namespace mpicnn::data
