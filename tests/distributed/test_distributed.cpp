// Data-parallel training under a real mpirun: N ranks reach the weights of one rank, evaluation is
// exact for any rank count, and resuming (also after a signal, also on another rank count)
// continues exactly where training stopped.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <tuple>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "core/rng.hpp"
#include "datasets/writer.hpp"
#include "io/checkpoint.hpp"

namespace fs = std::filesystem;

namespace mpicnn {
namespace {

const char* kSpec = "conv(8,3,pad=1) relu maxpool(2) conv(8,3) relu flatten dense(16) relu dense(4)";

fs::path work_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("mpicnn_dist_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

// Four classes of 12x12 images, each a bright quadrant plus noise; `train` samples in /train.
// More classes: class c lights quadrant c % 4, brighter by 20 per c / 4.
std::string make_dataset(const std::string& name, std::size_t train, std::size_t test, int classes = 4) {
  const std::string path = (work_dir() / name).string();
  if (fs::exists(path)) return path;
  std::vector<std::string> names;
  for (int c = 0; c < classes; ++c) names.push_back(classes == 4 ? std::string(1, char('a' + c)) : "id" + std::to_string(c));
  data::DatasetWriter writer(path, {classes, names});
  core::Rng rng(std::hash<std::string>{}(name));
  for (auto [split, count] : {std::pair{"train", train}, std::pair{"test", test}}) {
    writer.begin_split(split, {1, 12, 12}, count, true);
    for (std::size_t i = 0; i < count; ++i) {
      const int label = int(rng.below(std::uint64_t(classes)));
      const int quadrant = label % 4, brighter = 20 * (label / 4);
      std::vector<std::uint8_t> image(144);
      for (int y = 0; y < 12; ++y)
        for (int x = 0; x < 12; ++x) {
          const bool lit = (y < 6) == (quadrant < 2) && (x < 6) == (quadrant % 2 == 0);
          image[y * 12 + x] = std::uint8_t(std::clamp(rng.normal() * 40 + (lit ? 160 + brighter : 60), 0.0, 255.0));
        }
      writer.append(std::span<const std::uint8_t>(image), std::span<const std::int32_t>(&label, 1));
    }
  }
  writer.finish();
  return path;
}

struct CommandResult {
  int exit_code = -1;
  std::string output;
};

// Runs a shell command, capturing stdout and stderr.
CommandResult shell(const std::string& command) {
  const std::string log = (work_dir() / "last_command.log").string();
  CommandResult r;
  const int status = std::system((command + " > " + log + " 2>&1").c_str());
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  r.output = text.str();
  return r;
}

// mpirun refuses to run as root (the CI's user) without these two variables.
const std::string kAllowRoot = "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ";

std::string mpirun(int ranks) {
  return kAllowRoot + MPIEXEC + " --oversubscribe --bind-to none -np " + std::to_string(ranks) + " ";
}

// mpirun across two nodes of this machine: the hostfile names two hosts of 2 slots each (ranks
// fill node-a first), and tests/distributed/local_ssh.sh starts each host's daemon here. Two daemons
// on one machine cannot share Open MPI's shared-memory transport (their segments collide), so
// the ranks talk TCP over loopback, as ranks on different nodes do; shared windows still work.
std::string mpirun_on_two_nodes(int ranks) {
  const fs::path hosts = work_dir() / "two_nodes";
  std::ofstream(hosts) << "node-a slots=2\nnode-b slots=2\n";
  // 4 ranks on 2 cores: waiting ranks yield (Open MPI sees no oversubscription in 2 + 2 slots).
  return kAllowRoot + MPIEXEC + " --hostfile " + hosts.string() + " --mca plm_rsh_agent '/bin/sh " + LOCAL_SSH +
         "' --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo"
         " --mca mpi_yield_when_idle 1 --bind-to none -np " + std::to_string(ranks) + " ";
}

std::string train_command(const std::string& launcher, const std::string& data, const std::string& out,
                          const std::string& extra, const std::string& spec = kSpec) {
  return launcher + MPICNN_EXE + " train --data.path=" + data + " --model.spec='" + spec +
         "' --train.batch_size=64 --train.threads=1 --train.seed=3 --optimizer.lr=0.05 --optimizer.momentum=0.9"
         " --train.epochs=100 --train.progress=lines --train.log_interval=1000 --output " + out + " " + extra;
}

std::string train_command(int ranks, const std::string& data, const std::string& out, const std::string& extra,
                          const std::string& spec = kSpec) {
  return train_command(mpirun(ranks), data, out, extra, spec);
}

std::string train(int ranks, const std::string& data, const std::string& name, const std::string& extra,
                  const std::string& spec = kSpec) {
  const std::string out = (work_dir() / name).string();
  const CommandResult r = shell(train_command(ranks, data, out, extra, spec));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return out;
}

struct Weights {
  std::vector<float> values, momentum, state;  // state: BatchNorm running statistics, then counters
};

Weights load(const std::string& run_dir) {
  const std::string path = io::resolve_checkpoint(run_dir);
  const io::CheckpointHeader h = io::read_checkpoint_header(path);
  core::Model model(h.model.spec, h.model.input, 1);
  core::Optimizer optimizer(h.optimizer, model.params().size());
  io::load_checkpoint(path, model, &optimizer);
  const auto& v = model.params().values();
  const auto* m = optimizer.state().at(0).second;
  Weights w{{v.data(), v.data() + v.size()}, {m->data(), m->data() + m->size()}, {}};
  for (std::size_t i = 0; i < model.state().infos().size(); ++i) {
    const core::StateInfo& s = model.state().infos()[i];
    if (s.counter) w.state.push_back(float(model.state().counter(int(i))));
    else w.state.insert(w.state.end(), model.state().value(int(i)), model.state().value(int(i)) + s.size);
  }
  return w;
}

// max |a - b| / max |a|: the difference relative to the largest weight.
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(a[i])));
  }
  return diff / scale;
}

