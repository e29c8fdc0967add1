#pragma once
// BatchNorm over channels, as PyTorch's BatchNorm2d/3d: training normalises each channel with the
// batch's mean and biased variance; the running statistics move towards the mean and the
// unbiased variance, but only when the step commits them (commit_statistics), so that a step
// computed again, or abandoned, leaves them as they were. Evaluation uses the running statistics.
// In a layer-synchronous pass (model.bn_statistics = global_batch) the statistics, and backward's
// two sums, are those of the whole global batch: per-micro-batch partials exchanged across ranks
// and added in global micro-batch order, so that any rank count gives the same values.
#include <vector>

#include "arg_reader.hpp"
#include "block_kernels.hpp"
#include "layers.hpp"

namespace mpicnn::core {

class BatchNorm final : public Layer {
 public:
  BatchNorm(const ArgReader& args, const Shape& in);
  std::string spec() const override;
  void declare(ParamStore&, StateStore&, const Scope&) override;
  void bind(const BindContext&) override;
  void forward(float* out, const float* in, int batch) override;
  void backward(float* in_grad, const float* out_grad, const float* in, const float* out, int batch) override;
  void commit_statistics(int slots) override;
  bool spans_micro_batches() const override { return true; }
  double forward_flops() const override { return 2.0 * double(input_.size()); }

  float eps() const { return eps_; }
  bool affine() const { return affine_; }
  const std::string& prefix() const { return prefix_; }  // "3." : names "3.weight", "3.running_mean"

 private:
  NormGeometry g_;
  float eps_ = 1e-5f, momentum_ = 0.1f;
  bool affine_ = true;
  std::string path_, prefix_;
  int scale_ = -1, shift_ = -1, running_mean_ = -1, running_var_ = -1, batches_ = -1;
  std::size_t statistics_offset_ = 0;  // in a slot: count, mean (C), unbiased variance (C)
  ParamStore* params_ = nullptr;
  StateStore* state_ = nullptr;
  const RunContext* run_ = nullptr;
  Buffer batch_mean_, batch_variance_;  // of the last training forward, for backward

  void forward_global(float* out, const float* in, int batch);
  void backward_global(float* in_grad, const float* out_grad, const float* in, int batch);
  template <class Partial>
  std::span<const double> global_sums(std::size_t width, const Partial& partial);
  // Buffers of the global-batch passes, sized in bind() (the table by the step's micro-batches),
  // so that a step allocates nothing once its sizes have been seen.
  std::vector<double> table_;   // (global micro-batches, width): the partials being exchanged
  std::vector<double> totals_;  // (width): the table's rows added in order
  std::vector<double> mean_dy_, mean_dy_xhat_;  // (C): backward's global means
  std::string exchange_what_;   // names the layer if a rank is gone during the exchange
  double global_count_ = 0;
  std::vector<double> global_mean_, global_variance_;  // (C): the last global-batch forward's
};

}  // namespace mpicnn::core
