// Microbenchmarks of core/kernels.hpp on the reference CNN's shapes:
//   conv1 (1,28,28) -> 32x5x5 -> relu -> maxpool 2 -> conv2 (32,12,12) -> 64x5x5 -> relu -> maxpool 2
//   -> dense 1024->128 -> relu -> dense 128->10.
// Arguments: batch size, threads (core::set_threads), and for convolution backward whether the input
// gradient is computed (the first layer never needs it).
// Counters (all per wall-clock second, since the work runs on TBB threads; Google Benchmark prints
// every rate with a "/s" suffix, also the dimensionless `peak`):
//   GFLOP/s    2 * multiply-adds actually computed (backward: dW, plus dX when computed; bias and
//              element-wise work not counted)
//   peak       GFLOP/s as a share of the FMA peak x threads: MPICNN_PEAK_GFLOPS_PER_CORE from the
//              environment, else measured at start-up on one core (the fma_peak loop, by thread CPU
//              time so other load does not lower it; printed once). shared/FACTS.md's 117 GFLOP/s
//              predates the finding that these cores run AVX-512 FMAs at about twice that.
//   GB/s       for memory-bound kernels (pooling, activation): bytes each kernel must read and write
//   img/s      for the whole forward + backward pass
// All buffers and workspaces are allocated before the timed loop.
#include <benchmark/benchmark.h>

#include <immintrin.h>

#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "bench/reference_pass.hpp"
#include "core/kernels.hpp"
#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "core/parallel.hpp"
#include "core/tensor.hpp"

namespace core = mpicnn::core;

namespace {

// FP32 FMA throughput of the widest vectors this build targets: 12 independent chains hide the FMA
// latency on two pipes. Returns the flops done (0 without FMA instructions); *sink keeps the result live.
double fma_chains(long rounds, float* sink) {
  constexpr int kChains = 12;
#if defined(__AVX512F__)
  using Vec = __m512;
  constexpr int kLanes = 16;
  const auto splat = [](float x) { return _mm512_set1_ps(x); };
  const auto fma = [](Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); };
  const auto lane0 = [](Vec a) { return _mm512_cvtss_f32(a); };
#elif defined(__FMA__)
  using Vec = __m256;
  constexpr int kLanes = 8;
  const auto splat = [](float x) { return _mm256_set1_ps(x); };
  const auto fma = [](Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); };
  const auto lane0 = [](Vec a) { return _mm256_cvtss_f32(a); };
#else
  *sink = 0;
  return 0;
#endif
#if defined(__AVX512F__) || defined(__FMA__)
  Vec acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = splat(float(j));
  const Vec scale = splat(0.999999f), shift = splat(1e-6f);
  for (long i = 0; i < rounds; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = fma(acc[j], scale, shift);
  float sum = 0.0f;
  for (int j = 0; j < kChains; ++j) sum += lane0(acc[j]);
  *sink = sum;
  return 2.0 * kLanes * kChains * rounds;
#endif
}

double thread_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

double peak_gflops_per_core() {
  static const double peak = [] {
    const char* text = std::getenv("MPICNN_PEAK_GFLOPS_PER_CORE");
    const double value = text ? std::atof(text) : 0.0;
    if (value > 0.0) return value;
    double best = 0.0;
    float sink = 0.0f;
    for (int trial = 0; trial < 5; ++trial) {
      const double start = thread_seconds();
      const double flops = fma_chains(1L << 19, &sink);
      best = std::max(best, flops * 1e-9 / std::max(thread_seconds() - start, 1e-9));
    }
    benchmark::DoNotOptimize(sink);
    if (best <= 0.0) best = 117.0;  // no FMA instructions in this build: FACTS.md's figure
    std::fprintf(stderr, "FMA peak per core for the `peak` counters: %.0f GFLOP/s (measured; set "
                 "MPICNN_PEAK_GFLOPS_PER_CORE to override)\n", best);
    return best;
  }();
  return peak;
}

const core::ConvGeometry kConv1{1, 28, 28, 32, 5, 5, 1, 0, 24, 24};
const core::ConvGeometry kConv2{32, 12, 12, 64, 5, 5, 1, 0, 8, 8};
const core::PoolGeometry kPool1{32, 24, 24, 2, 2, 0, 12, 12};
const core::PoolGeometry kPool2{64, 8, 8, 2, 2, 0, 4, 4};
constexpr int kDenseIn = 1024, kDenseHidden = 128, kClasses = 10;

