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

#include "apps/batch_boxes.hpp"
#include "apps/commands.hpp"
#include "apps/evaluate.hpp"
#include "apps/report.hpp"
#include "apps/run_checkpoints.hpp"
#include "apps/settings.hpp"
#include "apps/sharded_head.hpp"
#include "apps/train_config.hpp"
#include "core/errors.hpp"
#include "core/metrics.hpp"
#include "core/optimizer.hpp"
#include "core/parallel.hpp"
#include "core/training.hpp"
#include "datasets/reader.hpp"
#include "distributed/batch_exchange.hpp"
#include "distributed/exact_sum.hpp"
#include "distributed/grad_sync.hpp"
#include "distributed/step_totals.hpp"
#include "io/checkpoint.hpp"

namespace fs = std::filesystem;

namespace mpicnn::app {
namespace {

double metric_or_nan(const std::vector<core::Metric>& metrics, const std::string& name) {
  for (const auto& [key, value] : metrics)
    if (key == name) return value;
  return NAN;
}

volatile std::sig_atomic_t stop_signal = 0;
extern "C" void on_stop_signal(int signal) { stop_signal = signal; }

class Trainer {
 public:
  Trainer(const TrainConfig& config, const std::string& config_ini, const dist::Communicator& comm)
      : c_(config), config_ini_(config_ini), comm_(comm) {
    if (c_.global_batch < comm.size())
      throw ConfigError("'train.batch_size' " + std::to_string(c_.global_batch) + " is smaller than the " +
                        std::to_string(comm.size()) + " ranks: every rank needs at least one sample per step");
    std::string warning;
    core::set_threads(choose_threads(c_.threads, comm, &warning));
    core::allow_winograd(c_.winograd);
    if (!warning.empty() && comm.is_root()) std::fprintf(stderr, "%s\n", warning.c_str());
    reader_options_ = data::ReaderOptions{
        c_.data_path, c_.train_split, c_.global_batch, comm.rank(), comm.size(), c_.seed, true, c_.normalize, c_.mean,
        c_.std, c_.augment, c_.cache_bytes, c_.prefetch, c_.exact_reduction ? c_.micro_batch : 1,
        {c_.identities_per_batch, c_.images_per_identity}};
    reader_ = std::make_unique<data::TrainReader>(reader_options_);
    const data::DatasetInfo& info = reader_->info();
    meta_ = {"", info.shape, c_.task->kind(), c_.mean.empty() ? info.mean : c_.mean, c_.std.empty() ? info.std : c_.std,
             info.class_names, c_.task->options()};
    if (!c_.normalize) meta_.mean.assign(info.shape.c, 0.0), meta_.std.assign(info.shape.c, 1.0);
    if (c_.sharded_classifier) head_ = std::make_unique<ShardedHead>(c_, info.shape, comm);
    // Global-batch BatchNorm runs all of a rank's micro-batches at once: activations for all.
    const bool one_micro_batch_at_a_time = c_.exact_reduction && !c_.global_batch_statistics();
    model_ = std::make_unique<core::Model>(
        head_ ? head_->backbone_spec() : c_.spec, info.shape,
        one_micro_batch_at_a_time ? std::min(c_.micro_batch, reader_->capacity()) : reader_->capacity());
    meta_.spec = head_ ? head_->full_spec(model_->canonical_spec()) : model_->canonical_spec();
    model_->reserve_statistics(statistics_slots());
    if (c_.global_batch_statistics() && model_->state().slot_floats() == 0)  // only bn records statistics
      throw ConfigError("'model.bn_statistics' = global_batch, but model.spec has no bn layer: nothing to synchronise "
                        "(leave it micro_batch)");
    const core::DatasetTargets targets{info.target_size == 0, info.num_classes, info.target_size,
                                       data::has_boxes(c_.data_path, c_.train_split)};
    c_.task->configure(targets, info.shape, model_->output_shape(), c_.data_path + " split '" + c_.train_split + "'");
    c_.task->check(targets, head_ ? head_->classes() : int(model_->output_shape().size()), c_.data_path);
    optimizer_ = std::make_unique<core::Optimizer>(c_.optimizer, model_->params());
    watchdog_ = std::make_unique<dist::Watchdog>(comm, c_.collective_timeout);
    exchange_ = std::make_unique<dist::BatchStatisticsExchange>(*watchdog_);
    if (c_.exact_reduction) {
      auto exact = std::make_unique<dist::ExactGradientSum>(comm, model_->params(), c_.micro_batch, c_.shared_memory_sum);
      exact_ = exact.get();
      reducer_ = std::move(exact);
    } else {
      reducer_ = std::make_unique<dist::GradientSync>(comm, model_->params(), int(model_->layers().size()), c_.bucket_bytes);
    }
    // Parts grouped by the model's batch: evaluate() then chunks every split at fixed global
    // positions, and the figures do not depend on the rank count.
    const auto evaluation = [&](const std::string& split) {
      data::EvalOptions options{c_.data_path, split, c_.eval_batch, comm.rank(), comm.size(), c_.normalize,
                                meta_.mean, meta_.std, c_.prefetch};
      options.group = model_->max_batch();
      return std::make_unique<data::EvalReader>(options);
    };
    if (!c_.eval_split.empty()) eval_reader_ = evaluation(c_.eval_split);
    if (!c_.test_split.empty()) test_reader_ = evaluation(c_.test_split);  // now: a missing split must fail before training
    if (c_.task->needs_boxes()) open_boxes();
    steps_per_epoch_ = reader_->steps_per_epoch();
    total_steps_ = steps_per_epoch_ * c_.epochs;
    c_.schedule.warmup_steps = long(std::llround(c_.warmup_epochs * steps_per_epoch_));
    c_.schedule.step_size = std::max(1L, long(std::llround(c_.step_epochs * steps_per_epoch_)));
    for (double epoch : c_.milestone_epochs)
      c_.schedule.milestone_steps.push_back(long(std::llround(epoch * steps_per_epoch_)));
  }