// Global batch 64 for 50 steps; 3200 samples (50 steps per epoch) and 1001 samples (divisible by
// neither 64 nor 2, 3 or 4: a partial last batch every 16 steps, where some ranks get fewer
// samples). With exact reduction (the default) every rank count gives bitwise the weights of one
// rank; with fast reduction the sums are rounded in another order, within 1e-5.
class Equivalence : public ::testing::TestWithParam<std::size_t> {};

// The "loss" of every progress record of a run, as written (all its digits).
std::vector<std::string> logged_losses(const std::string& run_dir) {
  std::ifstream metrics(run_dir + "/metrics.jsonl");
  std::vector<std::string> losses;
  for (std::string line; std::getline(metrics, line);) {
    const std::size_t at = line.find("\"loss\": ");
    if (line.find("\"kind\": \"train\"") == std::string::npos || at == std::string::npos) continue;
    const std::size_t begin = at + 8;
    losses.push_back(line.substr(begin, line.find_first_of(",}", begin) - begin));
  }
  return losses;
}

TEST_P(Equivalence, ExactReductionOneToFourRanksGiveBitwiseIdenticalWeights) {
  const std::size_t n = GetParam();
  const std::string data = make_dataset("eq" + std::to_string(n) + ".h5", n, 200);
  const std::string tag = std::to_string(n);
  const std::string one_dir = train(1, data, "ex1_" + tag, "--train.max_steps=50 --train.log_interval=10 --data.eval_split=none");
  const Weights one = load(one_dir);
  const std::vector<std::string> one_losses = logged_losses(one_dir);
  ASSERT_GE(one_losses.size(), 5u);
  // On one node the sums meet in shared memory; train.node_sum=mpi takes the path of ranks on
  // different nodes, MPI's allreduce.
  for (const auto& [ranks, node_sum] : {std::pair{2, "shared"}, {3, "shared"}, {4, "shared"}, {2, "mpi"}, {3, "mpi"}}) {
    const std::string name = "ex" + std::to_string(ranks) + node_sum + "_" + tag;
    const std::string dir = train(ranks, data, name, "--train.max_steps=50 --train.log_interval=10 --data.eval_split=none "
                                  "--train.node_sum=" + std::string(node_sum));
    const Weights many = load(dir);
    EXPECT_EQ(0, std::memcmp(one.values.data(), many.values.data(), one.values.size() * 4)) << name;
    // The logged training loss too, to the last digit.
    EXPECT_EQ(logged_losses(dir), one_losses) << name;
    EXPECT_EQ(0, std::memcmp(one.momentum.data(), many.momentum.data(), one.momentum.size() * 4)) << name;
  }
}

