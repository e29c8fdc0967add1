#include "training.hpp"

#include <algorithm>
#include <cmath>

#include "errors.hpp"
#include "parallel.hpp"

namespace mpicnn::core {

LossSum GradientWorker::accumulate(const BatchView& batch, const Task& task,
                                   const std::function<void(int)>& layer_done) {
  if (batch.count == 0) {
    for (int i = int(model_.layers().size()) - 1; i >= 0; --i)
      if (layer_done) layer_done(i);
    return {};
  }
  const float* outputs = model_.forward(batch.images, batch.count);
  const LossSum sums = task.loss(output_grad_.data(), outputs, batch, int(model_.output_shape().size()));
  model_.backward(output_grad_.data(), batch.count, layer_done);
  return sums;
}

LossSum GradientWorker::accumulate_layer_synchronous(const std::function<BatchView(int, int)>& rows, int count,
                                                     const Task& task,
                                                     const std::function<void(int, bool, bool)>& layer_done) {
  const std::vector<MicroBatch>& micro_batches = model_.run().micro_batches;
  const int outputs_per_sample = int(model_.output_shape().size());
  const std::size_t out_size = std::size_t(outputs_per_sample);
  model_.params().reserve_gradient_sets(int(micro_batches.size()));
  const float* outputs = model_.forward(rows(0, count).images, count);
  LossSum sums;
  for (const MicroBatch& m : micro_batches) {
    const std::size_t at = std::size_t(m.start);
    const LossSum s = task.loss(output_grad_.data() + at * out_size, outputs + at * out_size, rows(m.start, m.count),
                                outputs_per_sample);
    sums.sum += on_loss_grid(s.sum), sums.correct += s.correct;
  }
  model_.backward(output_grad_.data(), count);
  const int layers = int(model_.layers().size()), sets = std::max(1, int(micro_batches.size()));
  for (int k = 0; k < sets; ++k) {
    model_.params().select_gradients(k);
    for (int i = layers - 1; i >= 0; --i) layer_done(i, k == 0, k + 1 == sets);
  }
  model_.params().select_gradients(0);
  return sums;
}

LossSum GradientWorker::evaluate(const BatchView& batch, const Task& task, const float** outputs) {
  if (batch.count == 0) return {};
  const float* out = model_.forward(batch.images, batch.count);
  if (outputs) *outputs = out;
  return task.loss(nullptr, out, batch, int(model_.output_shape().size()));
}

void scale_gradients(ParamStore& params, double factor) {
  float* g = params.grads().data();
  const float f = float(factor);
  constexpr std::size_t chunk = 1 << 14;
  parallel_for((params.size() + chunk - 1) / chunk, 2.0 * chunk, [&](std::size_t c) {
    for (std::size_t i = c * chunk; i < std::min(params.size(), (c + 1) * chunk); ++i) g[i] *= f;
  });
}

int first_non_finite_param(const ParamStore& params) {
  for (std::size_t p = 0; p < params.infos().size(); ++p) {
    const ParamInfo& info = params.infos()[p];
    for (std::size_t i = 0; i < info.size; ++i)
      if (!std::isfinite(params.values()[info.offset + i]) || !std::isfinite(params.grads()[info.offset + i]))
        return int(p);
  }
  return -1;
}

}  // namespace mpicnn::core