  int run() {
    prepare_run_dir();
    start_from_checkpoint_or_init();
    // Only now: a resume that fails its checks must leave the run folder's config.ini as it was.
    comm_.on_root([&] { io::write_file_atomically(c_.run_dir + "/config.ini", config_ini_); });
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
    report_test_split(report);
    return 0;
  }

 private:
  struct StepResult {
    double loss = 0, accuracy = 0, lr = 0, comm_wait = 0;  // comm_wait: this rank's, this step
    std::vector<core::Metric> metrics;                      // the task's, beside the loss
    CommWait previous_wait;                                 // all ranks', the step before
    bool stop = false, finite = true;
  };
  struct EpochSums {
    double loss = 0, accuracy = 0;
    long steps = 0;
    void add(const StepResult& r) { loss += r.loss, accuracy += r.accuracy, ++steps; }
  };

  void prepare_run_dir() {
    comm_.on_root([&] {
      std::error_code error;
      fs::create_directories(c_.run_dir, error);
      if (error || !fs::is_directory(c_.run_dir))
        throw IoError("output folder '" + c_.run_dir + "' cannot be created (" + error.message() + ")");
    });
  }

  // Resume from --resume or from the run folder's own checkpoint (a requeued job); otherwise
  // rank 0 initialises and broadcasts. Either way all ranks must then hold the same weights.
  void start_from_checkpoint_or_init() {
    if (auto resumed = checkpoints_.resume(trained(), steps_per_epoch_)) {
      state_ = *resumed;
    } else {
      state_.seed = c_.seed;
      if (comm_.is_root()) core::init_params(model_->params(), c_.init, c_.seed);
      comm_.broadcast(model_->params().values().span());
      if (head_) head_->init(c_.init, c_.seed);
    }
    state_.best_metric_name = c_.best_metric;
    if (head_) head_->classifier().set_seed(state_.seed);
    const auto& values = model_->params().values();
    if (!comm_.same_on_all_ranks(dist::fingerprint(values.data(), values.size() * sizeof(float))))
      throw Error("ranks hold different weights before the first step (fingerprint mismatch)");
  }

