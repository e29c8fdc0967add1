// Where a training pass of a model spends its time, layer by layer (default: the MedMNIST "(28)"
// ResNet-18 at the exact reduction's micro-batch of 16).
//
//   build/bench/layer_profile [--spec SPEC] [--input C,H,W] [--batch 16] [--threads 1] [--reps 7] [--winograd]
//
// Builds core::Model from the spec in training mode, then times every leaf layer's forward and
// backward on its own (the layer's own workspaces, buffers of its shapes filled with normal
// values), and the residual blocks' sums (add_tensors: main + shortcut forward, the two input
// gradients backward), each as the fastest of --reps calls: on a shared machine other work only
// slows a call down. The backward of the model's first layer gets no input gradient, as in
// training. Then the whole model's forward and backward through Model, the same way, to check that
// the parts add up. Prints every leaf, then the leaves grouped by layer and input shape (how many,
// time per micro-batch, GFLOP/s, share of the parts' sum), then by kind (3x3 conv, 1x1 conv, bn,
// relu, residual add, ...). GFLOP/s counts multiply-adds as 2: forward as the summary's FLOPs,
// backward twice that (input and weight gradients; once for the first layer), also where
// Winograd does fewer (--winograd lets 3x3 layers use it, as model.winograd = true does).
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/blocks.hpp"
#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"

namespace core = mpicnn::core;

namespace {

const char* const kResNet18_28 =
    "conv(64,3,pad=1,bias=false) bn relu "
    "repeat(2){residual{conv(64,3,pad=1,bias=false) bn relu conv(64,3,pad=1,bias=false) bn} relu} "
    "residual{conv(128,3,stride=2,pad=1,bias=false) bn relu conv(128,3,pad=1,bias=false) bn | conv(128,1,stride=2,bias=false) bn} relu "
    "residual{conv(128,3,pad=1,bias=false) bn relu conv(128,3,pad=1,bias=false) bn} relu "
    "residual{conv(256,3,stride=2,pad=1,bias=false) bn relu conv(256,3,pad=1,bias=false) bn | conv(256,1,stride=2,bias=false) bn} relu "
    "residual{conv(256,3,pad=1,bias=false) bn relu conv(256,3,pad=1,bias=false) bn} relu "
    "residual{conv(512,3,stride=2,pad=1,bias=false) bn relu conv(512,3,pad=1,bias=false) bn | conv(512,1,stride=2,bias=false) bn} relu "
    "residual{conv(512,3,pad=1,bias=false) bn relu conv(512,3,pad=1,bias=false) bn} relu "
    "globalavgpool flatten dense(9)";

struct Part {
  std::string path, spec, kind;
  core::Shape in, out;
  core::Layer* layer = nullptr;  // null: a residual block's sum
  bool first = false;            // the model's first layer: no input gradient
  bool shortcut = false;         // residual sum: the block has a shortcut branch
  double forward_s = 0, backward_s = 0, forward_flops = 0, backward_flops = 0;
};

// "conv(64,3,stride=2,...)" -> "conv 3x3 stride 2"; "bn(eps=...)" -> "bn".
std::string kind_of(const std::string& spec) {
  const std::string name = spec.substr(0, spec.find('('));
  if (name != "conv") return name;
  const std::size_t open = spec.find('('), comma = spec.find(',', open);
  const std::string kernel = spec.substr(comma + 1, spec.find(',', comma + 1) - comma - 1);
  const bool strided = spec.find("stride=1") == std::string::npos;
  return "conv " + kernel + "x" + kernel + (strided ? " stride 2" : "");
}

void collect(core::Layer* layer, const std::string& path, std::vector<Part>& parts);

void collect_sequence(const core::Sequential& sequence, const std::string& path, std::vector<Part>& parts) {
  for (std::size_t i = 0; i < sequence.children().size(); ++i)
    collect(sequence.children()[i].get(), path + (path.empty() ? "" : ".") + std::to_string(i), parts);
}

void collect(core::Layer* layer, const std::string& path, std::vector<Part>& parts) {
  if (const auto* sequence = dynamic_cast<const core::Sequential*>(layer)) return collect_sequence(*sequence, path, parts);
  if (const auto* repeat = dynamic_cast<const core::Repeat*>(layer)) return collect_sequence(repeat->body(), path, parts);
  if (const auto* residual = dynamic_cast<const core::Residual*>(layer)) {
    collect_sequence(residual->main_branch(), path + ".main", parts);
    if (residual->shortcut_branch()) collect_sequence(*residual->shortcut_branch(), path + ".shortcut", parts);
    Part sum{path + ".add", "residual add", "residual add", layer->input_shape(), layer->output_shape()};
    sum.shortcut = residual->shortcut_branch() != nullptr;
    parts.push_back(sum);
    return;
  }
  if (layer->is_view()) return;  // flatten: never run
  parts.push_back({path, layer->spec(), kind_of(layer->spec()), layer->input_shape(), layer->output_shape(), layer});
}

core::Buffer normal_buffer(std::size_t n, std::uint64_t seed) {
  core::Buffer b(n);
  core::Rng rng(seed);
  for (float& v : b.span()) v = float(rng.normal());
  return b;
}

template <class F>
double fastest(int reps, F&& f) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

core::Shape parse_shape(const std::string& text) {
  core::Shape s;
  if (std::sscanf(text.c_str(), "%d,%d,%d", &s.c, &s.h, &s.w) != 3 || s.c < 1 || s.h < 1 || s.w < 1)
    throw std::runtime_error("--input: expected C,H,W with positive integers, got '" + text + "'");
  return s;
}

struct Options {
  std::string spec = kResNet18_28;
  core::Shape input{3, 28, 28};
  int batch = 16, threads = 1, reps = 7;
  bool winograd = false;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--spec") o.spec = value();
    else if (arg == "--input") o.input = parse_shape(value());
    else if (arg == "--batch") o.batch = std::atoi(value().c_str());
    else if (arg == "--threads") o.threads = std::atoi(value().c_str());
    else if (arg == "--reps") o.reps = std::atoi(value().c_str());
    else if (arg == "--winograd") o.winograd = true;
    else if (arg == "--help") {
      std::printf("usage: layer_profile [--spec SPEC] [--input C,H,W] [--batch 16] [--threads 1] [--reps 7] [--winograd]\n"
                  "default spec: the ResNet-18 (28) of bench/resnet_bench.py on 3,28,28\n");
      std::exit(0);
    } else throw std::runtime_error("unknown option '" + arg + "' (known: --spec, --input, --batch, --threads, --reps, --winograd)");
  }
  if (o.batch < 1 || o.threads < 1 || o.reps < 1) throw std::runtime_error("--batch, --threads and --reps must be >= 1");
  return o;
}

