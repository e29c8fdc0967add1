#include "batchnorm.hpp"

#include "errors.hpp"

namespace mpicnn::core {

BatchNorm::BatchNorm(const ArgReader& args, const Shape& in) : path_(args.path()) {
  eps_ = args.real("eps");
  momentum_ = args.real("momentum");
  affine_ = args.boolean("affine");
  if (!(eps_ > 0.f)) args.fail("argument 'eps' must be > 0, got " + float_text(eps_));
  if (!(momentum_ >= 0.f && momentum_ <= 1.f)) args.fail("argument 'momentum' must be in [0, 1], got " + float_text(momentum_));
  g_ = {in.c, in.size() / std::size_t(in.c)};  // H*W, or D*H*W for a volume (BatchNorm3d)
  input_ = output_ = in;
}

std::string BatchNorm::spec() const {
  return "bn(eps=" + float_text(eps_) + ",momentum=" + float_text(momentum_) + (affine_ ? "" : ",affine=false") + ")";
}

void BatchNorm::declare(ParamStore& params, StateStore& state, const Scope& scope) {
  prefix_ = scope.prefix;
  const int c = g_.channels;
  if (affine_) {
    scale_ = params.declare({prefix_ + "weight", {c}, 0, 0, scope.unit, 1, 1, ParamRole::bn_scale});
    shift_ = params.declare({prefix_ + "bias", {c}, 0, 0, scope.unit, 1, 1, ParamRole::bn_shift});
  }
  running_mean_ = state.declare({prefix_ + "running_mean", {c}, 0, 0, scope.unit, false});
  running_var_ = state.declare({prefix_ + "running_var", {c}, 0, 0, scope.unit, false});
  batches_ = state.declare({prefix_ + "num_batches_tracked", {}, 0, 0, scope.unit, true});
  statistics_offset_ = state.declare_statistics(1 + 2 * std::size_t(c));
}

void BatchNorm::bind(const BindContext& context) {
  params_ = &context.params;
  state_ = &context.state;
  run_ = &context.run;
  std::fill(state_->value(running_var_), state_->value(running_var_) + g_.channels, 1.f);
  batch_mean_ = Buffer(std::size_t(g_.channels));
  batch_variance_ = Buffer(std::size_t(g_.channels));
  global_mean_.assign(std::size_t(g_.channels), 0.0);
  global_variance_.assign(std::size_t(g_.channels), 1.0);
  mean_dy_.assign(std::size_t(g_.channels), 0.0);
  mean_dy_xhat_.assign(std::size_t(g_.channels), 0.0);
  totals_.reserve(2 * std::size_t(g_.channels) + 1);
  exchange_what_ = "batch statistics of layer " + path_ + " 'bn'";
}

void BatchNorm::forward(float* out, const float* in, int batch) {
  const float* gamma = affine_ ? params_->value(scale_) : nullptr;
  const float* beta = affine_ ? params_->value(shift_) : nullptr;
  if (!run_->training) {
    batchnorm_forward_eval(out, in, gamma, beta, state_->value(running_mean_), state_->value(running_var_), g_, batch,
                           double(eps_));
    return;
  }
  if (run_->layer_synchronous()) return forward_global(out, in, batch);
  const double count = double(batch) * double(g_.spatial);
  if (count < 2)
    throw ShapeError("layer " + path_ + " 'bn': expected more than 1 value per channel in training, got input (" +
                     std::to_string(batch) + "," + input_.str().substr(1));
  if (run_->statistics_slot < 0 || run_->statistics_slot >= state_->slot_capacity())
    throw Error("layer " + path_ + " 'bn': statistics slot " + std::to_string(run_->statistics_slot) + " of " +
                std::to_string(state_->slot_capacity()));
  batchnorm_forward_train(out, batch_mean_.data(), batch_variance_.data(), in, gamma, beta, g_, batch, double(eps_));
  float* slot = state_->statistics(run_->statistics_slot, statistics_offset_);
  slot[0] = float(count);
  for (int c = 0; c < g_.channels; ++c) {
    slot[1 + c] = batch_mean_[c];
    slot[1 + g_.channels + c] = float(double(batch_variance_[c]) * count / (count - 1));
  }
}

void BatchNorm::backward(float* in_grad, const float* out_grad, const float* in, const float*, int batch) {
  const float* gamma = affine_ ? params_->value(scale_) : nullptr;
  float* gamma_grad = affine_ ? params_->grad(scale_) : nullptr;
  float* beta_grad = affine_ ? params_->grad(shift_) : nullptr;
  if (run_->layer_synchronous())
    backward_global(in_grad, out_grad, in, batch);
  else if (run_->training)
    batchnorm_backward_train(in_grad, gamma_grad, beta_grad, out_grad, in, batch_mean_.data(), batch_variance_.data(),
                             gamma, g_, batch, double(eps_));
  else
    batchnorm_backward_eval(in_grad, gamma_grad, beta_grad, out_grad, in, state_->value(running_mean_),
                            state_->value(running_var_), gamma, g_, batch, double(eps_));
}

// Per channel, the sum over the global batch of what partial(row, micro-batch, k) adds into the
// table row of this rank's k-th micro-batch (`width` values): the rows of all ranks exchanged,
// then added in global micro-batch order, identically on every rank whatever the rank count.
template <class Partial>
std::span<const double> BatchNorm::global_sums(std::size_t width, const Partial& partial) {
  const std::size_t rows = std::size_t(run_->exchange->micro_batches());
  table_.assign(rows * width, 0.0);
  const std::vector<MicroBatch>& micro_batches = run_->micro_batches;
  for (std::size_t k = 0; k < micro_batches.size(); ++k) {
    const MicroBatch& m = micro_batches[k];
    if (m.index < 0 || std::size_t(m.index) >= rows)
      throw Error("layer " + path_ + " 'bn': micro-batch " + std::to_string(m.index) + " of " + std::to_string(rows));
    partial(table_.data() + std::size_t(m.index) * width, m, int(k));
  }
  run_->exchange->sum(table_, exchange_what_);
  totals_.assign(width, 0.0);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t i = 0; i < width; ++i) totals_[i] += table_[r * width + i];
  return totals_;
}

