#include "evaluate.hpp"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "apps/batch_boxes.hpp"
#include "core/errors.hpp"

#include "core/verification.hpp"

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

// Metric learning (core::Task::verifies): every sample's embedding and label, in this rank's order.
struct Embeddings {
  int layer = -1, size = 0;
  std::vector<float> values;
  std::vector<std::int32_t> labels;
  Embeddings(const core::Model& model, const core::Task& task) {
    if (!task.verifies()) return;
    layer = core::embedding_layer(model);
    if (layer < 0) layer = int(model.layers().size()) - 1;  // a model without an embedding head: its outputs
    size = int(model.layers()[std::size_t(layer)]->output_shape().size());
  }
  void add(const core::Model& model, const core::BatchView& view) {
    if (layer < 0 || !view.labels) return;
    const float* e = model.activation(layer);
    values.insert(values.end(), e, e + std::size_t(view.count) * size);
    labels.insert(labels.end(), view.labels, view.labels + view.count);
  }
};

// The verification figures of the whole split, computed once, by rank 0, from every rank's
// embeddings in the split's order, and given to every rank by a sum to which the others add
// zeros (exact): the same figures on every rank, for any rank count.
std::vector<core::Metric> verification_once(const Embeddings& mine, const dist::Communicator& comm, dist::Watchdog* watchdog) {
  const auto gather = [&](const auto& part) {
    return watchdog ? watchdog->allgather(std::span(part), "evaluation") : comm.allgather(std::span(part));
  };
  const std::vector<float> embeddings = gather(mine.values);
  const std::vector<std::int32_t> labels = gather(mine.labels);
  const std::vector<std::string>& names = core::verification_metric_names();
  std::vector<double> shared(1 + names.size(), 0.0);  // [defined, figures...]
  if (comm.is_root()) {
    const std::vector<core::Metric> figures = core::label_pair_verification(embeddings, mine.size, labels);
    if (!figures.empty()) shared[0] = 1;
    for (std::size_t i = 0; i < figures.size(); ++i) shared[1 + i] = figures[i].second;
  }
  if (watchdog) watchdog->allreduce_sum(std::span<double>(shared), "evaluation");
  else comm.allreduce_sum(std::span<double>(shared));
  std::vector<core::Metric> metrics;
  if (shared[0] > 0)
    for (std::size_t i = 0; i < names.size(); ++i) metrics.emplace_back("verification_" + names[i], shared[1 + i]);
  return metrics;
}

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

