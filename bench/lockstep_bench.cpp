// What lockstep costs on this machine, apart from our trainer's communication: every rank does a
// fixed share of a fixed amount of work per step, then all ranks meet in a one-number
// MPI_Allreduce, as a synchronous data-parallel step does. Against 1 rank doing the whole step's
// work, 2 ranks can reach at most 2x; what they lose below that is the machine making one core
// slower than the other for a while (the hypervisor's time slices, other tenants), which no
// synchronous trainer can hide: the step waits for the slower rank. bench/compare.py runs it
// next to our 2x1.
//
// --work model (default): the reference CNN's forward and backward passes through core::Model on
//   fixed random images, --units micro-batches of 16 per step over all ranks (4: batch 64). What
//   our trainer adds to this is the gradient sum, the optimizer and the reader.
// --work fma: --units blocks of multiply-adds on L1-resident data (no memory traffic at all).
//
//   mpirun -np 2 --bind-to core build/bench/lockstep_bench --steps 300
// prints one JSON line: steps/s, images/s (model work; 0 for fma), the step time and the mean
// share of it spent waiting.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "bench/reference_pass.hpp"
#include "core/parallel.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace mpicnn;

constexpr int kMicroBatch = 16;

// One unit: a few hundredths of a millisecond of multiply-adds in 16 independent chains (the FMA
// units' pace, like the convolution kernels); acc tends to 1, so it never overflows.
double fma_work(int units) {
  static const std::vector<float> a(4096, 0.999f), b(4096, 0.001f);
  float acc[16] = {};
  for (int u = 0; u < units; ++u)
    for (int rep = 0; rep < 16; ++rep)
      for (std::size_t i = 0; i < a.size(); i += 16)
        for (int k = 0; k < 16; ++k) acc[k] = acc[k] * a[i + k] + b[i + k];
  double s = 0;
  for (float x : acc) s += x;
  return s;
}

// One unit: forward and backward of one micro-batch, its gradients then zeroed (as the exact
// reduction's layer_done leaves the arena).
class ModelWork {
 public:
  double run(int units) {
    double loss = 0;
    for (int u = 0; u < units; ++u) {
      loss += pass_.run().sum;
      pass_.model().params().zero_grads();
    }
    return loss;
  }

 private:
  bench::ReferencePass pass_{kMicroBatch};
};

const char* option(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const std::string kind = option(argc, argv, "--work", "model");
  const int units = std::atoi(option(argc, argv, "--units", kind == "fma" ? "700" : "4")),
            steps = std::atoi(option(argc, argv, "--steps", "300")), warmup = std::atoi(option(argc, argv, "--warmup", "20"));
  if ((kind != "fma" && kind != "model") || units < ranks || steps < 1 || warmup < 0) {
    if (rank == 0)
      std::fprintf(stderr, "error: --work %s --units %d --steps %d --warmup %d: expected fma or model, units >= ranks (%d), "
                   "steps >= 1, warmup >= 0\n", kind.c_str(), units, steps, warmup, ranks);
    MPI_Finalize();
    return 2;
  }
  core::set_threads(1);
  std::optional<ModelWork> model;
  if (kind == "model") model.emplace();
  // This rank's share of the step's units, the shares differing by at most one.
  const int share = units / ranks + (rank < units % ranks ? 1 : 0);
  double sink = 0, waited = 0;
  Clock::time_point start;
  for (int step = 0; step < warmup + steps; ++step) {
    if (step == warmup) start = Clock::now(), waited = 0;
    double value = model ? model->run(share) : fma_work(share);
    const Clock::time_point computed = Clock::now();
    MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    waited += std::chrono::duration<double>(Clock::now() - computed).count();
    sink += value;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  double total_wait = 0;
  MPI_Reduce(&waited, &total_wait, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("{\"work\": \"%s\", \"ranks\": %d, \"units\": %d, \"steps_per_s\": %.3f, \"img_per_s\": %.1f, "
                "\"step_ms\": %.3f, \"wait_share_mean\": %.4f, \"checksum\": %.6g}\n",
                kind.c_str(), ranks, units, steps / seconds, model ? units * kMicroBatch * steps / seconds : 0.0,
                1e3 * seconds / steps, total_wait / ranks / seconds, sink);
  MPI_Finalize();
  return 0;
}