// The count and sum first, then the squared deviations about the global mean (two passes, as
// the per-micro-batch kernel, so no cancellation); the variance normalising is the biased one.
void BatchNorm::forward_global(float* out, const float* in, int batch) {
  const std::size_t channels = std::size_t(g_.channels), sample = g_.sample();
  const std::span<const double> sums = global_sums(1 + channels, [&](double* row, const MicroBatch& m, int) {
    row[0] = double(m.count) * double(g_.spatial);
    batchnorm_channel_sums(row + 1, in + std::size_t(m.start) * sample, g_, m.count);
  });
  global_count_ = sums[0];
  if (global_count_ < 2)
    throw ShapeError("layer " + path_ + " 'bn': model.bn_statistics = global_batch needs more than 1 value per channel "
                     "over the global batch, got " + std::to_string(long(global_count_)) + " (input " + input_.str() +
                     ")");
  for (std::size_t c = 0; c < channels; ++c) global_mean_[c] = sums[1 + c] / global_count_;
  const std::span<const double> squares = global_sums(channels, [&](double* row, const MicroBatch& m, int) {
    batchnorm_squared_deviations(row, in + std::size_t(m.start) * sample, global_mean_.data(), g_, m.count);
  });
  for (std::size_t c = 0; c < channels; ++c) global_variance_[c] = squares[c] / global_count_;
  batchnorm_normalize(out, in, global_mean_.data(), global_variance_.data(), affine_ ? params_->value(scale_) : nullptr,
                      affine_ ? params_->value(shift_) : nullptr, g_, batch, double(eps_));
  // The same on every rank, in slot 0: the step's one update of the running statistics.
  float* slot = state_->statistics(0, statistics_offset_);
  slot[0] = float(global_count_);
  for (std::size_t c = 0; c < channels; ++c) {
    slot[1 + c] = float(global_mean_[c]);
    slot[1 + channels + c] = float(squares[c] / (global_count_ - 1));
  }
}

// Backward's two sums over the global batch; scale and shift get each micro-batch's own part in
// that micro-batch's gradient set (the exact sum rounds micro-batch by micro-batch).
void BatchNorm::backward_global(float* in_grad, const float* out_grad, const float* in, int batch) {
  const std::size_t channels = std::size_t(g_.channels), sample = g_.sample();
  const std::span<const double> sums = global_sums(2 * channels, [&](double* row, const MicroBatch& m, int k) {
    const std::size_t at = std::size_t(m.start) * sample;
    batchnorm_gradient_sums(row, row + channels, out_grad + at, in + at, global_mean_.data(), global_variance_.data(),
                            g_, m.count, double(eps_));
    if (!affine_) return;
    params_->select_gradients(k);
    float* gamma_grad = params_->grad(scale_);
    float* beta_grad = params_->grad(shift_);
    for (std::size_t c = 0; c < channels; ++c) gamma_grad[c] += float(row[channels + c]), beta_grad[c] += float(row[c]);
    params_->select_gradients(0);
  });
  if (!in_grad) return;
  for (std::size_t c = 0; c < channels; ++c)
    mean_dy_[c] = sums[c] / global_count_, mean_dy_xhat_[c] = sums[channels + c] / global_count_;
  batchnorm_input_gradient(in_grad, out_grad, in, global_mean_.data(), global_variance_.data(),
                           affine_ ? params_->value(scale_) : nullptr, mean_dy_.data(), mean_dy_xhat_.data(), g_, batch,
                           double(eps_));
}

// PyTorch's update, one micro-batch after the other (as gradient accumulation over micro-batches
// would do in PyTorch), in double as its CPU kernel: r = momentum * batch + (1 - momentum) * r.
void BatchNorm::commit_statistics(int slots) {
  float* mean = state_->value(running_mean_);
  float* variance = state_->value(running_var_);
  const double m = double(momentum_);
  for (int s = 0; s < slots; ++s) {
    const float* slot = state_->statistics(s, statistics_offset_);
    if (slot[0] == 0.f) continue;  // no samples in this micro-batch
    for (int c = 0; c < g_.channels; ++c) {
      mean[c] = float(m * double(slot[1 + c]) + (1 - m) * double(mean[c]));
      variance[c] = float(m * double(slot[1 + g_.channels + c]) + (1 - m) * double(variance[c]));
    }
    state_->counter(batches_) += 1;
  }
}

std::unique_ptr<Layer> make_batchnorm(const LayerArgs& args, const Shape& in, const std::string& path) {
  return std::make_unique<BatchNorm>(ArgReader(args, {"eps=1e-5", "momentum=0.1", "affine=true"}, path), in);
}

}  // namespace mpicnn::core