  TrainedModel trained() { return {*model_, *optimizer_, *reducer_, meta_, head_.get()}; }

  // Detection: the training split's boxes, and every split evaluated must have boxes too (checked
  // now, not at the first evaluation). Balanced (P x K) sampling draws images by identity label,
  // which a box dataset's images do not carry.
  void open_boxes() {
    if (c_.identities_per_batch > 0)
      throw ConfigError("'data.identities_per_batch' does not combine with loss.kind = " + c_.task->kind());
    for (const std::string& split : {c_.eval_split, c_.test_split})
      if (!split.empty() && !data::has_boxes(c_.data_path, split))
        throw ConfigError("loss '" + c_.task->kind() + "' needs boxes, but " + c_.data_path + " split '" + split +
                          "' has none (mpicnn convert --format coco writes them)");
    train_boxes_ = std::make_unique<BatchBoxes>(c_.data_path, c_.train_split);
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
    if (c_.global_batch_statistics())
      std::printf("BatchNorm statistics: over the global batch, exchanged at every bn layer\n");
    std::printf("data: %s [%s] %zu samples %s\n", c_.data_path.c_str(), c_.train_split.c_str(), reader_->info().count,
                reader_->info().shape.str().c_str());
    std::printf("%s", model_->summary().c_str());
    if (head_) std::printf("%s\n", head_->describe().c_str());
    std::printf("run folder: %s\n", c_.run_dir.c_str());
    std::fflush(stdout);
  }

  // The step's small allreduce: loss sums, the stop request, this rank's communication wait in the
  // step before (for the mean over ranks), then the class histogram. The least wait over ranks
  // has an allreduce of its own (a minimum).
  enum Total { kLossSum, kCorrect, kStop, kPreviousWait, kTaskTotals };

  StepResult train_step(core::GradientWorker& worker, const data::Batch& batch) {
    StepResult r;
    rows_ = train_boxes_ ? train_boxes_->train_rows(batch, reader_options_, reader_->info().shape)
                         : std::span<const core::ImageBoxes>{};
    std::vector<double>& totals = totals_.sums();
    for (;;) {
      const core::LossSum local =
          head_ ? head_->accumulate(*model_, *reducer_, *watchdog_, batch, state_.global_step,
                                    [&](int start) { set_run(batch, start, (batch.first + start) / c_.micro_batch); })
                : accumulate(worker, batch);
      watchdog_->arrived("step " + std::to_string(state_.global_step + 1));
      // One small allreduce carries the loss sums, the task's totals (e.g. the class histogram)
      // and the stop request, so all ranks stop together and divide by the same normaliser. It
      // is waited for with the gradients: the wait measured is all the communication backward
      // did not hide.
      totals.assign(kTaskTotals, 0.0);
      totals[kLossSum] = local.sum, totals[kCorrect] = local.correct, totals[kStop] = double(stop_signal != 0);
      totals[kPreviousWait] = totals_.minimum() = previous_wait_;
      c_.task->append_step_totals(view_of(batch, 0, batch.count), int(model_->output_shape().size()), totals);
      const dist::GradientReducer::Result sum = reducer_->finish(*watchdog_, totals_.start());
      r.comm_wait += sum.wait_seconds;
      const Outcome outcome = head_ ? worse(sum.outcome, head_->classifier().finish()) : sum.outcome;
      r.finite = outcome != Outcome::non_finite;
      if (outcome != Outcome::retry) break;  // the same on every rank
    }
    const double normalizer = c_.task->normalizer(std::span<const double>(totals).subspan(kTaskTotals),
                                                  batch.global_count, int(model_->output_shape().size()));
    // Exact reduction: the optimizer has the summed gradient written chunk by chunk as it goes.
    const core::GradientSource gradients = reducer_->gradients(1.0 / normalizer);
    r.loss = totals[kLossSum] / normalizer;
    r.metrics = c_.task->step_metrics(totals[kCorrect], batch.global_count, int(model_->output_shape().size()));
    r.accuracy = metric_or_nan(r.metrics, "accuracy");
    r.stop = totals[kStop] > 0;
    r.previous_wait = {totals_.minimum(), totals[kPreviousWait] / comm_.size()};
    previous_wait_ = r.comm_wait;
    if (!std::isfinite(r.loss) || !r.finite) {
      // Into the arena, whose gradients the report searches for the first non-finite layer.
      if (gradients) gradients(0, model_->params().size(), model_->params().grads().data());
      non_finite(r.loss);
    }
    commit_statistics();
    r.lr = core::learning_rate(c_.schedule, state_.global_step, total_steps_);
    optimizer_->step(model_->params(), r.lr, gradients);
    if (head_) {
      dist::ShardedClassifier& classifier = head_->classifier();
      classifier.optimizer().step(classifier.params(), r.lr, classifier.gradients(1.0 / normalizer));
    }
    return r;
  }

