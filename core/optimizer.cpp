#include "optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "errors.hpp"
#include "parallel.hpp"
#include "rng.hpp"

namespace mpicnn::core {
namespace {

constexpr std::size_t kUpdateChunk = 1 << 14;

template <class Body>
void for_each_chunk(std::size_t n, const std::function<void(std::size_t, std::size_t)>& before, Body&& body) {
  parallel_for((n + kUpdateChunk - 1) / kUpdateChunk, 8.0 * kUpdateChunk, [&](std::size_t chunk) {
    const std::size_t begin = chunk * kUpdateChunk, end = std::min(n, begin + kUpdateChunk);
    if (before) before(begin, end);
    body(begin, end);
  });
}

}  // namespace

Optimizer::Optimizer(const OptimizerConfig& config, std::size_t arena_size) : config_(config) {
  if (config.name == "sgd") {
    if (config.momentum != 0.0) first_ = Buffer(arena_size);
  } else if (config.name == "adam" || config.name == "adamw") {
    first_ = Buffer(arena_size);
    second_ = Buffer(arena_size);
  } else {
    throw ConfigError("unknown optimizer '" + config.name + "' (known: sgd, adam, adamw)");
  }
}

std::vector<std::pair<std::string, Buffer*>> Optimizer::state() {
  if (config_.name == "sgd") return first_.size() ? std::vector<std::pair<std::string, Buffer*>>{{"momentum", &first_}}
                                                  : std::vector<std::pair<std::string, Buffer*>>{};
  return {{"exp_avg", &first_}, {"exp_avg_sq", &second_}};
}

void Optimizer::step(ParamStore& params, double lr, const std::function<void(std::size_t, std::size_t)>& write_gradients) {
  ++steps_;
  float* w = params.values().data();
  const float* g = params.grads().data();
  const float decay = float(config_.weight_decay), mu = float(config_.momentum), rate = float(lr);
  if (config_.name == "sgd") {
    float* v = first_.data();
    for_each_chunk(params.size(), write_gradients, [&](std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) {
        float d = g[i] + decay * w[i];
        if (v) {
          v[i] = mu * v[i] + d;  // the buffer starts at zero, so step 1 sets it to d, as torch.optim.SGD does
          d = config_.nesterov ? d + mu * v[i] : v[i];
        }
        w[i] -= rate * d;
      }
    });
    return;
  }
  float* m = first_.data();
  float* s = second_.data();
  const bool decoupled = config_.name == "adamw";
  const double b1 = config_.beta1, b2 = config_.beta2;
  const float step_size = float(lr / (1.0 - std::pow(b1, double(steps_))));
  const float bias2_sqrt = float(std::sqrt(1.0 - std::pow(b2, double(steps_))));
  const float eps = float(config_.epsilon);
  for_each_chunk(params.size(), write_gradients, [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) {
      float d = g[i];
      if (decoupled) w[i] *= 1.f - rate * decay;
      else d += decay * w[i];
      m[i] = float(b1) * m[i] + float(1.0 - b1) * d;
      s[i] = float(b2) * s[i] + float(1.0 - b2) * d * d;
      w[i] -= step_size * m[i] / (std::sqrt(s[i]) / bias2_sqrt + eps);
    }
  });
}

double learning_rate(const ScheduleConfig& schedule, long step, long total_steps) {
  if (step < schedule.warmup_steps) return schedule.base_lr * double(step + 1) / double(schedule.warmup_steps);
  const long after = step - schedule.warmup_steps;
  if (schedule.kind == "constant") return schedule.base_lr;
  if (schedule.kind == "step") return schedule.base_lr * std::pow(schedule.gamma, double(after / std::max(1L, schedule.step_size)));
  if (schedule.kind == "cosine") {
    const double span = double(std::max(1L, total_steps - schedule.warmup_steps));
    const double progress = std::min(1.0, double(after) / span);
    return schedule.min_lr + 0.5 * (schedule.base_lr - schedule.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
  }
  throw ConfigError("unknown learning-rate schedule '" + schedule.kind + "' (known: constant, step, cosine)");
}

const std::vector<std::string>& known_init_schemes() {
  static const std::vector<std::string> schemes = {"he", "he_uniform", "xavier", "xavier_normal"};
  return schemes;
}

void init_params(ParamStore& params, const std::string& scheme, std::uint64_t seed) {
  if (std::find(known_init_schemes().begin(), known_init_schemes().end(), scheme) == known_init_schemes().end())
    throw ConfigError("unknown init scheme '" + scheme + "' (known: he, he_uniform, xavier, xavier_normal)");
  Rng rng(derive_seed(seed, 0));
  for (std::size_t p = 0; p < params.infos().size(); ++p) {
    const ParamInfo& info = params.info(int(p));
    float* w = params.value(int(p));
    if (info.is_bias) {
      std::fill(w, w + info.size, 0.f);
      continue;
    }
    const double fan_in = info.fan_in, fan_avg = 0.5 * (info.fan_in + info.fan_out);
    for (std::size_t i = 0; i < info.size; ++i) {
      if (scheme == "he") w[i] = float(rng.normal() * std::sqrt(2.0 / fan_in));
      else if (scheme == "he_uniform") w[i] = float(rng.uniform(-1, 1) * std::sqrt(6.0 / fan_in));
      else if (scheme == "xavier") w[i] = float(rng.uniform(-1, 1) * std::sqrt(3.0 / fan_avg));
      else w[i] = float(rng.normal() * std::sqrt(1.0 / fan_avg));
    }
  }
}

}  // namespace mpicnn::core