TEST_P(Equivalence, FastReductionOneTwoAndFourRanksAgreeWithinTolerance) {
  const std::size_t n = GetParam();
  const std::string data = make_dataset("eq" + std::to_string(n) + ".h5", n, 200);
  const std::string tag = std::to_string(n), fast = " --train.reduction=fast --train.max_steps=50 --data.eval_split=none";
  const Weights one = load(train(1, data, "eq1_" + tag, fast));
  for (int ranks : {2, 4}) {
    const Weights many = load(train(ranks, data, "eq" + std::to_string(ranks) + "_" + tag, fast));
    const double d = relative_difference(one.values, many.values);
    std::printf("[ figure ] fast reduction, %zu samples: 1 rank vs %d ranks after 50 steps: max relative weight "
                "difference %.3g\n", n, ranks, d);
    EXPECT_LE(d, 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(DatasetSizes, Equivalence, ::testing::Values(3200, 1001));

// A small ResNet with BatchNorm (statistics per exact micro-batch) and dropout in both a residual
// branch and before the classifier: weights, momentum, running statistics and batch counters
// after 50 steps (1001 samples: partial batches, ranks with fewer samples) are bitwise those of
// one rank for 2, 3 and 4 ranks. Dropout masks and the statistics follow global sample positions.
const char* kResNetSpec =
    "conv(8,3,pad=1,bias=false) bn relu residual{conv(8,3,pad=1,bias=false) bn relu dropout(0.2) "
    "conv(8,3,pad=1,bias=false) bn} relu residual{conv(16,3,stride=2,pad=1,bias=false) bn relu "
    "conv(16,3,pad=1,bias=false) bn | conv(16,1,stride=2,bias=false) bn} relu globalavgpool flatten dropout(0.3) dense(4)";

// 2, 3 and 4 ranks against one: weights, momentum, running statistics and counters bitwise.
void expect_two_to_four_ranks_match(const Weights& one, const std::string& data, const std::string& name,
                                    const std::string& extra) {
  for (int ranks : {2, 3, 4}) {
    const Weights many = load(train(ranks, data, name + std::to_string(ranks), extra, kResNetSpec));
    EXPECT_EQ(0, std::memcmp(one.values.data(), many.values.data(), one.values.size() * 4)) << ranks << " ranks";
    EXPECT_EQ(0, std::memcmp(one.momentum.data(), many.momentum.data(), one.momentum.size() * 4)) << ranks << " ranks";
    EXPECT_EQ(0, std::memcmp(one.state.data(), many.state.data(), one.state.size() * 4)) << ranks << " ranks";
  }
}

TEST(ExactBlocks, ResNetWithBatchNormAndDropoutOnOneToFourRanksIsBitwiseIdentical) {
  const std::string spec = kResNetSpec;
  const std::string data = make_dataset("eq1001.h5", 1001, 200);
  const std::string extra = "--train.max_steps=50 --data.eval_split=none";
  const Weights one = load(train(1, data, "bn1", extra, spec));
  ASSERT_FALSE(one.state.empty());
  // num_batches_tracked counts micro-batches: an epoch is 15 steps of 4 micro-batches of 16 and one
  // of 41 samples (3), so 50 steps = 3 epochs (3 x 63) + 2 steps (8).
  EXPECT_EQ(one.state.back(), 197.f);
  expect_two_to_four_ranks_match(one, data, "bn", extra);
}

// model.bn_statistics = global_batch: every bn layer's statistics and backward sums are those of
// the whole global batch of 64 (41 in the partial batches), exchanged across ranks at each bn
// layer. 2, 3 and 4 ranks (4 ranks: in partial batches one rank has no samples and joins the
// exchanges with zeros) give bitwise the weights, momentum and running statistics of one rank.
TEST(ExactBlocks, GlobalBatchStatisticsOnOneToFourRanksAreBitwiseIdentical) {
  const std::string data = make_dataset("eq1001.h5", 1001, 200);
  const std::string extra = "--train.max_steps=50 --data.eval_split=none --model.bn_statistics=global_batch";
  const Weights one = load(train(1, data, "gbn1", extra, kResNetSpec));
  ASSERT_FALSE(one.state.empty());
  EXPECT_EQ(one.state.back(), 50.f);  // num_batches_tracked: one update per step
  // The switch changes the model: per-micro-batch statistics train other weights.
  const Weights micro = load(train(1, data, "gbn1_micro", "--train.max_steps=50 --data.eval_split=none", kResNetSpec));
  EXPECT_NE(0, std::memcmp(one.values.data(), micro.values.data(), one.values.size() * 4));
  expect_two_to_four_ranks_match(one, data, "gbn", extra);
}

// Stopped on 2 ranks after 20 steps and resumed on 3, with global-batch statistics: bitwise the
// uninterrupted run.
TEST(ExactBlocks, GlobalBatchStatisticsResumeOnAnotherRankCountIsBitwiseIdentical) {
  const std::string data = make_dataset("eq1001.h5", 1001, 200);
  const std::string mode = " --data.eval_split=none --model.bn_statistics=global_batch";
  const Weights straight = load(train(2, data, "gbn_straight", "--train.max_steps=50" + mode, kResNetSpec));
  train(2, data, "gbn_moved", "--train.max_steps=20" + mode, kResNetSpec);
  const Weights resumed = load(train(3, data, "gbn_moved", "--train.max_steps=50" + mode, kResNetSpec));
  EXPECT_EQ(0, std::memcmp(straight.values.data(), resumed.values.data(), straight.values.size() * 4));
  EXPECT_EQ(0, std::memcmp(straight.state.data(), resumed.state.data(), straight.state.size() * 4));
}

// Under fast reduction the rows are ranks and the float sums' order depends on the rank count:
// global-batch statistics then make 2 ranks agree with one within the fast reduction's tolerance
// (per-rank statistics would not: each rank would normalise over its own 32 samples).
TEST(ExactBlocks, GlobalBatchStatisticsUnderFastReductionAgreeWithinTolerance) {
  const std::string data = make_dataset("eq1001.h5", 1001, 200);
  const std::string extra =
      "--train.max_steps=50 --data.eval_split=none --model.bn_statistics=global_batch --train.reduction=fast";
  const Weights one = load(train(1, data, "gbn_fast1", extra, kResNetSpec));
  const Weights two = load(train(2, data, "gbn_fast2", extra, kResNetSpec));
  const double weights = relative_difference(one.values, two.values), state = relative_difference(one.state, two.state);
  std::printf("[ figure ] global-batch BatchNorm, fast reduction, 1 vs 2 ranks after 50 steps: max relative weight "
              "difference %.3g, running statistics %.3g\n", weights, state);
  EXPECT_LE(weights, 1e-5);
  EXPECT_LE(state, 1e-5);
}

// A checkpoint trained with one model.bn_statistics is not resumed with the other: one line
// naming both, exit status 1, both ways.
TEST(ExactBlocks, ResumeWithTheOtherBatchNormStatisticsIsRefused) {
  const std::string data = make_dataset("eq1001.h5", 1001, 200);
  for (const auto& [was, now] : {std::pair{"micro_batch", "global_batch"}, {"global_batch", "micro_batch"}}) {
    const std::string out = (work_dir() / ("bn_switch_" + std::string(was))).string();
    const std::string steps = " --data.eval_split=none --train.max_steps=";
    ASSERT_EQ(0, shell(train_command(1, data, out, steps + "3 --model.bn_statistics=" + was, kResNetSpec)).exit_code);
    const CommandResult r = shell(train_command(2, data, out, steps + "6 --model.bn_statistics=" + now, kResNetSpec));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, ::testing::HasSubstr(std::string("trained with model.bn_statistics = ") + was +
                                               ", the config says " + now + ": resume with " + was))
        << r.output;
  }
}

// A global batch of one sample through a bn layer after a dense layer: one value per channel.
TEST(ExactBlocks, GlobalBatchStatisticsOverOneValuePerChannelAreRefusedNamingTheLayer) {
  const std::string data = make_dataset("eq1001.h5", 1001, 200);
  const std::string out = (work_dir() / "gbn_one_value").string();
  const CommandResult r = shell(train_command(1, data, out,
                                              "--data.eval_split=none --train.max_steps=1 --train.batch_size=1 "
                                              "--model.bn_statistics=global_batch",
                                              "conv(4,3) relu flatten dense(8) bn dense(4)"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, ::testing::HasSubstr("error: layer 5 'bn': model.bn_statistics = global_batch needs more than 1 "
                                             "value per channel over the global batch, got 1"))
      << r.output;
}

// Metric learning (issue 18) is exact like the rest: ArcFace over a cosine classifier (shuffled
// order, 1001 samples) and the semi-hard triplet loss over P x K groups (2 identities x 4 images,
// mined inside each micro-batch of 8) give, after 30 steps, bitwise the weights of one rank.
TEST(ExactMetricLearning, ArcFaceAndTripletWithPxKSamplingOnOneToThreeRanksAreBitwiseIdentical) {
  const std::string data = make_dataset("eq1001.h5", 1001, 200);
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"arcface", "conv(6,3) relu maxpool(2) flatten dense(8,bias=false) l2norm cosine(4)",
       "--loss.kind=arcface --loss.scale=16"},
      {"triplet", "conv(6,3) relu maxpool(2) flatten dense(8) l2norm",
       "--loss.kind=triplet --loss.mining=semi_hard --data.identities_per_batch=2 --data.images_per_identity=4 "
       "--train.micro_batch=8"}};
  for (const auto& [name, spec, options] : cases) {
    const std::string extra = "--train.max_steps=30 --data.eval_split=none " + options;
    const Weights one = load(train(1, data, name + "1", extra, spec));
    for (int ranks : {2, 3}) {
      const Weights many = load(train(ranks, data, name + std::to_string(ranks), extra, spec));
      EXPECT_EQ(0, std::memcmp(one.values.data(), many.values.data(), one.values.size() * 4)) << name << ", " << ranks;
      EXPECT_EQ(0, std::memcmp(one.momentum.data(), many.momentum.data(), one.momentum.size() * 4)) << name << ", " << ranks;
    }
  }
}

// Stopped on 2 ranks after 20 steps and resumed on 3: the running statistics and counters come
// back from the checkpoint, the dropout masks from the global step, so the result is bitwise
// that of the uninterrupted run.
TEST(ExactBlocks, ResumeOnAnotherRankCountIsBitwiseIdentical) {
  const std::string data = make_dataset("eq1001.h5", 1001, 200);
  const Weights straight = load(train(2, data, "bn_straight", "--train.max_steps=50 --data.eval_split=none", kResNetSpec));
  train(2, data, "bn_moved", "--train.max_steps=20 --data.eval_split=none", kResNetSpec);
  const Weights resumed = load(train(3, data, "bn_moved", "--train.max_steps=50 --data.eval_split=none", kResNetSpec));
  EXPECT_EQ(0, std::memcmp(straight.values.data(), resumed.values.data(), straight.values.size() * 4));
  EXPECT_EQ(0, std::memcmp(straight.state.data(), resumed.state.data(), straight.state.size() * 4));
}

// Ranks on two nodes: each node sums its ranks in shared memory, the nodes' first ranks sum the
// node totals through MPI. 4 ranks (2 + 2) and 3 (2 + 1), and 4 ranks through MPI alone, give
// bitwise the weights and momentum of one rank, with partial batches (1001 samples).
TEST(TwoNodes, RanksOnTwoNodesGiveTheWeightsOfOneRank) {
  const std::string data = make_dataset("eq1001.h5", 1001, 200);
  const std::string steps = "--train.max_steps=50 --data.eval_split=none";
  const Weights one = load(train(1, data, "nodes1", steps));
  for (const auto& [ranks, node_sum] : {std::pair{4, "shared"}, {3, "shared"}, {4, "mpi"}}) {
    const std::string name = "nodes" + std::to_string(ranks) + node_sum, out = (work_dir() / name).string();
    const CommandResult r =
        shell(train_command(mpirun_on_two_nodes(ranks), data, out, steps + " --train.node_sum=" + node_sum));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output, ::testing::HasSubstr(std::to_string(ranks) + " ranks x 1 threads on 2 nodes")) << name;
    const std::string route = node_sum == std::string("shared") ? "in shared memory on each node, then .* between 2 nodes"
                                                                 : "exact \\(int64 fixed point\\), (ring|MPI's own) allreduce";
    EXPECT_THAT(r.output, ::testing::ContainsRegex("gradient sum: .*" + route)) << name;
    const Weights many = load(out);
    EXPECT_EQ(0, std::memcmp(one.values.data(), many.values.data(), one.values.size() * 4)) << name;
    EXPECT_EQ(0, std::memcmp(one.momentum.data(), many.momentum.data(), one.momentum.size() * 4)) << name;
  }
}

