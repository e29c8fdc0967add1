// `mpicnn convert` and `mpicnn inspect`: dataset conversion and a readable summary of any file
// mpicnn writes. Both are single-process tools (run them without mpirun).
#include <cmath>
#include <cstdio>
#include <sstream>

#include "apps/commands.hpp"
#include "apps/settings.hpp"
#include "core/errors.hpp"
#include "datasets/boxes.hpp"
#include "datasets/coco.hpp"
#include "datasets/convert.hpp"
#include "datasets/h5.hpp"
#include "datasets/reader.hpp"
#include "io/bundle.hpp"
#include "io/checkpoint.hpp"
#include "io/loss_io.hpp"

namespace mpicnn::app {
namespace {

std::vector<std::string> split_names(const std::string& text) {
  if (text == "fashion-mnist") return data::fashion_mnist_class_names();
  std::vector<std::string> names;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) names.push_back(item);
  return names;
}

int parse_count(const std::string& text, const char* option) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end || v < 1 || v > 4096)
    throw ConfigError(std::string("--") + option + " value '" + text + "', expected integers 1..4096");
  return int(v);
}

double parse_real(const std::string& text, const char* option) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end || !std::isfinite(v))
    throw ConfigError(std::string("--") + option + " value '" + text + "', expected a number");
  return v;
}

std::string join(const std::vector<double>& values) {
  std::ostringstream out;
  for (std::size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  return out.str();
}

void print_boxes(const data::SplitBoxes& boxes) {
  std::size_t crowd = 0, most = 0;
  for (std::uint8_t c : boxes.crowd) crowd += c;
  for (std::size_t n = 0; n < boxes.samples(); ++n) most = std::max(most, boxes.of(n).boxes.size());
  std::printf("          %8zu boxes (%zu crowd), up to %zu in an image\n", boxes.boxes.size(), crowd, most);
}

void inspect_dataset(const std::string& path) {
  const data::DatasetInfo first = data::read_info(path, "train");
  std::printf("%s: mpicnn dataset\n", path.c_str());
  const std::string shape = (first.shape.is_volume() ? "volume shape (C,D,H,W) " : "image shape ") + first.shape.str();
  std::printf("  %s, %s pixels, %d classes, task %s\n", shape.c_str(),
              first.uint8 ? "uint8" : "float32", first.num_classes, first.task.empty() ? "not recorded" : first.task.c_str());
  for (const auto& split : first.splits) {
    const data::DatasetInfo info = data::read_info(path, split);
    std::printf("  /%-6s %8zu samples, %s\n", split.c_str(), info.count,
                info.target_size ? ("targets of " + std::to_string(info.target_size)).c_str() : "labels");
    if (data::has_boxes(path, split)) print_boxes(data::read_boxes(path, split));
  }
  std::printf("  mean [%s], std [%s]\n", join(first.mean).c_str(), join(first.std).c_str());
  if (!first.class_names.empty()) {
    std::string names;
    for (const auto& n : first.class_names) names += (names.empty() ? "" : ", ") + n;
    std::printf("  classes: %s\n", names.c_str());
  }
}

void inspect_checkpoint(const std::string& path) {
  const io::CheckpointHeader h = io::read_checkpoint_header(path);
  std::printf("%s: mpicnn checkpoint (format %d, mpicnn %s, created %s, trained on %d ranks)\n", path.c_str(),
              h.format_version, h.mpicnn_version.c_str(), h.created.c_str(), h.ranks);
  std::printf("  position: epoch %d, step %ld in epoch, global step %ld, seed %llu\n", h.trainer.epoch + 1,
              h.trainer.step_in_epoch, h.trainer.global_step, (unsigned long long)h.trainer.seed);
  std::printf("  optimizer: %s (momentum %g, weight decay %g)\n", h.optimizer.name.c_str(), h.optimizer.momentum,
              h.optimizer.weight_decay);
  std::printf("  loss: %s; input normalisation mean [%s] std [%s]\n", io::loss_description(h.model).c_str(),
              join(h.model.mean).c_str(), join(h.model.std).c_str());
  for (const auto& [name, value] : h.metrics) std::printf("  %s: %.6g\n", name.c_str(), value);
  if (std::isnan(h.trainer.best_metric)) std::printf("  best.h5: not chosen yet (by test %s)\n", h.trainer.best_metric_name.c_str());
  else std::printf("  best.h5: test %s %.6g\n", h.trainer.best_metric_name.c_str(), h.trainer.best_metric);
  core::Model model(h.model.spec, h.model.input, 1);
  std::printf("%s", model.summary().c_str());
}

void inspect_bundle(const std::string& path) {
  const io::BundleHeader b = io::read_bundle_header(path);
  std::printf("%s: mpicnn inference bundle (format %d, mpicnn %s, created %s)\n", path.c_str(), b.format_version,
              b.mpicnn_version.c_str(), b.created.c_str());
  std::printf("  source: %s, sha256 %s\n", b.source.file.c_str(), b.source.sha256.c_str());
  std::printf("          created %s by mpicnn %s on %d ranks, epoch %d, global step %ld\n", b.source.created.c_str(),
              b.source.mpicnn_version.c_str(), b.source.ranks, b.source.epoch + 1, b.source.global_step);
  std::printf("  spec: %s\n", b.model.spec.c_str());
  std::printf("  input %s float32 %s: %s\n", b.model.input.str().c_str(), b.model.input.is_volume() ? "NCDHW" : "NCHW",
              io::kInputScaling);
  std::printf("  mean [%s] std [%s]; loss %s\n", join(b.model.mean).c_str(), join(b.model.std).c_str(),
              io::loss_description(b.model).c_str());
  if (!b.model.class_names.empty()) {
    std::string names;
    for (const auto& n : b.model.class_names) names += (names.empty() ? "" : ", ") + n;
    std::printf("  classes (%zu): %s\n", b.model.class_names.size(), names.c_str());
  }
  for (const auto& [name, value] : b.metrics) std::printf("  %s: %.6g\n", name.c_str(), value);
  core::Model model(b.model.spec, b.model.input, 1);
  std::printf("  weights: %zu tensors in /weights, PyTorch state_dict names and layouts\n",
              model.params().infos().size());
  std::printf("%s", model.summary().c_str());
}

}  // namespace

