#pragma once
// The single-process parts of a training step. A step is: zero the gradient arena, accumulate the
// gradients of the local samples' loss *sum*, (sum arena and normaliser across ranks), divide by the
// global normaliser, step the optimizer. Dividing only after the sum is what makes N ranks equal one.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "loss.hpp"
#include "model.hpp"

namespace mpicnn::core {

struct LossConfig {
  std::string kind = "cross_entropy";  // cross_entropy (softmax output) or mse (regression output)
  std::vector<float> class_weights;     // cross_entropy only; empty = all 1
};

// A batch as the kernels see it: (count, C, H, W) images and labels (classification) or
// (count, K) targets (regression).
struct BatchView {
  const float* images = nullptr;
  const std::int32_t* labels = nullptr;
  const float* targets = nullptr;
  int count = 0;
};

LossSum compute_loss(float* output_grad, const float* outputs, const BatchView& batch, const LossConfig& loss,
                     int outputs_per_sample);

// Forward and backward over the batch; parameter gradients accumulate d(loss sum)/d(w).
// layer_done(i) fires for every layer, last first, even when the batch is empty, so that ranks
// holding no samples this step still take part in every gradient reduction.
class GradientWorker {
 public:
  explicit GradientWorker(Model& model) : model_(model), output_grad_(std::size_t(model.max_batch()) * model.output_shape().size()) {}
  LossSum accumulate(const BatchView& batch, const LossConfig& loss, const std::function<void(int)>& layer_done = {});
  // Forward and loss only (evaluation); `outputs` receives the model's outputs when not null.
  LossSum evaluate(const BatchView& batch, const LossConfig& loss, const float** outputs = nullptr);

 private:
  Model& model_;
  Buffer output_grad_;
};

void scale_gradients(ParamStore& params, double factor);
// Index of the first parameter holding a non-finite value or gradient, or -1.
int first_non_finite_param(const ParamStore& params);

}  // namespace mpicnn::core
