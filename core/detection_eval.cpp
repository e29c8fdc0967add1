#include "core/detection_eval.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <string>

#include "core/errors.hpp"

namespace mpicnn::core {

std::vector<double> coco_iou_thresholds() {
  // numpy's linspace: i * ((stop - start) / (num - 1)) + start, the last one set to stop.
  std::vector<double> thresholds(10);
  const double step = (0.95 - 0.5) / 9;
  for (int i = 0; i < 10; ++i) thresholds[i] = i * step + 0.5;
  thresholds[9] = 0.95;
  return thresholds;
}

std::vector<double> coco_recall_points() {
  std::vector<double> points(101);
  const double step = 1.0 / 100;
  for (int i = 0; i < 101; ++i) points[i] = i * step + 0.0;
  points[100] = 1.0;
  return points;
}

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kMaxDetections[3] = {1, 10, 100};
struct AreaRange {
  double low, high;
};
// all, small, medium, large, as COCOeval's areaRng (1e5^2 standing for no upper bound).
constexpr AreaRange kAreaRanges[4] = {{0, 1e10}, {0, 32 * 32}, {32 * 32, 96 * 96}, {96 * 96, 1e10}};

double area_of(const Box& b) { return (double(b.x2) - b.x1) * (double(b.y2) - b.y1); }
bool outside(double area, const AreaRange& range) { return area < range.low || area > range.high; }

// Intersection over union in double precision; for crowd ground truth over the detection's area
// (COCO's rule: a detection inside a crowd region overlaps it fully).
double overlap(const Box& det, const Box& truth, bool crowd) {
  const double w = std::min<double>(det.x2, truth.x2) - std::max<double>(det.x1, truth.x1);
  if (w <= 0) return 0;
  const double h = std::min<double>(det.y2, truth.y2) - std::max<double>(det.y1, truth.y1);
  if (h <= 0) return 0;
  const double inter = w * h;
  return inter / (crowd ? area_of(det) : area_of(det) + area_of(truth) - inter);
}

// Indices of `items` sorted by descending score, equal scores in input order (COCO's mergesort).
template <class Score>
std::vector<int> by_descending_score(int count, Score score) {
  std::vector<int> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score(a) > score(b); });
  return order;
}

// One image and class: its ground truth and its best 100 detections (by score), as indices.
struct ImageClass {
  std::vector<int> truth, detections;
};

// What matching one image and class in one area range gave, per detection (score order) and IoU
// threshold; `eligible_truth` counts the ground truth that is neither crowd nor outside the range.
struct ImageMatches {
  std::vector<float> scores;
  std::vector<char> matched, ignored;  // (T, D) row-major
  int eligible_truth = 0;
};

