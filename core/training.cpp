#include "training.hpp"

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
