// Boxes that move with the pixels (datasets/boxes.hpp, move_boxes and augmented_boxes): against the
// reader's own augmented pixels (white rectangles on black) on 1, 2 and 3 ranks, bitwise equal
// across rank counts; against rectangles warped by the pixels' resampling for quarter turns, zooms
// and shifts; and against a reference of the documented rule in numpy on torchvision's own affine
// matrix (torchvision.transforms.v2's box affine and albumentations' visibility filter, written out:
// torchvision 0.14 here has no v2).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "core/rng.hpp"
#include "datasets/augment.hpp"
#include "datasets/boxes.hpp"
#include "datasets/h5.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using testing::TempDir;

constexpr core::Shape kShape{1, 12, 16};  // H 12, W 16
constexpr int kClasses = 3;

// Sample i: black, with one white rectangle exactly where its one box is (integer corners).
core::Box rectangle_of(std::size_t i) {
  const float x = float(i % 9), y = float(i % 5);
  return {x, y, x + 3.f + float(i % 4), y + 4.f};
}

void write_rectangles(const std::string& path, std::size_t count) {
  DatasetWriter writer(path, {kClasses, {}}, {0, 1});
  writer.begin_split("train", kShape, count, true);
  std::vector<std::uint8_t> images(count * kShape.size(), 0);
  SplitBoxes b;
  b.offsets.push_back(0);
  for (std::size_t i = 0; i < count; ++i) {
    const core::Box r = rectangle_of(i);
    for (int y = int(r.y1); y < int(r.y2); ++y)
      for (int x = int(r.x1); x < int(r.x2); ++x) images[i * kShape.size() + std::size_t(y) * kShape.w + x] = 255;
    b.boxes.push_back(r), b.classes.push_back(std::int32_t(i % kClasses)), b.crowd.push_back(0);
    b.offsets.push_back(std::int64_t(i + 1)), b.image_ids.push_back(std::int64_t(i));
  }
  writer.append(images, std::vector<std::int32_t>(count, 0));
  write_boxes(writer.file(), "train", b, kShape, kClasses);
  writer.finish();
}

// The white pixels (> 0.5) of an augmented image in [0, 1], their extent with pixel edges.
struct WhiteExtent {
  int x1 = 1 << 20, y1 = 1 << 20, x2 = 0, y2 = 0, pixels = 0;
};

template <class T>
WhiteExtent white_extent(const T* image, const core::Shape& shape) {
  WhiteExtent e;
  for (int y = 0; y < shape.h; ++y)
    for (int x = 0; x < shape.w; ++x)
      if (image[y * shape.w + x] > T(0.5))
        e.x1 = std::min(e.x1, x), e.y1 = std::min(e.y1, y), e.x2 = std::max(e.x2, x + 1), e.y2 = std::max(e.y2, y + 1),
        ++e.pixels;
  return e;
}

constexpr int kEpochs = 8;
// Boxes are float32: an edge that falls on a pixel centre is 1/2 from the white pixels' edge to
// within float32 rounding of coordinates below 64 (half an ulp: 3.8e-6).
constexpr double kFloatRounding = 1e-5;

// Every row's augmented_boxes through TrainReader on `ranks` ranks for kEpochs epochs, by (epoch, sample),
// each passed to check(boxes, white extent of the row's pixels, stored box, where).
using BoxesBySample = std::map<std::pair<int, std::uint32_t>, BoxList>;
template <class Check>
BoxesBySample reader_boxes(const std::string& path, const SplitBoxes& stored, const Augmentation& augment, int ranks,
                           const Check& check) {
  BoxesBySample seen;
  for (int rank = 0; rank < ranks; ++rank) {
    ReaderOptions o{.path = path, .global_batch = 8, .rank = rank, .ranks = ranks, .seed = 9, .normalize = false};
    o.augment = augment;
    TrainReader reader(o);
    Batch batch;
    for (int epoch = 0; epoch < kEpochs; ++epoch)
      while (reader.next(batch)) {
        const std::vector<std::uint32_t>& samples = batch.samples;
        for (int r = 0; r < batch.count; ++r) {
          const BoxList boxes = augmented_boxes(stored.of(samples[r]), o, epoch, samples[r], kShape);
          const std::string where = "sample " + std::to_string(samples[r]) + " epoch " + std::to_string(epoch) + " on " +
                                    std::to_string(ranks) + " ranks";
          check(boxes, white_extent(batch.images.data() + std::size_t(r) * kShape.size(), kShape), stored.boxes[samples[r]], where);
          seen[{epoch, samples[r]}] = boxes;
        }
      }
  }
  return seen;
}