  using Outcome = dist::GradientReducer::Outcome;
  // As one exact sum over both decides: non-finite anywhere first, then any grid outgrown.
  static Outcome worse(Outcome a, Outcome b) {
    if (a == Outcome::non_finite || b == Outcome::non_finite) return Outcome::non_finite;
    return a == Outcome::retry || b == Outcome::retry ? Outcome::retry : Outcome::ok;
  }

  // Micro-batches at fixed global positions (exact reduction: train.micro_batch samples, each
  // one's gradient added exactly onto a fixed-point grid, so the result does not depend on which
  // rank computed what; fast: the whole local batch, its buckets' allreduces overlapping the rest
  // of backward). A rank without samples still takes part in every allreduce (an empty pass
  // calls layer_done for every layer).
  core::LossSum accumulate(core::GradientWorker& worker, const data::Batch& batch) {
    if (c_.global_batch_statistics()) return accumulate_layer_synchronous(worker, batch);
    const int micro = reducer_->micro_batch(batch.count);
    reducer_->begin_step(c_.exact_reduction ? (batch.global_count + micro - 1) / micro : comm_.size());
    model_->state().clear_statistics();
    core::LossSum local;
    int start = 0;
    do {
      const int count = std::min(micro, batch.count - start);
      set_run(batch, start, c_.exact_reduction ? (batch.first + start) / micro : comm_.rank());
      const bool first = start == 0, last = start + count >= batch.count;
      const core::LossSum s = worker.accumulate(view_of(batch, start, count), *c_.task,
                                                [this, first, last](int layer) { reducer_->layer_done(layer, first, last); });
      local.sum += core::on_loss_grid(s.sum), local.correct += s.correct;
      start += count;
    } while (start < batch.count);
    return local;
  }

  // Global-batch BatchNorm: all of this rank's micro-batches layer by layer, each bn layer
  // pausing for the other ranks' partial sums (which a rank without samples joins with zeros).
  // The gradients are then handed to the reducer micro-batch after micro-batch, as above.
  core::LossSum accumulate_layer_synchronous(core::GradientWorker& worker, const data::Batch& batch) {
    std::vector<core::MicroBatch> micro_batches;
    if (c_.exact_reduction) {
      micro_batches = core::micro_batches_of(batch.count, long(batch.first), c_.micro_batch);
      exchange_->begin_step((batch.global_count + c_.micro_batch - 1) / c_.micro_batch);
    } else {  // the rank's batch is its one micro-batch, in rank order
      if (batch.count > 0) micro_batches.push_back({0, batch.count, long(batch.first), comm_.rank()});
      exchange_->begin_step(comm_.size());
    }
    reducer_->begin_step(exchange_->micro_batches());
    model_->state().clear_statistics();
    set_run(batch, 0, 0);
    model_->run().micro_batches = std::move(micro_batches);
    model_->run().exchange = exchange_.get();
    return worker.accumulate_layer_synchronous(
        [&](int start, int count) { return view_of(batch, start, count); }, batch.count, *c_.task,
        [this](int layer, bool first, bool last) { reducer_->layer_done(layer, first, last); });
  }

