#pragma once
// The one door to threading. Work is split into a fixed list of items whose results do not depend
// on which thread runs them or how many threads exist: that is what keeps training bitwise identical
// for any thread count.
#include <cstddef>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>

namespace mpicnn::core {

// Below this many floating-point operations a loop runs serially: a task costs ~1 us to schedule.
constexpr double kSerialFlops = 2e5;

// Calls body(i) for every i in [0, n). `flops_per_item` decides whether threads are worth it.
template <class Body>
void parallel_for(std::size_t n, double flops_per_item, Body&& body) {
  if (n <= 1 || double(n) * flops_per_item < kSerialFlops) {
    for (std::size_t i = 0; i < n; ++i) body(i);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<std::size_t>(0, n, 1),
                    [&](const tbb::blocked_range<std::size_t>& r) {
                      for (std::size_t i = r.begin(); i != r.end(); ++i) body(i);
                    },
                    tbb::simple_partitioner());
}

// Sets the process-wide thread count once (0 = all cores TBB sees). Later calls replace it. Also
// switches the calling thread to flush denormals to zero (see parallel.cpp): call it before any
// parallel work.
void set_threads(int threads);
int max_threads();

}  // namespace mpicnn::core
