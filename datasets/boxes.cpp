#include "datasets/boxes.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/errors.hpp"
#include "core/rng.hpp"
#include "datasets/h5.hpp"

namespace mpicnn::data {

SampleBoxes SplitBoxes::of(std::size_t sample) const {
  const std::size_t first = std::size_t(offsets.at(sample)), count = std::size_t(offsets.at(sample + 1)) - first;
  return {std::span(boxes).subspan(first, count), std::span(classes).subspan(first, count),
          std::span(crowd).subspan(first, count)};
}

namespace {

std::string number(double v) {
  std::ostringstream text;
  text << v;
  return text.str();
}

// The checks shared by reading and writing; `where` is "<file>: split 'train'".
void check_split_boxes(const SplitBoxes& b, std::size_t samples, const core::Shape& image, int num_classes,
                       const std::string& where) {
  const auto bad = [&](const std::string& what) { throw IoError(where + ": " + what); };
  const std::size_t M = b.boxes.size();
  if (b.offsets.size() != samples + 1)
    throw ShapeError(where + ": 'box_offsets' has " + std::to_string(b.offsets.size()) + " entries, expected " +
                     std::to_string(samples + 1) + " (images + 1)");
  if (b.classes.size() != M || b.crowd.size() != M)
    throw ShapeError(where + ": " + std::to_string(M) + " boxes but " + std::to_string(b.classes.size()) +
                     " 'box_classes' and " + std::to_string(b.crowd.size()) + " 'box_iscrowd' entries, expected one per box");
  if (b.image_ids.size() != samples)
    throw ShapeError(where + ": 'image_ids' has " + std::to_string(b.image_ids.size()) + " entries, expected " +
                     std::to_string(samples) + " (one per image)");
  if (b.offsets.front() != 0) bad("'box_offsets' starts at " + std::to_string(b.offsets.front()) + ", expected 0");
  for (std::size_t n = 0; n < samples; ++n)
    if (b.offsets[n + 1] < b.offsets[n])
      bad("'box_offsets' decreases at sample " + std::to_string(n) + " (" + std::to_string(b.offsets[n]) + " then " +
          std::to_string(b.offsets[n + 1]) + "), expected non-decreasing offsets");
  if (std::size_t(b.offsets.back()) != M)
    bad("'box_offsets' ends at " + std::to_string(b.offsets.back()) + ", expected " + std::to_string(M) + " (the box count)");
  const double W = image.w, H = image.h;
  std::size_t sample = 0;
  for (std::size_t m = 0; m < M; ++m) {
    while (std::size_t(b.offsets[sample + 1]) <= m) ++sample;
    const core::Box& box = b.boxes[m];
    const std::string which = "box " + std::to_string(m) + " (sample " + std::to_string(sample) + ")";
    const std::string corners = " [" + number(box.x1) + ", " + number(box.y1) + ", " + number(box.x2) + ", " + number(box.y2) + "]";
    if (!std::isfinite(box.x1) || !std::isfinite(box.y1) || !std::isfinite(box.x2) || !std::isfinite(box.y2))
      bad(which + corners + " is not finite");
    if (!(box.x1 < box.x2 && box.y1 < box.y2)) bad(which + corners + " has no area, expected x1 < x2 and y1 < y2");
    if (box.x1 < 0 || box.y1 < 0 || box.x2 > W || box.y2 > H)
      bad(which + corners + " is outside the image, expected 0 <= x1 < x2 <= " + number(W) + " and 0 <= y1 < y2 <= " + number(H));
    if (b.classes[m] < 0 || b.classes[m] >= num_classes)
      bad(which + " has class " + std::to_string(b.classes[m]) + ", expected 0 <= class < " + std::to_string(num_classes) +
          " (num_classes)");
    if (b.crowd[m] > 1) bad(which + " has iscrowd " + std::to_string(b.crowd[m]) + ", expected 0 or 1");
  }
}

template <class T>
std::vector<T> read_vector(hid_t group, const std::string& name, std::size_t columns, const std::string& where) {
  std::vector<hsize_t> dims;
  std::vector<T> values = h5::read_dataset<T>(group, name, &dims);
  const bool fits = columns == 1 ? dims.size() == 1 : dims.size() == 2 && dims[1] == columns;
  if (!fits)
    throw ShapeError(where + ": '" + name + "' has shape " + h5::dims_text(dims) + ", expected " +
                     (columns == 1 ? "(M)" : "(M," + std::to_string(columns) + ")"));
  return values;
}

}  // namespace

bool has_boxes(const std::string& path, const std::string& split) {
  h5::Handle file = h5::open_file(path);
  return h5::exists(file.get(), split) && h5::exists(file.get(), split + "/boxes");
}

SplitBoxes read_boxes(const std::string& path, const std::string& split) {
  const DatasetInfo info = read_info(path, split);
  const std::string where = path + ": split '" + split + "'";
  h5::Handle file = h5::open_file(path);
  h5::Handle group = h5::open_group(file.get(), split);
  for (const char* name : {"boxes", "box_classes", "box_offsets"})
    if (!h5::exists(group.get(), name))
      throw IoError(where + ": no dataset '" + name + "' (a split with boxes needs boxes, box_classes and box_offsets)");
  SplitBoxes b;
  const std::vector<float> corners = read_vector<float>(group.get(), "boxes", 4, where);
  b.boxes.resize(corners.size() / 4);
  for (std::size_t m = 0; m < b.boxes.size(); ++m)
    b.boxes[m] = {corners[4 * m], corners[4 * m + 1], corners[4 * m + 2], corners[4 * m + 3]};
  b.classes = read_vector<std::int32_t>(group.get(), "box_classes", 1, where);
  b.offsets = read_vector<std::int64_t>(group.get(), "box_offsets", 1, where);
  if (h5::exists(group.get(), "box_iscrowd")) {
    const std::vector<std::int32_t> crowd = read_vector<std::int32_t>(group.get(), "box_iscrowd", 1, where);
    for (std::size_t m = 0; m < crowd.size(); ++m)
      if (crowd[m] != 0 && crowd[m] != 1)
        throw IoError(where + ": box " + std::to_string(m) + " has iscrowd " + std::to_string(crowd[m]) + ", expected 0 or 1");
    b.crowd.assign(crowd.begin(), crowd.end());
  } else {
    b.crowd.assign(b.boxes.size(), 0);
  }
  if (h5::exists(group.get(), "image_ids")) {
    b.image_ids = read_vector<std::int64_t>(group.get(), "image_ids", 1, where);
  } else {
    b.image_ids.resize(info.count);
    for (std::size_t n = 0; n < info.count; ++n) b.image_ids[n] = std::int64_t(n);
  }
  check_split_boxes(b, info.count, info.shape, info.num_classes, where);
  return b;
}

void write_boxes(hid_t file, const std::string& split, const SplitBoxes& b, const core::Shape& image, int num_classes) {
  check_split_boxes(b, b.samples(), image, num_classes, h5::file_name(file) + ": split '" + split + "'");
  std::vector<float> corners(4 * b.boxes.size());
  for (std::size_t m = 0; m < b.boxes.size(); ++m)
    corners[4 * m] = b.boxes[m].x1, corners[4 * m + 1] = b.boxes[m].y1, corners[4 * m + 2] = b.boxes[m].x2,
    corners[4 * m + 3] = b.boxes[m].y2;
  const hsize_t M = b.boxes.size();
  h5::write_dataset<float>(file, split + "/boxes", corners, {M, 4});
  h5::write_dataset<std::int32_t>(file, split + "/box_classes", b.classes, {M});
  h5::write_dataset<std::int64_t>(file, split + "/box_offsets", b.offsets, {hsize_t(b.offsets.size())});
  const std::vector<std::int32_t> crowd(b.crowd.begin(), b.crowd.end());
  h5::write_dataset<std::int32_t>(file, split + "/box_iscrowd", crowd, {M});
  h5::write_dataset<std::int64_t>(file, split + "/image_ids", b.image_ids, {hsize_t(b.image_ids.size())});
}

std::vector<core::GroundTruthBox> ground_truth(const SplitBoxes& boxes) {
  std::vector<core::GroundTruthBox> truth;
  for (std::size_t n = 0; n < boxes.samples(); ++n)
    for (std::int64_t m = boxes.offsets[n]; m < boxes.offsets[n + 1]; ++m)
      truth.push_back({boxes.image_ids[n], boxes.boxes[std::size_t(m)], boxes.classes[std::size_t(m)], boxes.crowd[std::size_t(m)] != 0});
  return truth;
}

namespace {

// Pixel edges, in double: the crop and flips move them by integers, exactly.
struct Edges {
  double x1, y1, x2, y2;
  bool empty() const { return !(x1 < x2 && y1 < y2); }
  double area() const { return (x2 - x1) * (y2 - y1); }
};

// Output pixel (x, y) shows source pixel ((flip_w ? W-1-x : x) + dx, (flip_h ? H-1-y : y) + dy)
// (sample_reader.cpp), so a source edge u lands at u - dx, or at W + dx - u when mirrored.
Edges crop_and_flip(const core::Box& b, const SampleDraw& draw, double W, double H) {
  const double dx = draw.crop_offset[0], dy = draw.crop_offset[1];
  const auto along_x = [&](double u) { return draw.flip[0] ? W + dx - u : u - dx; };
  const auto along_y = [&](double v) { return draw.flip[1] ? H + dy - v : v - dy; };
  const double x1 = along_x(b.x1), x2 = along_x(b.x2), y1 = along_y(b.y1), y2 = along_y(b.y2);
  return {std::min(x1, x2), std::min(y1, y2), std::max(x1, x2), std::max(y1, y2)};
}

Edges clip(const Edges& e, double W, double H) {
  return {std::max(e.x1, 0.0), std::max(e.y1, 0.0), std::min(e.x2, W), std::min(e.y2, H)};
}

// The enclosing box of the four corners through `forward`, whose coordinates are pixel centres.
Edges warp(const Edges& e, const AffineMap& forward) {
  const auto& m = forward.matrix;
  Edges out{INFINITY, INFINITY, -INFINITY, -INFINITY};
  for (const double u : {e.x1, e.x2})
    for (const double v : {e.y1, e.y2}) {
      const double x = u - 0.5, y = v - 0.5;
      const double to_x = m[0][0] * x + m[0][1] * y + forward.offset[0] + 0.5;
      const double to_y = m[1][0] * x + m[1][1] * y + forward.offset[1] + 0.5;
      out = {std::min(out.x1, to_x), std::min(out.y1, to_y), std::max(out.x2, to_x), std::max(out.y2, to_y)};
    }
  return out;
}

}  // namespace

BoxList move_boxes(const SampleBoxes& boxes, const SampleDraw& draw, const core::Shape& image, double min_visibility) {
  const double W = image.w, H = image.h;
  BoxList out;
  for (std::size_t m = 0; m < boxes.boxes.size(); ++m) {
    Edges whole = crop_and_flip(boxes.boxes[m], draw, W, H), visible = clip(whole, W, H);
    if (visible.empty()) continue;
    if (draw.affine) whole = warp(whole, draw.forward), visible = clip(warp(visible, draw.forward), W, H);
    if (visible.empty() || visible.area() < min_visibility * whole.area()) continue;
    out.boxes.push_back({float(visible.x1), float(visible.y1), float(visible.x2), float(visible.y2)});
    out.classes.push_back(boxes.classes[m]);
    out.crowd.push_back(boxes.crowd[m]);
  }
  return out;
}

BoxList augmented_boxes(const SampleBoxes& boxes, const ReaderOptions& options, int epoch, std::uint32_t index,
                        const core::Shape& image) {
  const Augmentation& a = options.augment;
  const SampleDraw draw =
      a.any() ? draw_augmentation(a, image, core::derive_seed(augment_seed(options.seed, epoch), index)) : SampleDraw{};
  return move_boxes(boxes, draw, image);
}

}  // namespace mpicnn::data
