#include "checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>

#include "core/errors.hpp"
#include "core/parse.hpp"
#include "datasets/h5.hpp"
#include "loss_io.hpp"
#include "state_io.hpp"

namespace fs = std::filesystem;
namespace h5 = mpicnn::data::h5;

namespace mpicnn::io {
namespace {

// Bounds a file's declared sizes are checked against before anything is allocated.
constexpr std::size_t kMaxParams = std::size_t(1) << 31;
constexpr std::size_t kMaxInputValues = std::size_t(1) << 26;       // C*H*W (C*D*H*W) of one input
constexpr std::size_t kMaxActivationFloats = std::size_t(1) << 28;  // all layer outputs of one sample

}  // namespace

std::vector<std::int64_t> input_shape_attribute(const core::Shape& input) {
  if (input.is_volume()) return {input.c, input.d, input.h, input.w};
  return {input.c, input.h, input.w};
}

std::optional<core::Shape> input_shape_from_attribute(const std::vector<std::int64_t>& sizes) {
  if (sizes.size() != 3 && sizes.size() != 4) return std::nullopt;
  if (std::any_of(sizes.begin(), sizes.end(), [](std::int64_t d) { return d < 1 || d > kMaxInputSide; })) return std::nullopt;
  const std::size_t n = sizes.size();
  return core::Shape{int(sizes[0]), int(sizes[n - 2]), int(sizes[n - 1]), n == 4 ? int(sizes[1]) : 1};
}

namespace {

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

std::vector<hsize_t> dims_of(const core::ParamInfo& p) { return {p.dims.begin(), p.dims.end()}; }

void write_params(hid_t group, const std::vector<core::ParamInfo>& infos, const float* base) {
  for (const auto& p : infos)
    h5::write_dataset<float>(group, p.name, std::span<const float>(base + p.offset, p.size), dims_of(p));
}

[[noreturn]] void invalid(const std::string& path, const std::string& what) { throw IoError(path + ": " + what); }

// Reads one parameter-shaped dataset into `out`, checking its shape first.
void read_param(hid_t group, const std::string& path, const std::string& where, const core::ParamInfo& p, float* out) {
  if (!h5::exists(group, p.name)) invalid(path, "missing dataset '" + where + "/" + p.name + "'");
  h5::Handle dataset = h5::open_dataset(group, p.name);
  const auto found = h5::dims(dataset.get());
  if (found != dims_of(p))
    invalid(path, "dataset '" + where + "/" + p.name + "' has shape " + h5::dims_text(found) + ", the spec needs " +
                      h5::dims_text(dims_of(p)));
  const auto values = h5::read_dataset<float>(group, p.name);
  std::copy(values.begin(), values.end(), out);
}

void write_header(hid_t file, const ModelMeta& meta, const core::Optimizer& optimizer, const TrainerState& state,
                  const std::string& config_ini, int ranks, const std::vector<std::pair<std::string, double>>& metrics) {
  h5::write_attribute(file, "format", kCheckpointFormat);
  h5::write_attribute(file, "format_version", kCheckpointVersion);
  h5::write_attribute(file, "mpicnn_version", MPICNN_VERSION);
  h5::write_attribute(file, "created", utc_now());
  h5::write_attribute(file, "ranks", ranks);

  h5::Handle model = h5::create_group(file, "model");
  h5::write_attribute(model.get(), "spec", meta.spec);
  const std::vector<std::int64_t> input = input_shape_attribute(meta.input);
  h5::write_attribute(model.get(), "input_shape", std::span<const std::int64_t>(input));
  h5::write_attribute(model.get(), "loss", meta.loss);
  write_loss_options(model.get(), meta.loss_options);
  h5::write_attribute(model.get(), "mean", std::span<const double>(meta.mean));
  h5::write_attribute(model.get(), "std", std::span<const double>(meta.std));
  if (!meta.class_names.empty()) h5::write_attribute(model.get(), "class_names", meta.class_names);
  h5::write_attribute(model.get(), "layout", "NCHW input (NCDHW for volumes); conv weight (K,C,R,S), conv3d (K,C,T,R,S); dense weight (out,in); PyTorch state_dict names");

  const core::OptimizerConfig& o = optimizer.config();
  h5::Handle opt = h5::create_group(file, "optimizer");
  h5::write_attribute(opt.get(), "name", o.name);
  h5::write_attribute(opt.get(), "momentum", o.momentum);
  h5::write_attribute(opt.get(), "nesterov", std::int64_t(o.nesterov));
  h5::write_attribute(opt.get(), "weight_decay", o.weight_decay);
  h5::write_attribute(opt.get(), "decay_norm_and_bias", std::int64_t(o.decay_norm_and_bias));
  h5::write_attribute(opt.get(), "beta1", o.beta1);
  h5::write_attribute(opt.get(), "beta2", o.beta2);
  h5::write_attribute(opt.get(), "epsilon", o.epsilon);
  h5::write_attribute(opt.get(), "steps", std::int64_t(optimizer.steps()));

  h5::Handle trainer = h5::create_group(file, "trainer");
  h5::write_attribute(trainer.get(), "epoch", state.epoch);
  h5::write_attribute(trainer.get(), "step_in_epoch", std::int64_t(state.step_in_epoch));
  h5::write_attribute(trainer.get(), "global_step", std::int64_t(state.global_step));
  // The seed is stored as text: HDF5 attributes here are int64 and the seed is any uint64.
  h5::write_attribute(trainer.get(), "seed", std::to_string(state.seed));
  h5::write_attribute(trainer.get(), "best_metric", state.best_metric);
  h5::write_attribute(trainer.get(), "best_metric_name", state.best_metric_name);
  h5::write_attribute(trainer.get(), "rng", "none: the data order and augmentation are pure functions of (seed, epoch, sample index)");
  if (!state.gradient_grid.empty()) {
    const std::vector<std::int64_t> grid(state.gradient_grid.begin(), state.gradient_grid.end());
    h5::write_attribute(trainer.get(), "gradient_grid", std::span<const std::int64_t>(grid));
  }

  h5::Handle config = h5::create_group(file, "config");
  h5::write_attribute(config.get(), "ini", config_ini);
  h5::Handle metric_group = h5::create_group(file, "metrics");
  for (const auto& [name, value] : metrics) h5::write_attribute(metric_group.get(), name, value);
}

}  // namespace

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) throw IoError(path + ": cannot open for fsync (" + std::strerror(errno) + ")");
  const int status = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (status != 0) throw IoError(path + ": fsync failed (" + std::strerror(error) + ")");
}

