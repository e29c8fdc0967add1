#include "apps/train_config.hpp"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <thread>
#include <tuple>
#include <utility>

#include "core/errors.hpp"

namespace fs = std::filesystem;

namespace mpicnn::app {

std::vector<Key> train_keys() {
  return {
      {"config", "", "INI config file (every key below may be set there, in its [section])"},
      {"output", "", "run folder for config, metrics.jsonl and checkpoints [default: runs/<config name>]"},
      {"resume", "", "checkpoint file or run folder to continue from (a run folder holding a checkpoint resumes by itself)"},
      {"data.path", "", "HDF5 dataset file (format: datasets/README.md)", true},
      {"data.train_split", "train", "split to train on"},
      {"data.eval_split", "test", "split evaluated after every epoch, its figures named <split>_<metric>; it chooses best.h5 ('none' or '': no evaluation)"},
      {"data.test_split", "", "split evaluated once when training ends, with best.h5's weights (MedMNIST's protocol: eval_split = val chooses, test_split reports; '' or 'none': not)"},
      {"data.normalize", "true", "subtract the per-channel mean and divide by the std"},
      {"data.mean", "", "per-channel means overriding the file's, comma-separated"},
      {"data.std", "", "per-channel stds overriding the file's, comma-separated"},
      {"data.random_flip", "false", "augmentation: random horizontal flip (the same as w in data.flip_axes)"},
      {"data.flip_axes", "", "augmentation: mirror along each of these axes at random, e.g. w,h,d (w: width, h: height, d: depth of volumes)"},
      {"data.flip_probability", "0.5", "augmentation: probability of each flip of data.flip_axes"},
      {"data.random_crop_pad", "0", "augmentation: pad by this many pixels (voxels of volumes) and crop back at random"},
      {"data.rotate_degrees", "0", "augmentation: random rotation by an angle uniform in [-degrees, degrees] about the centre (volumes: about each axis of data.rotate_axes)"},
      {"data.rotate_axes", "d,h,w", "augmentation: the axes volumes rotate about (images rotate in their plane)"},
      {"data.scale_range", "1,1", "augmentation: random zoom min,max, one factor for all axes (e.g. 0.9,1.1)"},
      {"data.translate", "0", "augmentation: random shift up to this fraction of the size, one value or per axis w,h[,d]"},
      {"data.intensity_scale", "1,1", "augmentation: multiply the (normalised) intensities by a factor uniform in min,max (e.g. 0.9,1.1)"},
      {"data.intensity_shift", "0", "augmentation: add an offset uniform in [-shift, shift], in units of the normalised intensity (the data's std)"},
      {"data.affine_probability", "1", "augmentation: the chance that a sample gets its rotation, zoom and shift (MONAI's prob)"},
      {"data.intensity_probability", "1", "augmentation: the chance that a sample gets its intensity scale and shift"},
      {"data.cache_mb", "0", "read the training split into memory before the first step when it fits in this many MB (0 = stream from the file)"},
      {"data.prefetch", "true", "read the next batch in a background thread"},
      {"data.identities_per_batch", "0", "P x K sampling for metric learning: P identities per group of P*K samples (0: shuffle the split)"},
      {"data.images_per_identity", "0", "P x K sampling: K images of each identity per group (an identity with fewer is an error)"},
      {"model.spec", "", "layers, e.g. conv(32,5) relu maxpool(2) flatten dense(10)", true},
      {"model.init", "he", "weight initialisation: he, he_uniform, xavier, xavier_normal, resnet (torchvision's ResNet: conv kaiming_normal fan_out, dense as nn.Linear; BatchNorm always 1 and 0)"},
      {"model.bn_statistics", "micro_batch", "BatchNorm statistics in training: micro_batch (each exact micro-batch's, or each rank's batch under fast reduction; no communication) or global_batch (the whole global batch's, exchanged across ranks at every bn layer, as SyncBatchNorm)"},
      {"model.winograd", "false", "run 3x3 stride-1 pad-1 convolutions of at least 32 channels in and out, on maps of even size, by Winograd F(2x2,3x3) (2.25x fewer multiply-adds in the forward pass and input gradient; rounds differently from direct convolution)"},
      {"train.epochs", "10", "epochs to train"},
      {"train.batch_size", "64", "GLOBAL batch: samples per step summed over all ranks"},
      {"train.seed", "1", "seed of weights, data order and augmentation"},
      {"train.threads", "0", "threads per rank (0: $MPICNN_THREADS, else $SLURM_CPUS_PER_TASK, else this node's cores / ranks on it)"},
      {"train.log_interval", "100", "steps between progress lines and metrics records"},
      {"train.max_steps", "0", "stop after this many global steps (0 = no limit)"},
      {"train.eval_batch", "256", "samples per evaluation batch on each rank"},
      {"train.reduction", "exact", "gradient sum across ranks: exact (bitwise the same for any rank count) or fast (overlapped with backward, rounding depends on the rank count)"},
      {"train.classifier", "replicated", "arcface, cosface: the last layer cosine(n) on every rank (replicated) or split by rows across ranks (sharded: its memory per rank falls as 1/ranks, bitwise the same weights)"},
      {"train.sample_rate", "1", "train.classifier = sharded: the share of negative identities whose centres each step's softmax takes, (0, 1] (Partial FC; the batch's own identities always), drawn from (train.seed, step, identity)"},
      {"train.micro_batch", "16", "exact reduction: samples per micro-batch, the unit whose gradients are summed exactly"},
      {"train.node_sum", "shared", "exact reduction: sum the ranks of a node in shared memory, then across nodes (shared), or all ranks through MPI's allreduce (mpi)"},
      {"train.bucket_kb", "256", "fast reduction: allreduce bucket size; buckets start while backward runs"},
      {"train.collective_timeout", "600", "seconds a step may wait for other ranks before the job is ended, naming them (0 = wait forever)"},
      {"train.progress", "auto", "rank 0's progress display: bar, lines, or auto (bar on a terminal outside SLURM)"},
      {"loss.kind", "cross_entropy", "the task: cross_entropy (softmax classification), bce (sigmoid multi-label), mse (regression), arcface or cosface (margin softmax over cosine(n) outputs), triplet (embeddings), detection (one-level FCOS on a dataset with boxes)"},
      {"loss.class_weights", "", "per-class weights for cross_entropy, comma-separated"},
      {"loss.pos_weight", "", "per-label positive weights for bce, comma-separated (BCEWithLogitsLoss pos_weight)"},
      {"loss.label_smoothing", "0", "cross_entropy: mix the one-hot target with the uniform distribution by this amount, in [0, 1), as PyTorch's label_smoothing"},
      {"loss.focal_gamma", "0", "focal loss for imbalance when > 0: cross_entropy becomes -w_y (1-p_y)^gamma log p_y (class_weights as alpha), bce torchvision's sigmoid_focal_loss"},
      {"loss.focal_alpha", "none", "bce focal loss: weight alpha of positives, 1-alpha of negatives (torchvision's default 0.25); none: no weighting"},
      {"loss.scale", "auto", "arcface, cosface: the scale s of the cosines (auto: 64)"},
      {"loss.margin", "auto", "arcface: the angular margin m in radians, [0, pi/2) (auto: 0.5); cosface: the cosine margin, [0, 2) (auto: 0.4); triplet: the distance margin between unit embeddings, [0, 2) (auto: 0.2)"},
      {"loss.mining", "auto", "triplet: batch_hard or semi_hard, inside each micro-batch (auto: batch_hard)"},
      {"optimizer.name", "sgd", "sgd, adam or adamw"},
      {"optimizer.lr", "0.01", "base learning rate"},
      {"optimizer.momentum", "0", "SGD momentum"},
      {"optimizer.nesterov", "false", "SGD Nesterov momentum"},
      {"optimizer.weight_decay", "0", "L2 penalty (adamw: decoupled decay)"},
      {"optimizer.decay_norm_and_bias", "true", "apply weight decay to biases and BatchNorm scales and shifts too (PyTorch's default; false as torchvision's ResNet recipes)"},
      {"optimizer.beta1", "0.9", "Adam beta1"},
      {"optimizer.beta2", "0.999", "Adam beta2"},
      {"optimizer.epsilon", "1e-8", "Adam epsilon"},
      {"schedule.kind", "constant", "learning-rate schedule: constant, step, multistep or cosine"},
      {"schedule.warmup_epochs", "0", "linear warm-up from 0, in epochs (may be fractional)"},
      {"schedule.step_epochs", "1", "step schedule: epochs between decays"},
      {"schedule.milestones", "", "multistep schedule: increasing epochs at which the rate is multiplied by gamma (MultiStepLR), e.g. 50,75"},
      {"schedule.gamma", "0.1", "step and multistep schedules: decay factor"},
      {"schedule.min_lr", "0", "cosine schedule: final learning rate"},
      {"checkpoint.every_steps", "0", "also checkpoint every this many steps (0 = at the end of every epoch only)"},
      {"checkpoint.keep", "3", "step checkpoints kept (best.h5 is kept besides)"},
      {"checkpoint.best_metric", "auto", "metric of data.eval_split choosing best.h5 (accuracy: higher is better, loss: lower); auto: the task's first (cross_entropy: accuracy, mse: loss)"},
  };
}

namespace {
// P x K groups must tile the global batch, and (exact reduction) each micro-batch, the group in
// which a triplet loss mines, must hold whole identities.
void check_balanced_sampling(const Settings& s, const TrainConfig& c) {
  if (c.identities_per_batch == 0 && c.images_per_identity == 0) return;
  if (c.identities_per_batch < 1 || c.images_per_identity < 1)
    throw ConfigError("'data.identities_per_batch' = " + s.text("data.identities_per_batch") + " and 'data.images_per_identity' = " +
                      s.text("data.images_per_identity") + ": P x K sampling needs both >= 1 (or both 0: no P x K sampling)");
  const int group = c.identities_per_batch * c.images_per_identity;
  if (c.global_batch % group != 0)
    throw ConfigError("'train.batch_size' = " + std::to_string(c.global_batch) + " is not a multiple of P x K = " +
                      std::to_string(group) + " ('data.identities_per_batch' x 'data.images_per_identity')");
  if (c.exact_reduction && c.micro_batch % group != 0)
    throw ConfigError("'train.micro_batch' = " + std::to_string(c.micro_batch) + " is not a multiple of P x K = " +
                      std::to_string(group) + ": a micro-batch must hold whole identities");
}

// schedule.milestones: increasing positive epochs, given exactly when the schedule is multistep.
std::vector<double> milestones(const Settings& s, const std::string& kind) {
  const std::vector<double> epochs = s.reals("schedule.milestones");
  if (kind != "multistep") {
    if (!epochs.empty()) throw ConfigError("'schedule.milestones' is for schedule.kind = multistep, not " + kind);
    return epochs;
  }
  if (epochs.empty()) throw ConfigError("schedule.kind = multistep needs 'schedule.milestones' (increasing epochs, e.g. 50,75)");
  for (std::size_t i = 0; i < epochs.size(); ++i)
    if (!(epochs[i] > 0) || (i > 0 && !(epochs[i] > epochs[i - 1])))
      throw ConfigError("'schedule.milestones' must be increasing positive epochs, got " + s.text("schedule.milestones"));
  return epochs;
}

// data.flip_axes and data.rotate_axes: comma-separated letters w, h, d, each at most once.
data::Axes axes(const Settings& s, const std::string& key) {
  data::Axes axes;
  const std::string text = s.text(key);
  std::size_t start = 0;
  while (start <= text.size() && !text.empty()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    const std::string letter = text.substr(start, comma - start);
    bool* axis = letter == "w" ? &axes.w : letter == "h" ? &axes.h : letter == "d" ? &axes.d : nullptr;
    if (!axis) throw ConfigError("'" + key + "' = " + text + ": unknown axis '" + letter + "' (known: w, h, d)");
    if (*axis) throw ConfigError("'" + key + "' = " + text + ": axis '" + letter + "' is named twice");
    *axis = true;
    start = comma + 1;
  }
  return axes;
}

// A min,max pair of reals (data.scale_range, data.intensity_scale).
std::pair<double, double> range(const Settings& s, const std::string& key) {
  const std::vector<double> values = s.reals(key);
  if (values.size() != 2) throw ConfigError("'" + key + "' = " + s.text(key) + ", expected two numbers min,max (e.g. 0.9,1.1)");
  return {values[0], values[1]};
}

// The data.* augmentation keys; their ranges are checked by the reader against the split's shape.
data::Augmentation augmentation(const Settings& s) {
  data::Augmentation a;
  a.flip = axes(s, "data.flip_axes");
  a.flip.w = a.flip.w || s.flag("data.random_flip");
  a.flip_probability = s.real("data.flip_probability", 0);
  a.crop_pad = int(s.integer("data.random_crop_pad", 0));
  a.rotate_degrees = s.real("data.rotate_degrees", 0);
  a.rotate_axes = axes(s, "data.rotate_axes");
  std::tie(a.scale_min, a.scale_max) = range(s, "data.scale_range");
  const std::vector<double> translate = s.reals("data.translate");
  if (translate.empty() || translate.size() > 3)
    throw ConfigError("'data.translate' = " + s.text("data.translate") + ", expected one fraction or one per axis w,h[,d]");
  for (std::size_t i = 0; i < 3; ++i) a.translate[i] = translate.size() == 1 ? translate[0] : i < translate.size() ? translate[i] : 0;
  std::tie(a.intensity_scale_min, a.intensity_scale_max) = range(s, "data.intensity_scale");
  a.intensity_shift = s.real("data.intensity_shift", 0);
  a.affine_probability = s.real("data.affine_probability", 0);
  a.intensity_probability = s.real("data.intensity_probability", 0);
  return a;
}

}  // namespace

TrainConfig read_config(const Settings& s) {
  TrainConfig c;
  c.data_path = s.text("data.path");
  c.train_split = s.text("data.train_split");
  c.eval_split = s.text("data.eval_split") == "none" ? "" : s.text("data.eval_split");  // "" too
  c.test_split = s.text("data.test_split") == "none" ? "" : s.text("data.test_split");
  if (!c.test_split.empty() && c.test_split == c.eval_split)
    throw ConfigError("'data.test_split' = " + c.test_split + " is also 'data.eval_split': the split that chooses best.h5 "
                      "cannot also report it (use val for data.eval_split)");
  if (!c.test_split.empty() && c.eval_split.empty())
    throw ConfigError("'data.test_split' needs 'data.eval_split' (the split whose figures choose best.h5)");
  c.normalize = s.flag("data.normalize");
  c.mean = s.reals("data.mean");
  c.std = s.reals("data.std");
  c.augment = augmentation(s);
  c.cache_bytes = std::size_t(s.integer("data.cache_mb", 0)) << 20;
  c.prefetch = s.flag("data.prefetch");
  c.identities_per_batch = int(s.integer("data.identities_per_batch", 0));
  c.images_per_identity = int(s.integer("data.images_per_identity", 0));
  c.spec = s.text("model.spec");
  c.init = s.choice("model.init", core::known_init_schemes());
  c.bn_statistics = s.choice("model.bn_statistics", {"micro_batch", "global_batch"});
  c.winograd = s.flag("model.winograd");
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
  c.sharded_classifier = s.choice("train.classifier", {"replicated", "sharded"}) == "sharded";
  c.sample_rate = s.real("train.sample_rate", 0, false);
  if (c.sample_rate > 1) throw ConfigError("'train.sample_rate' must be in (0, 1], got " + s.text("train.sample_rate"));
  if (c.sample_rate < 1 && !c.sharded_classifier)
    throw ConfigError("'train.sample_rate' = " + s.text("train.sample_rate") + " needs train.classifier = sharded");
  check_balanced_sampling(s, c);
  c.progress = s.choice("train.progress", {"auto", "bar", "lines"});
  core::TaskOptions task_options;
  for (double w : s.reals("loss.class_weights")) task_options.class_weights.push_back(float(w));
  for (double w : s.reals("loss.pos_weight")) task_options.pos_weight.push_back(float(w));
  task_options.focal_gamma = s.real("loss.focal_gamma", 0);
  task_options.label_smoothing = s.real("loss.label_smoothing", 0);
  if (task_options.label_smoothing >= 1)
    throw ConfigError("'loss.label_smoothing' must be in [0, 1), got " + s.text("loss.label_smoothing"));
  if (s.text("loss.focal_alpha") != "none") task_options.focal_alpha = s.real("loss.focal_alpha", 0);
  if (task_options.focal_alpha > 1) throw ConfigError("'loss.focal_alpha' must be in [0, 1] or none, got " + s.text("loss.focal_alpha"));
  if (s.text("loss.scale") != "auto") task_options.scale = s.real("loss.scale", 0, false);
  if (s.text("loss.margin") != "auto") task_options.margin = s.real("loss.margin", 0);
  if (s.text("loss.mining") != "auto") task_options.mining = s.choice("loss.mining", {"batch_hard", "semi_hard"});
  c.task = core::make_task(s.choice("loss.kind", core::known_tasks()), task_options);
  c.optimizer.name = s.choice("optimizer.name", {"sgd", "adam", "adamw"});
  c.schedule.base_lr = s.real("optimizer.lr", 0, false);
  c.optimizer.momentum = s.real("optimizer.momentum", 0);
  c.optimizer.nesterov = s.flag("optimizer.nesterov");
  c.optimizer.weight_decay = s.real("optimizer.weight_decay", 0);
  c.optimizer.decay_norm_and_bias = s.flag("optimizer.decay_norm_and_bias");
  c.optimizer.beta1 = s.real("optimizer.beta1", 0);
  c.optimizer.beta2 = s.real("optimizer.beta2", 0);
  c.optimizer.epsilon = s.real("optimizer.epsilon", 0, false);
  c.schedule.kind = s.choice("schedule.kind", {"constant", "step", "multistep", "cosine"});
  c.milestone_epochs = milestones(s, c.schedule.kind);
  c.warmup_epochs = s.real("schedule.warmup_epochs", 0);
  c.step_epochs = s.real("schedule.step_epochs", 0, false);
  c.schedule.gamma = s.real("schedule.gamma", 0, false);
  c.schedule.min_lr = s.real("schedule.min_lr", 0);
  c.every_steps = s.integer("checkpoint.every_steps", 0);
  c.keep = int(s.integer("checkpoint.keep", 1));
  c.best_metric = s.text("checkpoint.best_metric");
  const std::vector<std::string> metrics = c.task->best_metrics();
  if (c.best_metric == "auto") c.best_metric = metrics.front();
  if (std::find(metrics.begin(), metrics.end(), c.best_metric) == metrics.end()) {
    std::string known;
    for (const auto& m : metrics) known += (known.empty() ? "" : ", ") + m;
    throw ConfigError("'checkpoint.best_metric' = " + c.best_metric + " is not a metric of loss.kind = " + c.task->kind() +
                      " (known: auto, " + known + ")");
  }
  if (c.optimizer.momentum >= 1) throw ConfigError("'optimizer.momentum' must be below 1, got " + s.text("optimizer.momentum"));
  if (c.optimizer.nesterov && c.optimizer.momentum == 0) throw ConfigError("'optimizer.nesterov' needs 'optimizer.momentum' > 0");
  // Every key with a default has a value (given() is always true for them): empty means not set.
  const std::string config = s.text("config"), output = s.text("output");
  const std::string name = config.empty() ? "run" : fs::path(config).stem().string();
  c.run_dir = output.empty() ? "runs/" + name : output;
  c.resume = s.text("resume");
  return c;
}

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

}  // namespace mpicnn::app