  // Training mode for the samples from `start` on: dropout keys on their global position,
  // BatchNorm records into `slot` (exact reduction: the global micro-batch; fast: the rank).
  void set_run(const data::Batch& batch, int start, int slot) {
    model_->run() = {true, state_.seed, state_.global_step, long(batch.first) + start, slot};
  }

  // exact: one slot per micro-batch of the global batch, at fixed global positions, so the
  // statistics do not depend on the rank count; fast: one per rank.
  int statistics_slots() const {
    if (c_.global_batch_statistics()) return 1;  // the global batch's, the same on every rank
    return c_.exact_reduction ? (c_.global_batch + c_.micro_batch - 1) / c_.micro_batch : comm_.size();
  }

  // After the step's gradient sum succeeded: every rank wrote its own slots and left the others
  // zero, so the float sum is exact in any order; then every rank folds the same slots in the
  // same order into the running statistics. Global-batch statistics are already the same on
  // every rank, in one slot.
  void commit_statistics() {
    if (model_->state().slot_floats() == 0) return;
    const int slots = statistics_slots();
    if (comm_.size() > 1 && !c_.global_batch_statistics())
      watchdog_->allreduce_sum(model_->state().statistics_slots(slots), "batch statistics");
    model_->commit_statistics(slots);
  }

