#include "optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "errors.hpp"
#include "parallel.hpp"
#include "rng.hpp"

namespace mpicnn::core {
namespace {

// 8K floats: a GradientSource's scratch chunk (32 KiB) stays in L1 between being written and read.
constexpr std::size_t kUpdateChunk = 1 << 13;

// This thread's chunk for a GradientSource to write into: one per thread, whatever the rule.
float* scratch_chunk() {
  thread_local std::vector<float> scratch(kUpdateChunk);
  return scratch.data();
}

// Calls body(begin, end, g) for fixed chunks of the arena, in parallel; g holds the chunk's
// gradients: the arena's, or what `source` writes into this thread's scratch chunk.
template <class Body>
void for_each_chunk(ParamStore& params, const GradientSource& source, Body&& body) {
  const std::size_t n = params.size();
  parallel_for((n + kUpdateChunk - 1) / kUpdateChunk, 8.0 * kUpdateChunk, [&](std::size_t chunk) {
    const std::size_t begin = chunk * kUpdateChunk, end = std::min(n, begin + kUpdateChunk);
    if (!source) return body(begin, end, params.grads().data() + begin);
    float* g = scratch_chunk();
    source(begin, end, g);
    body(begin, end, g);
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

Optimizer::Optimizer(const OptimizerConfig& config, const ParamStore& params) : Optimizer(config, params.size()) {
  if (config.decay_norm_and_bias) return;
  for (const ParamInfo& p : params.infos())
    if (p.role != ParamRole::weight) undecayed_.emplace_back(p.offset, p.offset + p.size);
  std::sort(undecayed_.begin(), undecayed_.end());
}

template <class Update>
void Optimizer::split_by_decay(std::size_t begin, std::size_t end, Update&& update) const {
  auto range = std::lower_bound(undecayed_.begin(), undecayed_.end(), std::make_pair(begin, std::size_t(0)),
                                [](const auto& a, const auto& b) { return a.second <= b.first; });
  std::size_t at = begin;
  for (; range != undecayed_.end() && range->first < end; ++range) {
    const std::size_t from = std::max(range->first, begin), to = std::min(range->second, end);
    if (at < from) update(at, from, true);
    update(from, to, false);
    at = to;
  }
  if (at < end) update(at, end, true);
}

std::vector<std::pair<std::string, Buffer*>> Optimizer::state() {
  if (config_.name == "sgd") return first_.size() ? std::vector<std::pair<std::string, Buffer*>>{{"momentum", &first_}}
                                                  : std::vector<std::pair<std::string, Buffer*>>{};
  return {{"exp_avg", &first_}, {"exp_avg_sq", &second_}};
}

namespace {

// The update rules over one chunk, element by element: restrict pointers and the variant as a
// template argument, so that the loops vectorise (through the arena pointers a lambda captures,
// the compiler must assume overlap and updates one float at a time).
struct SgdRule {
  float decay, momentum, rate;
};
template <bool kMomentum, bool kNesterov>
void sgd_chunk(float* __restrict w, float* __restrict v, const float* __restrict g, std::size_t n, SgdRule r) {
  for (std::size_t i = 0; i < n; ++i) {
    float d = g[i] + r.decay * w[i];
    if constexpr (kMomentum) {
      v[i] = r.momentum * v[i] + d;  // the buffer starts at zero, so step 1 sets it to d, as torch.optim.SGD does
      d = kNesterov ? d + r.momentum * v[i] : v[i];
    }
    w[i] -= r.rate * d;
  }
}

struct AdamRule {
  float decay, rate, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bias2_sqrt, epsilon;
};
template <bool kDecoupled>
void adam_chunk(float* __restrict w, float* __restrict m, float* __restrict s, const float* __restrict g, std::size_t n,
                AdamRule r) {
  for (std::size_t i = 0; i < n; ++i) {
    float d = g[i];
    if constexpr (kDecoupled) w[i] *= 1.f - r.rate * r.decay;
    else d += r.decay * w[i];
    m[i] = r.beta1 * m[i] + r.one_minus_beta1 * d;
    s[i] = r.beta2 * s[i] + r.one_minus_beta2 * d * d;
    w[i] -= r.step_size * m[i] / (std::sqrt(s[i]) / r.bias2_sqrt + r.epsilon);
  }
}

}  // namespace

void Optimizer::step(ParamStore& params, double lr, const GradientSource& source) {
  ++steps_;
  float* w = params.values().data();
  float* first = first_.data();
  float* second = second_.data();
  const float decay = float(config_.weight_decay), rate = float(lr);
  if (config_.name == "sgd") {
    const SgdRule rule{decay, float(config_.momentum), rate}, undecayed{0.f, float(config_.momentum), rate};
    const auto update = !first ? sgd_chunk<false, false> : config_.nesterov ? sgd_chunk<true, true> : sgd_chunk<true, false>;
    for_each_chunk(params, source, [&](std::size_t begin, std::size_t end, const float* g) {
      split_by_decay(begin, end, [&](std::size_t from, std::size_t to, bool decayed) {
        update(w + from, first ? first + from : nullptr, g + (from - begin), to - from, decayed ? rule : undecayed);
      });
    });
    return;
  }
  const double b1 = config_.beta1, b2 = config_.beta2;
  const AdamRule rule{decay,
                      rate,
                      float(b1),
                      float(1.0 - b1),
                      float(b2),
                      float(1.0 - b2),
                      float(lr / (1.0 - std::pow(b1, double(steps_)))),
                      float(std::sqrt(1.0 - std::pow(b2, double(steps_)))),
                      float(config_.epsilon)};
  AdamRule undecayed = rule;
  undecayed.decay = 0.f;
  const auto update = config_.name == "adamw" ? adam_chunk<true> : adam_chunk<false>;
  for_each_chunk(params, source, [&](std::size_t begin, std::size_t end, const float* g) {
    split_by_decay(begin, end, [&](std::size_t from, std::size_t to, bool decayed) {
      update(w + from, first + from, second + from, g + (from - begin), to - from, decayed ? rule : undecayed);
    });
  });
}

double learning_rate(const ScheduleConfig& schedule, long step, long total_steps) {
  if (step < schedule.warmup_steps) return schedule.base_lr * double(step + 1) / double(schedule.warmup_steps);
  const long after = step - schedule.warmup_steps;
  if (schedule.kind == "constant") return schedule.base_lr;
  if (schedule.kind == "step") return schedule.base_lr * std::pow(schedule.gamma, double(after / std::max(1L, schedule.step_size)));
  if (schedule.kind == "multistep") {
    const auto passed = std::upper_bound(schedule.milestone_steps.begin(), schedule.milestone_steps.end(), step) -
                        schedule.milestone_steps.begin();
    return schedule.base_lr * std::pow(schedule.gamma, double(passed));
  }
  if (schedule.kind == "cosine") {
    const double span = double(std::max(1L, total_steps - schedule.warmup_steps));
    const double progress = std::min(1.0, double(after) / span);
    return schedule.min_lr + 0.5 * (schedule.base_lr - schedule.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
  }
  throw ConfigError("unknown learning-rate schedule '" + schedule.kind + "' (known: constant, step, multistep, cosine)");
}

const std::vector<std::string>& known_init_schemes() {
  static const std::vector<std::string> schemes = {"he", "he_uniform", "xavier", "xavier_normal", "resnet"};
  return schemes;
}

namespace {

// torchvision's ResNet: convolutions kaiming_normal_(mode="fan_out", relu), the classifier
// nn.Linear's default (weight and bias uniform in +-1/sqrt(fan_in)).
float resnet_value(Rng& rng, const ParamInfo& info) {
  const bool convolution = info.dims.size() > 2;
  if (convolution) return float(rng.normal() * std::sqrt(2.0 / info.fan_out));
  return float(rng.uniform(-1, 1) / std::sqrt(double(info.fan_in)));
}

float scheme_value(Rng& rng, const ParamInfo& info, const std::string& scheme) {
  const double fan_in = info.fan_in, fan_avg = 0.5 * (info.fan_in + info.fan_out);
  if (scheme == "he") return float(rng.normal() * std::sqrt(2.0 / fan_in));
  if (scheme == "he_uniform") return float(rng.uniform(-1, 1) * std::sqrt(6.0 / fan_in));
  if (scheme == "xavier") return float(rng.uniform(-1, 1) * std::sqrt(3.0 / fan_avg));
  if (scheme == "resnet") return resnet_value(rng, info);
  return float(rng.normal() * std::sqrt(1.0 / fan_avg));
}

bool is_drawn(const ParamInfo& info, const std::string& scheme) {
  return info.role == ParamRole::weight || (info.is_bias() && scheme == "resnet");
}

// Engine numbers scheme_value takes per value: normal draws take two, uniform ones one.
std::uint64_t draws_per_value(const ParamInfo& info, const std::string& scheme) {
  if (scheme == "he" || scheme == "xavier_normal") return 2;
  if (scheme == "resnet") return info.dims.size() > 2 ? 2 : 1;
  return 1;
}

}  // namespace

// BatchNorm scale 1 and shift 0 (PyTorch's defaults); biases 0, but under "resnet" the
// classifier's bias is drawn as nn.Linear draws it.
void init_params(ParamStore& params, const std::string& scheme, std::uint64_t seed) {
  if (std::find(known_init_schemes().begin(), known_init_schemes().end(), scheme) == known_init_schemes().end())
    throw ConfigError("unknown init scheme '" + scheme + "' (known: he, he_uniform, xavier, xavier_normal, resnet)");
  Rng rng(derive_seed(seed, 0));
  for (std::size_t p = 0; p < params.infos().size(); ++p) {
    const ParamInfo& info = params.info(int(p));
    float* w = params.value(int(p));
    if (!is_drawn(info, scheme)) {
      std::fill(w, w + info.size, info.role == ParamRole::bn_scale ? 1.f : 0.f);
      continue;
    }
    for (std::size_t i = 0; i < info.size; ++i) w[i] = scheme_value(rng, info, scheme);
  }
}

void init_param_rows(float* out, const std::vector<ParamInfo>& infos, int index, int first_row, int rows,
                     const std::string& scheme, std::uint64_t seed) {
  const ParamInfo& info = infos[std::size_t(index)];
  if (!is_drawn(info, scheme) || info.dims.size() != 2) throw Error("init_param_rows: '" + info.name + "' is no drawn matrix");
  std::uint64_t before = 0;
  for (int p = 0; p < index; ++p)
    if (is_drawn(infos[std::size_t(p)], scheme)) before += infos[std::size_t(p)].size * draws_per_value(infos[std::size_t(p)], scheme);
  const std::size_t columns = std::size_t(info.dims[1]);
  Rng rng(derive_seed(seed, 0));
  rng.skip(before + std::size_t(first_row) * columns * draws_per_value(info, scheme));
  for (std::size_t i = 0; i < std::size_t(rows) * columns; ++i) out[i] = scheme_value(rng, info, scheme);
}

}  // namespace mpicnn::core
