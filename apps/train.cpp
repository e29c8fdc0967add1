// `mpicnn train`: data-parallel training. Every rank holds a full replica, trains on its slice of
// each global batch and sums the gradient arena with the other ranks every step.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include <sched.h>
#include <unistd.h>
#include <tbb/info.h>

#include "apps/commands.hpp"
#include "apps/evaluate.hpp"
#include "apps/report.hpp"
#include "apps/settings.hpp"
#include "core/errors.hpp"
#include "core/optimizer.hpp"
#include "core/parallel.hpp"
#include "core/training.hpp"
#include "datasets/reader.hpp"
#include "distributed/exact_sum.hpp"
#include "distributed/grad_sync.hpp"
#include "io/checkpoint.hpp"

namespace fs = std::filesystem;

namespace mpicnn::app {
namespace {

volatile std::sig_atomic_t stop_signal = 0;
extern "C" void on_stop_signal(int signal) { stop_signal = signal; }

std::vector<Key> train_keys() {
  return {
      {"config", "", "INI config file (every key below may be set there, in its [section])"},
      {"output", "", "run folder for config, metrics.jsonl and checkpoints [default: runs/<config name>]"},
      {"resume", "", "checkpoint file or run folder to continue from (a run folder holding a checkpoint resumes by itself)"},
      {"data.path", "", "HDF5 dataset file (format: datasets/README.md)", true},
      {"data.train_split", "train", "split to train on"},
      {"data.eval_split", "test", "split evaluated after every epoch ('none' or '': no evaluation)"},
      {"data.normalize", "true", "subtract the per-channel mean and divide by the std"},
      {"data.mean", "", "per-channel means overriding the file's, comma-separated"},
      {"data.std", "", "per-channel stds overriding the file's, comma-separated"},
      {"data.random_flip", "false", "augmentation: random horizontal flip"},
      {"data.random_crop_pad", "0", "augmentation: pad by this many pixels and crop back at random"},
      {"data.cache_mb", "0", "read the training split into memory before the first step when it fits in this many MB (0 = stream from the file)"},
      {"data.prefetch", "true", "read the next batch in a background thread"},
      {"model.spec", "", "layers, e.g. conv(32,5) relu maxpool(2) flatten dense(10)", true},
      {"model.init", "he", "weight initialisation: he, he_uniform, xavier, xavier_normal"},
      {"train.epochs", "10", "epochs to train"},
      {"train.batch_size", "64", "GLOBAL batch: samples per step summed over all ranks"},
      {"train.seed", "1", "seed of weights, data order and augmentation"},
      {"train.threads", "0", "threads per rank (0: $MPICNN_THREADS, else $SLURM_CPUS_PER_TASK, else this node's cores / ranks on it)"},
      {"train.log_interval", "100", "steps between progress lines and metrics records"},
      {"train.max_steps", "0", "stop after this many global steps (0 = no limit)"},
      {"train.eval_batch", "256", "samples per evaluation batch on each rank"},
      {"train.reduction", "exact", "gradient sum across ranks: exact (bitwise the same for any rank count) or fast (overlapped with backward, rounding depends on the rank count)"},
      {"train.micro_batch", "16", "exact reduction: samples per micro-batch, the unit whose gradients are summed exactly"},
      {"train.node_sum", "shared", "exact reduction: sum the ranks of a node in shared memory, then across nodes (shared), or all ranks through MPI's allreduce (mpi)"},
      {"train.bucket_kb", "256", "fast reduction: allreduce bucket size; buckets start while backward runs"},
      {"train.collective_timeout", "600", "seconds a step may wait for other ranks before the job is ended, naming them (0 = wait forever)"},
      {"train.progress", "auto", "rank 0's progress display: bar, lines, or auto (bar on a terminal outside SLURM)"},
      {"loss.kind", "cross_entropy", "cross_entropy (softmax classification) or mse (regression)"},
      {"loss.class_weights", "", "per-class weights for cross_entropy, comma-separated"},
      {"optimizer.name", "sgd", "sgd, adam or adamw"},
      {"optimizer.lr", "0.01", "base learning rate"},
      {"optimizer.momentum", "0", "SGD momentum"},
      {"optimizer.nesterov", "false", "SGD Nesterov momentum"},
      {"optimizer.weight_decay", "0", "L2 penalty (adamw: decoupled decay)"},
      {"optimizer.beta1", "0.9", "Adam beta1"},
      {"optimizer.beta2", "0.999", "Adam beta2"},
      {"optimizer.epsilon", "1e-8", "Adam epsilon"},
      {"schedule.kind", "constant", "learning-rate schedule: constant, step or cosine"},
      {"schedule.warmup_epochs", "0", "linear warm-up from 0, in epochs (may be fractional)"},
      {"schedule.step_epochs", "1", "step schedule: epochs between decays"},
      {"schedule.gamma", "0.1", "step schedule: decay factor"},
      {"schedule.min_lr", "0", "cosine schedule: final learning rate"},
      {"checkpoint.every_steps", "0", "also checkpoint every this many steps (0 = at the end of every epoch only)"},
      {"checkpoint.keep", "3", "step checkpoints kept (best.h5 is kept besides)"},
      {"checkpoint.best_metric", "auto", "test metric choosing best.h5: accuracy (higher), loss (lower), auto: accuracy for cross_entropy, else loss"},
  };
}

struct TrainConfig {
  std::string data_path, train_split, eval_split, spec, init, run_dir, resume;
  std::vector<double> mean, std;
  bool normalize, random_flip, prefetch;
  int random_crop_pad, epochs, global_batch, threads, eval_batch, keep, micro_batch;
  bool exact_reduction, shared_memory_sum;
  long log_interval, max_steps, every_steps;
  std::size_t cache_bytes, bucket_bytes;
  std::uint64_t seed;
  core::LossConfig loss;
  core::OptimizerConfig optimizer;
  core::ScheduleConfig schedule;
  double warmup_epochs, step_epochs;
  std::string best_metric, progress;
  double collective_timeout;
};

TrainConfig read_config(const Settings& s) {
  TrainConfig c;
  c.data_path = s.text("data.path");
  c.train_split = s.text("data.train_split");
  c.eval_split = s.text("data.eval_split") == "none" ? "" : s.text("data.eval_split");  // "" too
  c.normalize = s.flag("data.normalize");
  c.mean = s.reals("data.mean");
  c.std = s.reals("data.std");
  c.random_flip = s.flag("data.random_flip");
  c.random_crop_pad = int(s.integer("data.random_crop_pad", 0));
  c.cache_bytes = std::size_t(s.integer("data.cache_mb", 0)) << 20;
  c.prefetch = s.flag("data.prefetch");
  c.spec = s.text("model.spec");
  c.init = s.choice("model.init", core::known_init_schemes());
  c.epochs = int(s.integer("train.epochs", 1));
  c.global_batch = int(s.integer("train.batch_size", 1));
  c.seed = std::uint64_t(s.integer("train.seed", 0, std::numeric_limits<long>::max()));
  c.threads = int(s.integer("train.threads", 0));
  c.log_interval = s.integer("train.log_interval", 1);
  c.max_steps = s.integer("train.max_steps", 0);
  c.eval_batch = int(s.integer("train.eval_batch", 1));
  c.bucket_bytes = std::size_t(s.integer("train.bucket_kb", 0)) << 10;
  c.collective_timeout = s.real("train.collective_timeout", 0);
  c.exact_reduction = s.choice("train.reduction", {"exact", "fast"}) == "exact";
  c.shared_memory_sum = s.choice("train.node_sum", {"shared", "mpi"}) == "shared";
  c.micro_batch = int(s.integer("train.micro_batch", 1));
  c.progress = s.choice("train.progress", {"auto", "bar", "lines"});
  c.loss.kind = s.choice("loss.kind", {"cross_entropy", "mse"});
  for (double w : s.reals("loss.class_weights")) c.loss.class_weights.push_back(float(w));
  c.optimizer.name = s.choice("optimizer.name", {"sgd", "adam", "adamw"});
  c.schedule.base_lr = s.real("optimizer.lr", 0, false);
  c.optimizer.momentum = s.real("optimizer.momentum", 0);
  c.optimizer.nesterov = s.flag("optimizer.nesterov");
  c.optimizer.weight_decay = s.real("optimizer.weight_decay", 0);
  c.optimizer.beta1 = s.real("optimizer.beta1", 0);
  c.optimizer.beta2 = s.real("optimizer.beta2", 0);
  c.optimizer.epsilon = s.real("optimizer.epsilon", 0, false);
  c.schedule.kind = s.choice("schedule.kind", {"constant", "step", "cosine"});
  c.warmup_epochs = s.real("schedule.warmup_epochs", 0);
  c.step_epochs = s.real("schedule.step_epochs", 0, false);
  c.schedule.gamma = s.real("schedule.gamma", 0, false);
  c.schedule.min_lr = s.real("schedule.min_lr", 0);
  c.every_steps = s.integer("checkpoint.every_steps", 0);
  c.keep = int(s.integer("checkpoint.keep", 1));
  c.best_metric = s.choice("checkpoint.best_metric", {"auto", "accuracy", "loss"});
  if (c.best_metric == "auto") c.best_metric = c.loss.kind == "cross_entropy" ? "accuracy" : "loss";
  if (c.best_metric == "accuracy" && c.loss.kind != "cross_entropy")
    throw ConfigError("'checkpoint.best_metric' = accuracy needs loss.kind = cross_entropy ('" + c.loss.kind +
                      "' has no accuracy); use loss");
  if (c.optimizer.momentum >= 1) throw ConfigError("'optimizer.momentum' must be below 1, got " + s.text("optimizer.momentum"));
  if (c.optimizer.nesterov && c.optimizer.momentum == 0) throw ConfigError("'optimizer.nesterov' needs 'optimizer.momentum' > 0");
  const std::string name = s.given("config") ? fs::path(s.text("config")).stem().string() : "run";
  c.run_dir = s.given("output") ? s.text("output") : "runs/" + name;
  c.resume = s.text("resume");
  return c;
}

// Threads per rank: this node's cores shared among the ranks on it, and never more than the cores
// this rank may run on (mpirun binds each rank to one core by default).
int choose_threads(int requested, const dist::Communicator& comm, std::string* warning) {
  const int node_cores = int(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t mask;
  const int allowed = sched_getaffinity(0, sizeof mask, &mask) == 0 ? CPU_COUNT(&mask) : node_cores;
  // Launchers that know the allocation say it: SLURM's cpus-per-task, or scripts/slurm/launch.sh.
  for (const char* variable : {"MPICNN_THREADS", "SLURM_CPUS_PER_TASK"})
    if (requested == 0 && std::getenv(variable)) requested = std::max(0, std::atoi(std::getenv(variable)));
  const int threads = requested > 0 ? requested : std::max(1, std::min(allowed, node_cores / comm.ranks_on_node()));
  if (threads * comm.ranks_on_node() > node_cores || threads > allowed)
    *warning = "warning: " + std::to_string(comm.ranks_on_node()) + " ranks x " + std::to_string(threads) +
               " threads on a node with " + std::to_string(node_cores) + " cores (this rank may use " +
               std::to_string(allowed) + "): oversubscribed, expect slower steps";
  return threads;
}

class Trainer {
 public:
  Trainer(const TrainConfig& config, const std::string& config_ini, const dist::Communicator& comm)
      : c_(config), config_ini_(config_ini), comm_(comm) {
    if (c_.global_batch < comm.size())
      throw ConfigError("'train.batch_size' " + std::to_string(c_.global_batch) + " is smaller than the " +
                        std::to_string(comm.size()) + " ranks: every rank needs at least one sample per step");
    std::string warning;
    core::set_threads(choose_threads(c_.threads, comm, &warning));
    if (!warning.empty() && comm.is_root()) std::fprintf(stderr, "%s\n", warning.c_str());
    reader_ = std::make_unique<data::TrainReader>(data::ReaderOptions{
        c_.data_path, c_.train_split, c_.global_batch, comm.rank(), comm.size(), c_.seed, true, c_.normalize, c_.mean,
        c_.std, c_.random_flip, c_.random_crop_pad, c_.cache_bytes, c_.prefetch, c_.exact_reduction ? c_.micro_batch : 1});
    const data::DatasetInfo& info = reader_->info();
    meta_ = {"", info.shape, c_.loss.kind, c_.mean.empty() ? info.mean : c_.mean, c_.std.empty() ? info.std : c_.std,
             info.class_names};
    if (!c_.normalize) meta_.mean.assign(info.shape.c, 0.0), meta_.std.assign(info.shape.c, 1.0);
    model_ = std::make_unique<core::Model>(c_.spec, info.shape,
                                           c_.exact_reduction ? std::min(c_.micro_batch, reader_->capacity()) : reader_->capacity());
    meta_.spec = model_->canonical_spec();
    model_->reserve_statistics(statistics_slots());
    check_output_fits(info);
    optimizer_ = std::make_unique<core::Optimizer>(c_.optimizer, model_->params().size());
    if (!c_.exact_reduction)
      sync_ = std::make_unique<dist::GradientSync>(comm, model_->params(), int(model_->layers().size()), c_.bucket_bytes);
    watchdog_ = std::make_unique<dist::Watchdog>(comm, c_.collective_timeout);
    if (c_.exact_reduction) exact_ = std::make_unique<dist::ExactGradientSum>(comm, model_->params(), c_.shared_memory_sum);
    if (!c_.eval_split.empty())
      eval_reader_ = std::make_unique<data::EvalReader>(data::EvalOptions{
          c_.data_path, c_.eval_split, c_.eval_batch, comm.rank(), comm.size(), c_.normalize, meta_.mean, meta_.std, c_.prefetch});
    steps_per_epoch_ = reader_->steps_per_epoch();
    total_steps_ = steps_per_epoch_ * c_.epochs;
    c_.schedule.warmup_steps = long(std::llround(c_.warmup_epochs * steps_per_epoch_));
    c_.schedule.step_size = std::max(1L, long(std::llround(c_.step_epochs * steps_per_epoch_)));
  }

  int run() {
    prepare_run_dir();
    start_from_checkpoint_or_init();
    // Only now: a resume that fails its checks must leave the run folder's config.ini as it was.
    if (comm_.is_root()) io::write_file_atomically(c_.run_dir + "/config.ini", config_ini_);
    std::signal(SIGTERM, on_stop_signal);
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGUSR1, on_stop_signal);
    Reporter report(comm_.is_root(), c_.run_dir + "/metrics.jsonl", steps_per_epoch_, c_.epochs, use_bar());
    if (comm_.is_root()) print_start();
    core::GradientWorker worker(*model_);
    data::Batch batch;
    for (; state_.epoch < c_.epochs; ++state_.epoch, state_.step_in_epoch = 0) {
      reader_->seek(state_.epoch, state_.step_in_epoch);
      EpochSums epoch_sums;
      while (reader_->next(batch)) {
        if (c_.max_steps > 0 && state_.global_step >= c_.max_steps) return finish_early(report);
        const StepResult r = train_step(worker, batch);
        epoch_sums.add(r);
        ++state_.step_in_epoch, ++state_.global_step;
        report.step(state_.epoch, state_.step_in_epoch, state_.global_step, r.loss, r.accuracy, batch.global_count, r.lr,
                    r.previous_wait, state_.global_step % c_.log_interval == 0);
        if (r.stop) return stop(report);
        if (c_.every_steps > 0 && state_.global_step % c_.every_steps == 0) save(report, {});
      }
      end_epoch(report, epoch_sums);
    }
    report.line("done: " + std::to_string(state_.global_step) + " steps in " + std::to_string(report.elapsed()) + " s");
    return 0;
  }

 private:
  struct StepResult {
    double loss = 0, accuracy = 0, lr = 0, comm_wait = 0;  // comm_wait: this rank's, this step
    CommWait previous_wait;                                 // all ranks', the step before
    bool stop = false, finite = true;
  };
  struct EpochSums {
    double loss = 0, accuracy = 0;
    long steps = 0;
    void add(const StepResult& r) { loss += r.loss, accuracy += r.accuracy, ++steps; }
  };

  void check_output_fits(const data::DatasetInfo& info) {
    const int outputs = int(model_->output_shape().size());
    if (c_.loss.kind == "cross_entropy") {
      if (info.num_classes != outputs)
        throw ConfigError("model.spec ends with " + std::to_string(outputs) + " outputs, but " + c_.data_path +
                          " has " + std::to_string(info.num_classes) + " classes");
      if (!c_.loss.class_weights.empty() && int(c_.loss.class_weights.size()) != outputs)
        throw ConfigError("'loss.class_weights' has " + std::to_string(c_.loss.class_weights.size()) +
                          " weights, expected one per class (" + std::to_string(outputs) + ")");
    } else if (info.target_size != outputs) {
      throw ConfigError("model.spec ends with " + std::to_string(outputs) + " outputs, but the targets in " +
                        c_.data_path + " have " + std::to_string(info.target_size) + " values per sample");
    }
  }

  void prepare_run_dir() {
    if (comm_.is_root()) {
      std::error_code error;
      fs::create_directories(c_.run_dir, error);
      if (error || !fs::is_directory(c_.run_dir))
        throw IoError("output folder '" + c_.run_dir + "' cannot be created (" + error.message() + ")");
    }
    comm_.barrier();
  }

  // Resume from --resume or from the run folder's own checkpoint (a requeued job); otherwise
  // rank 0 initialises and broadcasts. Either way all ranks must then hold the same weights.
  void start_from_checkpoint_or_init() {
    io::CheckpointDir dir(c_.run_dir, c_.keep);
    std::string path = c_.resume.empty() ? dir.latest().value_or("") : io::resolve_checkpoint(c_.resume);
    if (!path.empty()) {
      const io::CheckpointHeader header = io::read_checkpoint_header(path);
      if (header.model.spec != meta_.spec || header.model.input != meta_.input)
        throw ConfigError(path + ": checkpoint model '" + header.model.spec + "' on " + header.model.input.str() +
                          " differs from the config's '" + meta_.spec + "' on " + meta_.input.str());
      io::load_checkpoint(path, *model_, optimizer_.get());
      state_ = header.trainer;
      if (exact_ && !state_.gradient_grid.empty()) {
        if (state_.gradient_grid.size() != model_->params().infos().size())
          throw IoError(path + ": /trainer attribute 'gradient_grid' has " + std::to_string(state_.gradient_grid.size()) +
                        " exponents, expected " + std::to_string(model_->params().infos().size()) + " (one per parameter tensor)");
        exact_->set_grid(state_.gradient_grid);
      }
      last_saved_step_ = state_.global_step;
      if (state_.seed != c_.seed && comm_.is_root())
        std::fprintf(stderr, "warning: resuming with train.seed %llu from the checkpoint (config says %llu)\n",
                     (unsigned long long)state_.seed, (unsigned long long)c_.seed);
      if (state_.best_metric_name != c_.best_metric) {
        if (comm_.is_root() && !std::isnan(state_.best_metric))
          std::fprintf(stderr,
                       "warning: checkpoint.best_metric is '%s', the checkpoint chose best.h5 by '%s': "
                       "the next evaluation chooses it anew\n",
                       c_.best_metric.c_str(), state_.best_metric_name.c_str());
        state_.best_metric = io::TrainerState{}.best_metric;
      }
      if (comm_.is_root())
        std::printf("resuming from %s: epoch %d, step %ld of %ld (global step %ld)\n", path.c_str(), state_.epoch + 1,
                    state_.step_in_epoch, steps_per_epoch_, state_.global_step);
    } else {
      state_.seed = c_.seed;
      if (comm_.is_root()) core::init_params(model_->params(), c_.init, c_.seed);
      comm_.broadcast(model_->params().values().span());
    }
    state_.best_metric_name = c_.best_metric;
    const auto& values = model_->params().values();
    if (!comm_.same_on_all_ranks(dist::fingerprint(values.data(), values.size() * sizeof(float))))
      throw Error("ranks hold different weights before the first step (fingerprint mismatch)");
  }

  std::string sum_route() const {
    const std::string mpi = comm_.ring_allreduce() ? "ring allreduce" : "MPI's own allreduce";
    if (!exact_ || !exact_->shared_memory()) return mpi;
    if (!exact_->across_nodes()) return "in shared memory";
    return "in shared memory on each node, then " + mpi + " between " + std::to_string(comm_.nodes()) + " nodes";
  }

  // Under mpirun a rank's stdout is a pseudo-terminal even when the job's output goes to a file,
  // so a batch job (SLURM) gets plain lines unless the user asks for the bar.
  bool use_bar() const {
    if (c_.progress != "auto") return c_.progress == "bar";
    return ::isatty(STDOUT_FILENO) && !std::getenv("SLURM_JOB_ID");
  }

  void print_start() {
    std::printf("mpicnn train: %d ranks x %d threads on %d node%s, global batch %d (at most %d per rank), %ld steps per epoch\n",
                comm_.size(), core::max_threads(), comm_.nodes(), comm_.nodes() > 1 ? "s" : "", c_.global_batch,
                reader_->capacity(), steps_per_epoch_);
    if (comm_.size() > 1)
      std::printf("gradient sum: %s, %s\n", c_.exact_reduction ? "exact (int64 fixed point)" : "fast (float)",
                  sum_route().c_str());
    std::printf("data: %s [%s] %zu samples %s\n", c_.data_path.c_str(), c_.train_split.c_str(), reader_->info().count,
                reader_->info().shape.str().c_str());
    std::printf("%s", model_->summary().c_str());
    std::printf("run folder: %s\n", c_.run_dir.c_str());
    std::fflush(stdout);
  }

  // The step's small allreduce: loss sums, the stop request, this rank's communication wait in the
  // step before (for the mean over ranks), then the class histogram. The least wait over ranks
  // has an allreduce of its own (a minimum).
  enum Total { kLossSum, kCorrect, kStop, kPreviousWait, kHistogram };

  StepResult train_step(core::GradientWorker& worker, const data::Batch& batch) {
    StepResult r;
    double least_wait = 0;  // the minimum over ranks of previous_wait_, allreduced in place
    for (;;) {
      const core::LossSum local = exact_ ? accumulate_micro_batches(worker, batch) : accumulate_overlapped(worker, batch);
      watchdog_->arrived("step " + std::to_string(state_.global_step + 1));
      // One small allreduce carries the loss sums, the class histogram and the stop request, so
      // all ranks stop together and divide by the same normaliser. It is waited for with the
      // gradients: the wait measured is all the communication backward did not hide.
      totals_.assign(kHistogram, 0.0);
      totals_[kLossSum] = local.sum, totals_[kCorrect] = local.correct, totals_[kStop] = double(stop_signal != 0);
      totals_[kPreviousWait] = least_wait = previous_wait_;
      append_histogram(batch, &totals_);
      MPI_Request requests[2];
      dist::check(MPI_Iallreduce(MPI_IN_PLACE, totals_.data(), int(totals_.size()), MPI_DOUBLE, MPI_SUM, comm_.handle(),
                                 &requests[0]),
                  "MPI_Iallreduce");
      dist::check(MPI_Iallreduce(MPI_IN_PLACE, &least_wait, 1, MPI_DOUBLE, MPI_MIN, comm_.handle(), &requests[1]),
                  "MPI_Iallreduce");
      if (!exact_) {
        r.comm_wait = sync_->finish(*watchdog_, requests);
        break;
      }
      const dist::ExactGradientSum::Result sum = exact_->finish(*watchdog_, requests);
      r.comm_wait += sum.wait_seconds;
      r.finite = sum.outcome != dist::ExactGradientSum::Outcome::non_finite;
      if (sum.outcome != dist::ExactGradientSum::Outcome::retry) break;  // the same on every rank
    }
    const double normalizer = global_normalizer(totals_, batch.global_count);
    // Exact reduction: the optimizer has the summed gradient written chunk by chunk as it goes.
    const auto write_gradients = [&](std::size_t begin, std::size_t end, float* out) {
      exact_->write_gradients(1.0 / normalizer, begin, end, out);
    };
    if (!exact_) core::scale_gradients(model_->params(), 1.0 / normalizer);
    r.loss = totals_[kLossSum] / normalizer;
    r.accuracy = c_.loss.kind == "cross_entropy" ? totals_[kCorrect] / batch.global_count : NAN;
    r.stop = totals_[kStop] > 0;
    r.previous_wait = {least_wait, totals_[kPreviousWait] / comm_.size()};
    previous_wait_ = r.comm_wait;
    if (!std::isfinite(r.loss) || !r.finite) {
      // Into the arena, whose gradients the report searches for the first non-finite layer.
      if (exact_) write_gradients(0, model_->params().size(), model_->params().grads().data());
      non_finite(r.loss);
    }
    commit_statistics();
    r.lr = core::learning_rate(c_.schedule, state_.global_step, total_steps_);
    if (exact_) optimizer_->step(model_->params(), r.lr, write_gradients);
    else optimizer_->step(model_->params(), r.lr);
    return r;
  }

  // The whole local batch at once; each bucket's allreduce starts as soon as backward has
  // finished its layers, overlapping the rest of backward.
  core::LossSum accumulate_overlapped(core::GradientWorker& worker, const data::Batch& batch) {
    model_->params().zero_grads();
    model_->state().clear_statistics();
    set_run(batch, 0, comm_.rank());
    return worker.accumulate(view_of(batch, 0, batch.count), c_.loss, [this](int layer) { sync_->layer_done(layer); });
  }

  // train.reduction = exact: micro-batches of fixed global positions, each one's gradient added
  // exactly onto a fixed-point grid as backward finishes its layers, so the result does not
  // depend on which rank computed what. A rank without samples still takes part in every
  // allreduce (an empty pass calls layer_done for every layer).
  core::LossSum accumulate_micro_batches(core::GradientWorker& worker, const data::Batch& batch) {
    exact_->begin_step((batch.global_count + c_.micro_batch - 1) / c_.micro_batch);
    core::LossSum local;
    model_->state().clear_statistics();
    int start = 0;
    do {
      const int count = std::min(c_.micro_batch, batch.count - start);
      set_run(batch, start, (batch.first + start) / c_.micro_batch);
      const bool first = start == 0, last = start + count >= batch.count;
      const core::LossSum s = worker.accumulate(view_of(batch, start, count), c_.loss,
                                                [this, first, last](int layer) { exact_->layer_done(layer, first, last); });
      local.sum += s.sum, local.correct += s.correct;
      start += count;
    } while (start < batch.count);
    return local;
  }

  // Training mode for the samples from `start` on: dropout keys on their global position,
  // BatchNorm records into `slot` (exact reduction: the global micro-batch; fast: the rank).
  void set_run(const data::Batch& batch, int start, int slot) {
    model_->run() = {true, state_.seed, state_.global_step, long(batch.first) + start, slot};
  }

  // exact: one slot per micro-batch of the global batch, at fixed global positions, so the
  // statistics do not depend on the rank count; fast: one per rank.
  int statistics_slots() const {
    return c_.exact_reduction ? (c_.global_batch + c_.micro_batch - 1) / c_.micro_batch : comm_.size();
  }

  // After the step's gradient sum succeeded: every rank wrote its own slots and left the others
  // zero, so the float sum is exact in any order; then every rank folds the same slots in the
  // same order into the running statistics.
  void commit_statistics() {
    if (model_->state().slot_floats() == 0) return;
    const int slots = statistics_slots();
    if (comm_.size() > 1) watchdog_->allreduce_sum(model_->state().statistics_slots(slots), "batch statistics");
    model_->commit_statistics(slots);
  }

  core::BatchView view_of(const data::Batch& batch, int start, int count) const {
    const std::size_t outputs = model_->output_shape().size();
    return {batch.images.data() + std::size_t(start) * model_->input_shape().size(),
            batch.labels.empty() ? nullptr : batch.labels.data() + start,
            batch.targets.size() ? batch.targets.data() + start * outputs : nullptr, count};
  }

  // Samples per class (classification), so that the normaliser (the sum of class weights over the
  // global batch) is computed from integers, identically on every rank for any rank count.
  void append_histogram(const data::Batch& batch, std::vector<double>* totals) const {
    if (c_.loss.kind != "cross_entropy") return;
    const std::size_t first = totals->size();
    totals->resize(first + model_->output_shape().size(), 0.0);
    for (int n = 0; n < batch.count; ++n) (*totals)[first + batch.labels[n]] += 1;
  }

  double global_normalizer(const std::vector<double>& totals, int global_count) const {
    if (c_.loss.kind != "cross_entropy") return double(global_count) * double(model_->output_shape().size());
    double normalizer = 0;
    for (std::size_t k = 0; k + kHistogram < totals.size(); ++k)
      normalizer += totals[kHistogram + k] * (c_.loss.class_weights.empty() ? 1.0 : c_.loss.class_weights[k]);
    return normalizer;
  }

  [[noreturn]] void non_finite(double loss) {
    throw NumericError("step " + std::to_string(state_.global_step + 1) + " (epoch " + std::to_string(state_.epoch + 1) +
                       "): loss is " + std::to_string(loss) + "; " + first_non_finite_layer() +
                       "; lower optimizer.lr? The last checkpoint is kept unchanged");
  }

  // Where non-finite values first appear: in a layer's weights or gradients, else in a layer's
  // output of the last forward pass.
  std::string first_non_finite_layer() const {
    const int param = core::first_non_finite_param(model_->params());
    if (param >= 0) {
      const core::ParamInfo& info = model_->params().info(param);
      return "first non-finite values in layer " + std::to_string(info.layer) + " '" +
             model_->layers()[info.layer]->spec() + "' (" + info.name + ", weights or gradients)";
    }
    const auto& layers = model_->layers();
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const float* out = model_->activation(int(i));
      const std::size_t n = std::size_t(model_->max_batch()) * layers[i]->output_shape().size();
      if (!std::all_of(out, out + n, [](float v) { return std::isfinite(v); }))
        return "first non-finite values in the output of layer " + std::to_string(i) + " '" + layers[i]->spec() + "'";
    }
    return "no weight, gradient or layer output is non-finite: the input data may hold NaN or Inf";
  }