  core::BatchView view_of(const data::Batch& batch, int start, int count) const {
    const std::size_t target_size = std::size_t(reader_->info().target_size);
    return {batch.images.data() + std::size_t(start) * model_->input_shape().size(),
            batch.labels.empty() ? nullptr : batch.labels.data() + start,
            batch.targets.size() ? batch.targets.data() + start * target_size : nullptr, count,
            rows_.empty() ? rows_ : rows_.subspan(std::size_t(start), std::size_t(count))};
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

  using Figures = std::vector<std::pair<std::string, double>>;

  // The figures of `reader`'s split, named <split>_<metric>, recorded as `kind` beside `fields`.
  Figures evaluate_split(data::EvalReader& reader, const std::string& split, const std::string& kind,
                         std::map<std::string, double> fields, Reporter& report) {
    const Evaluation e = evaluate(*model_, *c_.task, reader, comm_, {}, watchdog_.get());
    Figures figures = {{split + "_loss", e.loss}};
    for (const auto& [name, value] : e.metrics) figures.emplace_back(split + "_" + name, value);
    fields.insert({{"samples", double(e.count)}, {"elapsed_s", report.elapsed()}});
    for (const auto& [name, value] : figures) fields[name] = value;
    report.record(kind, fields);
    return figures;
  }

  Figures evaluate_now(Reporter& report) {
    if (!eval_reader_) return {};
    return evaluate_split(*eval_reader_, c_.eval_split, "eval",
                          {{"epoch", state_.epoch + 1}, {"global_step", double(state_.global_step)}}, report);
  }

  // MedMNIST's protocol: a split that chose nothing reports the chosen checkpoint, once. Without a
  // best.h5 (no evaluation gave a finite figure) the last weights are reported, and said so.
  void report_test_split(Reporter& report) {
    if (c_.test_split.empty()) return;
    std::string best = io::CheckpointDir(c_.run_dir, c_.keep).best_path();
    if (comm_.is_root() && !fs::exists(best)) best.clear();
    comm_.broadcast(best);  // rank 0 wrote it: its view decides, so no rank skips the load alone
    std::string chosen = "the last weights (no best.h5)";
    std::map<std::string, double> fields;
    if (!best.empty()) {
      const io::CheckpointHeader header = io::read_checkpoint_header(best);
      io::load_checkpoint(best, *model_, nullptr);
      chosen = "best.h5 (global step " + std::to_string(header.trainer.global_step) + ", " + c_.eval_split + "_" +
               c_.best_metric + " " + format_figure(header.trainer.best_metric) + ")";
      fields = {{"epoch", header.trainer.epoch}, {"global_step", double(header.trainer.global_step)}};
    }
    std::string line = "split '" + c_.test_split + "' with " + chosen + ":";
    for (const auto& [name, value] : evaluate_split(*test_reader_, c_.test_split, "test", fields, report))
      if (!is_per_label(name)) line += " " + name + " " + format_figure(value);
    report.line(line);
  }

  // Per-label figures go to metrics.jsonl only: fourteen labels' would drown the line.
  static bool is_per_label(const std::string& name) { return core::per_label_index(name) >= 0; }

  static std::string format_figure(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.4f", value);
    return text;
  }

  void end_epoch(Reporter& report, const EpochSums& sums) {
    const auto metrics = evaluate_now(report);
    char text[256];
    const long steps = std::max(1L, sums.steps);
    std::snprintf(text, sizeof text, "epoch %d/%d: train loss %.4f", state_.epoch + 1, c_.epochs, sums.loss / steps);
    std::string line = text;
    if (!std::isnan(sums.accuracy)) {
      std::snprintf(text, sizeof text, " acc %.4f", sums.accuracy / steps);
      line += text;
    }
    for (const auto& [name, value] : metrics)
      if (!is_per_label(name)) line += ", " + name + " " + format_figure(value);
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
    checkpoints_.save(trained(), state_, position.value_or(state_), metrics, report);
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
    if (checkpoints_.last_saved_step() != state_.global_step) {
      if (state_.step_in_epoch == steps_per_epoch_) end_epoch(report, {});
      else save(report, evaluate_now(report));
    }
    report_test_split(report);
    return 0;
  }

  TrainConfig c_;
  std::string config_ini_;
  const dist::Communicator& comm_;
  data::ReaderOptions reader_options_;
  std::unique_ptr<data::TrainReader> reader_;
  std::unique_ptr<BatchBoxes> train_boxes_;   // tasks that need_boxes() only
  std::span<const core::ImageBoxes> rows_;    // the step's rows' boxes, into train_boxes_
  std::unique_ptr<data::EvalReader> eval_reader_, test_reader_;
  std::unique_ptr<core::Model> model_;
  std::unique_ptr<core::Optimizer> optimizer_;
  std::unique_ptr<dist::GradientReducer> reducer_;
  std::unique_ptr<dist::Watchdog> watchdog_;
  std::unique_ptr<dist::BatchStatisticsExchange> exchange_;  // global-batch BatchNorm's
  dist::ExactGradientSum* exact_ = nullptr;  // reducer_ under exact reduction (its route, for the start line)
  std::unique_ptr<ShardedHead> head_;        // train.classifier = sharded; null: replicated
  io::ModelMeta meta_;
  io::TrainerState state_;
  long steps_per_epoch_ = 0, total_steps_ = 0;
  RunCheckpoints checkpoints_{c_, config_ini_, comm_};
  dist::StepTotals totals_{comm_};
  double previous_wait_ = 0;    // this rank's communication wait in the last step
};

}  // namespace

int run_train(const Args& args, const dist::Communicator& comm) {
  Settings settings("train", train_keys());
  if (!parse_or_help(settings, args, comm.is_root())) return 0;
  return Trainer(read_config(settings), settings.resolved_ini(), comm).run();
}

}  // namespace mpicnn::app
