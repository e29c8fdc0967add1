// `mpicnn detect`: a detection checkpoint applied to a split (boxes not needed), every image's
// detections decoded as evaluation decodes them (core/detection_head.hpp) and written by rank 0 as
// COCO's results JSON, which users' own COCO tools read, or as HDF5. Under mpirun each rank
// decodes its own part; the file is the same for any rank count.
#include <cstdio>
#include <sstream>

#include "apps/commands.hpp"
#include "apps/evaluate.hpp"
#include "apps/settings.hpp"
#include "core/errors.hpp"
#include "core/parallel.hpp"
#include "core/training.hpp"
#include "datasets/h5.hpp"

namespace mpicnn::app {
namespace {

std::vector<Key> detect_keys() {
  return {
      {"checkpoint", "", "detection checkpoint file or run folder (its latest checkpoint)", true},
      {"data", "", "HDF5 dataset file", true},
      {"split", "test", "split to detect in"},
      {"output", "", "detections: .json (COCO results: image_id, category_id, bbox [x,y,w,h], score) or .h5", true},
      {"score_threshold", "0.05", "keep (cell, class) scores above this, in [0, 1)"},
      {"iou", "0.6", "per-class NMS: suppress a box whose IoU with a kept one is above this, in [0, 1]"},
      {"max_detections", "100", "detections kept per image"},
      {"batch", "256", "samples per batch on each rank"},
      {"threads", "0", "threads per rank (0 = all this rank may use)"},
      {"winograd", "false", "Winograd F(2x2,3x3) for 3x3 stride-1 pad-1 convolutions of >= 32 channels (as model.winograd in training)"},
  };
}

// Every detection of the split, in sample order, each image's in score order.
struct Found {
  std::vector<std::int32_t> samples_classes;  // (D, 2)
  std::vector<float> boxes_scores;            // (D, 5): x1, y1, x2, y2, score
  std::size_t count() const { return samples_classes.size() / 2; }
};

Found detect_split(Loaded& l) {
  core::Model& model = *l.model;
  model.run().training = false;
  const int outputs = int(model.output_shape().size());
  Found mine;
  std::size_t sample = l.reader->part().first;
  data::Batch batch;
  while (l.reader->next(batch))
    for (int start = 0; start < batch.count; start += model.max_batch()) {
      const int count = std::min(model.max_batch(), batch.count - start);
      const float* out = model.forward(batch.images.data() + std::size_t(start) * model.input_shape().size(), count);
      for (int n = 0; n < count; ++n, ++sample)
        for (const core::DetectedBox& d : l.task->detect(out + std::size_t(n) * outputs, 0)) {
          mine.samples_classes.insert(mine.samples_classes.end(), {std::int32_t(sample), d.class_index});
          mine.boxes_scores.insert(mine.boxes_scores.end(), {d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score});
        }
    }
  return mine;
}

// The split's image ids (convert --format coco keeps COCO's), else the sample indices; the COCO
// category id of each class (the file's category_ids), else the class index.
struct Ids {
  std::vector<std::int64_t> images, categories;
};

Ids read_ids(const std::string& path, const std::string& split, std::size_t samples, int classes) {
  namespace h5 = data::h5;
  Ids ids;
  h5::Handle file = h5::open_file(path);
  if (h5::exists(file.get(), split + "/image_ids")) ids.images = h5::read_dataset<std::int64_t>(file.get(), split + "/image_ids");
  if (ids.images.size() != samples) {
    ids.images.resize(samples);
    for (std::size_t n = 0; n < samples; ++n) ids.images[n] = std::int64_t(n);
  }
  if (h5::has_attribute(file.get(), "category_ids"))
    ids.categories = h5::read_array_attribute<std::int64_t>(file.get(), "category_ids");
  if (ids.categories.size() != std::size_t(classes)) {
    ids.categories.resize(std::size_t(classes));
    for (int k = 0; k < classes; ++k) ids.categories[std::size_t(k)] = k;
  }
  return ids;
}

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", v);  // float32 round trip
  return text;
}

void write_json(const std::string& path, const Found& f, const Ids& ids) {
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < f.count(); ++i) {
    const float* b = &f.boxes_scores[5 * i];
    out << (i ? ",\n " : "\n ") << "{\"image_id\": " << ids.images[std::size_t(f.samples_classes[2 * i])]
        << ", \"category_id\": " << ids.categories[std::size_t(f.samples_classes[2 * i + 1])] << ", \"bbox\": ["
        << number(b[0]) << ", " << number(b[1]) << ", " << number(double(b[2]) - b[0]) << ", " << number(double(b[3]) - b[1])
        << "], \"score\": " << number(b[4]) << "}";
  }
  out << "\n]\n";
  io::write_file_atomically(path, out.str());
}

