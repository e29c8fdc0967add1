#pragma once
// Global-batch BatchNorm (model.bn_statistics = global_batch) runs a rank's micro-batches layer by
// layer: every plain layer runs once per micro-batch, exactly as in a pass of its own, and each
// BatchNorm stops there until the per-micro-batch partial sums of every rank have been exchanged.
// Summed in global micro-batch order, those partials give statistics that do not depend on the
// rank count. core/ states what it needs exchanged; distributed/ moves the bytes.
#include <algorithm>
#include <span>
#include <string>
#include <vector>

namespace mpicnn::core {

// One micro-batch of a layer-synchronous pass: samples [start, start + count) of this rank's
// batch, at global position `first_sample` of the step, global micro-batch `index`.
struct MicroBatch {
  int start = 0, count = 0;
  long first_sample = 0;
  int index = 0;
};

// Sums tables of per-micro-batch partials across ranks. A table holds one row per global
// micro-batch; each rank writes the rows of its own micro-batches and leaves the others zero,
// so the sum of a row is that rank's value exactly, whatever order the ranks add in.
class BatchExchange {
 public:
  virtual ~BatchExchange() = default;
  // Global micro-batches of the step: the table's rows.
  virtual int micro_batches() const = 0;
  // Every rank calls it with the same table size at the same point of the pass (a rank without
  // samples too, with a table of zeros); `what` names the exchange and its layer in errors (a rank that is gone).
  virtual void sum(std::span<double> table, const std::string& what) = 0;
};

// One process holds every micro-batch: nothing to exchange.
class LocalExchange final : public BatchExchange {
 public:
  explicit LocalExchange(int micro_batches) : micro_batches_(micro_batches) {}
  int micro_batches() const override { return micro_batches_; }
  void sum(std::span<double>, const std::string&) override {}

 private:
  int micro_batches_;
};

// The micro-batches of `count` samples at global position `first` (a multiple of `size`): this
// rank's share of a global batch cut into micro-batches of `size`.
inline std::vector<MicroBatch> micro_batches_of(int count, long first, int size) {
  std::vector<MicroBatch> batches;
  for (int start = 0; start < count; start += size)
    batches.push_back({start, std::min(size, count - start), first + start, int((first + start) / size)});
  return batches;
}

}  // namespace mpicnn::core