core::Buffer random_buffer(std::size_t n, unsigned seed, float scale = 1.0f) {
  core::Buffer b(n);
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  for (std::size_t i = 0; i < n; ++i) b[i] = dist(gen);
  return b;
}

int threads_of(const benchmark::State& state) { return int(state.range(1)); }

void set_flop_counters(benchmark::State& state, double flops_per_iteration, int threads) {
  using benchmark::Counter;
  state.counters["GFLOP/s"] = Counter(flops_per_iteration * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["peak"] = Counter(flops_per_iteration * 1e-9 / (peak_gflops_per_core() * threads),
                                   Counter::kIsIterationInvariantRate);
}

void set_byte_counter(benchmark::State& state, double bytes_per_iteration) {
  state.counters["GB/s"] = benchmark::Counter(bytes_per_iteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

double conv_macs(const core::ConvGeometry& g, int batch) {
  return double(batch) * g.filters * g.col_rows() * g.out_pixels();
}

void conv_forward(benchmark::State& state, const core::ConvGeometry& g) {
  const int batch = int(state.range(0));
  core::set_threads(threads_of(state));
  core::Buffer in = random_buffer(batch * g.in_size(), 1), weight = random_buffer(g.filters * g.col_rows(), 2, 0.1f),
               bias = random_buffer(g.filters, 3), out(batch * g.out_size()),
               workspace(core::conv2d_workspace_size(g, batch));
  for (auto _ : state) {
    core::conv2d_forward(out.data(), workspace.data(), in.data(), weight.data(), bias.data(), g, batch);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(state, 2.0 * conv_macs(g, batch), threads_of(state));
}

void conv_backward(benchmark::State& state, const core::ConvGeometry& g) {
  const int batch = int(state.range(0));
  const bool input_grad = state.range(2) != 0;
  core::set_threads(threads_of(state));
  core::Buffer in = random_buffer(batch * g.in_size(), 1), weight = random_buffer(g.filters * g.col_rows(), 2, 0.1f),
               out_grad = random_buffer(batch * g.out_size(), 4), in_grad(batch * g.in_size()),
               weight_grad(g.filters * g.col_rows()), bias_grad(g.filters),
               workspace(core::conv2d_workspace_size(g, batch));
  for (auto _ : state) {
    core::conv2d_backward(input_grad ? in_grad.data() : nullptr, weight_grad.data(), bias_grad.data(),
                          workspace.data(), out_grad.data(), in.data(), weight.data(), g, batch);
    benchmark::DoNotOptimize(weight_grad.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(state, (input_grad ? 4.0 : 2.0) * conv_macs(g, batch), threads_of(state));
}

void maxpool_forward(benchmark::State& state, const core::PoolGeometry& g) {
  const int batch = int(state.range(0));
  core::set_threads(threads_of(state));
  core::Buffer in = random_buffer(batch * g.in_size(), 5), out(batch * g.out_size());
  std::vector<std::int32_t> argmax(batch * g.out_size());
  for (auto _ : state) {
    core::maxpool_forward(out.data(), argmax.data(), in.data(), g, batch);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_byte_counter(state, 4.0 * batch * (g.in_size() + 2 * g.out_size()));
}

void maxpool_backward(benchmark::State& state, const core::PoolGeometry& g) {
  const int batch = int(state.range(0));
  core::set_threads(threads_of(state));
  core::Buffer in = random_buffer(batch * g.in_size(), 5), out(batch * g.out_size()),
               out_grad = random_buffer(batch * g.out_size(), 6), in_grad(batch * g.in_size());
  std::vector<std::int32_t> argmax(batch * g.out_size());
  core::maxpool_forward(out.data(), argmax.data(), in.data(), g, batch);
  for (auto _ : state) {
    core::maxpool_backward(in_grad.data(), out_grad.data(), argmax.data(), g, batch);
    benchmark::DoNotOptimize(in_grad.data());
    benchmark::ClobberMemory();
  }
  set_byte_counter(state, 4.0 * batch * (g.in_size() + 2 * g.out_size()));
}

void avgpool_forward(benchmark::State& state, const core::PoolGeometry& g) {
  const int batch = int(state.range(0));
  core::set_threads(threads_of(state));
  core::Buffer in = random_buffer(batch * g.in_size(), 5), out(batch * g.out_size());
  for (auto _ : state) {
    core::avgpool_forward(out.data(), in.data(), g, batch);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_byte_counter(state, 4.0 * batch * (g.in_size() + g.out_size()));
}

void avgpool_backward(benchmark::State& state, const core::PoolGeometry& g) {
  const int batch = int(state.range(0));
  core::set_threads(threads_of(state));
  core::Buffer out_grad = random_buffer(batch * g.out_size(), 6), in_grad(batch * g.in_size());
  for (auto _ : state) {
    core::avgpool_backward(in_grad.data(), out_grad.data(), g, batch);
    benchmark::DoNotOptimize(in_grad.data());
    benchmark::ClobberMemory();
  }
  set_byte_counter(state, 4.0 * batch * (g.in_size() + g.out_size()));
}

void dense_forward(benchmark::State& state, int inputs, int outputs) {
  const int batch = int(state.range(0));
  core::set_threads(threads_of(state));
  core::Buffer in = random_buffer(std::size_t(batch) * inputs, 7), weight = random_buffer(std::size_t(outputs) * inputs, 8, 0.05f),
               bias = random_buffer(outputs, 9), out(std::size_t(batch) * outputs);
  for (auto _ : state) {
    core::dense_forward(out.data(), in.data(), weight.data(), bias.data(), batch, inputs, outputs);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(state, 2.0 * batch * inputs * outputs, threads_of(state));
}

void dense_backward(benchmark::State& state, int inputs, int outputs) {
  const int batch = int(state.range(0));
  core::set_threads(threads_of(state));
  core::Buffer in = random_buffer(std::size_t(batch) * inputs, 7), weight = random_buffer(std::size_t(outputs) * inputs, 8, 0.05f),
               out_grad = random_buffer(std::size_t(batch) * outputs, 10), in_grad(std::size_t(batch) * inputs),
               weight_grad(std::size_t(outputs) * inputs), bias_grad(outputs);
  for (auto _ : state) {
    core::dense_backward(in_grad.data(), weight_grad.data(), bias_grad.data(), out_grad.data(), in.data(),
                         weight.data(), batch, inputs, outputs);
    benchmark::DoNotOptimize(weight_grad.data());
    benchmark::ClobberMemory();
  }
  set_flop_counters(state, 4.0 * batch * inputs * outputs, threads_of(state));  // dX and dW
}

// ReLU on conv1's output, the largest activation in the network.
void relu_forward(benchmark::State& state) {
  const int batch = int(state.range(0));
  const std::size_t n = batch * kConv1.out_size();
  core::set_threads(threads_of(state));
  core::Buffer in = random_buffer(n, 11), out(n);
  for (auto _ : state) {
    core::activation_forward(out.data(), in.data(), n, core::Activation::relu, 0.0f);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_byte_counter(state, 8.0 * n);
}

void relu_backward(benchmark::State& state) {
  const int batch = int(state.range(0));
  const std::size_t n = batch * kConv1.out_size();
  core::set_threads(threads_of(state));
  core::Buffer in = random_buffer(n, 11), out(n), out_grad = random_buffer(n, 12), in_grad(n);
  core::activation_forward(out.data(), in.data(), n, core::Activation::relu, 0.0f);
  for (auto _ : state) {
    core::activation_backward(in_grad.data(), out_grad.data(), in.data(), out.data(), n, core::Activation::relu, 0.0f);
    benchmark::DoNotOptimize(in_grad.data());
    benchmark::ClobberMemory();
  }
  set_byte_counter(state, 12.0 * n);
}

// GFLOP/s, peak share and img/s of one forward and backward pass of the reference CNN.
void set_pass_counters(benchmark::State& state, int batch) {
  const double macs = 2 * conv_macs(kConv1, batch) + 3 * conv_macs(kConv2, batch) +
                      3.0 * batch * (kDenseIn * kDenseHidden + kDenseHidden * kClasses);
  set_flop_counters(state, 2.0 * macs, threads_of(state));
  state.counters["img/s"] = benchmark::Counter(batch, benchmark::Counter::kIsIterationInvariantRate);
}

// The whole network's forward and backward pass through the kernels alone, one layer at a time
// (no loss, no optimizer, no layer objects, the ReLUs as passes of their own): model_pass below
// is the pass as the trainer runs it.
void reference_cnn_pass(benchmark::State& state) {
  const int batch = int(state.range(0));
  core::set_threads(threads_of(state));
  const std::size_t n = batch;
  core::Buffer x = random_buffer(n * kConv1.in_size(), 1);
  core::Buffer w1 = random_buffer(kConv1.filters * kConv1.col_rows(), 2, 0.2f), b1(kConv1.filters),
               w2 = random_buffer(kConv2.filters * kConv2.col_rows(), 3, 0.05f), b2(kConv2.filters),
               w3 = random_buffer(std::size_t(kDenseHidden) * kDenseIn, 4, 0.04f), b3(kDenseHidden),
               w4 = random_buffer(std::size_t(kClasses) * kDenseHidden, 5, 0.1f), b4(kClasses);
  core::Buffer dw1(w1.size()), db1(b1.size()), dw2(w2.size()), db2(b2.size()), dw3(w3.size()), db3(b3.size()),
               dw4(w4.size()), db4(b4.size());
  core::Buffer c1(n * kConv1.out_size()), r1(c1.size()), p1(n * kPool1.out_size()),
               c2(n * kConv2.out_size()), r2(c2.size()), p2(n * kPool2.out_size()),
               d1(n * kDenseHidden), r3(d1.size()), logits(n * kClasses);
  core::Buffer g_logits = random_buffer(logits.size(), 6, 0.01f), g_r3(r3.size()), g_d1(d1.size()), g_p2(p2.size()),
               g_r2(r2.size()), g_c2(c2.size()), g_p1(p1.size()), g_r1(r1.size()), g_c1(c1.size());
  std::vector<std::int32_t> a1(p1.size()), a2(p2.size());
  core::Buffer ws1(core::conv2d_workspace_size(kConv1, batch)), ws2(core::conv2d_workspace_size(kConv2, batch));
  const auto relu = core::Activation::relu;
  for (auto _ : state) {
    core::conv2d_forward(c1.data(), ws1.data(), x.data(), w1.data(), b1.data(), kConv1, batch);
    core::activation_forward(r1.data(), c1.data(), c1.size(), relu, 0.0f);
    core::maxpool_forward(p1.data(), a1.data(), r1.data(), kPool1, batch);
    core::conv2d_forward(c2.data(), ws2.data(), p1.data(), w2.data(), b2.data(), kConv2, batch);
    core::activation_forward(r2.data(), c2.data(), c2.size(), relu, 0.0f);
    core::maxpool_forward(p2.data(), a2.data(), r2.data(), kPool2, batch);
    core::dense_forward(d1.data(), p2.data(), w3.data(), b3.data(), batch, kDenseIn, kDenseHidden);
    core::activation_forward(r3.data(), d1.data(), d1.size(), relu, 0.0f);
    core::dense_forward(logits.data(), r3.data(), w4.data(), b4.data(), batch, kDenseHidden, kClasses);

    core::dense_backward(g_r3.data(), dw4.data(), db4.data(), g_logits.data(), r3.data(), w4.data(), batch,
                         kDenseHidden, kClasses);
    core::activation_backward(g_d1.data(), g_r3.data(), d1.data(), r3.data(), d1.size(), relu, 0.0f);
    core::dense_backward(g_p2.data(), dw3.data(), db3.data(), g_d1.data(), p2.data(), w3.data(), batch, kDenseIn,
                         kDenseHidden);
    core::maxpool_backward(g_r2.data(), g_p2.data(), a2.data(), kPool2, batch);
    core::activation_backward(g_c2.data(), g_r2.data(), c2.data(), r2.data(), c2.size(), relu, 0.0f);
    core::conv2d_backward(g_p1.data(), dw2.data(), db2.data(), ws2.data(), g_c2.data(), p1.data(), w2.data(), kConv2,
                          batch);
    core::maxpool_backward(g_r1.data(), g_p1.data(), a1.data(), kPool1, batch);
    core::activation_backward(g_c1.data(), g_r1.data(), c1.data(), r1.data(), c1.size(), relu, 0.0f);
    core::conv2d_backward(static_cast<float*>(nullptr), dw1.data(), db1.data(), ws1.data(), g_c1.data(), x.data(), w1.data(), kConv1,
                          batch);
    benchmark::ClobberMemory();
  }
  set_pass_counters(state, batch);
}

// The pass as the trainer runs it, through core::Model (whose max pools apply the ReLUs before
// them, flatten being a view) with the loss: what the kernels give once the layers are joined.
void model_pass(benchmark::State& state) {
  const int batch = int(state.range(0));
  core::set_threads(threads_of(state));
  mpicnn::bench::ReferencePass pass(batch);
  for (auto _ : state) {
    pass.model().params().zero_grads();
    benchmark::DoNotOptimize(pass.run());
    benchmark::ClobberMemory();
  }
  set_pass_counters(state, batch);
}

// One SGD-with-momentum update of the reference CNN's whole parameter arena, once per step in
// training: it reads the gradient, weight and momentum and writes the last two (20 bytes each).
void sgd_momentum_step(benchmark::State& state) {
  core::set_threads(int(state.range(0)));
  core::Model model(mpicnn::bench::kReferenceSpec, {1, 28, 28}, 1);
  core::Optimizer sgd({.name = "sgd", .momentum = 0.9}, model.params().size());
  for (auto _ : state) {
    sgd.step(model.params(), 1e-3);
    benchmark::ClobberMemory();
  }
  set_byte_counter(state, 20.0 * double(model.params().size()));
}

// fma_chains on every thread at once: what `peak` should divide by.
void fma_peak(benchmark::State& state) {
  const int threads = int(state.range(0));
  core::set_threads(threads);
  constexpr long kRounds = 1 << 20;
  std::vector<float> sink(threads);
  double flops = 0.0;
  for (auto _ : state) {
    flops = 0.0;
    core::parallel_for(threads, 1e12, [&](std::size_t t) { fma_chains(kRounds, &sink[t]); });
    benchmark::DoNotOptimize(sink.data());
  }
  float probe = 0.0f;
  flops = fma_chains(1, &probe) * kRounds * threads;
  if (flops == 0.0) state.SkipWithError("built without FMA instructions (configure with MPICNN_NATIVE=ON)");
  set_flop_counters(state, flops, threads);
}

// With --benchmark_repetitions=N, also the fastest repetition: on a shared machine other work only
// ever slows a run down, so the minimum is the steadiest estimate of what the kernel costs.
void with_min(benchmark::internal::Benchmark* b) {
  b->UseRealTime();
  b->ComputeStatistics("min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
}

// Batch sizes: the trainer's micro-batch under the exact gradient sum (train.micro_batch = 16), a
// rank's share of the global batch 64 on 2 ranks, and the whole batch.
void batches_threads(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "threads"});
  for (int batch : {16, 32, 64})
    for (int threads : {1, 2}) b->Args({batch, threads});
  with_min(b);
}

// conv1's input gradient is never needed (dx 0 only); conv2 runs with and without it, so dX's rate follows.
void conv1_backward_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "threads", "dx"});
  for (int batch : {16, 32, 64})
    for (int threads : {1, 2}) b->Args({batch, threads, 0});
  with_min(b);
}

void conv2_backward_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "threads", "dx"});
  for (int batch : {16, 32, 64})
    for (int threads : {1, 2})
      for (int dx : {0, 1}) b->Args({batch, threads, dx});
  with_min(b);
}

}  // namespace

BENCHMARK(fma_peak)->ArgName("threads")->Arg(1)->Arg(2)->Apply(with_min);
BENCHMARK_CAPTURE(conv_forward, conv1, kConv1)->Apply(batches_threads);
BENCHMARK_CAPTURE(conv_forward, conv2, kConv2)->Apply(batches_threads);
BENCHMARK_CAPTURE(conv_backward, conv1, kConv1)->Apply(conv1_backward_args);
BENCHMARK_CAPTURE(conv_backward, conv2, kConv2)->Apply(conv2_backward_args);
BENCHMARK_CAPTURE(maxpool_forward, pool1, kPool1)->Apply(batches_threads);
BENCHMARK_CAPTURE(maxpool_backward, pool1, kPool1)->Apply(batches_threads);
BENCHMARK_CAPTURE(maxpool_forward, pool2, kPool2)->Apply(batches_threads);
BENCHMARK_CAPTURE(maxpool_backward, pool2, kPool2)->Apply(batches_threads);
BENCHMARK_CAPTURE(avgpool_forward, pool1, kPool1)->Apply(batches_threads);
BENCHMARK_CAPTURE(avgpool_backward, pool1, kPool1)->Apply(batches_threads);
BENCHMARK_CAPTURE(dense_forward, fc1, kDenseIn, kDenseHidden)->Apply(batches_threads);
BENCHMARK_CAPTURE(dense_backward, fc1, kDenseIn, kDenseHidden)->Apply(batches_threads);
BENCHMARK_CAPTURE(dense_forward, fc2, kDenseHidden, kClasses)->Apply(batches_threads);
BENCHMARK_CAPTURE(dense_backward, fc2, kDenseHidden, kClasses)->Apply(batches_threads);
BENCHMARK(relu_forward)->Apply(batches_threads);
BENCHMARK(relu_backward)->Apply(batches_threads);
BENCHMARK(reference_cnn_pass)->Apply(batches_threads);
BENCHMARK(model_pass)->Apply(batches_threads);
BENCHMARK(sgd_momentum_step)->ArgName("threads")->Arg(1)->Arg(2)->Apply(with_min);

BENCHMARK_MAIN();