struct Total {
  int count = 0;
  double forward_s = 0, backward_s = 0, flops = 0;
};

void print_groups(const char* title, const std::map<std::string, Total>& groups, double sum_s, int batch) {
  std::vector<std::pair<std::string, Total>> rows(groups.begin(), groups.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    return a.second.forward_s + a.second.backward_s > b.second.forward_s + b.second.backward_s;
  });
  std::printf("\n%-58s %5s %10s %10s %10s %8s %7s\n", title, "count", "fwd ms", "bwd ms", "us/img", "GFLOP/s", "share");
  for (const auto& [name, t] : rows) {
    const double s = t.forward_s + t.backward_s;
    std::printf("%-58s %5d %10.2f %10.2f %10.0f %8.1f %6.1f%%\n", name.c_str(), t.count, 1e3 * t.forward_s,
                1e3 * t.backward_s, 1e6 * s / batch, t.flops > 0 ? 1e-9 * t.flops / s : 0.0, 100.0 * s / sum_s);
  }
}

int run(const Options& o) {
  core::set_threads(o.threads);
  core::allow_winograd(o.winograd);
  core::Model model(o.spec, o.input, o.batch);
  core::init_params(model.params(), "resnet", 1);
  model.run().training = true;
  std::vector<Part> parts;
  for (std::size_t i = 0; i < model.layers().size(); ++i) collect(model.layers()[i].get(), std::to_string(i), parts);
  if (!parts.empty()) parts.front().first = parts.front().layer != nullptr;

  std::uint64_t seed = 10;
  for (Part& p : parts) {
    const std::size_t in_n = std::size_t(o.batch) * p.in.size(), out_n = std::size_t(o.batch) * p.out.size();
    core::Buffer in = normal_buffer(in_n, ++seed), out(out_n), out_grad = normal_buffer(out_n, ++seed), in_grad(in_n);
    if (!p.layer) {
      // forward: out = main + shortcut (or + input); backward: in_grad += shortcut's (or the output's) gradient
      core::Buffer other = normal_buffer(std::max(in_n, out_n), ++seed);
      p.forward_s = fastest(o.reps, [&] { core::add_tensors(out.data(), out_grad.data(), other.data(), out_n); });
      p.backward_s = fastest(o.reps, [&] { core::add_tensors(in_grad.data(), in_grad.data(), other.data(), in_n); });
      continue;
    }
    p.forward_flops = o.batch * p.layer->forward_flops();
    p.backward_flops = (p.first ? 1 : 2) * p.forward_flops;
    p.forward_s = fastest(o.reps, [&] { p.layer->forward(out.data(), in.data(), o.batch); });
    p.backward_s = fastest(o.reps, [&] {
      p.layer->backward(p.first ? nullptr : in_grad.data(), out_grad.data(), in.data(), out.data(), o.batch);
    });
  }

  core::Buffer images = normal_buffer(std::size_t(o.batch) * o.input.size(), 1);
  core::Buffer logits_grad = normal_buffer(std::size_t(o.batch) * model.output_shape().size(), 2);
  const double model_forward_s = fastest(o.reps, [&] { model.forward(images.data(), o.batch); });
  const double model_backward_s = fastest(o.reps, [&] {
    model.forward(images.data(), o.batch);
    model.backward(logits_grad.data(), o.batch);
  }) - model_forward_s;

  double sum_s = 0, sum_forward = 0, sum_backward = 0;
  for (const Part& p : parts) sum_s += p.forward_s + p.backward_s, sum_forward += p.forward_s, sum_backward += p.backward_s;
  std::printf("spec: %s\ninput %s, batch %d, %d thread(s), fastest of %d calls\n\n", o.spec.c_str(), o.input.str().c_str(),
              o.batch, o.threads, o.reps);
  std::printf("%-18s %-42s %-13s %9s %9s %8s %8s\n", "layer", "spec", "input", "fwd ms", "bwd ms", "fwd GF/s", "bwd GF/s");
  for (const Part& p : parts) {
    std::printf("%-18s %-42s %-13s %9.3f %9.3f %8.1f %8.1f\n", p.path.c_str(), p.spec.substr(0, 42).c_str(),
                p.in.str().c_str(), 1e3 * p.forward_s, 1e3 * p.backward_s,
                p.forward_flops > 0 ? 1e-9 * p.forward_flops / p.forward_s : 0.0,
                p.backward_flops > 0 ? 1e-9 * p.backward_flops / p.backward_s : 0.0);
  }
  std::map<std::string, Total> by_shape, by_kind;
  for (const Part& p : parts) {
    const std::string shape_key = (p.layer ? p.spec : std::string(p.shortcut ? "residual add, shortcut" : "residual add, identity")) +
                                  " on " + p.in.str() + (p.first ? " (no dX)" : "");
    for (auto* t : {&by_shape[shape_key], &by_kind[p.kind]}) {
      ++t->count;
      t->forward_s += p.forward_s, t->backward_s += p.backward_s, t->flops += p.forward_flops + p.backward_flops;
    }
  }
  print_groups("by layer and input shape", by_shape, sum_s, o.batch);
  print_groups("by kind", by_kind, sum_s, o.batch);
  const double flops = o.batch * model.forward_flops() * 3;
  std::printf("\nparts' sum: forward %.1f ms + backward %.1f ms = %.1f ms per batch of %d (%.1f img/s)\n",
              1e3 * sum_forward, 1e3 * sum_backward, 1e3 * sum_s, o.batch, o.batch / sum_s);
  std::printf("whole model through core::Model: forward %.1f ms + backward %.1f ms = %.1f ms (%.1f img/s, "
              "%.1f GFLOP/s at 3x the forward FLOPs)\n", 1e3 * model_forward_s, 1e3 * model_backward_s,
              1e3 * (model_forward_s + model_backward_s), o.batch / (model_forward_s + model_backward_s),
              1e-9 * flops / (model_forward_s + model_backward_s));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
