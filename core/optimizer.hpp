#pragma once
// Optimizers over the whole parameter arena, with PyTorch's update rules so that results can be
// compared with torch.optim. State buffers have the arena's layout (checkpointed as they are).
#include <functional>
#include <string>
#include <vector>

#include "params.hpp"

namespace mpicnn::core {

struct OptimizerConfig {
  std::string name = "sgd";  // sgd, adam, adamw
  double momentum = 0.0;     // sgd
  bool nesterov = false;     // sgd
  double weight_decay = 0.0; // sgd/adam: L2 added to the gradient; adamw: decoupled
  // Whether weight decay also applies to biases and BatchNorm scales and shifts. PyTorch's
  // default is yes (one parameter group); torchvision's ResNet recipes turn it off.
  bool decay_norm_and_bias = true;
  double beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8;
};

// Writes the gradients of the arena's floats [begin, end) to out[0, end - begin), padding between
// parameters included (as zeros); called concurrently for disjoint ranges. It lets the exact
// reduction hand the optimizer its summed gradient while it is in cache, leaving the arena's
// gradients untouched.
using GradientSource = std::function<void(std::size_t begin, std::size_t end, float* out)>;

class Optimizer {
 public:
  Optimizer(const OptimizerConfig& config, std::size_t arena_size);
  // The same with the parameters' roles known: without decay_norm_and_bias, biases and BatchNorm
  // scales and shifts get no weight decay.
  Optimizer(const OptimizerConfig& config, const ParamStore& params);
  // Applies one update with learning rate `lr` from the averaged gradients: the arena's, or when
  // given, those `source` writes chunk by chunk just before the update reads them.
  void step(ParamStore& params, double lr, const GradientSource& source = {});
  long steps() const { return steps_; }
  // Named state buffers ("momentum" or "exp_avg", "exp_avg_sq"), for checkpoints.
  std::vector<std::pair<std::string, Buffer*>> state();
  void set_steps(long steps) { steps_ = steps; }
  const OptimizerConfig& config() const { return config_; }

 private:
  // Calls update(begin, end, decayed) for the runs of [begin, end) with and without weight decay.
  template <class Update>
  void split_by_decay(std::size_t begin, std::size_t end, Update&& update) const;

  OptimizerConfig config_;
  long steps_ = 0;
  std::vector<std::pair<std::size_t, std::size_t>> undecayed_;  // sorted float ranges of the arena
  Buffer first_, second_;  // momentum, or Adam's first and second moments
};

// Learning rate at a global step: optional linear warm-up from 0, then constant, step decay
// (times gamma every step_size steps after warm-up), multi-step decay (times gamma at each
// milestone, counted from step 0 as MultiStepLR's epochs) or cosine decay to min_lr at total_steps.
struct ScheduleConfig {
  std::string kind = "constant";  // constant, step, multistep, cosine
  double base_lr = 0.01;
  long warmup_steps = 0;
  long step_size = 1;
  double gamma = 0.1;
  double min_lr = 0.0;
  std::vector<long> milestone_steps = {};  // multistep: increasing global steps
};
double learning_rate(const ScheduleConfig& schedule, long step, long total_steps);

// Fills weights by `scheme` (he, he_uniform, xavier, xavier_normal) and biases with zeros, from `seed`.
void init_params(ParamStore& params, const std::string& scheme, std::uint64_t seed);
const std::vector<std::string>& known_init_schemes();
// What init_params gives rows [first_row, first_row + rows) of tensor `index` of a model whose
// parameters are `infos`, without the other values: a classifier sharded across ranks starts
// bitwise as the whole model would. The tensor must be a drawn weight.
void init_param_rows(float* out, const std::vector<ParamInfo>& infos, int index, int first_row, int rows,
                     const std::string& scheme, std::uint64_t seed);

}  // namespace mpicnn::core
