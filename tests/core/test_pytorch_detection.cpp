// The one-level FCOS loss (core/detection_head.hpp) against torchvision.ops' sigmoid_focal_loss,
// generalized_box_iou_loss and binary_cross_entropy_with_logits combined as torchvision's FCOSHead
// (tests/core/pytorch/make_detection_loss_fixtures.py, written at test time, float64): the
// assigned cells, the mean loss and d(mean)/d(head outputs).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/detection_head.hpp"
#include "fixture_text.hpp"

namespace {

using namespace mpicnn::core;

struct Case {
  std::string name;
  int n = 0, classes = 0, grid_h = 0, grid_w = 0, stride = 0, centerness = 0;
  double gamma = 0, alpha = 0;
  std::vector<double> outputs, boxes, loss, grad;
  std::vector<long long> assigned;
};

std::vector<Case> read_cases() {
  std::ifstream in(MPICNN_DETECTION_FIXTURE);
  EXPECT_TRUE(in) << MPICNN_DETECTION_FIXTURE << " is missing: it is written by pytorch_reference.detection_loss_fixtures";
  std::vector<Case> cases;
  for (std::string text; std::getline(in, text);) {
    std::istringstream header(text);
    Case c;
    std::string word;
    header >> word >> c.name >> c.n >> c.classes >> c.grid_h >> c.grid_w >> c.stride >> c.centerness >> c.gamma >> c.alpha;
    c.outputs = values_after(in, "outputs"), c.boxes = values_after(in, "boxes");
    const std::vector<double> assigned = values_after(in, "assigned");
    c.assigned.assign(assigned.begin(), assigned.end());
    c.loss = values_after(in, "loss"), c.grad = values_after(in, "grad");
    cases.push_back(c);
  }
  return cases;
}

// Each image's boxes, owned, and the views the loss reads.
struct Rows {
  std::vector<std::vector<Box>> boxes;
  std::vector<std::vector<std::int32_t>> classes;
  std::vector<std::vector<std::uint8_t>> crowd;
  std::vector<ImageBoxes> views;
  explicit Rows(const Case& c) : boxes(c.n), classes(c.n), crowd(c.n) {
    for (std::size_t i = 0; i + 7 <= c.boxes.size(); i += 7) {
      const int image = int(c.boxes[i]);
      boxes[image].push_back({float(c.boxes[i + 1]), float(c.boxes[i + 2]), float(c.boxes[i + 3]), float(c.boxes[i + 4])});
      classes[image].push_back(std::int32_t(c.boxes[i + 5]));
      crowd[image].push_back(std::uint8_t(c.boxes[i + 6]));
    }
    for (int k = 0; k < c.n; ++k) views.push_back({boxes[k], classes[k], crowd[k]});
  }
};

TEST(Detection, LossMatchesTorchvision) {
  const std::vector<Case> cases = read_cases();
  ASSERT_EQ(cases.size(), 5u);
  for (const Case& c : cases) {
    const int channels = c.classes + 4 + c.centerness;
    const DetectionHead head = detection_head({1, c.grid_h * c.stride, c.grid_w * c.stride}, {channels, c.grid_h, c.grid_w}, c.classes);
    ASSERT_EQ(head.centerness, c.centerness == 1) << c.name;
    const Rows rows(c);
    std::vector<long long> assigned;
    for (const ImageBoxes& image : rows.views)
      for (int cell : assign_cells(head, image)) assigned.push_back(cell);
    EXPECT_EQ(assigned, c.assigned) << c.name;

    const std::vector<float> outputs(c.outputs.begin(), c.outputs.end());
    std::vector<float> grad(outputs.size(), 7.f);  // every entry must be written
    const LossSum ours = detection_loss(grad.data(), outputs.data(), rows.views, head, {c.gamma, c.alpha});
    EXPECT_EQ(ours.normalizer, double(count_positives(head, rows.views))) << c.name;
    const double normalizer = std::max(1.0, ours.normalizer), mean = ours.sum / normalizer;
    EXPECT_NEAR(mean, c.loss[0], 1e-6 * std::abs(c.loss[0])) << c.name;
    const auto [worst, largest] = worst_and_largest(grad, normalizer, c.grad);
    // float32 gradients: relative to the largest entry of the case, as the other PyTorch tests.
    EXPECT_LE(worst, 1e-6 * largest) << c.name;
    std::printf("[ figure ] %s: %g positives, |loss - torch| / loss %.2g, max |grad - torch| / max |grad| %.2g\n",
                c.name.c_str(), ours.normalizer, std::abs(mean - c.loss[0]) / c.loss[0], worst / largest);
  }
}

}  // namespace
