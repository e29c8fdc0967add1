#include "apps/run_checkpoints.hpp"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "core/errors.hpp"

namespace mpicnn::app {
namespace {

// The value of `section.key` in a resolved config (Settings::resolved_ini: "[section]" lines,
// then "key = value"), or "" when absent.
std::string ini_value(const std::string& ini, const std::string& section, const std::string& key) {
  std::istringstream in(ini);
  std::string line, current;
  while (std::getline(in, line)) {
    if (!line.empty() && line.front() == '[') current = line.substr(1, line.find(']') - 1);
    else if (current == section && line.rfind(key + " = ", 0) == 0) return line.substr(key.size() + 3);
  }
  return "";
}

// BatchNorm's statistics are taken per micro-batch: resuming with another micro-batch or
// reduction continues with other statistics than the run had, and no longer gives bitwise the
// uninterrupted run. Said once, clearly, rather than refused: it is a legitimate choice.
void warn_if_statistics_change(const io::CheckpointHeader& header, const TrainConfig& c, bool has_state) {
  if (!has_state || c.global_batch_statistics()) return;
  const std::string reduction = c.exact_reduction ? "exact" : "fast", micro = std::to_string(c.micro_batch);
  const std::string was_reduction = ini_value(header.config_ini, "train", "reduction");
  const std::string was_micro = ini_value(header.config_ini, "train", "micro_batch");
  if ((was_reduction.empty() || was_reduction == reduction) && (was_micro.empty() || was_micro == micro ||
                                                                reduction == "fast"))
    return;
  std::fprintf(stderr,
               "warning: %s was trained with train.reduction = %s, train.micro_batch = %s; resuming with %s, %s "
               "changes the batches BatchNorm takes its statistics over\n",
               header.path.c_str(), was_reduction.c_str(), was_micro.c_str(), reduction.c_str(), micro.c_str());
}

// Statistics over the global batch or over each micro-batch normalise different batches: a run
// that switched would be neither. Refused, naming both; the mode is in the checkpoint's config.
void refuse_other_statistics(const io::CheckpointHeader& header, const TrainConfig& c, bool has_state) {
  if (!has_state) return;
  std::string was = ini_value(header.config_ini, "model", "bn_statistics");
  if (was.empty()) was = "micro_batch";  // written before the option existed
  if (was != c.bn_statistics)
    throw ConfigError(header.path + ": trained with model.bn_statistics = " + was + ", the config says " +
                      c.bn_statistics + ": resume with " + was + ", or start a new run");
}

}  // namespace

void RunCheckpoints::check_same_model(const io::CheckpointHeader& header, const io::ModelMeta& meta) const {
  if (header.model.spec != meta.spec || header.model.input != meta.input)
    throw ConfigError(header.path + ": checkpoint model '" + header.model.spec + "' on " + header.model.input.str() +
                      " differs from the config's '" + meta.spec + "' on " + meta.input.str());
}

std::optional<io::TrainerState> RunCheckpoints::resume(const TrainedModel& trained, long steps_per_epoch) {
  io::CheckpointDir dir(c_.run_dir, c_.keep);
  const std::string path = c_.resume.empty() ? dir.latest().value_or("") : io::resolve_checkpoint(c_.resume);
  if (path.empty()) return std::nullopt;
  const io::CheckpointHeader header = io::read_checkpoint_header(path);
  check_same_model(header, trained.meta);
  refuse_other_statistics(header, c_, !trained.model.state().empty());
  io::load_checkpoint(path, trained.model, &trained.optimizer);
  if (trained.head) trained.head->load(path, trained.optimizer.steps());
  if (comm_.is_root()) warn_if_statistics_change(header, c_, !trained.model.state().empty());
  io::TrainerState state = header.trainer;
  const std::size_t tensors = trained.model.params().infos().size() + (trained.head ? 1 : 0);
  if (c_.exact_reduction && !state.gradient_grid.empty()) {
    if (state.gradient_grid.size() != tensors)
      throw IoError(path + ": /trainer attribute 'gradient_grid' has " + std::to_string(state.gradient_grid.size()) +
                    " exponents, expected " + std::to_string(tensors) + " (one per parameter tensor)");
    std::vector<int> grid = state.gradient_grid;
    if (trained.head) trained.head->classifier().set_grid_exponent(grid.back()), grid.pop_back();
    trained.reducer.set_grid(grid);
  }
  last_saved_step_ = state.global_step;
  if (state.seed != c_.seed && comm_.is_root())
    std::fprintf(stderr, "warning: resuming with train.seed %llu from the checkpoint (config says %llu)\n",
                 (unsigned long long)state.seed, (unsigned long long)c_.seed);
  if (state.best_metric_name != c_.best_metric) {
    if (comm_.is_root() && !std::isnan(state.best_metric))
      std::fprintf(stderr,
                   "warning: checkpoint.best_metric is '%s', the checkpoint chose best.h5 by '%s': "
                   "the next evaluation chooses it anew\n",
                   c_.best_metric.c_str(), state.best_metric_name.c_str());
    state.best_metric = io::TrainerState{}.best_metric;
  }
  if (comm_.is_root())
    std::printf("resuming from %s: epoch %d, step %ld of %ld (global step %ld)\n", path.c_str(), state.epoch + 1,
                state.step_in_epoch, steps_per_epoch, state.global_step);
  return state;
}

void RunCheckpoints::save(const TrainedModel& trained, io::TrainerState& state, io::TrainerState at,
                          const std::vector<std::pair<std::string, double>>& metrics, Reporter& report) {
  at.gradient_grid = trained.reducer.grid();
  // The sharded classifier's grid last, as its tensor is last in the unsplit model.
  if (trained.head) at.gradient_grid.push_back(trained.head->classifier().grid_exponent());
  const io::ExtraParam* extra = trained.head ? &trained.head->rows() : nullptr;
  bool best = false;
  for (const auto& [name, value] : metrics)
    if (name == c_.eval_split + "_" + c_.best_metric && improves_best(value, state.best_metric))
      state.best_metric = at.best_metric = value, best = true;
  if (trained.head) trained.head->begin_files(best ? 2 : 1);  // `best` is the same on every rank
  comm_.on_root([&] {
    try {
      write(trained, at, metrics, best, extra, report);
    } catch (...) {
      if (trained.head) trained.head->drain();  // the other ranks' rows are on their way
      throw;
    }
  });
  last_saved_step_ = at.global_step;
}

void RunCheckpoints::write(const TrainedModel& trained, const io::TrainerState& at,
                           const std::vector<std::pair<std::string, double>>& metrics, bool best,
                           const io::ExtraParam* extra, Reporter& report) {
  io::CheckpointDir dir(c_.run_dir, c_.keep);
  const std::string path = dir.path_for(at.global_step);
  io::save_checkpoint(path, trained.meta, trained.model, trained.optimizer, at, config_ini_, comm_.size(), metrics, extra);
  dir.commit(path);
  if (best)
    io::save_checkpoint(dir.best_path(), trained.meta, trained.model, trained.optimizer, at, config_ini_, comm_.size(),
                        metrics, extra);
  report.line("checkpoint: " + path + (best ? " (best so far, also best.h5)" : ""));
}

// In the task's direction (accuracy higher, loss lower); any value beats none, NaN never wins.
bool RunCheckpoints::improves_best(double value, double best) const {
  if (std::isnan(value)) return false;
  if (std::isnan(best)) return true;
  return c_.task->higher_is_better(c_.best_metric) ? value > best : value < best;
}

}  // namespace mpicnn::app
