#include "io/loss_io.hpp"

#include <charconv>
#include <cmath>

#include "core/errors.hpp"
#include "datasets/h5.hpp"

namespace h5 = mpicnn::data::h5;

namespace mpicnn::io {
namespace {

// Shortest text that reads back as the value.
std::string number_text(double value) {
  char text[32];
  return std::string(text, std::to_chars(text, text + sizeof text, value).ptr);
}

std::vector<double> widened(const std::vector<float>& values) { return {values.begin(), values.end()}; }

std::vector<float> narrowed(const std::vector<double>& values) {
  std::vector<float> out;
  for (double v : values) out.push_back(float(v));
  return out;
}

// Each option that is set, as (attribute name without "loss_", its text), in TaskOptions' order.
std::vector<std::pair<std::string, std::string>> set_options(const core::TaskOptions& o) {
  std::vector<std::pair<std::string, std::string>> set;
  const auto list = [](const std::vector<float>& values) {
    std::string text;
    for (float v : values) {
      if (!text.empty()) text += ',';  // appended, not "" + string: GCC 12 warns falsely (bug 105651)
      text += number_text(v);
    }
    return text;
  };
  if (!o.class_weights.empty()) set.emplace_back("class_weights", list(o.class_weights));
  if (!o.pos_weight.empty()) set.emplace_back("pos_weight", list(o.pos_weight));
  if (o.focal_gamma > 0) set.emplace_back("focal_gamma", number_text(o.focal_gamma));
  if (o.focal_alpha >= 0) set.emplace_back("focal_alpha", number_text(o.focal_alpha));
  if (o.label_smoothing > 0) set.emplace_back("label_smoothing", number_text(o.label_smoothing));
  if (o.scale >= 0) set.emplace_back("scale", number_text(o.scale));
  if (o.margin >= 0) set.emplace_back("margin", number_text(o.margin));
  if (!o.mining.empty()) set.emplace_back("mining", o.mining);
  return set;
}

}  // namespace

void write_loss_options(hid_t group, const core::TaskOptions& o) {
  if (!o.class_weights.empty()) h5::write_attribute(group, "loss_class_weights", std::span<const double>(widened(o.class_weights)));
  if (!o.pos_weight.empty()) h5::write_attribute(group, "loss_pos_weight", std::span<const double>(widened(o.pos_weight)));
  if (o.focal_gamma > 0) h5::write_attribute(group, "loss_focal_gamma", o.focal_gamma);
  if (o.focal_alpha >= 0) h5::write_attribute(group, "loss_focal_alpha", o.focal_alpha);
  if (o.label_smoothing > 0) h5::write_attribute(group, "loss_label_smoothing", o.label_smoothing);
  if (o.scale >= 0) h5::write_attribute(group, "loss_scale", o.scale);
  if (o.margin >= 0) h5::write_attribute(group, "loss_margin", o.margin);
  if (!o.mining.empty()) h5::write_attribute(group, "loss_mining", o.mining);
}

core::TaskOptions read_loss_options(hid_t group, const std::string& path) {
  core::TaskOptions o;
  // Written only when set, so never negative: a negative or non-finite value would read as "the
  // default" to make_task.
  const auto real = [&](const char* name, double& value) {
    if (!h5::has_attribute(group, name)) return;
    value = h5::read_attribute<double>(group, name);
    if (!std::isfinite(value) || value < 0)
      throw IoError(path + ": /model attribute '" + name + "' is " + number_text(value) + ", expected a finite number >= 0");
  };
  const auto weights = [&](const char* name, std::vector<float>& values) {
    if (!h5::has_attribute(group, name)) return;
    const std::vector<double> read = h5::read_array_attribute<double>(group, name);
    for (double w : read)
      if (!std::isfinite(w) || w < 0)
        throw IoError(path + ": /model attribute '" + name + "' holds " + number_text(w) + ", expected finite weights >= 0");
    values = narrowed(read);
  };
  weights("loss_class_weights", o.class_weights);
  weights("loss_pos_weight", o.pos_weight);
  real("loss_focal_gamma", o.focal_gamma);
  real("loss_focal_alpha", o.focal_alpha);
  real("loss_label_smoothing", o.label_smoothing);
  real("loss_scale", o.scale);
  real("loss_margin", o.margin);
  if (h5::has_attribute(group, "loss_mining")) o.mining = h5::read_string_attribute(group, "loss_mining");
  return o;
}

std::unique_ptr<core::Task> task_of(const ModelMeta& model, const std::string& path) {
  try {
    return core::make_task(model.loss, model.loss_options);
  } catch (const ConfigError& e) {
    throw IoError(path + ": /model attributes 'loss' = '" + model.loss + "' and its loss_* options make no task: " + e.what());
  }
}

std::string loss_description(const ModelMeta& model) {
  std::string options;
  // The options the task uses: a file written before they were stored shows its kind's defaults.
  for (const auto& [name, text] : set_options(core::make_task(model.loss, model.loss_options)->options())) {
    if (!options.empty()) options += ", ";
    options += name + " " + text;
  }
  return options.empty() ? model.loss : model.loss + " (" + options + ")";
}

}  // namespace mpicnn::io