// The reference CNN of configs/fashion_mnist.ini on real Fashion-MNIST. There, fast reduction's
// 1e-7 rounding differences grow into percent-level weight differences within 50 steps at
// lr 0.05 / momentum 0.9 (ties in max pooling flip); exact reduction leaves nothing to grow.
TEST(EquivalenceFashionMnist, ReferenceCnnOnOneToFourRanksIsBitwiseIdentical) {
  const std::string data = (work_dir() / "fashion_mnist.h5").string();
  const CommandResult convert = shell(std::string(MPICNN_EXE) + " convert --format idx --input " +
                                      "/usr/share/datasets/fashion-mnist --output " + data);
  ASSERT_EQ(convert.exit_code, 0) << convert.output;
  auto run = [&](int ranks) {
    const std::string out = (work_dir() / ("fm" + std::to_string(ranks))).string();
    const CommandResult r = shell(mpirun(ranks) + MPICNN_EXE + " train --config " + CONFIG_DIR +
                                  "/fashion_mnist.ini --data.path=" + data + " --train.max_steps=50 --train.threads=1"
                                  " --data.eval_split=none --train.progress=lines --output " + out);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return load(out);
  };
  const Weights one = run(1);
  for (int ranks : {2, 3, 4}) {
    const Weights many = run(ranks);
    EXPECT_EQ(0, std::memcmp(one.values.data(), many.values.data(), one.values.size() * 4)) << ranks << " ranks";
  }
}