// The boxes of every (epoch, sample) bitwise equal on 1, 2 and 3 ranks: a pure function of (seed, epoch, sample).
void expect_same_on_every_rank_count(const std::string& path, const SplitBoxes& stored, const Augmentation& augment) {
  const auto ignore = [](const BoxList&, const WhiteExtent&, const core::Box&, const std::string&) {};
  const BoxesBySample one = reader_boxes(path, stored, augment, 1, ignore);
  ASSERT_EQ(one.size(), kEpochs * stored.samples());
  for (int ranks : {2, 3}) {
    const BoxesBySample many = reader_boxes(path, stored, augment, ranks, ignore);
    ASSERT_EQ(many.size(), one.size());
    for (const auto& [key, boxes] : one) {
      const BoxList& other = many.at(key);
      ASSERT_EQ(other.boxes.size(), boxes.boxes.size()) << "sample " << key.second << " epoch " << key.first;
      if (!boxes.boxes.empty()) {  // memcmp of an empty vector's null data() is undefined
        EXPECT_EQ(std::memcmp(other.boxes.data(), boxes.boxes.data(), boxes.boxes.size() * sizeof(core::Box)), 0)
            << "sample " << key.second << " epoch " << key.first << " on " << ranks << " ranks";
      }
      EXPECT_EQ(other.classes, boxes.classes);
    }
  }
}

// Crop and flips move pixel edges by whole pixels: every kept box is exactly its rectangle's pixels, and
// a box is dropped exactly when less than kBoxMinVisibility of it is left.
TEST(Boxes, AugmentationMovesBoxesWithThePixels) {
  TempDir dir;
  const std::string path = dir.file("rectangles.h5");
  write_rectangles(path, 29);
  const SplitBoxes stored = read_boxes(path, "train");
  const Augmentation augment{.flip = {.w = true, .h = true}, .crop_pad = 4};
  int rows = 0, moved = 0, dropped = 0, cut = 0;
  reader_boxes(path, stored, augment, 1, [&](const BoxList& boxes, const WhiteExtent& white, const core::Box& s, const std::string& where) {
    ++rows;
    const double area = double(s.x2 - s.x1) * (s.y2 - s.y1);
    if (white.pixels < kBoxMinVisibility * area) {
      EXPECT_TRUE(boxes.boxes.empty()) << where << ": " << white.pixels << " of " << area << " pixels left, the box must go";
      dropped += white.pixels > 0;
      return;
    }
    ASSERT_EQ(boxes.boxes.size(), 1u) << where;
    const core::Box& b = boxes.boxes[0];
    EXPECT_EQ(b.x1, float(white.x1)) << where;
    EXPECT_EQ(b.y1, float(white.y1)) << where;
    EXPECT_EQ(b.x2, float(white.x2)) << where;
    EXPECT_EQ(b.y2, float(white.y2)) << where;
    cut += white.pixels < area;
    moved += b.x1 != s.x1 || b.y1 != s.y1 || b.x2 != s.x2 || b.y2 != s.y2;
  });
  EXPECT_GT(moved, rows / 2);
  EXPECT_GT(cut, 0);
  EXPECT_GT(dropped, 0);
  expect_same_on_every_rank_count(path, stored, augment);
  std::printf("[ figure ] %d augmented rows (flip, crop pad 4): %d boxes moved, %d cut by the crop, %d dropped with "
              "pixels still visible; every box equal to its rectangle's pixels, bitwise equal on 1, 2, 3 ranks\n",
              rows, moved, cut, dropped);
}