ImageMatches match_image(const ImageClass& cell, std::span<const GroundTruthBox> truth,
                         std::span<const DetectedBox> detections, const AreaRange& range,
                         const std::vector<double>& thresholds) {
  const int T = int(thresholds.size()), D = int(cell.detections.size());
  std::vector<char> truth_ignored(cell.truth.size());
  for (std::size_t g = 0; g < cell.truth.size(); ++g) {
    const GroundTruthBox& t = truth[cell.truth[g]];
    truth_ignored[g] = t.crowd || outside(area_of(t.box), range);
  }
  // Ground truth to be ignored goes last (stable), so a detection prefers eligible ground truth.
  std::vector<int> gt_order(cell.truth.size());
  std::iota(gt_order.begin(), gt_order.end(), 0);
  std::stable_sort(gt_order.begin(), gt_order.end(), [&](int a, int b) { return truth_ignored[a] < truth_ignored[b]; });
  const int G = int(gt_order.size());
  std::vector<double> iou(std::size_t(D) * G);
  for (int d = 0; d < D; ++d)
    for (int g = 0; g < G; ++g) {
      const GroundTruthBox& t = truth[cell.truth[gt_order[g]]];
      iou[std::size_t(d) * G + g] = overlap(detections[cell.detections[d]].box, t.box, t.crowd);
    }
  ImageMatches out;
  out.matched.assign(std::size_t(T) * D, 0), out.ignored.assign(std::size_t(T) * D, 0);
  for (int d = 0; d < D; ++d) out.scores.push_back(detections[cell.detections[d]].score);
  for (int g = 0; g < G; ++g) out.eligible_truth += !truth_ignored[gt_order[g]];
  for (int t = 0; t < T; ++t) {
    std::vector<char> truth_taken(G, 0);
    for (int d = 0; d < D; ++d) {
      double best = std::min(thresholds[t], 1 - 1e-10);
      int match = -1;
      for (int g = 0; g < G; ++g) {
        const bool ignored = truth_ignored[gt_order[g]];
        const bool crowd = truth[cell.truth[gt_order[g]]].crowd;
        if (truth_taken[g] && !crowd) continue;
        // Ground truth is ordered eligible first: once matched to eligible, ignored cannot do better.
        if (match > -1 && !truth_ignored[gt_order[match]] && ignored) break;
        if (iou[std::size_t(d) * G + g] < best) continue;
        best = iou[std::size_t(d) * G + g], match = g;
      }
      const std::size_t at = std::size_t(t) * D + d;
      if (match >= 0) {
        out.matched[at] = 1, out.ignored[at] = truth_ignored[gt_order[match]];
        truth_taken[match] = 1;
      } else {
        out.ignored[at] = outside(area_of(detections[cell.detections[d]].box), range);
      }
    }
  }
  return out;
}

// Precision at the 101 recall points (T, R) and the final recall (T) of one class, area range and
// detection limit; empty when there is no eligible ground truth (COCO's -1).
struct Curve {
  std::vector<double> precision, recall;
};

Curve accumulate(const std::vector<ImageMatches>& images, int max_detections, int T,
                 const std::vector<double>& recall_points) {
  std::vector<float> scores;
  std::vector<std::pair<int, int>> where;  // (image, detection)
  int eligible = 0;
  for (int i = 0; i < int(images.size()); ++i) {
    eligible += images[i].eligible_truth;
    const int count = std::min<int>(max_detections, int(images[i].scores.size()));
    for (int d = 0; d < count; ++d) scores.push_back(images[i].scores[d]), where.push_back({i, d});
  }
  if (eligible == 0) return {};
  const std::vector<int> order = by_descending_score(int(scores.size()), [&](int k) { return scores[k]; });
  const int R = int(recall_points.size()), N = int(order.size());
  Curve curve{std::vector<double>(std::size_t(T) * R, 0.0), std::vector<double>(T, 0.0)};
  for (int t = 0; t < T; ++t) {
    std::vector<double> recall(N), precision(N);
    double tp = 0, fp = 0;
    for (int k = 0; k < N; ++k) {
      const auto [i, d] = where[order[k]];
      const std::size_t at = std::size_t(t) * images[i].scores.size() + d;
      if (!images[i].ignored[at]) (images[i].matched[at] ? tp : fp) += 1;
      recall[k] = tp / eligible;
      precision[k] = tp / (fp + tp + DBL_EPSILON);
    }
    curve.recall[t] = N ? recall[N - 1] : 0;
    for (int k = N - 1; k > 0; --k) precision[k - 1] = std::max(precision[k - 1], precision[k]);
    for (int r = 0; r < R; ++r) {
      const int k = int(std::lower_bound(recall.begin(), recall.end(), recall_points[r]) - recall.begin());
      if (k >= N) break;  // recall never reached: precision 0 from here on
      curve.precision[std::size_t(t) * R + r] = precision[k];
    }
  }
  return curve;
}

double mean_of(const std::vector<double>& values, std::size_t begin, std::size_t end) {
  if (values.empty()) return kNaN;
  double sum = 0;
  for (std::size_t i = begin; i < end; ++i) sum += values[i];
  return sum / double(end - begin);
}

