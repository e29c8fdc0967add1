#pragma once
// Checkpoints: one HDF5 file, data only (no code, no pickles), self-describing (format in
// README.md "Checkpoint format"), written by rank 0 atomically: a temp file in the same folder,
// flushed and fsynced, then renamed over the target, then the folder fsynced. A checkpoint is
// therefore either the old complete file or the new complete file, never a mix.
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "core/task.hpp"

namespace mpicnn::io {

inline constexpr const char* kCheckpointFormat = "mpicnn-checkpoint";
inline constexpr int kCheckpointVersion = 1;

// Where training stands: everything needed to continue the exact data order.
struct TrainerState {
  int epoch = 0;              // the epoch in progress (0-based)
  long step_in_epoch = 0;     // global steps of that epoch already taken
  long global_step = 0;       // steps since the start of training
  std::uint64_t seed = 0;     // the data order and augmentation derive from (seed, epoch, index)
  // best.h5's test value of the metric named (accuracy: higher is better; loss: lower); NaN
  // until an evaluation has chosen best.h5.
  double best_metric = std::numeric_limits<double>::quiet_NaN();
  std::string best_metric_name = "accuracy";
  // Exact reduction: the fixed-point grid exponent of every parameter tensor (distributed/
  // exact_sum.hpp), so that a resumed run rounds gradients as the uninterrupted one; empty otherwise.
  std::vector<int> gradient_grid;
};
// Float exponents span -149..128; a grid exponent adds a small margin.
inline constexpr int kGridExponentBound = 200;

// What a model needs besides its weights to be rebuilt and fed correctly.
struct ModelMeta {
  std::string spec;                    // canonical layer spec
  core::Shape input;                   // (C,H,W)
  std::string loss = "cross_entropy";  // the task's kind (core::known_tasks())
  std::vector<double> mean, std;       // input normalisation: x' = (x/255 - mean)/std for uint8 data
  std::vector<std::string> class_names;
  core::TaskOptions loss_options;  // the loss's options, its defaults filled in (io/loss_io.hpp)
};

struct CheckpointHeader {
  std::string path;
  int format_version = 0;
  std::string mpicnn_version, created;
  int ranks = 0;
  ModelMeta model;
  TrainerState trainer;
  std::string config_ini;
  core::OptimizerConfig optimizer;
  std::vector<std::pair<std::string, double>> metrics;  // last evaluation, e.g. test_accuracy
};

// A parameter tensor the model object does not hold, written by blocks of rows beside the model's
// own under /model and under /optimizer/<state> for each of `states`: the classifier of
// train.classifier = sharded, whose rows arrive rank by rank. write_rows is called once, after
// the rest of the file, and calls the sink for every block (group 0: /model, group i: states[i-1]).
struct ExtraParam {
  core::ParamInfo info;  // name and dims (rows, columns) as in the full model
  std::vector<std::string> states;
  using Sink = std::function<void(std::size_t group, int first_row, int rows, const float* values)>;
  std::function<void(const Sink&)> write_rows;
};

// Writes path atomically. `ranks` is the number of ranks that trained it (recorded for audit).
void save_checkpoint(const std::string& path, const ModelMeta& meta, const core::Model& model,
                     core::Optimizer& optimizer, const TrainerState& state, const std::string& config_ini, int ranks,
                     const std::vector<std::pair<std::string, double>>& metrics, const ExtraParam* extra = nullptr);
// Rows [first_row, first_row + rows) of the 2-D float dataset `dataset` ("/model/3.weight") of a
// checkpoint, into out (rows x columns): one shard of a classifier, read without the others. The
// dataset must have `whole`'s shape (IoError naming the file otherwise).
void read_param_rows(const std::string& path, const std::string& dataset, const core::ParamInfo& whole, int first_row,
                     int rows, float* out);

// Validates the format, version and every shape against the spec before reading any weights;
// throws IoError naming the file and what was expected versus found.
CheckpointHeader read_checkpoint_header(const std::string& path);
// Loads weights (and optimizer state, when `optimizer` is not null) into a model built from the header.
void load_checkpoint(const std::string& path, core::Model& model, core::Optimizer* optimizer);

// The files of a run folder: step-numbered checkpoints, the `latest` pointer (a small text file
// naming the newest, replaced atomically), the last `keep` kept plus `best.h5`.
class CheckpointDir {
 public:
  CheckpointDir(std::string dir, int keep);
  std::string path_for(long global_step) const;  // dir/ckpt-000001200.h5
  // Updates `latest` to name `file`, then deletes step checkpoints beyond the newest `keep`.
  void commit(const std::string& file);
  // The checkpoint `latest` names, if any (a missing or stale pointer falls back to the newest file).
  std::optional<std::string> latest() const;
  std::string best_path() const { return dir_ + "/best.h5"; }

 private:
  std::string dir_;
  int keep_;
};

// The /model input_shape attribute of checkpoints and bundles: (C,H,W) for an image, (C,D,H,W) for a
// volume (files of images read as before). Reading: nullopt unless 3 or 4 sizes in [1, 65536].
constexpr long kMaxInputSide = 1 << 16;
std::vector<std::int64_t> input_shape_attribute(const core::Shape& input);
std::optional<core::Shape> input_shape_from_attribute(const std::vector<std::int64_t>& sizes);
inline constexpr const char* kInputShapeExpected = "3 sizes (C,H,W) or 4 (C,D,H,W), each in [1, 65536]";

// Resolves --resume: a checkpoint file, or a run folder (its latest checkpoint).
std::string resolve_checkpoint(const std::string& file_or_dir);

// Writes `text` to `path` atomically (temp file, fsync, rename, fsync of the folder).
void write_file_atomically(const std::string& path, const std::string& text);
void fsync_path(const std::string& path, bool directory);

}  // namespace mpicnn::io