// The checkpoint's stored loss options, with detection's decoding replaced where `decoding` sets it.
core::TaskOptions with_decoding(core::TaskOptions stored, const core::TaskOptions& decoding) {
  if (decoding.score_threshold >= 0) stored.score_threshold = decoding.score_threshold;
  if (decoding.nms_iou >= 0) stored.nms_iou = decoding.nms_iou;
  if (decoding.max_detections >= 0) stored.max_detections = decoding.max_detections;
  return stored;
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
  Embeddings embeddings(model, task);
  Detections found;  // needs_boxes()
  std::unique_ptr<BatchBoxes> boxes;
  if (task.needs_boxes()) boxes = std::make_unique<BatchBoxes>(reader.info().path, reader.info().split);
  const std::size_t target_size = std::size_t(reader.info().target_size);
  // Per model batch of this rank's part, in order: loss sum, normaliser, correct. Gathered and
  // added in the split's order, the totals are bitwise the same on any rank count, whatever the
  // task's per-row losses (an allreduce of per-rank totals adds them in another order).
  std::vector<double> batch_sums;
  data::Batch batch;
  reader.rewind();
  if (reader.part().count > 0 && reader.part().first % std::size_t(model.max_batch()) != 0)
    throw std::logic_error("evaluation part starts at sample " + std::to_string(reader.part().first) +
                           ", not at a multiple of the model's batch " + std::to_string(model.max_batch()) +
                           " (data::EvalOptions::group)");
  // Chunks end at global multiples of the model's batch: with the reader's parts grouped by it
  // (data::EvalOptions::group), each sample meets the same chunk on any rank count.
  std::size_t position = reader.part().first;
  while (reader.next(batch)) {
    for (int start = 0, count = 0; start < batch.count; start += count) {
      count = std::min(model.max_batch() - int(position % std::size_t(model.max_batch())), batch.count - start);
      const std::size_t first = position;  // the split's index of the chunk's first row
      position += std::size_t(count);
      core::BatchView view{batch.images.data() + std::size_t(start) * model.input_shape().size(),
                           batch.labels.empty() ? nullptr : batch.labels.data() + start,
                           batch.targets.size() ? batch.targets.data() + std::size_t(start) * target_size : nullptr, count,
                           boxes ? boxes->stored_rows(first, count) : std::span<const core::ImageBoxes>{}};
      const float* out = nullptr;
      const core::LossSum s = worker.evaluate(view, task, &out);
      if (first % std::size_t(model.max_batch()) == 0) batch_sums.insert(batch_sums.end(), {0.0, 0.0, 0.0});
      double* sums = &batch_sums[batch_sums.size() - 3];
      sums[0] += s.sum, sums[1] += s.normalizer, sums[2] += s.correct;
      result.count += count;
      if (classify)
        for (int n = 0; n < count; ++n) {
          const float* row = out + std::size_t(n) * outputs;
          const int predicted = int(std::max_element(row, row + outputs) - row);
          ++result.confusion[std::size_t(view.labels[n]) * outputs + predicted];
        }
      if (task.needs_scores()) mine.add(task, view, out, outputs);
      embeddings.add(model, view);
      if (boxes) found.add(task, out, outputs, first, count);
      if (sink) sink(batch, start, count, out);
    }
  }
  std::vector<std::int64_t> counts = {result.count};  // then the confusion matrix
  counts.insert(counts.end(), result.confusion.begin(), result.confusion.end());
  if (watchdog) watchdog->allreduce_sum(std::span<std::int64_t>(counts), "evaluation");
  else comm.allreduce_sum(std::span<std::int64_t>(counts));
  // The ranks' parts are contiguous and in rank order: gathered, they are the split in order.
  const auto gather = [&](const auto& part) {
    return watchdog ? watchdog->allgather(std::span(part), "evaluation") : comm.allgather(std::span(part));
  };
  const std::vector<double> all_sums = gather(batch_sums);
  double totals[3] = {0, 0, 0};
  for (std::size_t i = 0; i < all_sums.size(); ++i) totals[i % 3] += all_sums[i];
  result.count = counts[0];
  std::copy(counts.begin() + 1, counts.end(), result.confusion.begin());
  result.loss = totals[1] > 0 ? totals[0] / totals[1] : 0;
  result.correct = totals[2];
  result.accuracy = result.count > 0 ? totals[2] / double(result.count) : 0;
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
  if (task.verifies()) {
    const std::vector<core::Metric> verification = verification_once(embeddings, comm, watchdog);
    result.metrics.insert(result.metrics.end(), verification.begin(), verification.end());
  }
  return result;
}

Loaded load_checkpoint_for(const std::string& checkpoint, const std::string& data, const std::string& split, int batch,
                           const dist::Communicator& comm, bool with_truth, const core::TaskOptions& decoding) {
  Loaded l;
  const std::string path = io::resolve_checkpoint(checkpoint);
  l.header = io::read_checkpoint_header(path);
  data::EvalOptions reading{data, split, batch, comm.rank(), comm.size(), true, l.header.model.mean, l.header.model.std, true};
  reading.group = batch;  // the model's batch: every sample's outputs the same for any rank count
  l.reader = std::make_unique<data::EvalReader>(reading);
  data::check_input_shape(l.reader->info(), l.header.model.input, data);
  l.model = std::make_unique<core::Model>(l.header.model.spec, l.header.model.input, batch);
  io::load_checkpoint(path, *l.model, nullptr);
  l.task = core::make_task(l.header.model.loss, with_decoding(l.header.model.loss_options, decoding));
  const data::DatasetInfo& info = l.reader->info();
  const core::DatasetTargets targets{info.target_size == 0, info.num_classes, info.target_size, data::has_boxes(data, split)};
  const std::string where = data + " split '" + split + "'";
  l.task->configure(targets, l.header.model.input, l.model->output_shape(), where);
  if (l.task->classifies() && info.target_size == 0 && info.num_classes != int(l.model->output_shape().size()))
    throw ShapeError(data + ": " + std::to_string(info.num_classes) + " classes, but the checkpoint's model has " +
                     std::to_string(l.model->output_shape().size()) + " outputs");
  // The task's own checks, as training made them: the stored options must fit the model and the
  // data (e.g. one class weight per class) before a loss reads them.
  if (with_truth) {
    try {
      l.task->check(targets, int(l.model->output_shape().size()), where);
    } catch (const ConfigError& e) {
      throw IoError(path + ": " + e.what());
    }
  }
  return l;
}

}  // namespace mpicnn::app
