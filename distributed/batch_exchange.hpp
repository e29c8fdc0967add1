#pragma once
// What global-batch BatchNorm (model.bn_statistics = global_batch) pauses for at each bn layer:
// a table of per-micro-batch partial sums, one row per global micro-batch, summed over all ranks
// by one blocking allreduce under the hang detector. Each row is written by one rank and zero on
// the others, so the sum is exact in any order; core/batchnorm.cpp then adds the rows in order.
#include <string>

#include "core/micro_batches.hpp"
#include "distributed/watchdog.hpp"

namespace mpicnn::dist {

class BatchStatisticsExchange final : public core::BatchExchange {
 public:
  explicit BatchStatisticsExchange(Watchdog& watchdog) : watchdog_(watchdog) {}
  // The step's global micro-batches (exact reduction), or ranks (fast): the tables' rows.
  void begin_step(int micro_batches) { micro_batches_ = micro_batches; }
  int micro_batches() const override { return micro_batches_; }
  void sum(std::span<double> table, const std::string& what) override {
    watchdog_.allreduce_sum(table, what);
  }

 private:
  Watchdog& watchdog_;
  int micro_batches_ = 0;
};

}  // namespace mpicnn::dist
