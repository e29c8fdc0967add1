#include "datasets/schema.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/errors.hpp"
#include "datasets/h5.hpp"
#include "datasets/writer.hpp"

namespace mpicnn::data {
namespace {

std::vector<std::string> group_names(hid_t file) {
  std::vector<std::string> names;
  auto visit = [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
    return 0;
  };
  h5::check(H5Literate(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, visit, &names), file, "list the groups of");
  std::vector<std::string> groups;
  for (const std::string& name : names) {
    h5::Handle object(H5Oopen(file, name.c_str(), H5P_DEFAULT));
    if (object.valid() && H5Iget_type(object.get()) == H5I_GROUP) groups.push_back(name);
  }
  return groups;
}

std::string joined(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& n : names) text += (text.empty() ? "" : ", ") + n;
  return text.empty() ? "none" : text;
}

// The root attribute 'task' against the split's labels: multi-class and binary (2 classes) have
// class labels, multi-label has targets with K = num_classes, regression targets with num_classes 0.
template <class Bad>
void check_task(DatasetInfo& info, const std::string& task, Bad bad) {
  const auto& kinds = task_kinds();
  if (std::find(kinds.begin(), kinds.end(), task) == kinds.end())
    bad("attribute 'task' is \"" + task + "\", expected one of " + joined(kinds));
  const bool labels = info.target_size == 0;
  const std::string kind = labels ? "class labels" : "targets of " + std::to_string(info.target_size);
  if ((task == "multi-class" || task == "binary") && !labels)
    bad("attribute 'task' is \"" + task + "\" but split '/" + info.split + "' has " + kind + ", expected labels (N)");
  if ((task == "multi-label" || task == "regression") && labels)
    bad("attribute 'task' is \"" + task + "\" but split '/" + info.split + "' has class labels, expected targets (N,K)");
  if (task == "binary" && info.num_classes != 2)
    bad("attribute 'task' is \"binary\" but 'num_classes' is " + std::to_string(info.num_classes) + ", expected 2");
  if (task == "multi-label" && info.num_classes != info.target_size)
    bad("attribute 'task' is \"multi-label\" but 'num_classes' is " + std::to_string(info.num_classes) +
        ", expected " + std::to_string(info.target_size) + " (the K of the targets)");
  if (task == "regression" && info.num_classes != 0)
    bad("attribute 'task' is \"regression\" but 'num_classes' is " + std::to_string(info.num_classes) + ", expected 0");
  info.task = task;
}

}  // namespace

