#pragma once
// What a converter's numeric labels mean, decided once for every input format (NPZ, CSV files of
// NIfTI and DICOM conversions): the task kind recorded in the dataset, the class count, and
// whether the splits get class labels (N) or targets (N,K). Ambiguous labels are an error that
// says how to choose (--task), never a guess. Internal to datasets/.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mpicnn::data {

// One split's labels as read: count x columns values, named `where` in messages ("<file>: ...").
struct LabelSource {
  std::string where;
  const std::vector<double>* values = nullptr;
  std::size_t columns = 1;
  bool one_row = false;  // the source is one sample: messages do not number samples
};

struct LabelPlan {
  std::string task;     // multi-class, binary, multi-label or regression
  int num_classes = 0;  // classes; K for multi-label; 0 for regression
  int target_size = 0;  // 0: class labels (N) int32; K: targets (N,K) float32
};

// `task` empty: one column means multi-class; several columns must be told (multi-label or
// regression). `names`: class names (multi-class, binary) or label names (multi-label); with
// them, a label beyond the names is an error. Throws ConfigError/ShapeError naming the source.
LabelPlan plan_labels(const std::vector<LabelSource>& sources, const std::string& task,
                      const std::vector<std::string>& names);

// The values of one source in the plan's form (labels when target_size is 0, else targets).
std::vector<std::int32_t> class_labels(const std::vector<double>& values);
std::vector<float> target_values(const std::vector<double>& values);

}  // namespace mpicnn::data