// The reader's own draws with zoom, shift and rotation 0 or 30 degrees: a warped pixel lights (> 1/2)
// only when its centre is inside the warped rectangle, so no white pixel lies more than 1/2 pixel
// outside its box; without rotation each box edge is also within 1 pixel of the white pixels'.
TEST(Boxes, AffineAugmentationMovesBoxesWithThePixels) {
  TempDir dir;
  const std::string path = dir.file("rectangles.h5");
  write_rectangles(path, 29);
  const SplitBoxes stored = read_boxes(path, "train");
  for (const double degrees : {0.0, 30.0}) {
    const Augmentation augment{.flip = {.w = true, .h = true}, .crop_pad = 2, .rotate_degrees = degrees,
                               .scale_min = 0.7, .scale_max = 1.3, .translate = {0.15, 0.15, 0}, .affine_probability = 0.8};
    int rows = 0, kept = 0, dropped = 0, slivers = 0;
    double inward = 0, outward = 0;
    reader_boxes(path, stored, augment, 1, [&](const BoxList& boxes, const WhiteExtent& white, const core::Box&, const std::string& where) {
      ++rows;
      if (boxes.boxes.empty()) {
        ++dropped;
        return;
      }
      ++kept;
      const core::Box& b = boxes.boxes[0];
      if (white.pixels == 0) {  // a sliver left at the border between pixel centres
        ++slivers;
        EXPECT_LE(std::min(b.x2 - b.x1, b.y2 - b.y1), 1.f) << where << ": a box with no pixels of its rectangle";
        return;
      }
      // Positive: the box reaches past the white pixels' edge.
      const double past[4] = {white.x1 - b.x1, white.y1 - b.y1, b.x2 - white.x2, b.y2 - white.y2};
      for (const double d : past) {
        outward = std::max(outward, d), inward = std::max(inward, -d);
        EXPECT_GE(d, -0.5 - kFloatRounding) << where << ": the box cuts white pixels";
        if (degrees == 0) {
          EXPECT_LE(d, 1.0) << where;
        }
      }
    });
    EXPECT_GT(kept, rows / 2);
    expect_same_on_every_rank_count(path, stored, augment);
    std::printf("[ figure ] rotate %g, zoom 0.7-1.3, shift 0.15, crop 2, flips: %d rows, %d boxes kept, %d dropped; box edges "
                "at most %.3g px past the white pixels, at most %.3g px inside them, %d slivers with no pixel centre; "
                "bitwise equal on 1, 2, 3 ranks\n", degrees, rows, kept, dropped, outward, inward, slivers);
  }
}

// One box of class 0 as a sample's boxes.
struct OneBox {
  core::Box box;
  std::int32_t klass = 0;
  std::uint8_t crowd = 0;
  SampleBoxes view() const { return {std::span(&box, 1), std::span(&klass, 1), std::span(&crowd, 1)}; }
};

// A hand-made draw: crop offset, flips and, when `affine`, the pixels' map and its forward map.
SampleDraw make_draw(const core::Shape& shape, int dx, int dy, bool flip_w, bool flip_h, bool affine, double degrees,
                     double scale, double tx, double ty) {
  SampleDraw draw;
  draw.crop_offset = {dx, dy, 0};
  draw.flip = {flip_w, flip_h, false};
  draw.affine = affine;
  draw.map = affine_map(shape, {degrees, 0, 0}, scale, {tx, ty, 0});
  draw.forward = affine_forward(shape, {degrees, 0, 0}, scale, {tx, ty, 0});
  return draw;
}

