#include "detection_head.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "errors.hpp"

namespace mpicnn::core {

namespace {

constexpr double kCentreRadius = 1.5;  // torchvision FCOS's center_sampling_radius, in strides
constexpr double kGiouEps = 1e-7;      // torchvision's generalized_box_iou_loss default

double point_x(const DetectionHead& head, std::size_t cell) { return (double(cell % head.grid_w) + 0.5) * head.stride; }
double point_y(const DetectionHead& head, std::size_t cell) { return (double(cell / head.grid_w) + 0.5) * head.stride; }

double area(const Box& b) { return (double(b.x2) - b.x1) * (double(b.y2) - b.y1); }

// The cell holding (x, y), clamped to the grid (a box edge may lie on the image's far edge).
std::size_t cell_of(const DetectionHead& head, double x, double y) {
  const int j = std::clamp(int(std::floor(x / head.stride)), 0, head.grid_w - 1);
  const int i = std::clamp(int(std::floor(y / head.stride)), 0, head.grid_h - 1);
  return std::size_t(i) * head.grid_w + std::size_t(j);
}

bool takes_cell(const DetectionHead& head, const Box& b, std::size_t cell) {
  const double x = point_x(head, cell), y = point_y(head, cell);
  const double centre_x = (double(b.x1) + b.x2) / 2, centre_y = (double(b.y1) + b.y2) / 2;
  const double radius = kCentreRadius * head.stride;
  const bool inside = b.x1 < x && x < b.x2 && b.y1 < y && y < b.y2;
  const bool near_centre = std::abs(x - centre_x) < radius && std::abs(y - centre_y) < radius;
  return (inside && near_centre) || cell == cell_of(head, centre_x, centre_y);
}

// d(max(a, b))/da as PyTorch's maximum: 1 where a wins, 1/2 at a tie, 0 where b wins.
double max_slope(double a, double b) { return a > b ? 1.0 : a == b ? 0.5 : 0.0; }
double min_slope(double a, double b) { return a < b ? 1.0 : a == b ? 0.5 : 0.0; }

// BCEWithLogits(x, t), stable, and its derivative sigmoid(x) - t.
double bce_with_logits(double x, double t, double* slope) {
  const double e = std::exp(-std::abs(x));
  *slope = (x >= 0 ? 1 / (1 + e) : e / (1 + e)) - t;
  return std::max(x, 0.0) - x * t + std::log1p(e);
}

// sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of the cell's point against box b.
double centerness_target(const DetectionHead& head, const Box& b, std::size_t cell) {
  const double x = point_x(head, cell), y = point_y(head, cell);
  const double l = x - b.x1, r = b.x2 - x, t = y - b.y1, d = b.y2 - y;
  const double across = std::max(0.0, std::min(l, r)) / std::max(l, r);
  const double down = std::max(0.0, std::min(t, d)) / std::max(t, d);
  return std::sqrt(across * down);
}

// The four distances d = s exp(r) of a cell.
void cell_distances(const float* outputs, const DetectionHead& head, std::size_t cell, double d[4]) {
  const std::size_t cells = head.cells();
  for (int k = 0; k < 4; ++k) d[k] = head.stride * std::exp(double(outputs[(std::size_t(head.classes) + k) * cells + cell]));
}

// Sums one row's loss into `sum` and writes its gradient (grad may be null); returns its positives.
std::int64_t row_loss(float* grad, const float* out, const ImageBoxes& image, const DetectionHead& head,
                      const DetectionLossOptions& options, double* sum) {
  const std::size_t cells = head.cells(), class_values = std::size_t(head.classes) * cells;
  const std::vector<int> assigned = assign_cells(head, image);
  std::vector<float> onehot(class_values, 0.f);  // (classes, cells), as the logits
  std::int64_t positives = 0;
  for (std::size_t q = 0; q < cells; ++q)
    if (assigned[q] >= 0) onehot[std::size_t(image.classes[std::size_t(assigned[q])]) * cells + q] = 1.f, ++positives;
  *sum += sigmoid_focal_loss(grad, out, onehot.data(), options.focal_gamma, options.focal_alpha, 1, int(class_values)).sum;
  if (grad) std::fill(grad + class_values, grad + std::size_t(head.channels()) * cells, 0.f);
  for (std::size_t q = 0; q < cells; ++q) {
    if (assigned[q] < 0) continue;
    const Box& b = image.boxes[std::size_t(assigned[q])];
    double d[4], slope[4];
    cell_distances(out, head, q, d);
    const double x = point_x(head, q), y = point_y(head, q);
    const double predicted[4] = {x - d[0], y - d[1], x + d[2], y + d[3]}, target[4] = {b.x1, b.y1, b.x2, b.y2};
    *sum += giou_loss(predicted, target, slope);
    if (grad) {
      // d(corner)/d(r) = -d for x1, y1 and +d for x2, y2.
      for (int k = 0; k < 4; ++k) grad[(std::size_t(head.classes) + k) * cells + q] = float(slope[k] * (k < 2 ? -d[k] : d[k]));
    }
    if (!head.centerness) continue;
    const std::size_t at = (std::size_t(head.classes) + 4) * cells + q;
    double centre_slope = 0;
    *sum += bce_with_logits(out[at], centerness_target(head, b, q), &centre_slope);
    if (grad) grad[at] = float(centre_slope);
  }
  return positives;
}

}  // namespace

DetectionHead detection_head(const Shape& input, const Shape& output, int classes) {
  const std::string shapes = "model input " + input.str() + ", output " + output.str();
  if (input.is_volume() || output.is_volume() || output.h < 1 || output.w < 1)
    throw ConfigError("loss 'detection' needs an image model whose output is a grid of cells (channels, H/s, W/s); " +
                      shapes);
  if (output.c != classes + 4 && output.c != classes + 5)
    throw ConfigError("loss 'detection': the model's output has " + std::to_string(output.c) + " channels, expected " +
                      std::to_string(classes + 4) + " or " + std::to_string(classes + 5) + " (" + std::to_string(classes) +
                      " classes + 4 box distances, + 1 centerness); end model.spec with conv(" +
                      std::to_string(classes + 5) + ",1)");
  const int stride = input.h / output.h;
  if (input.h % output.h != 0 || input.w % output.w != 0 || input.w / output.w != stride)
    throw ConfigError("loss 'detection' needs one stride s along H and W (input = s x output), but " + shapes);
  return {classes, output.h, output.w, stride, output.c == classes + 5, input.h, input.w};
}

std::vector<int> assign_cells(const DetectionHead& head, const ImageBoxes& image) {
  std::vector<int> assigned(head.cells(), -1);
  for (std::size_t q = 0; q < assigned.size(); ++q)
    for (std::size_t m = 0; m < image.boxes.size(); ++m) {
      if (image.crowd[m] || !takes_cell(head, image.boxes[m], q)) continue;
      if (assigned[q] < 0 || area(image.boxes[m]) < area(image.boxes[std::size_t(assigned[q])])) assigned[q] = int(m);
    }
  return assigned;
}

std::int64_t count_positives(const DetectionHead& head, std::span<const ImageBoxes> rows) {
  std::int64_t positives = 0;
  for (const ImageBoxes& image : rows)
    for (int cell : assign_cells(head, image)) positives += cell >= 0;
  return positives;
}

LossSum detection_loss(float* grad, const float* outputs, std::span<const ImageBoxes> rows, const DetectionHead& head,
                       const DetectionLossOptions& options) {
  LossSum result;
  const std::size_t per_sample = std::size_t(head.channels()) * head.cells();
  for (std::size_t n = 0; n < rows.size(); ++n) {
    double row = 0;
    const std::int64_t positives =
        row_loss(grad ? grad + n * per_sample : nullptr, outputs + n * per_sample, rows[n], head, options, &row);
    // Each row's loss on the loss grid (core/loss.hpp), so an evaluation's loss does not depend on
    // how the rows were split among ranks.
    result.sum += on_loss_grid(row);
    result.normalizer += double(positives);
  }
  return result;
}

double giou_loss(const double p[4], const double g[4], double gradient[4]) {
  const double ix1 = std::max(p[0], g[0]), iy1 = std::max(p[1], g[1]), ix2 = std::min(p[2], g[2]), iy2 = std::min(p[3], g[3]);
  const double iw = ix2 - ix1, ih = iy2 - iy1;
  const bool overlap = iw > 0 && ih > 0;
  const double inter = overlap ? iw * ih : 0;
  const double pw = p[2] - p[0], ph = p[3] - p[1];
  const double uni = pw * ph + (g[2] - g[0]) * (g[3] - g[1]) - inter;
  const double cx1 = std::min(p[0], g[0]), cy1 = std::min(p[1], g[1]), cx2 = std::max(p[2], g[2]), cy2 = std::max(p[3], g[3]);
  const double cw = cx2 - cx1, ch = cy2 - cy1, enclosing = cw * ch;
  const double loss = 1 - (inter / (uni + kGiouEps) - (enclosing - uni) / (enclosing + kGiouEps));
  // loss = 1 - I/(U+e) + (C-U)/(C+e): its partial derivatives in I, U and C.
  const double by_inter = -1 / (uni + kGiouEps);
  const double by_union = inter / ((uni + kGiouEps) * (uni + kGiouEps)) - 1 / (enclosing + kGiouEps);
  const double by_enclosing = 1 / (enclosing + kGiouEps) - (enclosing - uni) / ((enclosing + kGiouEps) * (enclosing + kGiouEps));
  // d(corner) of the predicted area, the intersection and the enclosing box, corner by corner.
  const double d_area[4] = {-ph, -pw, ph, pw};
  const double d_inter[4] = {overlap ? -ih * max_slope(p[0], g[0]) : 0, overlap ? -iw * max_slope(p[1], g[1]) : 0,
                             overlap ? ih * min_slope(p[2], g[2]) : 0, overlap ? iw * min_slope(p[3], g[3]) : 0};
  const double d_enclosing[4] = {-ch * min_slope(p[0], g[0]), -cw * min_slope(p[1], g[1]), ch * max_slope(p[2], g[2]),
                                 cw * max_slope(p[3], g[3])};
  for (int k = 0; k < 4; ++k)
    gradient[k] = by_inter * d_inter[k] + by_union * (d_area[k] - d_inter[k]) + by_enclosing * d_enclosing[k];
  return loss;
}

Box cell_box(const float* outputs, const DetectionHead& head, std::size_t cell) {
  double d[4];
  cell_distances(outputs, head, cell, d);
  const double x = point_x(head, cell), y = point_y(head, cell);
  return {float(x - d[0]), float(y - d[1]), float(x + d[2]), float(y + d[3])};
}

std::vector<DetectedBox> decode_detections(const float* outputs, const DetectionHead& head, const DecodeOptions& options,
                                           std::int64_t image) {
  const std::size_t cells = head.cells(), classes = std::size_t(head.classes);
  const auto sigmoid = [](double x) { return 1 / (1 + std::exp(-x)); };
  std::vector<Box> boxes(cells);
  std::vector<float> scores(cells * classes);  // (cells, classes), as select_detections reads them
  const float W = float(head.image_w), H = float(head.image_h);
  for (std::size_t q = 0; q < cells; ++q) {
    const Box b = cell_box(outputs, head, q);
    boxes[q] = {std::clamp(b.x1, 0.f, W), std::clamp(b.y1, 0.f, H), std::clamp(b.x2, 0.f, W), std::clamp(b.y2, 0.f, H)};
    const double centre = head.centerness ? sigmoid(outputs[(classes + 4) * cells + q]) : 1.0;
    for (std::size_t k = 0; k < classes; ++k) {
      const double p = sigmoid(outputs[k * cells + q]);
      scores[q * classes + k] = float(head.centerness ? std::sqrt(p * centre) : p);
    }
  }
  // The best `candidates` above the threshold: the others fall below it (ties kept in flat order).
  std::vector<std::size_t> above;
  for (std::size_t i = 0; i < scores.size(); ++i)
    if (scores[i] > options.score_threshold) above.push_back(i);
  if (above.size() > std::size_t(options.candidates)) {
    std::stable_sort(above.begin(), above.end(), [&](std::size_t a, std::size_t b) { return scores[a] > scores[b]; });
    for (std::size_t r = std::size_t(options.candidates); r < above.size(); ++r)
      scores[above[r]] = -std::numeric_limits<float>::infinity();
  }
  std::vector<DetectedBox> detections;
  for (const SelectedBox& s :
       select_detections(boxes, scores, head.classes, options.score_threshold, options.nms_iou, options.max_detections))
    detections.push_back({image, boxes[std::size_t(s.box)], s.class_index, s.score});
  return detections;
}

}  // namespace mpicnn::core