  std::vector<std::pair<std::string, double>> evaluate_now(Reporter& report) {
    if (!eval_reader_) return {};
    const Evaluation e = evaluate(*model_, c_.loss, *eval_reader_, comm_, {}, watchdog_.get());
    std::map<std::string, double> fields = {{"epoch", state_.epoch + 1}, {"global_step", double(state_.global_step)},
                                            {"test_loss", e.loss}, {"samples", double(e.count)}, {"elapsed_s", report.elapsed()}};
    if (e.classes) fields["test_accuracy"] = e.accuracy;
    report.record("eval", fields);
    std::vector<std::pair<std::string, double>> metrics = {{"test_loss", e.loss}};
    if (e.classes) metrics.emplace_back("test_accuracy", e.accuracy);
    return metrics;
  }

  void end_epoch(Reporter& report, const EpochSums& sums) {
    const auto metrics = evaluate_now(report);
    char text[256];
    const long steps = std::max(1L, sums.steps);
    std::snprintf(text, sizeof text, "epoch %d/%d: train loss %.4f", state_.epoch + 1, c_.epochs, sums.loss / steps);
    std::string line = text;
    if (c_.loss.kind == "cross_entropy") {
      std::snprintf(text, sizeof text, " acc %.4f", sums.accuracy / steps);
      line += text;
    }
    for (const auto& [name, value] : metrics) {
      std::snprintf(text, sizeof text, ", %s %.4f", name.c_str(), value);
      line += text;
    }
    std::snprintf(text, sizeof text, " (%.1f s)", report.elapsed());
    report.line(line + text);
    report.record("epoch", {{"epoch", state_.epoch + 1}, {"train_loss", sums.loss / steps},
                            {"train_accuracy", sums.accuracy / steps}, {"elapsed_s", report.elapsed()}});
    // The checkpoint names the next position: the start of the next epoch.
    io::TrainerState next = state_;
    ++next.epoch, next.step_in_epoch = 0;
    save(report, metrics, next);
  }

