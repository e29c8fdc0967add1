#pragma once
// Class-balanced P x K sampling for metric learning (issue 18): every group of P*K consecutive
// positions of an epoch's order holds P different identities with K different images each, so
// that a micro-batch of P*K samples (train.micro_batch) always has positives and negatives to mine.
//
// The order is a function of (labels, P, K, seed, epoch) alone: the global batch of step s is
// positions [s*B, (s+1)*B) of it, and rank r takes its contiguous part with rank_slice
// (datasets/reader.hpp, whole micro-batches), as for the shuffled order, so the samples of a step
// do not depend on the rank count.
//
// Per epoch (core::Rng seeded by core::derive_seed(seed, 2^41 + epoch)): the identities, in
// ascending label order, are shuffled (Fisher-Yates); each is used once, in groups of P (the last
// identities % P of the shuffle wait for another epoch); for each identity in that order, K of its
// images are drawn without replacement (a partial Fisher-Yates over its images in file order).
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace mpicnn::data {

struct BalancedSampling {
  int identities_per_batch = 0;  // P: data.identities_per_batch
  int images_per_identity = 0;   // K: data.images_per_identity
  int group() const { return identities_per_batch * images_per_identity; }
};

class BalancedSampler {
 public:
  // Throws ConfigError naming the key and value when P or K is below 1, when the split has fewer
  // than P identities, or for the first identity with fewer than K images.
  BalancedSampler(std::span<const std::int32_t> labels, BalancedSampling sampling);
  // The epoch's global order of sample indices: groups() * P * K positions.
  std::vector<std::uint32_t> epoch_order(std::uint64_t seed, int epoch) const;
  std::size_t groups() const { return identities_.size() / std::size_t(sampling_.identities_per_batch); }
  std::size_t samples_per_epoch() const { return groups() * std::size_t(sampling_.group()); }

 private:
  BalancedSampling sampling_;
  std::vector<std::vector<std::uint32_t>> identities_;  // each identity's sample indices, ascending
};

}  // namespace mpicnn::data
