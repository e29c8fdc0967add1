#include "balanced_sampler.hpp"

#include <algorithm>
#include <map>
#include <string>

#include "core/errors.hpp"
#include "core/rng.hpp"

namespace mpicnn::data {

BalancedSampler::BalancedSampler(std::span<const std::int32_t> labels, BalancedSampling sampling) : sampling_(sampling) {
  if (sampling.identities_per_batch < 1)
    throw ConfigError("'data.identities_per_batch' must be >= 1, got " + std::to_string(sampling.identities_per_batch));
  if (sampling.images_per_identity < 1)
    throw ConfigError("'data.images_per_identity' must be >= 1, got " + std::to_string(sampling.images_per_identity));
  std::map<std::int32_t, std::vector<std::uint32_t>> by_label;
  for (std::size_t i = 0; i < labels.size(); ++i) by_label[labels[i]].push_back(std::uint32_t(i));
  for (auto& [label, images] : by_label) {
    if (int(images.size()) < sampling.images_per_identity)
      throw ConfigError("identity " + std::to_string(label) + " has " + std::to_string(images.size()) +
                        " images, fewer than 'data.images_per_identity' = " + std::to_string(sampling.images_per_identity));
    identities_.push_back(std::move(images));
  }
  if (int(identities_.size()) < sampling.identities_per_batch)
    throw ConfigError("'data.identities_per_batch' = " + std::to_string(sampling.identities_per_batch) +
                      " is more than the split's " + std::to_string(identities_.size()) + " identities");
}

std::vector<std::uint32_t> BalancedSampler::epoch_order(std::uint64_t seed, int epoch) const {
  core::Rng rng(core::derive_seed(seed, (2ull << 40) + std::uint64_t(epoch)));
  std::vector<std::uint32_t> identity_order(identities_.size());
  for (std::size_t i = 0; i < identity_order.size(); ++i) identity_order[i] = std::uint32_t(i);
  for (std::size_t i = identity_order.size(); i > 1; --i) std::swap(identity_order[i - 1], identity_order[rng.below(i)]);
  const std::size_t used = groups() * std::size_t(sampling_.identities_per_batch);
  const std::size_t k = std::size_t(sampling_.images_per_identity);
  std::vector<std::uint32_t> order;
  order.reserve(used * k);
  std::vector<std::uint32_t> images;
  for (std::size_t i = 0; i < used; ++i) {
    images = identities_[identity_order[i]];
    for (std::size_t j = 0; j < k; ++j) {
      std::swap(images[j], images[j + rng.below(images.size() - j)]);
      order.push_back(images[j]);
    }
  }
  return order;
}

}  // namespace mpicnn::data