double json_number(const std::string& text, const std::string& key) {
  std::smatch m;
  const std::regex pattern("\"" + key + "\": ([-0-9.eE+]+)");
  if (!std::regex_search(text, m, pattern)) {
    ADD_FAILURE() << "no '" << key << "' in: " << text;
    return NAN;
  }
  return std::stod(m[1]);
}

TEST(ExactEvaluation, OneTwoAndThreeRanksReportIdenticalAccuracy) {
  const std::string data = make_dataset("eval.h5", 640, 997);  // 997 = prime: uneven parts
  const std::string run = train(1, data, "eval_run", "--train.max_steps=20");
  std::string first;
  double first_loss = 0;
  for (int ranks : {1, 2, 3}) {
    const CommandResult r = shell(mpirun(ranks) + MPICNN_EXE + " eval --checkpoint " + run + " --data " + data +
                        " --batch 100 --json");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(json_number(r.output, "samples"), 997);
    const std::string matrix = r.output.substr(r.output.find("confusion_matrix"), r.output.find("per_class") - r.output.find("confusion_matrix"));
    const double loss = json_number(r.output, "loss");
    std::printf("[ figure ] %d ranks: accuracy %.6f loss %.9f\n", ranks, json_number(r.output, "accuracy"), loss);
    if (ranks == 1) first = matrix, first_loss = loss;
    EXPECT_EQ(matrix, first) << "confusion matrix differs with " << ranks << " ranks";
    EXPECT_NEAR(loss, first_loss, 1e-6 * first_loss);  // a sum in another order: float rounding only
  }
}