// VOC's AP@.5 of one class over the split (see the header).
double voc_ap50(const std::vector<ImageClass>& cells, std::span<const GroundTruthBox> truth,
                std::span<const DetectedBox> detections, const std::vector<std::vector<int>>& all_detections_of_cell) {
  int positives = 0;
  std::vector<std::pair<int, int>> where;  // (cell, detection index)
  for (int c = 0; c < int(cells.size()); ++c) {
    for (int g : cells[c].truth) positives += !truth[g].crowd;
    for (int d : all_detections_of_cell[c]) where.push_back({c, d});
  }
  if (positives == 0) return kNaN;
  const std::vector<int> order = by_descending_score(int(where.size()), [&](int k) { return detections[where[k].second].score; });
  std::vector<std::vector<char>> taken(cells.size());
  for (std::size_t c = 0; c < cells.size(); ++c) taken[c].assign(cells[c].truth.size(), 0);
  std::vector<double> recall, precision;
  double tp = 0, fp = 0;
  for (int k : order) {
    const auto [c, d] = where[k];
    double best = -1;
    int match = -1;
    for (int g = 0; g < int(cells[c].truth.size()); ++g) {
      const double iou = overlap(detections[d].box, truth[cells[c].truth[g]].box, false);
      if (iou > best) best = iou, match = g;
    }
    if (best > 0.5) {
      if (truth[cells[c].truth[match]].crowd) continue;
      if (taken[c][match]) fp += 1;
      else tp += 1, taken[c][match] = 1;
    } else {
      fp += 1;
    }
    recall.push_back(tp / positives);
    precision.push_back(tp / std::max(tp + fp, DBL_EPSILON));
  }
  // Area under the monotone envelope, recall running from 0 to 1.
  recall.insert(recall.begin(), 0.0), recall.push_back(1.0);
  precision.insert(precision.begin(), 0.0), precision.push_back(0.0);
  for (std::size_t i = precision.size() - 1; i > 0; --i) precision[i - 1] = std::max(precision[i - 1], precision[i]);
  double ap = 0;
  for (std::size_t i = 0; i + 1 < recall.size(); ++i)
    if (recall[i + 1] != recall[i]) ap += (recall[i + 1] - recall[i]) * precision[i + 1];
  return ap;
}

DetectionSummary summarize_class(const std::vector<ImageClass>& cells, std::span<const GroundTruthBox> truth,
                                 std::span<const DetectedBox> detections,
                                 const std::vector<std::vector<int>>& all_detections_of_cell) {
  const std::vector<double> thresholds = coco_iou_thresholds(), recall_points = coco_recall_points();
  const int T = int(thresholds.size());
  const std::size_t R = recall_points.size();
  Curve curves[4][3];
  for (int a = 0; a < 4; ++a) {
    std::vector<ImageMatches> images;
    for (const ImageClass& cell : cells) images.push_back(match_image(cell, truth, detections, kAreaRanges[a], thresholds));
    for (int m = 0; m < 3; ++m) curves[a][m] = accumulate(images, kMaxDetections[m], T, recall_points);
  }
  const auto ap = [&](int a) { return mean_of(curves[a][2].precision, 0, T * R); };
  const auto ar = [&](int a, int m) { return mean_of(curves[a][m].recall, 0, T); };
  DetectionSummary s;
  s.ap = ap(0), s.ap_small = ap(1), s.ap_medium = ap(2), s.ap_large = ap(3);
  s.ap50 = mean_of(curves[0][2].precision, 0, R);
  s.ap75 = mean_of(curves[0][2].precision, 5 * R, 6 * R);
  s.ar1 = ar(0, 0), s.ar10 = ar(0, 1), s.ar100 = ar(0, 2);
  s.ar_small = ar(1, 2), s.ar_medium = ar(2, 2), s.ar_large = ar(3, 2);
  s.voc_ap50 = voc_ap50(cells, truth, detections, all_detections_of_cell);
  return s;
}