  void save(Reporter& report, const std::vector<std::pair<std::string, double>>& metrics,
            std::optional<io::TrainerState> position = std::nullopt) {
    io::TrainerState at = position.value_or(state_);
    at.gradient_grid = exact_ ? exact_->grid() : std::vector<int>{};
    bool best = false;
    for (const auto& [name, value] : metrics)
      if (name == "test_" + c_.best_metric && improves_best(value)) state_.best_metric = at.best_metric = value, best = true;
    if (comm_.is_root()) {
      io::CheckpointDir dir(c_.run_dir, c_.keep);
      const std::string path = dir.path_for(at.global_step);
      io::save_checkpoint(path, meta_, *model_, *optimizer_, at, config_ini_, comm_.size(), metrics);
      dir.commit(path);
      if (best) io::save_checkpoint(dir.best_path(), meta_, *model_, *optimizer_, at, config_ini_, comm_.size(), metrics);
      report.line("checkpoint: " + path + (best ? " (best so far, also best.h5)" : ""));
    }
    comm_.barrier();
    last_saved_step_ = at.global_step;
  }

  // Accuracy is better higher, loss lower; any value beats none, and NaN never wins.
  bool improves_best(double value) const {
    if (std::isnan(value)) return false;
    if (std::isnan(state_.best_metric)) return true;
    return c_.best_metric == "loss" ? value < state_.best_metric : value > state_.best_metric;
  }