TEST(ExactResume, StopMidEpochAndResumeGivesBitwiseIdenticalWeights) {
  const std::string data = make_dataset("resume.h5", 3200, 100);
  const Weights straight = load(train(2, data, "straight", "--train.max_steps=50"));
  const std::string run = train(2, data, "stopped", "--train.max_steps=20");  // step 20 of a 50-step epoch
  // The fixed-point grid of the exact sum is training state: one exponent per parameter tensor.
  const io::CheckpointHeader stopped = io::read_checkpoint_header(io::resolve_checkpoint(run));
  EXPECT_EQ(stopped.trainer.gradient_grid.size(), core::Model(stopped.model.spec, stopped.model.input, 1).params().infos().size());
  train(2, data, "stopped", "--train.max_steps=50");                          // resumes from the run folder
  const Weights resumed = load(run);
  EXPECT_EQ(0, std::memcmp(straight.values.data(), resumed.values.data(), straight.values.size() * 4));
  EXPECT_EQ(0, std::memcmp(straight.momentum.data(), resumed.momentum.data(), straight.momentum.size() * 4));
}

// Resuming on another rank count continues the same global data order: with exact reduction the
// weights are bitwise those of the uninterrupted run, with fast reduction within 1e-5.
TEST(ExactResume, ResumeOnAnotherRankCountContinuesTheSameDataOrder) {
  const std::string data = make_dataset("resume.h5", 3200, 100);
  for (const std::string reduction : {"exact", "fast"}) {
    const std::string mode = " --train.reduction=" + reduction;
    const Weights straight = load(train(2, data, "straight_" + reduction, "--train.max_steps=50" + mode));
    for (int ranks : {1, 3}) {
      const std::string name = "moved_to_" + std::to_string(ranks) + "_" + reduction;
      train(2, data, name, "--train.max_steps=20" + mode);
      train(ranks, data, name, "--train.max_steps=50" + mode);
      const Weights resumed = load((work_dir() / name).string());
      const double d = relative_difference(straight.values, resumed.values);
      std::printf("[ figure ] %s reduction, 2 ranks resumed on %d ranks at step 20: max relative weight difference "
                  "%.3g at step 50\n", reduction.c_str(), ranks, d);
      if (reduction == "exact") EXPECT_EQ(d, 0.0);
      else EXPECT_LE(d, 1e-5);
    }
  }
}

// Every augmentation at once (flips, crop, rotation, zoom, translation, intensity): drawn per sample
// from (seed, epoch, sample index), so 1 rank, 2 ranks and 2 ranks resumed on 3 at step 20 reach
// bitwise the same weights; and the options do reach the reader (the weights differ without them).
TEST(ExactResume, AugmentedTrainingIsBitwiseTheSameOnAnyRankCountAndAfterAResume) {
  const std::string data = make_dataset("resume.h5", 3200, 100);
  const std::string augment = " --data.eval_split=none --data.flip_axes=w,h --data.random_crop_pad=1 --data.rotate_degrees=15"
                              " --data.scale_range=0.9,1.1 --data.translate=0.1 --data.intensity_scale=0.9,1.1"
                              " --data.intensity_shift=0.1";
  const Weights straight = load(train(2, data, "augmented_straight", "--train.max_steps=50" + augment));
  const Weights one = load(train(1, data, "augmented_one_rank", "--train.max_steps=50" + augment));
  EXPECT_EQ(0, std::memcmp(straight.values.data(), one.values.data(), straight.values.size() * 4));
  train(2, data, "augmented_moved", "--train.max_steps=20" + augment);
  const Weights resumed = load(train(3, data, "augmented_moved", "--train.max_steps=50" + augment));
  EXPECT_EQ(0, std::memcmp(straight.values.data(), resumed.values.data(), straight.values.size() * 4));
  EXPECT_EQ(0, std::memcmp(straight.momentum.data(), resumed.momentum.data(), straight.momentum.size() * 4));
  const Weights plain = load(train(2, data, "not_augmented", "--train.max_steps=50 --data.eval_split=none"));
  std::printf("[ figure ] augmented vs not: max relative weight difference %.3g at step 50\n",
              relative_difference(straight.values, plain.values));
  EXPECT_GT(relative_difference(straight.values, plain.values), 1e-3);
}