DatasetInfo inspect(hid_t file, const std::string& path, const std::string& split) {
  auto bad = [&](const std::string& what) { throw IoError(path + ": " + what); };
  DatasetInfo info;
  info.path = path;
  info.split = split;
  if (!h5::has_attribute(file, "format"))
    bad(std::string("not an mpicnn dataset: missing attribute 'format' on '/', expected \"") + kFormatName + "\"");
  const std::string format = h5::read_string_attribute(file, "format");
  if (format != kFormatName) bad("attribute 'format' is \"" + format + "\", expected \"" + kFormatName + "\"");
  if (!h5::has_attribute(file, "format_version")) bad("missing attribute 'format_version' on '/', expected 1");
  const std::int64_t version = h5::read_attribute<std::int64_t>(file, "format_version");
  if (version != kFormatVersion)
    bad("unsupported format_version " + std::to_string(version) + ", expected " + std::to_string(kFormatVersion));
  for (const char* name : {"num_classes", "mean", "std"})
    if (!h5::has_attribute(file, name)) bad(std::string("missing attribute '") + name + "' on '/'");
  const std::int64_t classes = h5::read_attribute<std::int64_t>(file, "num_classes");
  if (classes < 0 || classes > std::numeric_limits<int>::max())
    bad("attribute 'num_classes' is " + std::to_string(classes) + ", expected a count >= 0");
  info.num_classes = int(classes);
  if (h5::has_attribute(file, "class_names")) {
    info.class_names = h5::read_string_array_attribute(file, "class_names");
    if (int(info.class_names.size()) != info.num_classes)
      bad("attribute 'class_names' has " + std::to_string(info.class_names.size()) + " names, expected " +
          std::to_string(info.num_classes) + " (num_classes)");
  }

  info.splits = group_names(file);
  if (std::find(info.splits.begin(), info.splits.end(), split) == info.splits.end())
    bad("no split '/" + split + "' (splits in the file: " + joined(info.splits) + ")");
  const std::string images_name = "/" + split + "/images";
  h5::Handle images = h5::open_dataset(file, images_name);
  const std::vector<hsize_t> dims = h5::dims(images.get());
  if (dims.size() != 4 && dims.size() != 5)
    throw ShapeError(path + ": dataset '" + images_name + "' has shape " + h5::dims_text(dims) + " (rank " +
                     std::to_string(dims.size()) + "), expected rank 4 (N,C,H,W) or 5 (N,C,D,H,W)");
  const std::string type = h5::type_text(images.get());
  if (type != "uint8" && type != "float32")
    bad("dataset '" + images_name + "' has dtype " + type + ", expected uint8 or float32");
  info.uint8 = type == "uint8";
  if (dims[0] == 0)
    bad("split '/" + split + "' is empty: dataset '" + images_name + "' has shape " + h5::dims_text(dims) +
        ", expected at least one sample");
  if (dims[0] >= std::numeric_limits<std::uint32_t>::max())
    bad("dataset '" + images_name + "' has " + std::to_string(dims[0]) + " samples, more than this reader supports");
  const bool volume = dims.size() == 5;
  for (std::size_t d = 1; d < dims.size(); ++d)
    if (dims[d] == 0 || dims[d] > (1u << 20))
      throw ShapeError(path + ": dataset '" + images_name + "' has shape " + h5::dims_text(dims) + ", expected " +
                       (volume ? "C,D,H,W" : "C,H,W") + " between 1 and 2^20");
  info.count = dims[0];
  info.shape = volume ? core::Shape{int(dims[1]), int(dims[3]), int(dims[4]), int(dims[2])}
                      : core::Shape{int(dims[1]), int(dims[2]), int(dims[3])};
  if (info.shape.size() > (std::size_t(1) << 31))
    throw ShapeError(path + ": dataset '" + images_name + "' has shape " + h5::dims_text(dims) +
                     ", expected at most 2^31 pixels per sample");
  {
    h5::Handle create(H5Dget_create_plist(images.get()));
    if (H5Pget_layout(create.get()) == H5D_CHUNKED) {
      hsize_t chunk[5] = {};
      if (H5Pget_chunk(create.get(), 5, chunk) == int(dims.size())) info.chunk_samples = int(chunk[0]);
    }
  }

  const std::string labels_name = "/" + split + "/labels", targets_name = "/" + split + "/targets";
  const bool has_labels = h5::exists(file, labels_name), has_targets = h5::exists(file, targets_name);
  if (!has_labels && !has_targets) bad("no dataset '" + labels_name + "' or '" + targets_name + "'");
  if (has_labels && has_targets) bad("both '" + labels_name + "' and '" + targets_name + "' exist, expected one");
  const std::string& name = has_labels ? labels_name : targets_name;
  h5::Handle labels = h5::open_dataset(file, name);
  const std::vector<hsize_t> label_dims = h5::dims(labels.get());
  const std::string label_type = h5::type_text(labels.get());
  if (has_labels) {
    if (label_dims.size() != 1)
      throw ShapeError(path + ": dataset '" + name + "' has shape " + h5::dims_text(label_dims) + ", expected (" +
                       std::to_string(info.count) + ")");
    if (!label_type.starts_with("int") && !label_type.starts_with("uint"))
      bad("dataset '" + name + "' has dtype " + label_type + ", expected int32 class indices");
    if (info.num_classes == 0) bad("dataset '" + name + "' holds class labels but attribute 'num_classes' is 0");
  } else {
    if (label_dims.size() != 2 || label_dims[1] == 0)
      throw ShapeError(path + ": dataset '" + name + "' has shape " + h5::dims_text(label_dims) + ", expected (" +
                       std::to_string(info.count) + ",K)");
    if (!label_type.starts_with("float")) bad("dataset '" + name + "' has dtype " + label_type + ", expected float32");
    info.target_size = int(label_dims[1]);
    if (info.num_classes != 0 && info.num_classes != info.target_size)
      bad("attribute 'num_classes' is " + std::to_string(info.num_classes) + ", expected 0 (regression) or " +
          std::to_string(info.target_size) + " (the K of '" + name + "')");
  }
  if (label_dims[0] != info.count)
    throw ShapeError(path + ": dataset '" + name + "' has " + std::to_string(label_dims[0]) + " entries, expected " +
                     std::to_string(info.count) + " (one per image of '" + images_name + "')");

  if (h5::has_attribute(file, "task")) check_task(info, h5::read_string_attribute(file, "task"), bad);

  info.mean = h5::read_array_attribute<double>(file, "mean");
  info.std = h5::read_array_attribute<double>(file, "std");
  for (const char* attribute : {"mean", "std"}) {
    const std::vector<double>& values = attribute[0] == 'm' ? info.mean : info.std;
    if (int(values.size()) != info.shape.c)
      bad(std::string("attribute '") + attribute + "' has " + std::to_string(values.size()) + " values, expected " +
          std::to_string(info.shape.c) + " (one per channel of '" + images_name + "')");
    for (double v : values)
      if (!std::isfinite(v) || (attribute[0] == 's' && v <= 0))
        bad(std::string("attribute '") + attribute + "' holds " + std::to_string(v) + ", expected a finite" +
            (attribute[0] == 's' ? " positive" : "") + " number");
  }
  return info;
}

void check_statistics(const std::vector<double>& values, const char* name, int channels) {
  if (int(values.size()) != channels)
    throw ConfigError(std::string("reader option '") + name + "' has " + std::to_string(values.size()) +
                      " values, expected " + std::to_string(channels) + " (one per image channel)");
  for (double v : values)
    if (!std::isfinite(v) || (name[0] == 's' && v <= 0))
      throw ConfigError(std::string("reader option '") + name + "' holds " + std::to_string(v) +
                        ", expected a finite" + (name[0] == 's' ? " positive" : "") + " number");
}

void check_input_shape(const DatasetInfo& info, const core::Shape& model_input, const std::string& path) {
  if (info.shape != model_input)
    throw ShapeError(path + ": image shape " + info.shape.str() + " of split '" + info.split +
                     "' is different from the model's input " + model_input.str());
}

DatasetInfo read_info(const std::string& path, const std::string& split) {
  h5::Handle file = h5::open_file(path);
  return inspect(file.get(), path, split);
}

}  // namespace mpicnn::data
