// NodeSum under a real mpirun (CTest starts this binary on 3 ranks): sums over many generations are
// exact, and a rank that arrives late, when the others have already gone on to the next
// generation, still completes its own.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "distributed/comm.hpp"
#include "distributed/node_sum.hpp"

namespace mpicnn::dist {
namespace {

using Layers = std::vector<std::pair<std::size_t, std::size_t>>;

// Layer 1 holds no values (a ReLU's), layer 2 spans several chunks and ends inside one.
const Layers kLayers = {{0, 10}, {10, 10}, {10, 10 + 3 * 8192 + 5}, {10 + 3 * 8192 + 5, 10 + 3 * 8192 + 105}};
const std::size_t kSize = kLayers.back().second;

std::int64_t value(int rank, long generation, std::size_t i) {
  return (std::int64_t(rank) + 1) * 1000003 * std::int64_t(i + 1) + generation * (std::int64_t(1) << 40) - rank;
}

// help() until done; false after 20 s (a hang).
bool help_until_done(NodeSum& sum) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!sum.help())
    if (std::chrono::steady_clock::now() > deadline) return false;
  return true;
}

// One generation: fill, publish last layer first (as backward does), sum, check every value.
void run_generation(NodeSum& sum, const Communicator& comm, long generation, int late_rank) {
  sum.begin();
  std::int64_t* mine = sum.mine();
  for (std::size_t i = 0; i < kSize; ++i) mine[i] = value(comm.rank(), generation, i);
  const std::vector<std::uint32_t> maxima = {std::uint32_t(comm.rank() * 7 + generation), std::uint32_t(100 - comm.rank())};
  sum.set_maxima(maxima);
  for (int layer = int(kLayers.size()) - 1; layer >= 0; --layer) sum.publish(layer);
  // The late rank comes to sum only after the others have summed everything and gone on.
  if (comm.rank() == late_rank) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(help_until_done(sum)) << "generation " << generation << " never completed on rank " << comm.rank();
  for (std::size_t i = 0; i < kSize; ++i) {
    std::int64_t expected = 0;
    for (int r = 0; r < comm.size(); ++r) expected += value(r, generation, i);
    ASSERT_EQ(sum.total()[i], expected) << "value " << i << ", generation " << generation;
  }
  std::vector<std::uint32_t> largest(2);
  sum.maxima(largest);
  EXPECT_EQ(largest[0], std::uint32_t((comm.size() - 1) * 7 + generation));
  EXPECT_EQ(largest[1], 100u);
  // No barrier: the total is rewritten only after this rank has published the next generation.
}

TEST(NodeSum, ExactOverManyGenerations) {
  const Communicator comm;
  NodeSum sum(comm, kLayers, kSize, 2);
  for (long g = 1; g <= 50; ++g) run_generation(sum, comm, g, -1);
}

TEST(NodeSum, ALateRankCompletesItsGenerationWhenTheOthersAreAhead) {
  const Communicator comm;
  NodeSum sum(comm, kLayers, kSize, 2);
  for (long g = 1; g <= 6; ++g) run_generation(sum, comm, g, int(g % comm.size()));
}

}  // namespace
}  // namespace mpicnn::dist

int main(int argc, char** argv) {
  mpicnn::dist::Environment environment(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) delete ::testing::UnitTest::GetInstance()->listeners().Release(
      ::testing::UnitTest::GetInstance()->listeners().default_result_printer());
  return RUN_ALL_TESTS();
}