// The reader's crop window and flips (sample_reader.cpp) on one channel: output (x, y) shows source
// ((flip_w ? W-1-x : x) + dx, (flip_h ? H-1-y : y) + dy), black outside.
std::vector<double> crop_and_flip(const std::vector<double>& in, const SampleDraw& draw, const core::Shape& shape) {
  std::vector<double> out(in.size(), 0.0);
  for (int y = 0; y < shape.h; ++y)
    for (int x = 0; x < shape.w; ++x) {
      const int sx = (draw.flip[0] ? shape.w - 1 - x : x) + draw.crop_offset[0];
      const int sy = (draw.flip[1] ? shape.h - 1 - y : y) + draw.crop_offset[1];
      if (sx >= 0 && sx < shape.w && sy >= 0 && sy < shape.h) out[std::size_t(y * shape.w + x)] = in[std::size_t(sy * shape.w + sx)];
    }
  return out;
}

// A filled rectangle warped by the pixel path (crop window, flips, resample_affine) lights exactly the
// pixels whose centres fall inside it (bilinear weight > 1/2 along each axis), so with quarter turns,
// zooms and shifts every edge of its box is within 1 pixel of the white pixels' (1/2 but where the
// box is a sliver under a pixel wide, whose pixels light below 1/2 along its length), and at any
// angle no white pixel reaches more than 1/2 pixel past the box. min_visibility 0: the drop rule has
// its own test below.
TEST(BoxAugment, WarpedRectangleStaysInItsBox) {
  const core::Shape shape{1, 30, 40};  // H 30, W 40
  core::Rng rng(11);
  const double quarter_turns[] = {0, 90, 180, -90};
  int cases = 0, compared = 0, empty = 0, clipped = 0;
  double axis_aligned = 0, outside = 0;
  for (int n = 0; n < 800; ++n) {
    const bool quarter = n % 4 != 3;
    const double degrees = quarter ? quarter_turns[rng.below(4)] : rng.uniform(-180, 180);
    // 6..16 pixels a side: at the smallest zoom, an edge still has a row of fully white pixels behind it.
    const int w = 6 + int(rng.below(11)), h = 6 + int(rng.below(11));
    const int x1 = int(rng.below(std::uint64_t(shape.w - w + 1))), y1 = int(rng.below(std::uint64_t(shape.h - h + 1)));
    const int dx = int(rng.below(11)) - 5, dy = int(rng.below(11)) - 5;
    const bool flip_w = rng.below(2) == 1, flip_h = rng.below(2) == 1;
    const double scale = rng.uniform(0.6, 1.5), tx = rng.uniform(-8, 8), ty = rng.uniform(-8, 8);
    const SampleDraw draw = make_draw(shape, dx, dy, flip_w, flip_h, true, degrees, scale, tx, ty);
    std::vector<double> image(shape.size(), 0.0), warped(shape.size());
    for (int y = y1; y < y1 + h; ++y)
      for (int x = x1; x < x1 + w; ++x) image[std::size_t(y * shape.w + x)] = 1;
    const double black = 0;
    resample_affine(warped.data(), crop_and_flip(image, draw, shape).data(), shape, draw.map, &black);
    const WhiteExtent white = white_extent(warped.data(), shape);
    const OneBox one{{float(x1), float(y1), float(x1 + w), float(y1 + h)}};
    const BoxList moved = move_boxes(one.view(), draw, shape, 0.0);
    const std::string where = "case " + std::to_string(n) + ": rectangle [" + std::to_string(x1) + ", " + std::to_string(y1) +
                              ", " + std::to_string(x1 + w) + ", " + std::to_string(y1 + h) + "] turned " + std::to_string(degrees);
    ++cases;
    if (white.pixels == 0) {
      ++empty;
      if (!moved.boxes.empty()) {  // only a sliver at the border may hold no pixel centre
        const core::Box& b = moved.boxes[0];
        EXPECT_LE(std::min(b.x2 - b.x1, b.y2 - b.y1), 1.f) << where << ": a box with no white pixels";
      }
      continue;
    }
    ASSERT_EQ(moved.boxes.size(), 1u) << where << ": white pixels but no box";
    const core::Box& b = moved.boxes[0];
    clipped += b.x1 == 0 || b.y1 == 0 || b.x2 == float(shape.w) || b.y2 == float(shape.h);
    ++compared;
    const double past[4] = {white.x1 - b.x1, white.y1 - b.y1, b.x2 - white.x2, b.y2 - white.y2};  // > 0: box beyond
    for (const double d : past) {
      outside = std::max(outside, -d);
      EXPECT_GE(d, -0.5 - kFloatRounding) << where << ": white pixels outside the box";
      if (quarter) {
        axis_aligned = std::max(axis_aligned, std::abs(d));
        EXPECT_LE(std::abs(d), 1.0) << where;
      }
    }
  }
  EXPECT_GT(compared, cases / 2);
  EXPECT_GT(clipped, 0);
  std::printf("[ figure ] %d warped rectangles (%d compared, %d clipped by the image, %d left no pixel): quarter turns, "
              "zoom and shift: box edges within %.3g px of the white pixels; any angle: white pixels at most %.3g px "
              "past the box\n", cases, compared, clipped, empty, axis_aligned, outside);
}