constexpr double DetectionSummary::*kFigures[] = {
    &DetectionSummary::ap,    &DetectionSummary::ap50,     &DetectionSummary::ap75,      &DetectionSummary::ap_small,
    &DetectionSummary::ap_medium, &DetectionSummary::ap_large, &DetectionSummary::ar1,   &DetectionSummary::ar10,
    &DetectionSummary::ar100, &DetectionSummary::ar_small, &DetectionSummary::ar_medium, &DetectionSummary::ar_large,
    &DetectionSummary::voc_ap50};

DetectionSummary mean_over_classes(const std::vector<DetectionSummary>& per_class) {
  DetectionSummary mean;
  for (auto figure : kFigures) {
    double sum = 0;
    int defined = 0;
    for (const DetectionSummary& s : per_class)
      if (!std::isnan(s.*figure)) sum += s.*figure, ++defined;
    mean.*figure = defined ? sum / defined : kNaN;
  }
  return mean;
}

void check_class(std::int32_t class_index, int classes, const char* what, std::size_t at) {
  if (class_index < 0 || class_index >= classes)
    throw ShapeError(std::string("detection evaluation: ") + what + " " + std::to_string(at) + " has class " +
                     std::to_string(class_index) + " (expected 0.." + std::to_string(classes - 1) + ")");
}

}  // namespace

DetectionMetrics evaluate_detections(std::span<const GroundTruthBox> truth, std::span<const DetectedBox> detections,
                                     int classes) {
  // Per class, per image (increasing id): the cell of ground truth and detections.
  std::vector<std::map<std::int64_t, int>> cell_of(classes);
  std::vector<std::vector<ImageClass>> cells(classes);
  std::vector<std::vector<std::vector<int>>> all_detections(classes);
  const auto cell = [&](std::int32_t k, std::int64_t image) -> int {
    auto [it, added] = cell_of[k].try_emplace(image, int(cells[k].size()));
    if (added) cells[k].emplace_back(), all_detections[k].emplace_back();
    return it->second;
  };
  // Create cells in image order so that the per-class lists follow COCOeval's sorted image ids.
  for (std::size_t g = 0; g < truth.size(); ++g) check_class(truth[g].class_index, classes, "ground truth box", g);
  for (std::size_t d = 0; d < detections.size(); ++d) check_class(detections[d].class_index, classes, "detection", d);
  for (int k = 0; k < classes; ++k) {
    std::vector<std::int64_t> images;
    for (const GroundTruthBox& t : truth) if (t.class_index == k) images.push_back(t.image);
    for (const DetectedBox& d : detections) if (d.class_index == k) images.push_back(d.image);
    std::sort(images.begin(), images.end());
    for (std::int64_t image : images) cell(k, image);
  }
  for (std::size_t g = 0; g < truth.size(); ++g) cells[truth[g].class_index][cell(truth[g].class_index, truth[g].image)].truth.push_back(int(g));
  for (std::size_t d = 0; d < detections.size(); ++d)
    all_detections[detections[d].class_index][cell(detections[d].class_index, detections[d].image)].push_back(int(d));
  DetectionMetrics metrics;
  for (int k = 0; k < classes; ++k) {
    for (std::size_t c = 0; c < cells[k].size(); ++c) {
      const std::vector<int>& all = all_detections[k][c];
      const std::vector<int> order = by_descending_score(int(all.size()), [&](int i) { return detections[all[i]].score; });
      for (std::size_t i = 0; i < order.size() && i < 100; ++i) cells[k][c].detections.push_back(all[order[i]]);
    }
    metrics.per_class.push_back(summarize_class(cells[k], truth, detections, all_detections[k]));
  }
  metrics.mean = mean_over_classes(metrics.per_class);
  return metrics;
}

}  // namespace mpicnn::core