TEST(Signals, UsrOneCheckpointsAndExits75ThenResumesExactly) {
  const std::string data = make_dataset("resume.h5", 3200, 100);
  const std::string steps = "--train.max_steps=3000 --data.eval_split=none --train.log_interval=20";
  const Weights straight = load(train(2, data, "straight_s", steps));
  const std::string out = (work_dir() / "signalled").string();
  const std::string log = (work_dir() / "signalled.log").string();
  // mpirun forwards SIGUSR1 to the ranks.
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string command = "exec " + train_command(2, data, out, steps) + " > " + log + " 2>&1";
    execl("/bin/sh", "sh", "-c", command.c_str(), nullptr);
    _exit(127);
  }
  // Signal once training has recorded its first 20 steps.
  auto has_steps = [&] {
    std::ifstream metrics(out + "/metrics.jsonl");
    std::string line;
    return std::getline(metrics, line) && line.find("\"train\"") != std::string::npos;
  };
  for (int i = 0; i < 600 && !has_steps(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kill(pid, SIGUSR1);
  int status = 0;
  waitpid(pid, &status, 0);
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  ASSERT_TRUE(WIFEXITED(status)) << text.str();
  EXPECT_EQ(WEXITSTATUS(status), 75) << text.str();
  EXPECT_THAT(text.str(), ::testing::HasSubstr("stop requested by a signal"));
  const io::CheckpointHeader h = io::read_checkpoint_header(io::resolve_checkpoint(out));
  std::printf("[ figure ] stopped by SIGUSR1 at global step %ld\n", h.trainer.global_step);
  EXPECT_LT(h.trainer.global_step, 3000);
  train(2, data, "signalled", steps);
  const Weights resumed = load(out);
  EXPECT_EQ(0, std::memcmp(straight.values.data(), resumed.values.data(), straight.values.size() * 4));
}

// train.classifier = sharded (issue 18): the cosine(10) classifier split by rows (5/5, 4/3/3,
// 3/3/2/2) after a backbone with BatchNorm (whose forward the sharded step computes twice) gives,
// after 50 steps of ArcFace (CosFace on 3 ranks) with momentum, bitwise the backbone, the
// classifier rows and their momentum of one rank holding the whole matrix, sharded or not; 1001
// samples, so partial batches where some ranks get fewer samples.
const char* kShardedSpec = "conv(6,3) bn relu maxpool(2) flatten dense(8) cosine(10)";
const char* kShardedSteps = "--train.max_steps=50 --data.eval_split=none --loss.scale=16 --train.micro_batch=8 ";

TEST(ShardedClassifier, OneRankWholeAndTwoToFourRanksShardedAreBitwiseIdentical) {
  const std::string data = make_dataset("ids1001.h5", 1001, 50, 10);
  for (const std::string loss : {"arcface", "cosface"}) {
    const std::string extra = kShardedSteps + ("--loss.kind=" + loss);
    const Weights whole = load(train(1, data, loss + "_whole", extra, kShardedSpec));
    for (int ranks : loss == "arcface" ? std::vector<int>{1, 2, 3, 4} : std::vector<int>{3}) {
      const std::string name = loss + "_sharded" + std::to_string(ranks);
      const Weights sharded = load(train(ranks, data, name, extra + " --train.classifier=sharded", kShardedSpec));
      ASSERT_EQ(whole.values.size(), sharded.values.size());
      EXPECT_EQ(0, std::memcmp(whole.values.data(), sharded.values.data(), whole.values.size() * 4)) << name;
      EXPECT_EQ(0, std::memcmp(whole.momentum.data(), sharded.momentum.data(), whole.momentum.size() * 4)) << name;
    }
  }
}

// Stopped after 20 steps on 2 ranks, resumed on 3: each rank reads its own rows of the gathered
// classifier, and the result is bitwise the uninterrupted sharded run's (and so one rank's).
TEST(ShardedClassifier, ResumeFromTwoRanksOnThreeIsBitwiseTheUninterruptedRun) {
  const std::string data = make_dataset("ids1001.h5", 1001, 50, 10);
  const std::string sharded = std::string(kShardedSteps) + "--loss.kind=arcface --train.classifier=sharded";
  const Weights straight = load(train(2, data, "sharded_straight", sharded, kShardedSpec));
  const std::string first_part = std::regex_replace(sharded, std::regex("max_steps=50"), "max_steps=20");
  train(2, data, "sharded_moved", first_part, kShardedSpec);
  EXPECT_EQ(io::read_checkpoint_header(io::resolve_checkpoint((work_dir() / "sharded_moved").string())).trainer.global_step, 20);
  const Weights resumed = load(train(3, data, "sharded_moved", sharded, kShardedSpec));
  EXPECT_EQ(0, std::memcmp(straight.values.data(), resumed.values.data(), straight.values.size() * 4));
  EXPECT_EQ(0, std::memcmp(straight.momentum.data(), resumed.momentum.data(), straight.momentum.size() * 4));
}

// The classifier's weights and momentum per rank, from the start line: 1/ranks of the whole.
TEST(ShardedClassifier, StateBytesPerRankFallAsOneOverRanks) {
  const std::string data = make_dataset("ids1001.h5", 1001, 50, 10);
  std::vector<long> bytes;
  for (int ranks : {1, 2}) {
    const std::string out = (work_dir() / ("sharded_bytes" + std::to_string(ranks))).string();
    const CommandResult r = shell(train_command(ranks, data, out, std::string(kShardedSteps) +
                                                "--loss.kind=arcface --train.classifier=sharded --train.max_steps=1",
                                                "conv(6,3) relu maxpool(2) flatten dense(256) cosine(10)"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.output, m, std::regex("rows \\[0, (\\d+)\\) of 10 x 256; weights and optimizer state (\\d+) bytes")))
        << r.output;
    EXPECT_EQ(std::stoi(m[1]), 10 / ranks);
    bytes.push_back(std::stol(m[2]));
  }
  EXPECT_EQ(bytes[0], 10 * 256 * 4 * 2);  // weights and momentum, 4 bytes each
  EXPECT_EQ(bytes[1], bytes[0] / 2);
}

// Partial FC's sampling of negative identities (half of them per step, drawn from the seed, the
// step and the identity; 200 identities, so a batch of 64 leaves most of them negatives): 1 and 3
// ranks bitwise the same, and not the run without sampling.
TEST(ShardedClassifier, SampledNegativesAreTheSameOnOneAndThreeRanks) {
  const std::string data = make_dataset("ids200.h5", 1001, 50, 200);
  const std::string spec = "conv(6,3) bn relu maxpool(2) flatten dense(8) cosine(200)";
  const std::string extra = std::string(kShardedSteps) + "--loss.kind=arcface --train.classifier=sharded";
  const Weights all = load(train(1, data, "sampled_all", extra, spec));
  const Weights one = load(train(1, data, "sampled1", extra + " --train.sample_rate=0.5", spec));
  const Weights three = load(train(3, data, "sampled3", extra + " --train.sample_rate=0.5", spec));
  EXPECT_EQ(0, std::memcmp(one.values.data(), three.values.data(), one.values.size() * 4));
  EXPECT_EQ(0, std::memcmp(one.momentum.data(), three.momentum.data(), one.momentum.size() * 4));
  EXPECT_NE(0, std::memcmp(one.values.data(), all.values.data(), one.values.size() * 4));
}

// What cannot be sharded ends with one line naming the option and what was expected, exit 1.
TEST(ShardedClassifier, BadInputsEndWithOneLine) {
  const std::string data = make_dataset("ids1001.h5", 1001, 50, 10);
  const std::string base = "--train.max_steps=1 --train.classifier=sharded --data.eval_split=";
  const std::vector<std::tuple<int, std::string, std::string, std::string>> cases = {
      {2, "none --loss.kind=cross_entropy", kShardedSpec, "needs loss.kind = arcface or cosface, got 'cross_entropy'"},
      {2, "none --loss.kind=triplet", "conv(6,3) relu maxpool(2) flatten dense(8) l2norm", "needs loss.kind = arcface or cosface, got 'triplet'"},
      {2, "none --loss.kind=arcface", "conv(6,3) relu maxpool(2) flatten dense(10)", "needs model.spec to end with cosine(identities) after the embedding, but it ends with 'dense(10)'"},
      {3, "none --loss.kind=arcface", "conv(6,3) relu maxpool(2) flatten dense(8) cosine(2)", "splits the 2 identities of cosine(2) across 3 ranks: expected at least one identity per rank"},
      {2, "none --loss.kind=arcface --train.reduction=fast", kShardedSpec, "needs train.reduction = exact, got fast"},
      {2, "none --loss.kind=arcface --model.bn_statistics=global_batch", kShardedSpec,
       "needs model.bn_statistics = micro_batch, got global_batch"},
      {2, "test --loss.kind=arcface", kShardedSpec, "set data.eval_split = none and data.test_split = none"},
      {2, "none --loss.kind=arcface --train.sample_rate=1.5", kShardedSpec, "'train.sample_rate' must be in (0, 1], got 1.5"},
      {2, "none --loss.kind=arcface --train.sample_rate=0", kShardedSpec, "'--train.sample_rate': expected a finite number > 0, got '0'"},
      {2, "none --loss.kind=arcface --train.classifier=replicated --train.sample_rate=0.5", kShardedSpec,
       "'train.sample_rate' = 0.5 needs train.classifier = sharded"}};
  for (const auto& [ranks, options, spec, message] : cases) {
    const CommandResult r = shell(train_command(ranks, data, (work_dir() / "sharded_bad").string(), base + options, spec));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    if (message.find("train.sample_rate") == std::string::npos) {
      EXPECT_THAT(r.output, ::testing::HasSubstr("error: 'train.classifier' = sharded")) << options;
    }
    EXPECT_THAT(r.output, ::testing::HasSubstr(message)) << r.output;
    const std::regex error_line("(^|\\n)error: ");
    EXPECT_EQ(std::distance(std::sregex_iterator(r.output.begin(), r.output.end(), error_line), std::sregex_iterator()), 1)
        << r.output;
  }
}

}  // namespace
}  // namespace mpicnn
