#include "evaluate.hpp"

#include <algorithm>

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
  core::LossSum sums;
  data::Batch batch;
  reader.rewind();
  // Chunks end at global multiples of the model's batch: with the reader's parts grouped by it
  // (data::EvalOptions::group), each sample meets the same chunk on any rank count.
  std::size_t position = reader.part().first;
  while (reader.next(batch)) {
    for (int start = 0, count = 0; start < batch.count; start += count) {
      count = std::min(model.max_batch() - int(position % std::size_t(model.max_batch())), batch.count - start);
      position += std::size_t(count);
      core::BatchView view{batch.images.data() + std::size_t(start) * model.input_shape().size(),
                           batch.labels.empty() ? nullptr : batch.labels.data() + start,
                           batch.targets.size() ? batch.targets.data() + std::size_t(start) * outputs : nullptr, count};
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
      embeddings.add(model, view);
      if (sink) sink(batch, start, count, out);
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
  result.metrics = task.eval_metrics({result.correct, result.count, outputs, predictions, labels, targets});
  if (task.verifies()) {
    const std::vector<core::Metric> verification = verification_once(embeddings, comm, watchdog);
    result.metrics.insert(result.metrics.end(), verification.begin(), verification.end());
  }
  return result;
}

}  // namespace mpicnn::app
