#pragma once
// The reference CNN of configs/fashion_mnist.ini as the trainer runs it: through core::Model (max
// pools applying the ReLUs before them, flatten a view) with the loss, on fixed normal images and
// labels 0..9 repeating. Shared by kernels_bench (model_pass) and lockstep_bench.
#include <cstdint>
#include <memory>
#include <vector>

#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "core/rng.hpp"
#include "core/training.hpp"

namespace mpicnn::bench {

inline const char* const kReferenceSpec =
    "conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten dense(128) relu dense(10)";

class ReferencePass {
 public:
  explicit ReferencePass(int batch)
      : batch_(batch), model_(kReferenceSpec, {1, 28, 28}, batch), images_(std::size_t(batch) * 28 * 28), labels_(batch),
        worker_(model_) {
    core::init_params(model_.params(), "he", 1);
    core::Rng rng(1);
    for (float& v : images_.span()) v = float(rng.normal());
    for (int n = 0; n < batch; ++n) labels_[n] = n % 10;
  }
  // One forward and backward pass; the gradients accumulate in the arena.
  core::LossSum run() { return worker_.accumulate({images_.data(), labels_.data(), nullptr, batch_}, *task_); }
  core::Model& model() { return model_; }

 private:
  int batch_;
  core::Model model_;
  core::Buffer images_;
  std::vector<std::int32_t> labels_;
  core::GradientWorker worker_;
  std::unique_ptr<core::Task> task_ = core::make_task("cross_entropy");
};

}  // namespace mpicnn::bench