// The reference of the documented rule, from torchvision's own pieces: transforms.v2 moves XYXY boxes
// by a crop (minus left, top; clamped), horizontal/vertical flips (W - x, H - y) and its affine (the
// four corners through _get_inverse_affine_matrix(centre (W/2, H/2), inverted=False), their min and
// max, clamped to the canvas); albumentations' filter_bboxes keeps a box when its clipped area is at
// least min_visibility times its area before clipping. Written to REFERENCE: per case the box, kept
// (0/1) and the margin (clipped area - min_visibility * whole area) / whole area.
const char* kReferenceScript = R"(
import h5py, numpy as np
from torchvision.transforms.functional import _get_inverse_affine_matrix
cases = h5py.File(CASES, "r")["cases"][...]
def clamp(b, W, H):
    return np.array([max(b[0], 0), max(b[1], 0), min(b[2], W), min(b[3], H)])
def area(b):
    return (b[2] - b[0]) * (b[3] - b[1])
def empty(b):
    return not (b[0] < b[2] and b[1] < b[3])
def affine(b, m):
    corners = np.array([[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]])
    moved = corners @ m[:, :2].T + m[:, 2]
    return np.concatenate([moved.min(0), moved.max(0)])
boxes = np.zeros((len(cases), 4)); kept = np.zeros(len(cases), np.int32); margin = np.full(len(cases), -1.0)
for i, (W, H, x1, y1, x2, y2, dx, dy, flip_w, flip_h, warp, angle, scale, tx, ty, min_visibility) in enumerate(cases):
    b = np.array([x1 - dx, y1 - dy, x2 - dx, y2 - dy])
    if flip_w: b = np.array([W - b[2], b[1], W - b[0], b[3]])
    if flip_h: b = np.array([b[0], H - b[3], b[2], H - b[1]])
    whole, visible = b, clamp(b, W, H)
    if empty(visible): continue
    if warp:
        m = np.array(_get_inverse_affine_matrix([W * 0.5, H * 0.5], angle, [tx, ty], scale, [0.0, 0.0], inverted=False)).reshape(2, 3)
        whole, visible = affine(whole, m), clamp(affine(visible, m), W, H)
    if empty(visible): continue
    boxes[i] = visible
    margin[i] = (area(visible) - min_visibility * area(whole)) / area(whole)
    kept[i] = margin[i] >= 0
with h5py.File(REFERENCE, "w") as f:
    f["boxes"] = boxes; f["kept"] = kept; f["margin"] = margin
)";

