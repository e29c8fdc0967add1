#include "io/bundle.hpp"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/errors.hpp"
#include "datasets/h5.hpp"
#include "io/loss_io.hpp"
#include "io/state_io.hpp"

namespace fs = std::filesystem;
namespace h5 = mpicnn::data::h5;

namespace mpicnn::io {
namespace {

// SHA-256 as FIPS 180-4 section 6.2 states it; blocks of 64 bytes, big-endian words.
class Sha256 {
 public:
  void update(const unsigned char* data, std::size_t n) {
    total_bytes_ += n;
    while (n > 0) {
      const std::size_t take = std::min(n, block_.size() - filled_);
      std::memcpy(block_.data() + filled_, data, take);
      filled_ += take, data += take, n -= take;
      if (filled_ == block_.size()) compress(), filled_ = 0;
    }
  }
  std::string hex() {
    const std::uint64_t bits = total_bytes_ * 8;
    const unsigned char one = 0x80, zero = 0;
    update(&one, 1);
    while (filled_ != 56) update(&zero, 1);
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(bits >> (56 - 8 * i));
    update(length, 8);
    static const char digits[] = "0123456789abcdef";
    std::string text;
    for (std::uint32_t word : state_)
      for (int shift = 28; shift >= 0; shift -= 4) text += digits[(word >> shift) & 0xf];
    return text;
  }