  int stop(Reporter& report) {
    report.line("stop requested by a signal: checkpointing at global step " + std::to_string(state_.global_step));
    if (state_.step_in_epoch == steps_per_epoch_) {
      end_epoch(report, {});
    } else {
      save(report, {});
    }
    return kExitStopped;
  }

  int finish_early(Reporter& report) {
    report.line("reached train.max_steps = " + std::to_string(c_.max_steps));
    if (last_saved_step_ == state_.global_step) return 0;
    if (state_.step_in_epoch == steps_per_epoch_) end_epoch(report, {});
    else save(report, evaluate_now(report));
    return 0;
  }

  TrainConfig c_;
  std::string config_ini_;
  const dist::Communicator& comm_;
  std::unique_ptr<data::TrainReader> reader_;
  std::unique_ptr<data::EvalReader> eval_reader_;
  std::unique_ptr<core::Model> model_;
  std::unique_ptr<core::Optimizer> optimizer_;
  std::unique_ptr<dist::GradientSync> sync_;
  std::unique_ptr<dist::Watchdog> watchdog_;
  std::unique_ptr<dist::ExactGradientSum> exact_;
  io::ModelMeta meta_;
  io::TrainerState state_;
  long steps_per_epoch_ = 0, total_steps_ = 0;
  long last_saved_step_ = -1;  // the global step of the newest checkpoint, so none is written twice
  std::vector<double> totals_;  // train_step's allreduce buffer, kept to reuse its allocation
  double previous_wait_ = 0;    // this rank's communication wait in the last step
};

}  // namespace

int run_train(const Args& args, const dist::Communicator& comm) {
  Settings settings("train", train_keys());
  if (!parse_or_help(settings, args, comm.is_root())) return 0;
  return Trainer(read_config(settings), settings.resolved_ini(), comm).run();
}

}  // namespace mpicnn::app