namespace {

// The seed is decimal text: it may be any uint64, past HDF5's int64 attributes here.
std::uint64_t parse_seed(const std::string& path, const std::string& text) {
  const std::optional<std::uint64_t> seed = core::parse_whole<std::uint64_t>(text);
  if (!seed)
    invalid(path, "/trainer attribute 'seed' is '" + text.substr(0, 40) + "', expected a decimal unsigned 64-bit integer");
  return *seed;
}

// Writers before best_metric_name was set from checkpoint.best_metric always wrote 'accuracy',
// with -1e300 for "no best yet" and minus the loss under a loss metric. An accuracy is never
// negative, so a negative value under that name is such a score.
void read_best_of_older_writers(TrainerState& trainer) {
  if (trainer.best_metric <= -1e299) trainer.best_metric = TrainerState{}.best_metric;
  else if (trainer.best_metric_name == "accuracy" && trainer.best_metric < 0)
    trainer.best_metric_name = "loss", trainer.best_metric = -trainer.best_metric;
}

h5::Handle create_matrix(hid_t group, const core::ParamInfo& info) {
  const hsize_t dims[2] = {hsize_t(info.dims[0]), hsize_t(info.dims[1])};
  h5::Handle space(H5Screate_simple(2, dims, nullptr));
  return h5::Handle(h5::check(H5Dcreate2(group, info.name.c_str(), H5T_NATIVE_FLOAT, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                                         H5P_DEFAULT),
                              group, "create dataset", info.name));
}

void write_extra(hid_t weights, hid_t optimizer, const ExtraParam& extra) {
  std::vector<h5::Handle> datasets;
  datasets.push_back(create_matrix(weights, extra.info));
  for (const std::string& state : extra.states) {
    h5::Handle group = h5::open_group(optimizer, state);
    datasets.push_back(create_matrix(group.get(), extra.info));
  }
  const hsize_t columns = hsize_t(extra.info.dims[1]);
  extra.write_rows([&](std::size_t group, int first_row, int rows, const float* values) {
    const hid_t dataset = datasets.at(group).get();
    h5::Handle space(H5Dget_space(dataset));
    const hsize_t start[2] = {hsize_t(first_row), 0}, count[2] = {hsize_t(rows), columns};
    h5::check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), dataset, "select rows of");
    h5::Handle memory(H5Screate_simple(2, count, nullptr));
    h5::check(H5Dwrite(dataset, H5T_NATIVE_FLOAT, memory.get(), space.get(), H5P_DEFAULT, values), dataset, "write rows of");
  });
}

