#pragma once
// The checkpoint policy of a training run: where it resumes from (--resume, or the run folder's
// own latest checkpoint, as a requeued job does), when a checkpoint is written and which one
// becomes best.h5 (the task's metric, in its direction).
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "apps/report.hpp"
#include "apps/sharded_head.hpp"
#include "apps/train_config.hpp"
#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "distributed/comm.hpp"
#include "distributed/reducer.hpp"
#include "io/checkpoint.hpp"

namespace mpicnn::app {

// What a checkpoint holds of the run besides its position.
struct TrainedModel {
  core::Model& model;
  core::Optimizer& optimizer;
  dist::GradientReducer& reducer;
  const io::ModelMeta& meta;
  ShardedHead* head = nullptr;  // train.classifier = sharded: the last layer, apart from `model`
};

class RunCheckpoints {
 public:
  RunCheckpoints(const TrainConfig& config, std::string config_ini, const dist::Communicator& comm)
      : c_(config), config_ini_(std::move(config_ini)), comm_(comm) {}

  // Loads the checkpoint to continue from, if any, into `trained` and returns its position
  // (its best.h5 metric dropped when checkpoint.best_metric changed); nullopt: a fresh run.
  std::optional<io::TrainerState> resume(const TrainedModel& trained, long steps_per_epoch);
  // Writes the checkpoint of position `at` (rank 0), and best.h5 when `metrics` holds a better
  // value of the best metric than `state` has (then recorded in both).
  void save(const TrainedModel& trained, io::TrainerState& state, io::TrainerState at,
            const std::vector<std::pair<std::string, double>>& metrics, Reporter& report);
  long last_saved_step() const { return last_saved_step_; }

 private:
  bool improves_best(double value, double best) const;
  // Rank 0: the checkpoint of `at`, and best.h5 when `best`.
  void write(const TrainedModel& trained, const io::TrainerState& at,
             const std::vector<std::pair<std::string, double>>& metrics, bool best, const io::ExtraParam* extra,
             Reporter& report);
  void check_same_model(const io::CheckpointHeader& header, const io::ModelMeta& meta) const;

  const TrainConfig& c_;
  std::string config_ini_;
  const dist::Communicator& comm_;
  long last_saved_step_ = -1;  // the global step of the newest checkpoint, so none is written twice
};

}  // namespace mpicnn::app
