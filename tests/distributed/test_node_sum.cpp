// NodeSum under a real mpirun (CTest starts this binary on 3 ranks): sums over many generations are
// exact, a rank that arrives late, when the others have already gone on to the next generation,
// still completes its own, and layers without parameters after the last one are ignored. And the
// hang detector's pings on 3 ranks.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "distributed/comm.hpp"
#include "distributed/node_sum.hpp"
#include "distributed/watchdog.hpp"

namespace mpicnn::dist {
namespace {

using Layers = std::vector<std::pair<std::size_t, std::size_t>>;

// Layer 1 holds no values (a ReLU's), layer 2 spans several chunks and ends inside one.
const Layers kLayers = {{0, 10}, {10, 10}, {10, 10 + 3 * 8192 + 5}, {10 + 3 * 8192 + 5, 10 + 3 * 8192 + 105}};

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

// One generation: fill, publish the last layer first as backward does (`trailing` more layers
// without parameters after those NodeSum knows, as a model ending in a ReLU has), sum, check.
void run_generation(NodeSum& sum, const Layers& layers, const Communicator& comm, long generation, int late_rank,
                    int trailing = 0) {
  const std::size_t size = layers.back().second;
  sum.begin();
  std::int64_t* mine = sum.mine();
  for (std::size_t i = 0; i < size; ++i) mine[i] = value(comm.rank(), generation, i);
  const std::vector<std::uint32_t> maxima = {std::uint32_t(comm.rank() * 7 + generation), std::uint32_t(100 - comm.rank())};
  sum.set_maxima(maxima);
  for (int layer = int(layers.size()) + trailing - 1; layer >= 0; --layer) sum.publish(layer);
  // The late rank comes to sum only after the others have summed everything and gone on.
  if (comm.rank() == late_rank) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(help_until_done(sum)) << "generation " << generation << " never completed on rank " << comm.rank();
  for (std::size_t i = 0; i < size; ++i) {
    std::int64_t expected = 0;
    for (int r = 0; r < comm.size(); ++r) expected += value(r, generation, i);
    ASSERT_EQ(sum.total()[i], expected) << "value " << i << ", generation " << generation;
  }
  std::vector<std::uint32_t> largest(2);
  sum.maxima(largest);
  ASSERT_EQ(largest[0], std::uint32_t((comm.size() - 1) * 7 + generation)) << "generation " << generation;
  ASSERT_EQ(largest[1], 100u) << "generation " << generation;
  // No barrier: the total is rewritten only after this rank has published the next generation.
}

TEST(NodeSum, ExactOverManyGenerations) {
  const Communicator comm;
  NodeSum sum(comm, kLayers, kLayers.back().second, 2);
  for (long g = 1; g <= 50; ++g) run_generation(sum, kLayers, comm, g, -1);
}

TEST(NodeSum, ALateRankCompletesItsGenerationWhenTheOthersAreAhead) {
  const Communicator comm;
  NodeSum sum(comm, kLayers, kLayers.back().second, 2);
  for (long g = 1; g <= 6; ++g) run_generation(sum, kLayers, comm, g, int(g % comm.size()));
}

// Eight layers fill the published flags' cache line exactly; a ninth published layer (no
// parameters) must not spill into the maxima behind it.
TEST(NodeSum, LayersPastTheLastWithParametersAreIgnored) {
  const Communicator comm;
  Layers layers;
  for (std::size_t l = 0; l < 8; ++l) layers.push_back({l * 100, (l + 1) * 100});
  NodeSum sum(comm, layers, layers.back().second, 2);
  for (long g = 1; g <= 4; ++g) run_generation(sum, layers, comm, g, -1, 1);
}

// Across nodes, as the leader (the node's first rank) does with MPI between nodes: it sums the
// node total into the result (here: as if this node were one of two alike, twice the total) and
// releases it with the maxima; the others wait for the release, then find the result and the
// total apart, each right. A rank is late in turn, the leader among them; no rank may see a
// generation released before the leader has released it.
TEST(NodeSum, TheLeaderReleasesTheResultAcrossNodes) {
  const Communicator comm;
  NodeSum sum(comm, kLayers, kLayers.back().second, 2, true);
  const std::size_t size = kLayers.back().second;
  for (long g = 1; g <= 30; ++g) {
    sum.begin();
    for (std::size_t i = 0; i < size; ++i) sum.mine()[i] = value(comm.rank(), g, i);
    sum.set_maxima(std::vector<std::uint32_t>{std::uint32_t(comm.rank() + g), 0u});
    for (int layer = int(kLayers.size()) - 1; layer >= 0; --layer) sum.publish(layer);
    if (comm.rank() == int(g % comm.size())) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_TRUE(help_until_done(sum)) << "generation " << g;
    for (int layer = 0; layer < int(kLayers.size()); ++layer) ASSERT_TRUE(sum.layer_summed(layer)) << layer;
    if (comm.node_rank() == 0) {
      ASSERT_FALSE(sum.released()) << "released before the leader released generation " << g;
      for (std::size_t i = 0; i < size; ++i) sum.result()[i] = 2 * sum.node_total()[i];
      std::vector<std::uint32_t> largest(2);
      sum.maxima(largest);
      largest[1] = std::uint32_t(g);
      sum.release(largest);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!sum.released()) ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "generation " << g << " never released";
    for (std::size_t i = 0; i < size; ++i) {
      std::int64_t expected = 0;
      for (int r = 0; r < comm.size(); ++r) expected += value(r, g, i);
      ASSERT_EQ(sum.result()[i], 2 * expected) << "value " << i << ", generation " << g;
      ASSERT_EQ(sum.total()[i], expected) << "value " << i << ", generation " << g;
    }
    std::vector<std::uint32_t> released(2);
    sum.released_maxima(released);
    ASSERT_EQ(released[0], std::uint32_t(comm.size() - 1 + g)) << "generation " << g;
    ASSERT_EQ(released[1], std::uint32_t(g)) << "generation " << g;
  }
}

// The hang detector's pings, with one rank stuck outside MPI after it arrived (as a stopped rank
// is): rank 0 must name that rank alone, not also the ranks that answered.
TEST(Watchdog, NamesOnlyTheRankThatDoesNotAnswer) {
  const Communicator comm;
  Watchdog watchdog(comm, 1.0);
  watchdog.arrived("probe");
  const int stuck = comm.size() - 1;
  if (comm.rank() == stuck) std::this_thread::sleep_for(std::chrono::seconds(4));  // rank 0 reports at about 3 s
  MPI_Request barrier = MPI_REQUEST_NULL;
  MPI_Ibarrier(MPI_COMM_WORLD, &barrier);
  std::string report;
  try {
    watchdog.wait(std::span(&barrier, 1), "the probe");  // the stuck rank answers rank 0's ping in here
  } catch (const HangError& error) {
    report = error.what();
    MPI_Wait(&barrier, MPI_STATUS_IGNORE);
  }
  if (comm.rank() == 0) {
    EXPECT_THAT(report, ::testing::EndsWith("ranks not responding: " + std::to_string(stuck) + " (stopped?)"));
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// A failed check on one rank would leave the others waiting for it: end the job at once instead,
// naming the rank (only rank 0 prints the usual gtest output).
class AbortOnFailure : public ::testing::EmptyTestEventListener {
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.message());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
};

}  // namespace
}  // namespace mpicnn::dist

int main(int argc, char** argv) {
  mpicnn::dist::Environment environment(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new mpicnn::dist::AbortOnFailure);
  return RUN_ALL_TESTS();
}