std::string temp_name(const std::string& path) { return path + ".tmp" + std::to_string(::getpid()); }

void publish(const std::string& temp, const std::string& path) {
  fsync_path(temp, false);
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw IoError(path + ": cannot rename the new file into place (" + std::strerror(error) + ")");
  }
  fsync_path(fs::path(path).parent_path().empty() ? "." : fs::path(path).parent_path().string(), true);
}

}  // namespace

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string temp = temp_name(path);
  {
    std::ofstream out(temp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::error_code ignored;
      fs::remove(temp, ignored);
      throw IoError(path + ": cannot write (" + std::strerror(errno) + ")");
    }
  }
  publish(temp, path);
}

void save_checkpoint(const std::string& path, const ModelMeta& meta, const core::Model& model,
                     core::Optimizer& optimizer, const TrainerState& state, const std::string& config_ini, int ranks,
                     const std::vector<std::pair<std::string, double>>& metrics, const ExtraParam* extra) {
  const std::string temp = temp_name(path);
  try {
    {
      h5::Handle file = h5::create_file(temp);
      write_header(file.get(), meta, optimizer, state, config_ini, ranks, metrics);
      const auto& infos = model.params().infos();
      h5::Handle weights = h5::open_group(file.get(), "model");
      write_params(weights.get(), infos, model.params().values().data());
      write_state(file.get(), model.state());
      h5::Handle opt = h5::open_group(file.get(), "optimizer");
      for (const auto& [name, buffer] : optimizer.state()) {
        h5::Handle group = h5::create_group(opt.get(), name);
        write_params(group.get(), infos, buffer->data());
      }
      if (extra) write_extra(weights.get(), opt.get(), *extra);
      h5::check(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), file.get(), "flush");
    }
    publish(temp, path);
  } catch (const std::exception& e) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw IoError("cannot write checkpoint '" + path + "', the previous checkpoint is kept: " + e.what());
  }
}