 private:
  static std::uint32_t rotr(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void compress() {
    static constexpr std::uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    std::uint32_t w[64];
    for (int t = 0; t < 16; ++t)
      w[t] = std::uint32_t(block_[4 * t]) << 24 | std::uint32_t(block_[4 * t + 1]) << 16 |
             std::uint32_t(block_[4 * t + 2]) << 8 | std::uint32_t(block_[4 * t + 3]);
    for (int t = 16; t < 64; ++t) {
      const std::uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const std::uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    std::uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3], e = state_[4], f = state_[5],
                  g = state_[6], h = state_[7];
    for (int t = 0; t < 64; ++t) {
      const std::uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[t] + w[t];
      const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    state_[0] += a, state_[1] += b, state_[2] += c, state_[3] += d;
    state_[4] += e, state_[5] += f, state_[6] += g, state_[7] += h;
  }

  std::array<std::uint32_t, 8> state_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                         0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<unsigned char, 64> block_{};
  std::size_t filled_ = 0;
  std::uint64_t total_bytes_ = 0;
};

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

[[noreturn]] void invalid(const std::string& path, const std::string& what) { throw IoError(path + ": " + what); }

std::vector<hsize_t> dims_of(const core::ParamInfo& p) { return {p.dims.begin(), p.dims.end()}; }

void write_bundle(hid_t file, const CheckpointHeader& h, const std::string& sha256, const core::Model& model) {
  h5::write_attribute(file, "format", kBundleFormat);
  h5::write_attribute(file, "format_version", kBundleVersion);
  h5::write_attribute(file, "mpicnn_version", MPICNN_VERSION);
  h5::write_attribute(file, "created", utc_now());

  h5::Handle meta = h5::create_group(file, "model");
  h5::write_attribute(meta.get(), "spec", h.model.spec);
  const std::vector<std::int64_t> input = input_shape_attribute(h.model.input);
  h5::write_attribute(meta.get(), "input_shape", std::span<const std::int64_t>(input));
  h5::write_attribute(meta.get(), "loss", h.model.loss);
  write_loss_options(meta.get(), h.model.loss_options);
  h5::write_attribute(meta.get(), "mean", std::span<const double>(h.model.mean));
  h5::write_attribute(meta.get(), "std", std::span<const double>(h.model.std));
  // HDF5 cannot read back an empty string array: no attribute means no class names (as in checkpoints).
  if (!h.model.class_names.empty()) h5::write_attribute(meta.get(), "class_names", h.model.class_names);
  h5::write_attribute(meta.get(), "input_scaling", kInputScaling);
  h5::write_attribute(meta.get(), "layout",
                      "NCHW input (NCDHW for volumes); /weights: conv weight (K,C,R,S), conv3d (K,C,T,R,S), dense weight (out,in), bias (K); /state: "
                      "BatchNorm running_mean, running_var (C) float32, num_batches_tracked int64; PyTorch "
                      "state_dict names (<layer index>.weight, nested <index>.main.<index>.weight, ...): the "
                      "state_dict is /weights and /state together");

  h5::Handle weights = h5::create_group(file, "weights");
  const float* base = model.params().values().data();
  for (const auto& p : model.params().infos())
    h5::write_dataset<float>(weights.get(), p.name, std::span<const float>(base + p.offset, p.size), dims_of(p));
  write_state(file, model.state());

  h5::Handle source = h5::create_group(file, "source");
  h5::write_attribute(source.get(), "file", fs::path(h.path).filename().string());
  h5::write_attribute(source.get(), "sha256", sha256);
  h5::write_attribute(source.get(), "created", h.created);
  h5::write_attribute(source.get(), "mpicnn_version", h.mpicnn_version);
  h5::write_attribute(source.get(), "ranks", h.ranks);
  h5::write_attribute(source.get(), "epoch", h.trainer.epoch);
  h5::write_attribute(source.get(), "global_step", std::int64_t(h.trainer.global_step));
  h5::write_attribute(source.get(), "config_ini", h.config_ini);

  h5::Handle metrics = h5::create_group(file, "metrics");
  for (const auto& [name, value] : h.metrics) h5::write_attribute(metrics.get(), name, value);
}

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  Sha256 sha;
  sha.update(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  return sha.hex();
}

std::string sha256_file(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) throw IoError(path + ": cannot open to compute its SHA-256 (" + std::strerror(errno) + ")");
  Sha256 sha;
  std::vector<unsigned char> block(1 << 20);
  std::size_t n = 0;
  while ((n = std::fread(block.data(), 1, block.size(), file.get())) > 0) sha.update(block.data(), n);
  if (std::ferror(file.get())) throw IoError(path + ": read error while computing its SHA-256");
  return sha.hex();
}

std::string temp_path_for(const std::string& path) { return path + ".tmp" + std::to_string(::getpid()); }

void check_export_target(const std::string& output, const std::string& source) {
  std::error_code error;
  if (fs::is_directory(output, error)) throw IoError(output + ": is a folder; --output must name a file");
  const fs::path folder = fs::path(output).parent_path();
  if (!folder.empty() && !fs::is_directory(folder, error))
    throw IoError(output + ": cannot write: folder '" + folder.string() + "' does not exist");
  if (fs::exists(output, error) && fs::equivalent(output, source, error))
    throw IoError(output + ": is the source checkpoint itself; choose another --output");
}

void replace_file(const std::string& temp, const std::string& path) {
  try {
    fsync_path(temp, false);
    if (std::rename(temp.c_str(), path.c_str()) != 0)
      throw IoError(path + ": cannot rename the new file into place (" + std::strerror(errno) + ")");
  } catch (...) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw;
  }
  const fs::path folder = fs::path(path).parent_path();
  fsync_path(folder.empty() ? "." : folder.string(), true);
}

BundleHeader export_bundle(const std::string& checkpoint_path, const std::string& path) {
  const CheckpointHeader h = read_checkpoint_header(checkpoint_path);
  check_export_target(path, checkpoint_path);
  core::Model model(h.model.spec, h.model.input, 1);
  load_checkpoint(checkpoint_path, model, nullptr);
  const std::string sha256 = sha256_file(checkpoint_path);
  const std::string temp = temp_path_for(path);
  try {
    {
      h5::Handle file = h5::create_file(temp);
      write_bundle(file.get(), h, sha256, model);
      h5::check(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), file.get(), "flush");
    }
    replace_file(temp, path);
  } catch (const std::exception& e) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw IoError("cannot write bundle '" + path + "': " + e.what());
  }
  return read_bundle_header(path);
}

