#include "evaluate.hpp"

#include <algorithm>
#include <memory>

#include "apps/batch_boxes.hpp"
#include "core/errors.hpp"

namespace mpicnn::app {

namespace {

struct Predictions {
  std::vector<float> values, targets;
  std::vector<std::int32_t> labels;
  void add(const core::Task& task, const core::BatchView& view, const float* out, int outputs) {
    for (int n = 0; n < view.count; ++n) {
      const std::size_t at = values.size();
      values.resize(at + std::size_t(outputs));
      task.predict(values.data() + at, out + std::size_t(n) * outputs, outputs);
      if (view.labels) labels.push_back(view.labels[n]);
      if (view.targets) targets.insert(targets.end(), view.targets + std::size_t(n) * outputs, view.targets + std::size_t(n + 1) * outputs);
    }
  }
};

// Detection: this rank's detections, by sample index of the split (an int32, so that they travel
// with the int32 allgather; image ids may be int64), boxes and scores beside them.
struct Detections {
  std::vector<std::int32_t> samples_classes;  // (D, 2): sample index, class
  std::vector<float> boxes_scores;            // (D, 5): x1, y1, x2, y2, score
  void add(const core::Task& task, const float* out, int outputs, std::size_t first, int count) {
    for (int n = 0; n < count; ++n)
      for (const core::DetectedBox& d : task.detect(out + std::size_t(n) * outputs, 0)) {
        samples_classes.insert(samples_classes.end(), {std::int32_t(first + std::size_t(n)), d.class_index});
        boxes_scores.insert(boxes_scores.end(), {d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score});
      }
  }
};

// The gathered detections with their samples' image ids.
std::vector<core::DetectedBox> with_image_ids(const std::vector<std::int32_t>& samples_classes,
                                              const std::vector<float>& boxes_scores, const data::SplitBoxes& split) {
  std::vector<core::DetectedBox> detections(samples_classes.size() / 2);
  for (std::size_t i = 0; i < detections.size(); ++i) {
    const float* b = &boxes_scores[5 * i];
    detections[i] = {split.image_ids[std::size_t(samples_classes[2 * i])], {b[0], b[1], b[2], b[3]}, samples_classes[2 * i + 1], b[4]};
  }
  return detections;
}

}  // namespace

Evaluation evaluate(core::Model& model, const core::Task& task, data::EvalReader& reader,
                    const dist::Communicator& comm,
                    const OutputSink& sink, dist::Watchdog* watchdog) {
  Evaluation result;
  const int outputs = int(model.output_shape().size());
  const bool classify = task.classifies();
  result.classes = classify ? outputs : 0;
  result.confusion.assign(std::size_t(result.classes) * result.classes, 0);
  model.run().training = false;  // the trainer sets training mode again before its next step
  core::GradientWorker worker(model);
  Predictions mine;  // needs_scores(): this rank's predictions and truth, in its part's order
  Detections found;  // needs_boxes()
  std::unique_ptr<BatchBoxes> boxes;
  if (task.needs_boxes()) boxes = std::make_unique<BatchBoxes>(reader.info().path, reader.info().split);
  const std::size_t target_size = std::size_t(reader.info().target_size);
  std::size_t sample = reader.part().first;  // the split's index of the next row
  core::LossSum sums;
  data::Batch batch;
  reader.rewind();
  while (reader.next(batch)) {
    for (int start = 0; start < batch.count; start += model.max_batch()) {
      const int count = std::min(model.max_batch(), batch.count - start);
      core::BatchView view{batch.images.data() + std::size_t(start) * model.input_shape().size(),
                           batch.labels.empty() ? nullptr : batch.labels.data() + start,
                           batch.targets.size() ? batch.targets.data() + std::size_t(start) * target_size : nullptr, count,
                           boxes ? boxes->stored_rows(sample, count) : std::span<const core::ImageBoxes>{}};
      const float* out = nullptr;
      const core::LossSum s = worker.evaluate(view, task, &out);
      sums.sum += s.sum, sums.normalizer += s.normalizer, sums.correct += s.correct;
      result.count += count;
      if (classify)
        for (int n = 0; n < count; ++n) {
          const float* row = out + std::size_t(n) * outputs;
          const int predicted = int(std::max_element(row, row + outputs) - row);
          ++result.confusion[std::size_t(view.labels[n]) * outputs + predicted];
        }
      if (task.needs_scores()) mine.add(task, view, out, outputs);
      if (boxes) found.add(task, out, outputs, sample, count);
      if (sink) sink(batch, start, count, out);
      sample += std::size_t(count);
    }
  }
  double totals[3] = {sums.sum, sums.normalizer, sums.correct};
  std::vector<std::int64_t> counts = {result.count};  // then the confusion matrix
  counts.insert(counts.end(), result.confusion.begin(), result.confusion.end());
  if (watchdog) {
    watchdog->allreduce_sum(std::span<double>(totals), "evaluation");
    watchdog->allreduce_sum(std::span<std::int64_t>(counts), "evaluation");
  } else {
    comm.allreduce_sum(std::span<double>(totals));
    comm.allreduce_sum(std::span<std::int64_t>(counts));
  }
  result.count = counts[0];
  std::copy(counts.begin() + 1, counts.end(), result.confusion.begin());
  result.loss = totals[1] > 0 ? totals[0] / totals[1] : 0;
  result.correct = totals[2];
  result.accuracy = result.count > 0 ? totals[2] / double(result.count) : 0;
  // The ranks' parts are contiguous and in rank order: gathered, they are the split in order.
  const auto gather = [&](const auto& part) {
    return watchdog ? watchdog->allgather(std::span(part), "evaluation") : comm.allgather(std::span(part));
  };
  std::vector<float> predictions, targets;
  std::vector<std::int32_t> labels;
  if (task.needs_scores()) predictions = gather(mine.values), labels = gather(mine.labels), targets = gather(mine.targets);
  std::vector<core::DetectedBox> detections;
  std::vector<core::GroundTruthBox> truth;
  if (boxes) {
    detections = with_image_ids(gather(found.samples_classes), gather(found.boxes_scores), boxes->split());
    truth = data::ground_truth(boxes->split());
  }
  result.metrics =
      task.eval_metrics({result.correct, result.count, outputs, predictions, labels, targets, detections, truth});
  return result;
}

Loaded load_checkpoint_for(const std::string& checkpoint, const std::string& data, const std::string& split, int batch,
                           const dist::Communicator& comm, bool with_truth, const core::TaskOptions& options) {
  Loaded l;
  const std::string path = io::resolve_checkpoint(checkpoint);
  l.header = io::read_checkpoint_header(path);
  l.reader = std::make_unique<data::EvalReader>(
      data::EvalOptions{data, split, batch, comm.rank(), comm.size(), true, l.header.model.mean, l.header.model.std, true});
  data::check_input_shape(l.reader->info(), l.header.model.input, data);
  l.model = std::make_unique<core::Model>(l.header.model.spec, l.header.model.input, batch);
  io::load_checkpoint(path, *l.model, nullptr);
  l.task = core::make_task(l.header.model.loss, options);
  const data::DatasetInfo& info = l.reader->info();
  const core::DatasetTargets targets{info.target_size == 0, info.num_classes, info.target_size, data::has_boxes(data, split)};
  const std::string where = data + " split '" + split + "'";
  l.task->configure(targets, l.header.model.input, l.model->output_shape(), where);
  if (with_truth && l.task->needs_boxes()) l.task->check(targets, int(l.model->output_shape().size()), where);
  if (l.task->classifies() && info.target_size == 0 && info.num_classes != int(l.model->output_shape().size()))
    throw ShapeError(data + ": " + std::to_string(info.num_classes) + " classes, but the checkpoint's model has " +
                     std::to_string(l.model->output_shape().size()) + " outputs");
  return l;
}

}  // namespace mpicnn::app
