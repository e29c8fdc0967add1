// The P x K sampler: groups of P identities x K images, a pure function of (seed, epoch), the
// same global batches for any rank count, and its errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "core/errors.hpp"
#include "datasets/balanced_sampler.hpp"
#include "datasets/reader.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

// 11 identities with 3 to 8 images each, interleaved as a real split would be.
std::vector<std::int32_t> labels_of_split() {
  std::vector<std::int32_t> labels;
  for (int round = 0; round < 8; ++round)
    for (int identity = 0; identity < 11; ++identity)
      if (round < 3 + identity % 6) labels.push_back(identity * 7 + 100);  // labels need not be 0..n-1
  return labels;
}

TEST(BalancedSampler, GroupsHoldPIdentitiesOfKDistinctImages) {
  const std::vector<std::int32_t> labels = labels_of_split();
  const BalancedSampler sampler(labels, {4, 3});
  EXPECT_EQ(sampler.groups(), 2u);  // 11 identities: 2 groups of 4, 3 wait for another epoch
  const std::vector<std::uint32_t> order = sampler.epoch_order(5, 0);
  ASSERT_EQ(order.size(), 24u);
  std::set<std::int32_t> identities_of_epoch;
  for (std::size_t g = 0; g < 2; ++g) {
    std::map<std::int32_t, std::set<std::uint32_t>> images;
    for (std::size_t i = g * 12; i < (g + 1) * 12; ++i) images[labels[order[i]]].insert(order[i]);
    EXPECT_EQ(images.size(), 4u) << "group " << g;
    for (const auto& [identity, set] : images) {
      EXPECT_EQ(set.size(), 3u) << "identity " << identity;
      EXPECT_TRUE(identities_of_epoch.insert(identity).second) << "identity " << identity << " twice in an epoch";
    }
    for (std::size_t i = g * 12; i < (g + 1) * 12; i += 3)  // an identity's K images are consecutive
      EXPECT_EQ(labels[order[i]], labels[order[i + 2]]);
  }
}

TEST(BalancedSampler, OrderIsAPureFunctionOfSeedAndEpoch) {
  const std::vector<std::int32_t> labels = labels_of_split();
  const BalancedSampler a(labels, {3, 2}), b(labels, {3, 2});
  EXPECT_EQ(a.epoch_order(9, 4), b.epoch_order(9, 4));
  EXPECT_NE(a.epoch_order(9, 4), a.epoch_order(9, 5));
  EXPECT_NE(a.epoch_order(9, 4), a.epoch_order(10, 4));
  // Over epochs every identity and (almost) every image comes up.
  std::set<std::uint32_t> seen;
  for (int epoch = 0; epoch < 40; ++epoch)
    for (std::uint32_t i : a.epoch_order(9, epoch)) seen.insert(i);
  EXPECT_EQ(seen.size(), labels.size());
}

// Ranks take contiguous whole micro-batches of each step's global batch (rank_slice, as the
// reader does): concatenated in rank order they are the global batch, for 1 to 5 ranks.
TEST(BalancedSampler, GlobalBatchesDoNotDependOnTheRankCount) {
  const std::vector<std::int32_t> labels = labels_of_split();
  const BalancedSampling pk{2, 3};
  const BalancedSampler sampler(labels, pk);
  const std::vector<std::uint32_t> order = sampler.epoch_order(1, 2);
  const std::size_t global_batch = 12;
  for (int ranks = 1; ranks <= 5; ++ranks)
    for (std::size_t first = 0; first < order.size(); first += global_batch) {
      const std::size_t total = std::min(global_batch, order.size() - first);
      std::vector<std::uint32_t> joined;
      for (int rank = 0; rank < ranks; ++rank) {
        const Slice part = rank_slice(total, rank, ranks, pk.group());
        EXPECT_EQ(part.first % std::size_t(pk.group()), 0u) << "a rank's part starts inside a P x K group";
        joined.insert(joined.end(), order.begin() + long(first + part.first), order.begin() + long(first + part.first + part.count));
      }
      EXPECT_EQ(joined, std::vector<std::uint32_t>(order.begin() + long(first), order.begin() + long(first + total)))
          << ranks << " ranks";
    }
}

// TrainReader with a balanced order: each step's global batch is the sampler's run of positions,
// split into whole micro-batches for 1, 2 and 3 ranks; every micro-batch holds whole identities.
TEST(BalancedSampler, DrivesTheTrainReaderForAnyRankCount) {
  testing::TempDir dir;
  const std::string path = dir.file("pk.h5");
  testing::write_indexed_dataset(path, 60, 3, {2, 3, 4}, 7);  // 7 identities, 8 or 9 images each
  std::vector<std::int32_t> labels(60);
  for (int i = 0; i < 60; ++i) labels[std::size_t(i)] = i % 7;
  const BalancedSampling pk{3, 4};
  const std::vector<std::uint32_t> expected = BalancedSampler(labels, pk).epoch_order(3, 1);  // 2 groups
  for (int ranks = 1; ranks <= 3; ++ranks) {
    std::vector<std::vector<long>> steps(1);
    for (int rank = 0; rank < ranks; ++rank) {
      ReaderOptions options;
      options.path = path, options.global_batch = 24, options.rank = rank, options.ranks = ranks, options.seed = 3;
      options.normalize = false, options.prefetch = false, options.micro_batch = 12, options.balanced = pk;
      TrainReader reader(options);
      ASSERT_EQ(reader.steps_per_epoch(), 1);
      reader.seek(1, 0);
      Batch batch;
      ASSERT_TRUE(reader.next(batch));
      EXPECT_EQ(batch.global_count, 24);
      EXPECT_EQ(batch.count % 12, 0) << "rank " << rank << " of " << ranks << " got part of a micro-batch";
      for (int i = 0; i < batch.count; ++i) steps[0].push_back(testing::sample_of(batch.images.data() + i * 24));
    }
    EXPECT_EQ(steps[0], std::vector<long>(expected.begin(), expected.end())) << ranks << " ranks";
  }
}

std::string error_of(const std::vector<std::int32_t>& labels, BalancedSampling pk) {
  try {
    BalancedSampler sampler(labels, pk);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(BalancedSampler, ErrorsNameTheKeyAndValue) {
  using ::testing::HasSubstr;
  const std::vector<std::int32_t> labels = labels_of_split();
  EXPECT_THAT(error_of(labels, {4, 4}), HasSubstr("identity 100 has 3 images, fewer than 'data.images_per_identity' = 4"));
  EXPECT_THAT(error_of(labels, {12, 2}), HasSubstr("'data.identities_per_batch' = 12 is more than the split's 11 identities"));
  EXPECT_THAT(error_of(labels, {0, 2}), HasSubstr("'data.identities_per_batch' must be >= 1, got 0"));
  EXPECT_THAT(error_of(labels, {2, 0}), HasSubstr("'data.images_per_identity' must be >= 1, got 0"));
  EXPECT_EQ(error_of(labels, {11, 3}), "no error");
}

}  // namespace
}  // namespace mpicnn::data
