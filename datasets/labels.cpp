#include "datasets/labels.hpp"

#include <algorithm>
#include <cmath>

#include "core/errors.hpp"
#include "datasets/writer.hpp"

namespace mpicnn::data {
namespace {

std::string sample(const LabelSource& source, std::size_t i) {
  return source.one_row ? std::string() : " at sample " + std::to_string(i);
}

std::string number(double v) {
  if (v == std::floor(v) && std::abs(v) < 1e15) return std::to_string(std::int64_t(v));
  return std::to_string(v);
}

// Class labels: integers >= 0, below `limit` when the classes are declared (names, or binary).
double largest_class(const LabelSource& source, int limit, const std::string& declared) {
  double largest = -1;
  const std::vector<double>& values = *source.values;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    if (!(v == std::floor(v) && v >= 0 && v <= 1e9))
      throw ConfigError(source.where + ": label " + number(v) + sample(source, i) +
                        " is not a class index, expected an integer >= 0");
    if (limit > 0 && v >= limit)
      throw ConfigError(source.where + ": label " + number(v) + sample(source, i) +
                        " is outside the declared classes 0.." + std::to_string(limit - 1) + " (" + declared + ")");
    largest = std::max(largest, v);
  }
  return largest;
}

void check_zero_one(const LabelSource& source) {
  const std::vector<double>& values = *source.values;
  for (std::size_t i = 0; i < values.size(); ++i)
    if (values[i] != 0 && values[i] != 1)
      throw ConfigError(source.where + ": value " + number(values[i]) + " at sample " + std::to_string(i / source.columns) +
                        ", label " + std::to_string(i % source.columns) + ", expected 0 or 1 (--task multi-label)");
}

}  // namespace

LabelPlan plan_labels(const std::vector<LabelSource>& sources, const std::string& task,
                      const std::vector<std::string>& names) {
  const LabelSource& first = sources.at(0);
  const std::size_t k = first.columns;
  for (const LabelSource& s : sources)
    if (s.columns != k)
      throw ShapeError(s.where + ": " + std::to_string(s.columns) + " label columns, expected " + std::to_string(k) +
                       " as in " + first.where);
  LabelPlan plan;
  plan.task = task;
  if (task.empty()) {
    if (k > 1)
      throw ConfigError(first.where + ": labels have " + std::to_string(k) + " columns: " + std::to_string(k) +
                        " labels per sample (--task multi-label) or " + std::to_string(k) +
                        " regression targets (--task regression); say which with --task");
    plan.task = "multi-class";
  }
  const auto& kinds = task_kinds();
  if (std::find(kinds.begin(), kinds.end(), plan.task) == kinds.end())
    throw ConfigError("--task '" + plan.task + "' is unknown (known: multi-class, binary, multi-label, regression)");
  if (plan.task == "multi-class" || plan.task == "binary") {
    if (k > 1)
      throw ConfigError(first.where + ": labels have " + std::to_string(k) + " columns, but --task " + plan.task +
                        " expects one class index per sample");
    const bool binary = plan.task == "binary";
    if (binary && !names.empty() && names.size() != 2)
      throw ConfigError("--names gives " + std::to_string(names.size()) + " names, expected 2 for --task binary");
    const int limit = binary ? 2 : int(names.size());
    const std::string declared = binary ? "--task binary" : std::to_string(names.size()) + " names given by --names";
    double largest = -1;
    for (const LabelSource& s : sources) largest = std::max(largest, largest_class(s, limit, declared));
    plan.num_classes = limit > 0 ? limit : int(largest) + 1;
    return plan;
  }
  if (plan.task == "multi-label") {
    for (const LabelSource& s : sources) check_zero_one(s);
    if (!names.empty() && names.size() != k)
      throw ConfigError("--names gives " + std::to_string(names.size()) + " names, expected " + std::to_string(k) +
                        " (one per label column)");
    plan.num_classes = plan.target_size = int(k);
    return plan;
  }
  if (!names.empty()) throw ConfigError("--names is for classes or labels, not for --task regression");
  for (const LabelSource& s : sources)
    for (std::size_t i = 0; i < s.values->size(); ++i)
      if (!std::isfinite((*s.values)[i]))
        throw ConfigError(s.where + ": target" + sample(s, i / k) + " is not finite");
  plan.target_size = int(k);
  return plan;
}

std::vector<std::int32_t> class_labels(const std::vector<double>& values) {
  return std::vector<std::int32_t>(values.begin(), values.end());
}

std::vector<float> target_values(const std::vector<double>& values) { return std::vector<float>(values.begin(), values.end()); }

}  // namespace mpicnn::data