BundleHeader read_bundle_header(const std::string& path) {
  BundleHeader b;
  b.path = path;
  h5::Handle file = h5::open_file(path);
  const hid_t f = file.get();
  if (!h5::has_attribute(f, "format") || h5::read_string_attribute(f, "format") != kBundleFormat)
    invalid(path, std::string("not an mpicnn bundle (root attribute 'format' is not '") + kBundleFormat + "')");
  b.format_version = int(h5::read_attribute<std::int64_t>(f, "format_version"));
  if (b.format_version != kBundleVersion)
    invalid(path, "bundle format_version " + std::to_string(b.format_version) + " is not supported (expected " +
                      std::to_string(kBundleVersion) + ")");
  for (const char* group : {"model", "weights", "source"})
    if (!h5::exists(f, group)) invalid(path, std::string("missing group '/") + group + "'");
  b.mpicnn_version = h5::read_string_attribute(f, "mpicnn_version");
  b.created = h5::read_string_attribute(f, "created");

  h5::Handle model = h5::open_group(f, "model");
  b.model.spec = h5::read_string_attribute(model.get(), "spec");
  const std::optional<core::Shape> input =
      input_shape_from_attribute(h5::read_array_attribute<std::int64_t>(model.get(), "input_shape"));
  if (!input) invalid(path, std::string("/model input_shape must be ") + kInputShapeExpected);
  b.model.input = *input;
  b.model.loss = h5::read_string_attribute(model.get(), "loss");
  b.model.loss_options = read_loss_options(model.get(), path);
  task_of(b.model, path);
  b.model.mean = h5::read_array_attribute<double>(model.get(), "mean");
  b.model.std = h5::read_array_attribute<double>(model.get(), "std");
  if (h5::has_attribute(model.get(), "class_names"))
    b.model.class_names = h5::read_string_array_attribute(model.get(), "class_names");
  if (b.model.mean.size() != std::size_t(b.model.input.c) || b.model.std.size() != std::size_t(b.model.input.c))
    invalid(path, "/model mean and std need one value per input channel (" + std::to_string(b.model.input.c) + ")");
  std::vector<core::ParamInfo> plan;
  std::vector<core::StateInfo> state_plan;
  try {
    plan = core::plan_params(b.model.spec, b.model.input);
    state_plan = core::plan_state(b.model.spec, b.model.input);
  } catch (const Error& e) {
    invalid(path, std::string("/model spec does not build: ") + e.what());
  }
  h5::Handle weights = h5::open_group(f, "weights");
  for (const auto& p : plan) {
    if (!h5::exists(weights.get(), p.name)) invalid(path, "missing dataset '/weights/" + p.name + "'");
    h5::Handle dataset = h5::open_dataset(weights.get(), p.name);
    if (h5::dims(dataset.get()) != dims_of(p))
      invalid(path, "dataset '/weights/" + p.name + "' has shape " + h5::dims_text(h5::dims(dataset.get())) +
                        ", the spec needs " + h5::dims_text(dims_of(p)));
  }
  check_state(f, path, state_plan);

  h5::Handle source = h5::open_group(f, "source");
  b.source.file = h5::read_string_attribute(source.get(), "file");
  b.source.sha256 = h5::read_string_attribute(source.get(), "sha256");
  b.source.created = h5::read_string_attribute(source.get(), "created");
  b.source.mpicnn_version = h5::read_string_attribute(source.get(), "mpicnn_version");
  b.source.config_ini = h5::read_string_attribute(source.get(), "config_ini");
  b.source.ranks = int(h5::read_attribute<std::int64_t>(source.get(), "ranks"));
  b.source.epoch = int(h5::read_attribute<std::int64_t>(source.get(), "epoch"));
  b.source.global_step = long(h5::read_attribute<std::int64_t>(source.get(), "global_step"));
  if (h5::exists(f, "metrics")) {
    h5::Handle metrics = h5::open_group(f, "metrics");
    for (const std::string& name : h5::attribute_names(metrics.get()))  // whatever the task evaluated
      b.metrics.emplace_back(name, h5::read_attribute<double>(metrics.get(), name));
  }
  return b;
}

void load_bundle(const std::string& path, core::Model& model) {
  h5::Handle file = h5::open_file(path);
  h5::Handle weights = h5::open_group(file.get(), "weights");
  const auto& infos = model.params().infos();
  for (std::size_t i = 0; i < infos.size(); ++i) {
    std::vector<hsize_t> found;
    const auto values = h5::read_dataset<float>(weights.get(), infos[i].name, &found);
    if (found != dims_of(infos[i]))
      invalid(path, "dataset '/weights/" + infos[i].name + "' has shape " + h5::dims_text(found) + ", the model needs " +
                        h5::dims_text(dims_of(infos[i])));
    std::copy(values.begin(), values.end(), model.params().value(int(i)));
  }
  read_state(file.get(), path, model.state());
}

}  // namespace mpicnn::io
