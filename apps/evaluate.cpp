#include "evaluate.hpp"

#include <algorithm>

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
  core::LossSum sums;
  data::Batch batch;
  reader.rewind();
  while (reader.next(batch)) {
    for (int start = 0; start < batch.count; start += model.max_batch()) {
      const int count = std::min(model.max_batch(), batch.count - start);
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
  return result;
}

}  // namespace mpicnn::app
