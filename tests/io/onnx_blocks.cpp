// Test helper: the ONNX export of a model with blocks, BatchNorm, dropout and global pooling, built
// here in memory (checkpoints do not hold BatchNorm's running statistics yet), with the engine's
// evaluation-mode outputs for the same inputs, for export_tests.py to compare with onnxruntime.
//
// The model gets non-trivial values everywhere the export reads them: weights drawn by "he",
// biases and BN scales and shifts drawn here (init leaves them 0 and 1), and running statistics
// from a few training-mode forward passes (dropout active) over random batches, each committed as
// a training step commits them.
//
// usage: io_onnx_blocks SPEC C,H,W|C,D,H,W LOSS OUT_DIR [PASSES]   (training passes, 6 by default)
// Writes OUT_DIR/model.onnx, inputs.f32 (N,C,H,W or N,C,D,H,W: pixel/255 scale, before the model's
// normalisation), logits.f32 (N,K: the engine in evaluation mode), tensors.h5 (every parameter and
// state tensor by name) and prints one JSON line: n, k, input shape, training passes.
#include <cstdio>
#include <exception>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "core/parse.hpp"
#include "core/rng.hpp"
#include "datasets/h5.hpp"
#include "io/bundle.hpp"
#include "io/onnx_export.hpp"

namespace h5 = mpicnn::data::h5;
using namespace mpicnn;

namespace {

constexpr int kSamples = 37;          // compared outputs; not a multiple of the batch sizes tried
constexpr int kTrainingBatch = 16;
constexpr std::uint64_t kSeed = 11;

// C,H,W for images, C,D,H,W for volumes.
core::Shape parse_shape(const std::string& text) {
  int c = 0, d = 1, h = 0, w = 0;
  char end = 0;
  const bool volume = std::sscanf(text.c_str(), "%d,%d,%d,%d%c", &c, &d, &h, &w, &end) == 4;
  if (!volume) {
    d = 1;
    if (std::sscanf(text.c_str(), "%d,%d,%d%c", &c, &h, &w, &end) != 3) c = 0;
  }
  if (c < 1 || d < 1 || h < 1 || w < 1) throw ConfigError("shape '" + text + "': expected C,H,W or C,D,H,W");
  return {c, h, w, d};
}

void write_floats(const std::string& path, const std::vector<float>& values) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(values.data()), std::streamsize(values.size() * sizeof(float)));
  if (!out) throw IoError(path + ": cannot write");
}

// Raw images in [0,1) and, as the graph's Sub and Div compute them in float, their normalised values.
void draw_inputs(core::Rng& rng, const core::Shape& shape, const std::vector<float>& mean, const std::vector<float>& std_dev,
                 int count, std::vector<float>& raw, std::vector<float>& normalised) {
  raw.resize(std::size_t(count) * shape.size());
  normalised.resize(raw.size());
  const std::size_t plane = shape.size() / std::size_t(shape.c);
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const std::size_t c = (i / plane) % std::size_t(shape.c);
    raw[i] = float(rng.uniform());
    normalised[i] = (raw[i] - mean[c]) / std_dev[c];
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr, "usage: io_onnx_blocks SPEC C,H,W|C,D,H,W LOSS OUT_DIR [PASSES]\n");
    return 2;
  }
  try {
    const std::string spec = argv[1], loss = argv[3], dir = argv[4];
    const core::Shape input = parse_shape(argv[2]);
    const std::optional<int> passes_given = argc == 6 ? core::parse_whole<int>(argv[5]) : 6;
    if (!passes_given || *passes_given < 0) throw ConfigError(std::string("passes '") + argv[5] + "': expected an integer >= 0");
    const int passes = *passes_given;
    core::Model model(spec, input, kSamples);
    core::init_params(model.params(), "he", kSeed);
    core::Rng rng(core::derive_seed(kSeed, 1));
    for (const core::ParamInfo& p : model.params().infos()) {
      float* v = model.params().values().data() + p.offset;
      for (std::size_t i = 0; i < p.size; ++i) {
        if (p.role == core::ParamRole::bias) v[i] = float(rng.uniform(-0.2, 0.2));
        else if (p.role == core::ParamRole::bn_scale) v[i] = float(rng.uniform(0.5, 1.5));
        else if (p.role == core::ParamRole::bn_shift) v[i] = float(rng.uniform(-0.3, 0.3));
      }
    }

    std::vector<float> mean, std_dev;
    for (int c = 0; c < input.c; ++c) mean.push_back(0.3f + 0.1f * float(c)), std_dev.push_back(0.2f + 0.05f * float(c));
    std::vector<float> raw, normalised;
    model.run().training = true;
    model.run().seed = kSeed;
    for (int pass = 0; pass < passes; ++pass) {
      draw_inputs(rng, input, mean, std_dev, kTrainingBatch, raw, normalised);
      model.run().step = pass;
      model.run().first_sample = 0;
      model.run().statistics_slot = 0;
      model.forward(normalised.data(), kTrainingBatch);
      model.commit_statistics(1);
    }

    model.run().training = false;
    draw_inputs(rng, input, mean, std_dev, kSamples, raw, normalised);
    const float* out = model.forward(normalised.data(), kSamples);
    const std::size_t k = model.output_shape().size();
    write_floats(dir + "/inputs.f32", raw);
    write_floats(dir + "/logits.f32", std::vector<float>(out, out + kSamples * k));

    {
      h5::Handle file = h5::create_file(dir + "/tensors.h5");
      for (const core::ParamInfo& p : model.params().infos())
        h5::write_dataset<float>(file.get(), p.name, std::span<const float>(model.params().values().data() + p.offset, p.size),
                                 std::vector<hsize_t>(p.dims.begin(), p.dims.end()));
      const core::StateStore& state = model.state();
      for (std::size_t i = 0; i < state.infos().size(); ++i) {
        const core::StateInfo& s = state.infos()[i];
        if (s.counter) {
          const std::vector<std::int64_t> count = {state.counter(int(i))};
          h5::write_dataset<std::int64_t>(file.get(), s.name, count, {1});
        } else {
          h5::write_dataset<float>(file.get(), s.name, std::span<const float>(state.value(int(i)), s.size),
                                   std::vector<hsize_t>(s.dims.begin(), s.dims.end()));
        }
      }
    }

    io::CheckpointHeader source;
    source.path = dir + "/in-memory-model";
    source.model.spec = model.canonical_spec();
    source.model.input = input;
    source.model.loss = loss;
    source.model.mean.assign(mean.begin(), mean.end());
    source.model.std.assign(std_dev.begin(), std_dev.end());
    if (loss == "cross_entropy")
      for (std::size_t c = 0; c < k; ++c) source.model.class_names.push_back("class " + std::to_string(c));
    source.trainer.global_step = passes;
    const io::OnnxExportSummary summary =
        io::export_onnx_model(model, source, io::sha256_hex(source.model.spec), dir + "/model.onnx");
    const std::string dims = std::to_string(input.c) + ", " + (input.is_volume() ? std::to_string(input.d) + ", " : "") +
                             std::to_string(input.h) + ", " + std::to_string(input.w);
    std::printf("{\"n\": %d, \"k\": %zu, \"input\": [%s], \"training_passes\": %d, \"nodes\": %d}\n", kSamples, k,
                dims.c_str(), passes, summary.nodes);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