int run_convert(const Args& args, const dist::Communicator&) {
  Settings s("convert", {
      {"format", "", "input layout: idx (MNIST family), npz (MedMNIST), folder (one subfolder per class), "
                     "nifti (.nii/.nii.gz files), dicom (DICOM files or series) or coco (detection JSON)", true},
      {"input", "", "IDX folder, .npz file, image folder, folder of NIfTI/DICOM files, or COCO JSON: FILE.json "
                    "(train) or train=A.json,test=B.json", true},
      {"images", "", "coco: folder of the images' file_name (default: each JSON's folder)"},
      {"output", "", "HDF5 dataset to write", true},
      {"names", "", "class names (or multi-label label names): comma-separated, or 'fashion-mnist'"},
      {"task", "", "npz, nifti, dicom: what the labels mean: multi-class, binary, multi-label or regression (empty: multi-class "
                   "for one label per sample; several labels must be told)"},
      {"layout", "auto", "npz: images (N,H,W,C) channels_last, (N,D,H,W) volume, (N,H,W) grey, or auto "
                         "(refuses a rank-4 array whose last axis is 1, 3 or 4)"},
      {"height", "0", "folder, coco: resize images to this height (0 = all images must have one size)"},
      {"width", "0", "folder, coco: resize images to this width"},
      {"channels", "0", "folder, coco: 1 (grey) or 3 (RGB); 0 = grey only if every image is"},
      {"test_fraction", "0", "folder: share of each class written to /test"},
      {"seed", "0", "folder: which images go to /test"},
      {"labels", "", "nifti, dicom: labels CSV, rows \"file-or-series,label[,split]\" (split: train, val or test)"},
      {"shape", "", "nifti, dicom: fixed output D,H,W (or H,W); coco: H,W (as --height/--width); empty = every "
                    "sample must have one shape"},
      {"fit", "resize", "nifti, dicom: how samples reach --shape: resize (trilinear) or crop (centred, zero padded)"},
      {"time_points", "false", "nifti: a 4D file gives one sample per time point (else 4D files are refused)"},
      {"window", "", "dicom: center,width: clip rescaled values to [center - width/2, center + width/2]"},
      {"compression", "auto", "gzip level 0-9, or auto: 4 for chunks of 16 KiB or more, none for smaller ones"},
      {"chunk", "0", "samples per HDF5 chunk (0 = automatic)"},
  });
  if (!parse_or_help(s, args)) return 0;
  data::ConvertOptions o;
  o.class_names = split_names(s.text("names"));
  o.task = s.text("task");
  o.layout = s.choice("layout", {"auto", "grey", "channels_last", "volume"});
  o.height = int(s.integer("height", 0));
  o.width = int(s.integer("width", 0));
  o.channels = int(s.integer("channels", 0));
  o.test_fraction = s.real("test_fraction", 0);
  o.seed = std::uint64_t(s.integer("seed", 0));
  o.labels = s.text("labels");
  for (const std::string& v : split_names(s.text("shape"))) o.shape.push_back(parse_count(v, "shape"));
  o.fit = s.choice("fit", {"resize", "crop"});
  o.time_points = s.flag("time_points");
  if (const std::vector<std::string> w = split_names(s.text("window")); !w.empty()) {
    if (w.size() != 2) throw ConfigError("--window '" + s.text("window") + "', expected center,width");
    o.window = true;
    o.window_center = parse_real(w[0], "window");
    o.window_width = parse_real(w[1], "window");
    if (!(o.window_width > 0)) throw ConfigError("--window width " + w[1] + ", expected > 0");
  }
  o.writer.compression_level = s.text("compression") == "auto" ? -1 : int(s.integer("compression", 0, 9));
  o.writer.chunk_samples = int(s.integer("chunk", 0));
  const std::string format = s.choice("format", {"idx", "npz", "folder", "nifti", "dicom", "coco"});
  const std::string in = s.text("input"), out = s.text("output");
  const data::ConvertSummary summary = format == "idx"     ? data::convert_idx(in, out, o)
                                       : format == "npz"   ? data::convert_npz(in, out, o)
                                       : format == "nifti" ? data::convert_nifti(in, out, o)
                                       : format == "dicom" ? data::convert_dicom(in, out, o)
                                       : format == "coco"  ? data::convert_coco(data::parse_coco_inputs(in), s.text("images"), out, o)
                                                           : data::convert_image_folder(in, out, o);
  std::printf("wrote %s: %s %s, %d classes", out.c_str(), summary.shape.is_volume() ? "volumes" : "images",
              summary.shape.str().c_str(), summary.num_classes);
  if (!summary.task.empty()) std::printf(", task %s", summary.task.c_str());
  for (const auto& [split, count] : summary.split_counts) std::printf(", %s %zu", split.c_str(), count);
  std::printf("\n");
  return 0;
}

int run_inspect(const Args& args, const dist::Communicator&) {
  Settings s("inspect", {{"file", "", "dataset, checkpoint or bundle to summarise", true}});
  if (!parse_or_help(s, args, true, "file")) return 0;
  const std::string path = s.text("file");
  std::string format;
  {
    data::h5::Handle file = data::h5::open_file(path);
    if (data::h5::has_attribute(file.get(), "format")) format = data::h5::read_string_attribute(file.get(), "format");
  }
  if (format == "mpicnn-dataset") inspect_dataset(path);
  else if (format == io::kCheckpointFormat) inspect_checkpoint(path);
  else if (format == io::kBundleFormat) inspect_bundle(path);
  else throw IoError(path + ": unknown file kind (root attribute 'format' is '" + format +
                     "'; expected mpicnn-dataset, mpicnn-checkpoint or mpicnn-bundle)");
  return 0;
}

}  // namespace mpicnn::app