void write_h5(const std::string& path, const Found& f, const Ids& ids, std::size_t samples,
              const std::vector<std::string>& class_names) {
  namespace h5 = data::h5;
  const hsize_t D = f.count();
  std::vector<float> boxes(4 * D), scores(D);
  std::vector<std::int32_t> sample_index(D), classes(D);
  std::vector<std::int64_t> image_ids(D), category_ids(D), offsets(samples + 1, 0);
  for (std::size_t i = 0; i < D; ++i) {
    std::copy(&f.boxes_scores[5 * i], &f.boxes_scores[5 * i] + 4, &boxes[4 * i]);
    scores[i] = f.boxes_scores[5 * i + 4];
    sample_index[i] = f.samples_classes[2 * i], classes[i] = f.samples_classes[2 * i + 1];
    image_ids[i] = ids.images[std::size_t(sample_index[i])], category_ids[i] = ids.categories[std::size_t(classes[i])];
    ++offsets[std::size_t(sample_index[i]) + 1];
  }
  for (std::size_t n = 0; n < samples; ++n) offsets[n + 1] += offsets[n];
  h5::Handle file = h5::create_file(path);
  h5::write_dataset<float>(file.get(), "boxes", boxes, {D, 4});
  h5::write_dataset<float>(file.get(), "scores", scores, {D});
  h5::write_dataset<std::int32_t>(file.get(), "classes", classes, {D});
  h5::write_dataset<std::int64_t>(file.get(), "category_ids", category_ids, {D});
  h5::write_dataset<std::int64_t>(file.get(), "image_ids", image_ids, {D});
  h5::write_dataset<std::int32_t>(file.get(), "samples", sample_index, {D});
  h5::write_dataset<std::int64_t>(file.get(), "offsets", offsets, {hsize_t(samples + 1)});
  if (!class_names.empty()) h5::write_attribute(file.get(), "class_names", class_names);
}

bool ends_with(const std::string& text, const std::string& tail) {
  return text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

int run_detect(const Args& args, const dist::Communicator& comm) {
  Settings s("detect", detect_keys());
  if (!parse_or_help(s, args, comm.is_root())) return 0;
  const std::string output = s.text("output");
  if (!ends_with(output, ".json") && !ends_with(output, ".h5"))
    throw ConfigError("--output '" + output + "': expected a .json (COCO results) or .h5 file");
  core::TaskOptions options;
  options.score_threshold = s.real("score_threshold", 0);
  options.nms_iou = s.real("iou", 0);
  options.max_detections = int(s.integer("max_detections", 1));
  if (options.score_threshold >= 1) throw ConfigError("--score_threshold " + s.text("score_threshold") + ": expected a value in [0, 1)");
  if (options.nms_iou > 1) throw ConfigError("--iou " + s.text("iou") + ": expected a value in [0, 1]");
  core::set_threads(int(s.integer("threads", 0)));
  core::allow_winograd(s.flag("winograd"));
  Loaded l = load_checkpoint_for(s.text("checkpoint"), s.text("data"), s.text("split"), int(s.integer("batch", 1)), comm,
                                 false, options);
  if (!l.task->needs_boxes())
    throw ConfigError("mpicnn detect needs a detection checkpoint (loss detection), but " + s.text("checkpoint") +
                      " was trained with loss '" + l.header.model.loss + "'");
  const Found mine = detect_split(l);
  Found all{comm.gather_to_root(std::span<const std::int32_t>(mine.samples_classes)),
            comm.gather_to_root(std::span<const float>(mine.boxes_scores))};
  const data::DatasetInfo& info = l.reader->info();
  comm.on_root([&] {
    const Ids ids = read_ids(s.text("data"), s.text("split"), info.count, info.num_classes);
    if (ends_with(output, ".json")) write_json(output, all, ids);
    else write_h5(output, all, ids, info.count, l.header.model.class_names);
    std::printf("%zu detections in %zu images written to %s\n", all.count(), info.count, output.c_str());
  });
  return 0;
}

}  // namespace mpicnn::app
