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
}

void BatchNorm::forward(float* out, const float* in, int batch) {
  const float* gamma = affine_ ? params_->value(scale_) : nullptr;
  const float* beta = affine_ ? params_->value(shift_) : nullptr;
  if (!run_->training) {
    batchnorm_forward_eval(out, in, gamma, beta, state_->value(running_mean_), state_->value(running_var_), g_, batch,
                           double(eps_));
    return;
  }
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
  if (run_->training)
    batchnorm_backward_train(in_grad, gamma_grad, beta_grad, out_grad, in, batch_mean_.data(), batch_variance_.data(),
                             gamma, g_, batch, double(eps_));
  else
    batchnorm_backward_eval(in_grad, gamma_grad, beta_grad, out_grad, in, state_->value(running_mean_),
                            state_->value(running_var_), gamma, g_, batch, double(eps_));
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
