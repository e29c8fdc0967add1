#pragma once
// The single-process parts of a training step. A step is: zero the gradient arena, accumulate the
// gradients of the local samples' loss *sum*, (sum arena and normaliser across ranks), divide by the
// global normaliser, step the optimizer. Dividing only after the sum is what makes N ranks equal one.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model.hpp"
#include "task.hpp"

namespace mpicnn::core {

// Forward and backward over the batch; parameter gradients accumulate d(loss sum)/d(w).
// layer_done(i) fires for every layer, last first, even when the batch is empty, so that ranks
// holding no samples this step still take part in every gradient reduction.
class GradientWorker {
 public:
  explicit GradientWorker(Model& model) : model_(model), output_grad_(std::size_t(model.max_batch()) * model.output_shape().size()) {}
  LossSum accumulate(const BatchView& batch, const Task& task, const std::function<void(int)>& layer_done = {});
  // Layer-synchronous (model.bn_statistics = global_batch; the model's run() holds the
  // micro-batches and the exchange): forward and backward over all of `batch`'s micro-batches at
  // once, each's loss and parameter gradients its own; then, micro-batch after micro-batch, its
  // gradients are in the arena while layer_done(i, first, last) fires for every layer, last first
  // (a rank without samples: once per layer, first and last).
  // `rows(start, count)` is the view of those rows of the rank's batch (the caller's own slicing:
  // images, labels, targets, boxes), `count` the rank's samples.
  LossSum accumulate_layer_synchronous(const std::function<BatchView(int start, int count)>& rows, int count,
                                       const Task& task, const std::function<void(int, bool, bool)>& layer_done);
  // Forward and loss only (evaluation); `outputs` receives the model's outputs when not null.
  LossSum evaluate(const BatchView& batch, const Task& task, const float** outputs = nullptr);

 private:
  Model& model_;
  Buffer output_grad_;
};

void scale_gradients(ParamStore& params, double factor);
// Index of the first parameter holding a non-finite value or gradient, or -1.
int first_non_finite_param(const ParamStore& params);

}  // namespace mpicnn::core
