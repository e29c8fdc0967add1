// What lockstep costs on this machine, apart from any trainer: every rank does a fixed share of a
// fixed amount of arithmetic per step, then all ranks meet in a one-number MPI_Allreduce, as a
// synchronous data-parallel step does. Against 1 rank doing the whole step's work, 2 ranks can
// reach at most 2x; what they lose below that is the machine making one core slower than the
// other for a while (the hypervisor's time slices, other tenants), which no synchronous trainer
// can hide: the step waits for the slower rank. bench/compare.py runs it next to our 2x1.
//
//   mpirun -np 2 build/bench/lockstep_bench --units 160 --steps 300
// prints one JSON line: steps/s, the step time and the mean share of it spent waiting.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// One unit: ~0.1-0.2 ms of multiply-adds on L1-resident data, in 16 independent chains so that
// the loop runs at the FMA units' pace like the convolution kernels (acc tends to 1: no overflow).
float work(int units, const std::vector<float>& a, const std::vector<float>& b) {
  float acc[16] = {};
  for (int u = 0; u < units; ++u)
    for (int rep = 0; rep < 16; ++rep)
      for (std::size_t i = 0; i < a.size(); i += 16)
        for (int k = 0; k < 16; ++k) acc[k] = acc[k] * a[i + k] + b[i + k];
  float s = 0;
  for (float x : acc) s += x;
  return s;
}

int option(int argc, char** argv, const char* name, int fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const int units = option(argc, argv, "--units", 160), steps = option(argc, argv, "--steps", 300),
            warmup = option(argc, argv, "--warmup", 20);
  if (units < ranks || steps < 1 || warmup < 0) {
    if (rank == 0) std::fprintf(stderr, "error: expected --units >= ranks (%d), --steps >= 1, --warmup >= 0\n", ranks);
    MPI_Finalize();
    return 2;
  }
  // This rank's share of the step's units, the shares differing by at most one.
  const int share = units / ranks + (rank < units % ranks ? 1 : 0);
  const std::vector<float> a(4096, 0.999f), b(4096, 0.001f);
  double sink = 0, waited = 0;
  Clock::time_point start;
  for (int step = 0; step < warmup + steps; ++step) {
    if (step == warmup) start = Clock::now(), waited = 0;
    double value = work(share, a, b);
    const Clock::time_point computed = Clock::now();
    MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    waited += std::chrono::duration<double>(Clock::now() - computed).count();
    sink += value;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  double total_wait = 0;
  MPI_Reduce(&waited, &total_wait, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("{\"ranks\": %d, \"units\": %d, \"steps_per_s\": %.3f, \"step_ms\": %.3f, \"wait_share_mean\": %.4f, "
                "\"checksum\": %.3g}\n",
                ranks, units, steps / seconds, 1e3 * seconds / steps, total_wait / ranks / seconds, sink);
  MPI_Finalize();
  return 0;
}