TEST(BoxAugment, MatchesTorchvisionAffineAndTheVisibilityRule) {
  TempDir dir;
  core::Rng rng(23);
  constexpr int kCases = 3000, kColumns = 16;
  const double visibilities[] = {0, kBoxMinVisibility, 0.3, 0.6};
  std::vector<double> cases;
  std::vector<BoxList> ours;
  for (int n = 0; n < kCases; ++n) {
    const int W = 8 + int(rng.below(41)), H = 8 + int(rng.below(41));
    // Fractional corners, as the COCO converter's rescaled boxes, 0.2 pixel to the whole image wide.
    const double x1 = rng.uniform(0, W - 0.2), y1 = rng.uniform(0, H - 0.2);
    const OneBox one{{float(x1), float(y1), float(rng.uniform(x1 + 0.2, W)), float(rng.uniform(y1 + 0.2, H))}};
    const int dx = int(rng.below(13)) - 6, dy = int(rng.below(13)) - 6;
    const bool flip_w = rng.below(2) == 1, flip_h = rng.below(2) == 1, warp = rng.below(5) != 0;
    const double degrees = n % 7 == 0 ? 90.0 * double(rng.below(4)) : rng.uniform(-180, 180), scale = rng.uniform(0.5, 1.6);
    const double tx = rng.uniform(-0.3, 0.3) * W, ty = rng.uniform(-0.3, 0.3) * H, visibility = visibilities[n % 4];
    const core::Shape shape{1, H, W};
    ours.push_back(move_boxes(one.view(), make_draw(shape, dx, dy, flip_w, flip_h, warp, degrees, scale, tx, ty), shape, visibility));
    const double row[kColumns] = {double(W), double(H), one.box.x1, one.box.y1, one.box.x2, one.box.y2, double(dx), double(dy),
                                  double(flip_w), double(flip_h), double(warp), degrees, scale, tx, ty, visibility};
    cases.insert(cases.end(), row, row + kColumns);
  }
  const std::string cases_path = dir.file("cases.h5"), reference_path = dir.file("reference.h5");
  {
    h5::Handle file = h5::create_file(cases_path);
    h5::write_dataset<double>(file.get(), "cases", cases, {kCases, kColumns});
  }
  const auto python = testing::run_python(dir, "CASES = '" + cases_path + "'\nREFERENCE = '" + reference_path + "'\n" + kReferenceScript);
  ASSERT_EQ(python.status, 0) << python.output;
  const h5::Handle file = h5::open_file(reference_path);
  const std::vector<double> boxes = h5::read_dataset<double>(file.get(), "boxes"), margin = h5::read_dataset<double>(file.get(), "margin");
  const std::vector<std::int32_t> kept = h5::read_dataset<std::int32_t>(file.get(), "kept");
  int both = 0, dropped_by_visibility = 0, ties = 0;
  double error = 0;
  for (int n = 0; n < kCases; ++n) {
    // A visible area within rounding of the threshold may fall either way in either implementation.
    if (std::abs(margin[std::size_t(n)]) < 1e-9) {
      ++ties;
      continue;
    }
    const bool reference_kept = kept[std::size_t(n)] == 1, ours_kept = !ours[std::size_t(n)].boxes.empty();
    ASSERT_EQ(ours_kept, reference_kept) << "case " << n << " (margin " << margin[std::size_t(n)] << ")";
    dropped_by_visibility += !reference_kept && margin[std::size_t(n)] > -1;
    if (!ours_kept) continue;
    ++both;
    const core::Box& b = ours[std::size_t(n)].boxes[0];
    const float corners[4] = {b.x1, b.y1, b.x2, b.y2};
    for (int k = 0; k < 4; ++k) error = std::max(error, std::abs(double(corners[k]) - boxes[std::size_t(4 * n + k)]));
  }
  // Our float32 corners of values below 64 against float64: half an ulp is 3.8e-6; a convention error
  // (the half-pixel centre, the turn's sign, the order of crop and warp) is 0.1 pixel or more.
  EXPECT_LE(error, 1e-5);
  EXPECT_GT(both, kCases / 3);
  EXPECT_GT(dropped_by_visibility, kCases / 20);
  std::printf("[ figure ] %d random boxes and draws (crop, flips, 80%% warped, min visibility 0/%g/0.3/0.6): %d kept by both, "
              "%d dropped by the visibility rule, same decision everywhere (%d ties within 1e-9 not compared), "
              "max |ours - reference| = %.3g px\n", kCases, kBoxMinVisibility, both, dropped_by_visibility, ties, error);
}

}  // namespace
}  // namespace mpicnn::data
