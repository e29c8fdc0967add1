// COCO (COCOeval, bbox, default parameters) and VOC AP@.5 metrics: against an independent Python
// implementation of those rules (tests/core/coco/make_detection_eval_fixtures.py, written at test
// time) on random splits with crowd ground truth, tied scores and an image of 130 detections; and
// hand-made cases whose AP is known.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/detection_eval.hpp"
#include "core/errors.hpp"
#include "fixture_text.hpp"

namespace {

using mpicnn::core::Box;
using mpicnn::core::DetectedBox;
using mpicnn::core::DetectionSummary;
using mpicnn::core::GroundTruthBox;
using mpicnn::core::values_after;

const char* const kNames[] = {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1",
                              "AR10", "AR100", "AR_small", "AR_medium", "AR_large", "VOC_AP50"};

std::vector<double> figures(const DetectionSummary& s) {
  return {s.ap, s.ap50, s.ap75, s.ap_small, s.ap_medium, s.ap_large, s.ar1,
          s.ar10, s.ar100, s.ar_small, s.ar_medium, s.ar_large, s.voc_ap50};
}

struct Case {
  std::string name;
  int classes = 0;
  std::vector<GroundTruthBox> truth;
  std::vector<DetectedBox> detections;
  std::vector<std::vector<double>> per_class;
  std::vector<double> mean;
};

Box box_at(const std::vector<double>& v, std::size_t at) {
  return {float(v[at]), float(v[at + 1]), float(v[at + 2]), float(v[at + 3])};
}

std::vector<Case> read_cases() {
  std::ifstream in(MPICNN_TEXT_FIXTURE);
  EXPECT_TRUE(in) << MPICNN_TEXT_FIXTURE << " is missing: it is written by coco_reference.detection_eval_fixtures";
  std::vector<Case> cases;
  for (std::string text; std::getline(in, text);) {
    std::istringstream header(text);
    Case c;
    std::string word;
    std::size_t truth_count = 0, detection_count = 0;
    header >> word >> c.name >> c.classes >> truth_count >> detection_count;
    const std::vector<double> truth = values_after<double>(in, "truth"), dets = values_after<double>(in, "dets");
    for (std::size_t g = 0; g < truth_count; ++g)
      c.truth.push_back({std::int64_t(truth[7 * g]), box_at(truth, 7 * g + 1), std::int32_t(truth[7 * g + 5]), truth[7 * g + 6] != 0});
    for (std::size_t d = 0; d < detection_count; ++d)
      c.detections.push_back({std::int64_t(dets[7 * d]), box_at(dets, 7 * d + 1), std::int32_t(dets[7 * d + 5]), float(dets[7 * d + 6])});
    for (int k = 0; k < c.classes; ++k) c.per_class.push_back(values_after<double>(in, "class"));
    c.mean = values_after<double>(in, "mean");
    cases.push_back(c);
  }
  return cases;
}

// Same figure, or both undefined; returns the difference (0 when both are NaN).
double compare(double ours, double reference, const std::string& what) {
  if (std::isnan(reference)) {
    EXPECT_TRUE(std::isnan(ours)) << what << ": undefined in the reference, we gave " << ours;
    return 0;
  }
  EXPECT_NEAR(ours, reference, 1e-12) << what;
  return std::abs(ours - reference);
}

TEST(DetectionEval, MatchesReferenceImplementation) {
  const std::vector<Case> cases = read_cases();
  ASSERT_EQ(cases.size(), 40u);
  double worst = 0;
  int compared = 0, undefined = 0;
  for (const Case& c : cases) {
    const auto metrics = mpicnn::core::evaluate_detections(c.truth, c.detections, c.classes);
    ASSERT_EQ(int(metrics.per_class.size()), c.classes);
    for (int k = 0; k <= c.classes; ++k) {
      const std::vector<double> ours = figures(k < c.classes ? metrics.per_class[k] : metrics.mean);
      const std::vector<double>& reference = k < c.classes ? c.per_class[k] : c.mean;
      ASSERT_EQ(reference.size(), ours.size());
      for (std::size_t f = 0; f < ours.size(); ++f) {
        const std::string what = c.name + (k < c.classes ? " class " + std::to_string(k) : " mean") + " " + kNames[f];
        worst = std::max(worst, compare(ours[f], reference[f], what));
        ++compared, undefined += std::isnan(reference[f]);
      }
    }
  }
  std::printf("[ figure ] %zu random splits: %d figures (%d undefined in both), max |ours - reference| %.3g\n",
              cases.size(), compared, undefined, worst);
}

// Hand-made cases. Boxes of 40x40 (medium) unless said.
const Box kSquare{10, 10, 50, 50};

DetectionSummary one_class(const std::vector<GroundTruthBox>& truth, const std::vector<DetectedBox>& dets) {
  return mpicnn::core::evaluate_detections(truth, dets, 1).per_class[0];
}

TEST(DetectionEval, PerfectDetectionIsOne) {
  const DetectionSummary s = one_class({{1, kSquare, 0, false}}, {{1, kSquare, 0, 0.7f}});
  for (double figure : {s.ap, s.ap50, s.ap75, s.ap_medium, s.ar1, s.ar10, s.ar100, s.ar_medium, s.voc_ap50})
    EXPECT_NEAR(figure, 1.0, 1e-12);  // COCO's precision tp / (tp + fp + eps) is 1 - 2e-16
  EXPECT_TRUE(std::isnan(s.ap_small) && std::isnan(s.ap_large) && std::isnan(s.ar_small));  // no such ground truth
}

TEST(DetectionEval, FalsePositiveRankedFirstHalvesPrecision) {
  // Precision 0.5 at every recall point once made monotone (COCO), and VOC's envelope likewise.
  const DetectionSummary s = one_class({{1, kSquare, 0, false}}, {{1, {60, 60, 90, 90}, 0, 0.9f}, {1, kSquare, 0, 0.8f}});
  EXPECT_NEAR(s.ap, 0.5, 1e-12);
  EXPECT_NEAR(s.voc_ap50, 0.5, 1e-12);
  EXPECT_EQ(s.ar1, 0.0);  // the one best detection of the image is the false one
  EXPECT_NEAR(s.ar10, 1.0, 1e-12);
  const DetectionSummary later = one_class({{1, kSquare, 0, false}}, {{1, {60, 60, 90, 90}, 0, 0.1f}, {1, kSquare, 0, 0.8f}});
  EXPECT_NEAR(later.ap, 1.0, 1e-12);
  EXPECT_NEAR(later.voc_ap50, 1.0, 1e-12);
}

TEST(DetectionEval, HalfTheObjectsFound) {
  // Recall 0.5: precision 1 at the 51 recall points 0, .01, ..., .50, then 0.
  const DetectionSummary s = one_class({{1, kSquare, 0, false}, {1, {60, 60, 100, 100}, 0, false}}, {{1, kSquare, 0, 0.5f}});
  EXPECT_NEAR(s.ap, 51.0 / 101, 1e-12);
  EXPECT_NEAR(s.voc_ap50, 0.5, 1e-12);
  EXPECT_NEAR(s.ar100, 0.5, 1e-12);
}

TEST(DetectionEval, LooseBoxCountsAtLowThresholdsOnly) {
  // IoU 0.62 (a 40x40 box against 40x24.8): matched at .50, .55, .60 of the ten thresholds.
  const DetectionSummary s = one_class({{1, kSquare, 0, false}}, {{1, {10, 10, 50, 34.8f}, 0, 0.9f}});
  EXPECT_NEAR(s.ap, 0.3, 1e-12);
  EXPECT_NEAR(s.ap50, 1.0, 1e-12);
  EXPECT_EQ(s.ap75, 0.0);
  EXPECT_NEAR(s.ar100, 0.3, 1e-12);
}

TEST(DetectionEval, DuplicateIsAFalsePositive) {
  const DetectionSummary s = one_class({{1, kSquare, 0, false}}, {{1, kSquare, 0, 0.9f}, {1, kSquare, 0, 0.8f}});
  EXPECT_NEAR(s.ap, 1.0, 1e-12);  // the duplicate comes after full recall
  const DetectionSummary first = one_class({{1, kSquare, 0, false}, {1, {60, 60, 100, 100}, 0, false}},
                                           {{1, kSquare, 0, 0.9f}, {1, kSquare, 0, 0.8f}, {1, {60, 60, 100, 100}, 0, 0.7f}});
  // Precision 1 up to recall .5, then 2/3 at recall 1: (51 * 1 + 50 * 2/3) / 101.
  EXPECT_NEAR(first.ap, (51 + 50 * 2.0 / 3) / 101, 1e-9);
  // VOC: 0.5 * 1 + 0.5 * 2/3.
  EXPECT_NEAR(first.voc_ap50, 0.5 + 0.5 * 2.0 / 3, 1e-12);
}

TEST(DetectionEval, CrowdIsNeitherHitNorMiss) {
  // A detection inside a crowd region (even ranked first, even several) changes nothing.
  const Box crowd{100, 100, 200, 200};
  const DetectionSummary s = one_class({{1, kSquare, 0, false}, {1, crowd, 0, true}},
                                       {{1, {110, 110, 150, 150}, 0, 0.95f}, {1, {150, 150, 190, 190}, 0, 0.9f}, {1, kSquare, 0, 0.8f}});
  EXPECT_NEAR(s.ap, 1.0, 1e-12);
  EXPECT_NEAR(s.ar100, 1.0, 1e-12);
  // VOC has no intersection-over-detection rule: IoU with the crowd box is 0.16, so the two are false
  // positives ranked before the one hit (precision 1/3); overlapping it by IoU > 0.5 they would be neither.
  EXPECT_NEAR(s.voc_ap50, 1.0 / 3, 1e-12);
  const DetectionSummary on_crowd = one_class({{1, kSquare, 0, false}, {1, crowd, 0, true}},
                                              {{1, crowd, 0, 0.95f}, {1, {105, 100, 200, 200}, 0, 0.9f}, {1, kSquare, 0, 0.8f}});
  EXPECT_NEAR(on_crowd.voc_ap50, 1.0, 1e-12);
  EXPECT_NEAR(on_crowd.ap, 1.0, 1e-12);
  // Only crowd ground truth: nothing to find, every figure undefined.
  const DetectionSummary only = one_class({{1, crowd, 0, true}}, {{1, crowd, 0, 0.9f}});
  EXPECT_TRUE(std::isnan(only.ap) && std::isnan(only.ar100) && std::isnan(only.voc_ap50));
}

TEST(DetectionEval, AreaRangesAndMaxDetections) {
  const Box small{0, 0, 20, 20}, large{0, 0, 120, 120};
  const DetectionSummary s = one_class({{1, small, 0, false}, {2, large, 0, false}}, {{1, small, 0, 0.9f}});
  EXPECT_NEAR(s.ap_small, 1.0, 1e-12);
  EXPECT_EQ(s.ap_large, 0.0);
  EXPECT_TRUE(std::isnan(s.ap_medium));
  // Two objects in one image: one detection allowed finds one of them.
  const DetectionSummary two = one_class({{1, small, 0, false}, {1, large, 0, false}}, {{1, small, 0, 0.9f}, {1, large, 0, 0.8f}});
  EXPECT_NEAR(two.ar1, 0.5, 1e-12);
  EXPECT_NEAR(two.ar10, 1.0, 1e-12);
}

TEST(DetectionEval, MeanSkipsClassesWithoutGroundTruth) {
  const auto metrics = mpicnn::core::evaluate_detections(std::vector<GroundTruthBox>{{1, kSquare, 0, false}},
                                                         std::vector<DetectedBox>{{1, kSquare, 0, 0.9f}, {1, kSquare, 1, 0.9f}}, 3);
  EXPECT_TRUE(std::isnan(metrics.per_class[1].ap) && std::isnan(metrics.per_class[2].ap));
  EXPECT_NEAR(metrics.mean.ap, 1.0, 1e-12);
  EXPECT_NEAR(metrics.mean.voc_ap50, 1.0, 1e-12);
}

TEST(DetectionEval, ClassOutOfRangeIsAnError) {
  EXPECT_THROW(mpicnn::core::evaluate_detections(std::vector<GroundTruthBox>{{1, kSquare, 3, false}}, {}, 3), mpicnn::ShapeError);
}

TEST(DetectionEval, ThresholdsAreNumpysLinspace) {
  const std::vector<double> t = mpicnn::core::coco_iou_thresholds();
  EXPECT_EQ(t[0], 0.5);
  EXPECT_EQ(t[5], 0.75);  // summarize() finds .75 by equality
  EXPECT_EQ(t[9], 0.95);
  EXPECT_EQ(mpicnn::core::coco_recall_points()[100], 1.0);
}

}  // namespace