CheckpointHeader read_checkpoint_header(const std::string& path) {
  CheckpointHeader h;
  h.path = path;
  h5::Handle file = h5::open_file(path);
  const hid_t f = file.get();
  if (!h5::has_attribute(f, "format") || h5::read_string_attribute(f, "format") != kCheckpointFormat)
    invalid(path, std::string("not an mpicnn checkpoint (root attribute 'format' is not '") + kCheckpointFormat + "')");
  h.format_version = int(h5::read_attribute<std::int64_t>(f, "format_version"));
  if (h.format_version != kCheckpointVersion)
    invalid(path, "checkpoint format_version " + std::to_string(h.format_version) + " is not supported (expected " +
                      std::to_string(kCheckpointVersion) + ")");
  for (const char* group : {"model", "optimizer", "trainer", "config"})
    if (!h5::exists(f, group)) invalid(path, std::string("missing group '/") + group + "'");
  h.mpicnn_version = h5::read_string_attribute(f, "mpicnn_version");
  h.created = h5::read_string_attribute(f, "created");
  h.ranks = int(h5::read_attribute<std::int64_t>(f, "ranks"));

  h5::Handle model = h5::open_group(f, "model");
  h.model.spec = h5::read_string_attribute(model.get(), "spec");
  const std::optional<core::Shape> input =
      input_shape_from_attribute(h5::read_array_attribute<std::int64_t>(model.get(), "input_shape"));
  if (!input) invalid(path, std::string("/model input_shape must be ") + kInputShapeExpected);
  h.model.input = *input;
  if (h.model.input.size() > kMaxInputValues)
    invalid(path, "/model input_shape " + h.model.input.str() + " has more than " + std::to_string(kMaxInputValues) +
                      " values per sample");
  h.model.loss = h5::read_string_attribute(model.get(), "loss");
  h.model.loss_options = read_loss_options(model.get(), path);
  task_of(h.model, path);  // the kind and its options must make a task before anything trusts them
  h.model.mean = h5::read_array_attribute<double>(model.get(), "mean");
  h.model.std = h5::read_array_attribute<double>(model.get(), "std");
  if (h5::has_attribute(model.get(), "class_names"))
    h.model.class_names = h5::read_string_array_attribute(model.get(), "class_names");
  std::vector<core::ParamInfo> plan;
  std::vector<core::StateInfo> state_plan;
  try {
    plan = core::plan_params(h.model.spec, h.model.input);
    state_plan = core::plan_state(h.model.spec, h.model.input);
  } catch (const Error& e) {
    invalid(path, std::string("/model spec does not build: ") + e.what());
  }
  std::size_t total = 0;
  for (const auto& p : plan) total += p.size;
  if (total > kMaxParams) invalid(path, "/model spec declares " + std::to_string(total) + " parameters, more than the limit");
  if (core::plan_activation_floats(h.model.spec, h.model.input) > kMaxActivationFloats)
    invalid(path, "/model spec needs more than " + std::to_string(kMaxActivationFloats) +
                      " activation values per sample on input " + h.model.input.str());
  for (const auto& p : plan) {
    if (!h5::exists(model.get(), p.name)) invalid(path, "missing dataset '/model/" + p.name + "'");
    h5::Handle dataset = h5::open_dataset(model.get(), p.name);
    const auto found = h5::dims(dataset.get());
    if (found != dims_of(p))
      invalid(path, "dataset '/model/" + p.name + "' has shape " + h5::dims_text(found) + ", the spec needs " +
                        h5::dims_text(dims_of(p)));
  }

  check_state(f, path, state_plan);

  h5::Handle opt = h5::open_group(f, "optimizer");
  h.optimizer.name = h5::read_string_attribute(opt.get(), "name");
  h.optimizer.momentum = h5::read_attribute<double>(opt.get(), "momentum");
  h.optimizer.nesterov = h5::read_attribute<std::int64_t>(opt.get(), "nesterov") != 0;
  h.optimizer.weight_decay = h5::read_attribute<double>(opt.get(), "weight_decay");
  if (h5::has_attribute(opt.get(), "decay_norm_and_bias"))  // older files: decay applied to every parameter
    h.optimizer.decay_norm_and_bias = h5::read_attribute<std::int64_t>(opt.get(), "decay_norm_and_bias") != 0;
  h.optimizer.beta1 = h5::read_attribute<double>(opt.get(), "beta1");
  h.optimizer.beta2 = h5::read_attribute<double>(opt.get(), "beta2");
  h.optimizer.epsilon = h5::read_attribute<double>(opt.get(), "epsilon");

  h5::Handle trainer = h5::open_group(f, "trainer");
  h.trainer.epoch = int(h5::read_attribute<std::int64_t>(trainer.get(), "epoch"));
  h.trainer.step_in_epoch = h5::read_attribute<std::int64_t>(trainer.get(), "step_in_epoch");
  h.trainer.global_step = h5::read_attribute<std::int64_t>(trainer.get(), "global_step");
  h.trainer.seed = parse_seed(path, h5::read_string_attribute(trainer.get(), "seed"));
  h.trainer.best_metric = h5::read_attribute<double>(trainer.get(), "best_metric");
  h.trainer.best_metric_name = h5::read_string_attribute(trainer.get(), "best_metric_name");
  read_best_of_older_writers(h.trainer);
  if (h.trainer.epoch < 0 || h.trainer.step_in_epoch < 0 || h.trainer.global_step < 0)
    invalid(path, "/trainer position is negative");
  if (h5::has_attribute(trainer.get(), "gradient_grid"))
    for (std::int64_t exponent : h5::read_array_attribute<std::int64_t>(trainer.get(), "gradient_grid")) {
      if (exponent < -kGridExponentBound || exponent > kGridExponentBound)
        invalid(path, "/trainer attribute 'gradient_grid' holds " + std::to_string(exponent) + ", expected exponents within +-" +
                          std::to_string(kGridExponentBound));
      h.trainer.gradient_grid.push_back(int(exponent));
    }

  h5::Handle config = h5::open_group(f, "config");
  h.config_ini = h5::read_string_attribute(config.get(), "ini");
  if (h5::exists(f, "metrics")) {
    h5::Handle metrics = h5::open_group(f, "metrics");
    for (const std::string& name : h5::attribute_names(metrics.get()))  // whatever the task evaluated
      h.metrics.emplace_back(name, h5::read_attribute<double>(metrics.get(), name));
  }
  return h;
}

