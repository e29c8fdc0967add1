#include "exact_sum.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/errors.hpp"
#include "core/parallel.hpp"

namespace mpicnn::dist {

ExactGradientSum::ExactGradientSum(const Communicator& comm, const core::ParamStore& params, int max_partials)
    : comm_(comm),
      infos_(params.infos()),
      arena_size_(params.size()),
      max_partials_(max_partials),
      stored_(std::size_t(max_partials) * params.size()),
      fixed_(params.size()),
      scales_(params.infos().size()) {}

void ExactGradientSum::add(const core::ParamStore& params) {
  if (partials_ == max_partials_) throw Error("internal: more micro-batch gradients than room for them");
  std::memcpy(stored_.data() + std::size_t(partials_++) * arena_size_, params.grads().data(), arena_size_ * sizeof(float));
}

bool ExactGradientSum::reduce(core::ParamStore& params, long global_partials, Watchdog& watchdog) {
  // 1. The largest magnitude of every parameter tensor over all contributions of all ranks.
  // A non-finite value makes the tensor's largest magnitude infinite on every rank.
  std::vector<float> largest(infos_.size(), 0.f);
  for (std::size_t p = 0; p < infos_.size(); ++p)
    for (int k = 0; k < partials_; ++k) {
      const float* g = stored_.data() + std::size_t(k) * arena_size_ + infos_[p].offset;
      bool finite = true;
      for (std::size_t i = 0; i < infos_[p].size; ++i) {
        largest[p] = std::max(largest[p], std::abs(g[i]));
        finite &= std::isfinite(g[i]);
      }
      if (!finite) largest[p] = INFINITY;
    }
  MPI_Request request;
  check(MPI_Iallreduce(MPI_IN_PLACE, largest.data(), int(largest.size()), MPI_FLOAT, MPI_MAX, comm_.handle(), &request),
        "MPI_Iallreduce");
  watchdog.wait(std::span<MPI_Request>(&request, 1), "the gradient scale allreduce");
  // 2. A scale per tensor, a power of two, so that the sum of all contributions stays below 2^62.
  const int headroom = int(std::ceil(std::log2(double(std::max(1L, global_partials))))) + 1;
  bool finite = true;
  for (std::size_t p = 0; p < infos_.size(); ++p) {
    finite &= std::isfinite(largest[p]);
    int exponent = 0;
    std::frexp(largest[p], &exponent);  // largest < 2^exponent
    scales_[p] = largest[p] > 0 ? std::ldexp(1.0, 62 - headroom - exponent) : 1.0;
  }
  // 3. Round every contribution onto the grid and add (exact); then sum across ranks (exact).
  core::parallel_for(infos_.size(), 2.0 * partials_ * 1e4, [&](std::size_t p) {
    const core::ParamInfo& info = infos_[p];
    std::int64_t* sum = fixed_.data() + info.offset;
    std::fill(sum, sum + info.size, 0);
    if (!std::isfinite(largest[p])) return;  // rounding NaN or infinity to an integer is undefined
    for (int k = 0; k < partials_; ++k) {
      const float* g = stored_.data() + std::size_t(k) * arena_size_ + info.offset;
      // Truncation toward zero: any fixed rounding rule is exact enough at 2^-59 of the largest
      // value, and this one compiles to one vector instruction (llrint is a library call).
      const double scale = scales_[p];
      for (std::size_t i = 0; i < info.size; ++i) sum[i] += static_cast<std::int64_t>(double(g[i]) * scale);
    }
  });
  check(MPI_Iallreduce(MPI_IN_PLACE, fixed_.data(), int(fixed_.size()), MPI_INT64_T, MPI_SUM, comm_.handle(), &request),
        "MPI_Iallreduce");
  watchdog.wait(std::span<MPI_Request>(&request, 1), "the gradient allreduce");
  float* grads = params.grads().data();
  for (std::size_t p = 0; p < infos_.size(); ++p) {
    const core::ParamInfo& info = infos_[p];
    const double unscale = std::isfinite(largest[p]) ? 1.0 / scales_[p] : NAN;
    for (std::size_t i = 0; i < info.size; ++i) grads[info.offset + i] = float(double(fixed_[info.offset + i]) * unscale);
  }
  return finite;
}

}  // namespace mpicnn::dist
