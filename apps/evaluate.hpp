#pragma once
// Exact evaluation across ranks: every rank evaluates its own contiguous part of a split, and the
// sums (loss, normaliser, correct, confusion matrix) are added across ranks, so every sample counts
// exactly once and the figures do not depend on the rank count. A metric-learning task
// (core::Task::verifies) also gets verification figures on every sample's embedding, computed
// once by rank 0 and shared.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/training.hpp"
#include "datasets/reader.hpp"
#include "distributed/comm.hpp"
#include "distributed/watchdog.hpp"
#include "io/checkpoint.hpp"

namespace mpicnn::app {

struct Evaluation {
  double loss = 0;        // mean loss
  double accuracy = 0;    // classification only
  double correct = 0;     // samples whose arg-max is their label (classification)
  std::int64_t count = 0; // samples evaluated (all ranks)
  int classes = 0;
  std::vector<std::int64_t> confusion;  // (classes, classes): row = true class, column = predicted
  std::vector<core::Metric> metrics;    // the task's (accuracy, auc, ...), identical on every rank
};

// Sees the model's outputs (count, outputs) for samples [start, start + count) of `batch`.
using OutputSink = std::function<void(const data::Batch& batch, int start, int count, const float* outputs)>;

// With a watchdog (training), a rank that stops during evaluation ends the job instead of hanging it.
Evaluation evaluate(core::Model& model, const core::Task& task, data::EvalReader& reader,
                    const dist::Communicator& comm, const OutputSink& sink = {}, dist::Watchdog* watchdog = nullptr);

// A model rebuilt from a checkpoint, a reader of a split that normalises inputs as training did,
// and the checkpoint's task fitted to both (detection: its grid of cells).
struct Loaded {
  io::CheckpointHeader header;
  std::unique_ptr<core::Model> model;
  std::unique_ptr<data::EvalReader> reader;
  std::unique_ptr<core::Task> task;
};

// `with_truth`: the split must hold what evaluation compares with (detection: boxes); `detect`
// applies a detector to images alone. The task is made with the checkpoint's stored loss options,
// detection's decoding replaced by `decoding`'s where set (>= 0).
Loaded load_checkpoint_for(const std::string& checkpoint, const std::string& data, const std::string& split, int batch,
                           const dist::Communicator& comm, bool with_truth = true, const core::TaskOptions& decoding = {});

}  // namespace mpicnn::app
