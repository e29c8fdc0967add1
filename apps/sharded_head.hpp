#pragma once
// train.classifier = sharded on the trainer's side: the config's checks, the model split into the
// backbone (every layer but the last, data-parallel as any model) and the last cosine(n) layer
// (distributed/sharded_classifier.hpp, split by rows), its initialisation, and its rows in
// checkpoints. Checkpoints hold the classifier gathered, under the names of the unsplit model:
// a sharded run's checkpoint is an ordinary one (eval, embed, export, a replicated resume read it
// as they are), and a resume on any rank count reads its own rows alone (an HDF5 row selection).
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apps/train_config.hpp"
#include "core/model.hpp"
#include "datasets/reader.hpp"
#include "distributed/reducer.hpp"
#include "distributed/watchdog.hpp"
#include "distributed/comm.hpp"
#include "distributed/sharded_classifier.hpp"
#include "io/checkpoint.hpp"

namespace mpicnn::app {

class ShardedHead {
 public:
  // Throws ConfigError for a config that cannot shard (loss, model, reduction, evaluation).
  ShardedHead(const TrainConfig& c, const core::Shape& input, const dist::Communicator& comm);

  const std::string& backbone_spec() const { return backbone_spec_; }
  // The unsplit model's canonical spec: the backbone's, then the classifier's.
  std::string full_spec(const std::string& backbone_canonical) const { return backbone_canonical + " " + last_spec_; }
  int classes() const { return classes_; }
  dist::ShardedClassifier& classifier() { return *classifier_; }

  // The step's gradients under exact reduction (train.micro_batch samples per micro-batch): the
  // backbone's forward over this rank's micro-batches gives their embeddings, the classifier the
  // global batch's loss and these embeddings' gradients, then backward runs over the micro-batches,
  // the last first: its forward is still in the model's buffers, the others' are computed again
  // (the same values: dropout keys on sample positions, BatchNorm writes the same statistics into
  // the same slot). The exact sum adds the micro-batches in any order to the same integers.
  // set_run(start) prepares the model for the micro-batch at `start` of the rank's samples.
  core::LossSum accumulate(core::Model& model, dist::GradientReducer& reducer, dist::Watchdog& watchdog,
                           const data::Batch& batch, long global_step, const std::function<void(int)>& set_run);

  // This rank's rows as init_params would give them in the unsplit model.
  void init(const std::string& scheme, std::uint64_t seed);
  // Checkpoints, gathered without the whole matrix in any rank's memory: rank 0 writes its rows,
  // then each other rank's as they arrive (one shard in memory at a time). Every rank calls
  // begin_files(files) with the number of checkpoint files rank 0 is about to write; the others
  // then send their rows that many times, and rank 0 gives each file the rows() to write.
  void begin_files(int files);
  const io::ExtraParam& rows() const { return rows_; }
  // Rank 0 after a failed write: receives what the other ranks still send, so that none waits.
  void drain();
  // This rank's rows and optimizer state from a checkpoint of the unsplit model.
  void load(const std::string& path, long optimizer_steps);
  // One line for the start of training: the rows here and what they cost.
  std::string describe() const;

 private:
  const dist::Communicator& comm_;
  std::string backbone_spec_, last_spec_;
  std::vector<core::ParamInfo> full_params_;  // the unsplit model's parameters (the classifier last)
  int classes_ = 0;
  std::unique_ptr<dist::ShardedClassifier> classifier_;
  int micro_batch_ = 1;
  std::vector<float> embeddings_, embedding_grad_;  // this rank's (samples, dim) of the step
  io::ExtraParam rows_;                  // rank 0: the checkpoint's classifier rows, received rank by rank
  long messages_ = 0, received_ = 0;     // rank 0: messages the begun files take, and those received
  std::vector<float> shard_;             // rank 0: another rank's block, as it arrives
  void receive_next(const io::ExtraParam::Sink* sink);
  int groups() { return 1 + int(classifier_->optimizer().state().size()); }
};

}  // namespace mpicnn::app
