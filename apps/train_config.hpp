#pragma once
// `mpicnn train`'s settings: the schema of its keys (defaults and help) and the checked values.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apps/settings.hpp"
#include "core/optimizer.hpp"
#include "core/task.hpp"
#include "datasets/augment.hpp"
#include "distributed/comm.hpp"

namespace mpicnn::app {

std::vector<Key> train_keys();

struct TrainConfig {
  std::string data_path, train_split, eval_split, test_split, spec, init, run_dir, resume;
  std::vector<double> mean, std;
  bool normalize, prefetch;
  data::Augmentation augment;  // the data.* augmentation keys
  int epochs, global_batch, threads, eval_batch, keep, micro_batch;
  int identities_per_batch, images_per_identity;  // P x K sampling; P = 0: shuffled
  bool exact_reduction, shared_memory_sum;
  bool sharded_classifier;  // train.classifier = sharded: the last cosine(n) layer split by rows across ranks
  bool winograd;            // model.winograd: Winograd F(2x2,3x3) where it fits (core::allow_winograd)
  double sample_rate;       // sharded: the share of negative class centres each step's softmax takes (Partial FC)
  long log_interval, max_steps, every_steps;
  std::size_t cache_bytes, bucket_bytes;
  std::uint64_t seed;
  std::shared_ptr<core::Task> task;  // from loss.kind and loss.class_weights; configured by the trainer
  core::OptimizerConfig optimizer;
  core::ScheduleConfig schedule;
  double warmup_epochs, step_epochs;
  std::vector<double> milestone_epochs;  // multistep schedule
  std::string best_metric, progress;
  std::string bn_statistics;  // micro_batch or global_batch
  bool global_batch_statistics() const { return bn_statistics == "global_batch"; }
  double collective_timeout;
};

TrainConfig read_config(const Settings& s);

// Threads per rank: this node's cores shared among the ranks on it, and never more than the cores
// this rank may run on (mpirun binds each rank to one core by default). Sets *warning when the
// node is oversubscribed.
int choose_threads(int requested, const dist::Communicator& comm, std::string* warning);

}  // namespace mpicnn::app