void load_checkpoint(const std::string& path, core::Model& model, core::Optimizer* optimizer) {
  h5::Handle file = h5::open_file(path);
  h5::Handle group = h5::open_group(file.get(), "model");
  const auto& infos = model.params().infos();
  for (std::size_t i = 0; i < infos.size(); ++i)
    read_param(group.get(), path, "/model", infos[i], model.params().value(int(i)));
  read_state(file.get(), path, model.state());
  if (!optimizer) return;
  h5::Handle opt = h5::open_group(file.get(), "optimizer");
  const std::string name = h5::read_string_attribute(opt.get(), "name");
  if (name != optimizer->config().name)
    invalid(path, "optimizer '" + name + "' in the checkpoint, but the config asks for '" + optimizer->config().name + "'");
  optimizer->set_steps(h5::read_attribute<std::int64_t>(opt.get(), "steps"));
  for (const auto& [state_name, buffer] : optimizer->state()) {
    if (!h5::exists(opt.get(), state_name)) invalid(path, "missing group '/optimizer/" + state_name + "'");
    h5::Handle state = h5::open_group(opt.get(), state_name);
    for (const auto& p : infos) read_param(state.get(), path, "/optimizer/" + state_name, p, buffer->data() + p.offset);
  }
}

void read_param_rows(const std::string& path, const std::string& dataset, const core::ParamInfo& whole, int first_row,
                     int rows, float* out) {
  h5::Handle file = h5::open_file(path);
  if (!h5::exists(file.get(), dataset)) invalid(path, "missing dataset '" + dataset + "'");
  h5::Handle data = h5::open_dataset(file.get(), dataset);
  const std::vector<hsize_t> dims = h5::dims(data.get());
  // The whole matrix's shape, as read_param checks it: `out` holds rows x the spec's columns.
  if (dims != dims_of(whole) || dims.size() != 2)
    invalid(path, "dataset '" + dataset + "' has shape " + h5::dims_text(dims) + ", the spec needs " +
                      h5::dims_text(dims_of(whole)));
  if (first_row < 0 || hsize_t(first_row) + hsize_t(rows) > dims[0])
    throw Error("read_param_rows: rows [" + std::to_string(first_row) + ", " + std::to_string(first_row + rows) +
                ") outside '" + dataset + "'");
  h5::Handle space(H5Dget_space(data.get()));
  const hsize_t start[2] = {hsize_t(first_row), 0}, count[2] = {hsize_t(rows), dims[1]};
  h5::check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), data.get(), "select rows of");
  h5::Handle memory(H5Screate_simple(2, count, nullptr));
  h5::check(H5Dread(data.get(), H5T_NATIVE_FLOAT, memory.get(), space.get(), H5P_DEFAULT, out), data.get(), "read");
}

CheckpointDir::CheckpointDir(std::string dir, int keep) : dir_(std::move(dir)), keep_(keep) {}

std::string CheckpointDir::path_for(long global_step) const {
  char name[40];
  std::snprintf(name, sizeof name, "/ckpt-%09ld.h5", global_step);
  return dir_ + name;
}

namespace {

std::vector<fs::path> step_checkpoints(const std::string& dir) {
  std::vector<fs::path> files;
  static const std::regex pattern(R"(ckpt-\d{9}\.h5)");
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error))
    if (std::regex_match(entry.path().filename().string(), pattern)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

void CheckpointDir::commit(const std::string& file) {
  write_file_atomically(dir_ + "/latest", fs::path(file).filename().string() + "\n");
  const auto files = step_checkpoints(dir_);
  for (std::size_t i = 0; i + keep_ < files.size(); ++i) {
    std::error_code ignored;
    fs::remove(files[i], ignored);
  }
}

std::optional<std::string> CheckpointDir::latest() const {
  std::ifstream pointer(dir_ + "/latest");
  std::string name;
  if (pointer >> name && fs::is_regular_file(dir_ + "/" + name)) return dir_ + "/" + name;
  const auto files = step_checkpoints(dir_);
  if (files.empty()) return std::nullopt;
  return files.back().string();
}

std::string resolve_checkpoint(const std::string& file_or_dir) {
  if (fs::is_directory(file_or_dir)) {
    const auto latest = CheckpointDir(file_or_dir, 1).latest();
    if (!latest) throw IoError(file_or_dir + ": no checkpoint in this run folder (expected ckpt-*.h5 or a 'latest' file)");
    return *latest;
  }
  if (!fs::exists(file_or_dir)) throw IoError(file_or_dir + ": checkpoint file does not exist");
  return file_or_dir;
}

}  // namespace mpicnn::io
