// `mpicnn embed`: a checkpoint's embeddings of a dataset split, written to HDF5, with verification
// figures (core/verification.hpp) on pairs from a pairs file (LFW's pairs.txt layout) or from the
// split's labels. A model ending in cosine(n) is cut before it: the embedding is the cosine
// layer's input, as face recognition compares faces of identities never trained on.
#include <cstdio>
#include <fstream>
#include <map>

#include "apps/commands.hpp"
#include "apps/settings.hpp"
#include "core/errors.hpp"
#include "core/model.hpp"
#include "core/parallel.hpp"
#include "core/verification.hpp"
#include "datasets/h5.hpp"
#include "datasets/reader.hpp"
#include "io/checkpoint.hpp"

namespace mpicnn::app {
namespace {

std::vector<Key> embed_keys() {
  return {
      {"checkpoint", "", "checkpoint file or run folder (its latest checkpoint)", true},
      {"data", "", "HDF5 dataset file", true},
      {"split", "test", "split to embed"},
      {"output", "", "embeddings file (.h5): embeddings (N,D), labels, sample_ids", true},
      {"pairs", "", "LFW pairs.txt-layout file naming identities (the split's class names) and 1-based image numbers "
                    "(an identity's n-th sample in the split); empty: every positive pair of the split's labels and as "
                    "many seeded negatives"},
      {"seed", std::to_string(core::kLabelPairSeed), "seed of the negative pairs drawn from labels (evaluations use this default)"},
      {"batch", "256", "samples per batch on each rank"},
      {"threads", "0", "threads per rank (0 = all this rank may use)"},
      {"winograd", "false", "Winograd F(2x2,3x3) for 3x3 stride-1 pad-1 convolutions of >= 32 channels (as model.winograd in training)"},
  };
}

// The layer whose output is the embedding (core::embedding_layer), else the last.
int embedding_or_last_layer(const core::Model& model) {
  const int layer = core::embedding_layer(model);
  if (layer >= 0) return layer;
  if (model.layers().size() == 1 && core::parse_spec(model.layers().back()->spec()).at(0).kind == "cosine")
    throw ConfigError("model.spec is only 'cosine': there is no embedding before it to cut at");
  return int(model.layers().size()) - 1;
}

// sample_of(name, n) for a pairs file: image n (1-based) of identity `name` is that class's n-th
// sample in the split's order; a dataset without class names names identities by their label.
std::function<std::optional<std::uint32_t>(const std::string&, int)> sample_lookup(
    const std::vector<std::string>& class_names, const std::vector<std::int32_t>& labels) {
  auto by_name = std::make_shared<std::map<std::string, std::vector<std::uint32_t>>>();
  for (std::size_t i = 0; i < labels.size(); ++i) {
    const std::size_t label = std::size_t(labels[i]);
    (*by_name)[label < class_names.size() ? class_names[label] : std::to_string(label)].push_back(std::uint32_t(i));
  }
  return [by_name](const std::string& name, int n) -> std::optional<std::uint32_t> {
    const auto it = by_name->find(name);
    if (it == by_name->end() || n < 1 || std::size_t(n) > it->second.size()) return std::nullopt;
    return it->second[std::size_t(n - 1)];
  };
}

}  // namespace

int run_embed(const Args& args, const dist::Communicator& comm) {
  Settings s("embed", embed_keys());
  if (!parse_or_help(s, args, comm.is_root())) return 0;
  core::set_threads(int(s.integer("threads", 0)));
  core::allow_winograd(s.flag("winograd"));
  const std::string path = io::resolve_checkpoint(s.text("checkpoint"));
  const io::CheckpointHeader header = io::read_checkpoint_header(path);
  const int batch_size = int(s.integer("batch", 1));
  data::EvalOptions options{s.text("data"), s.text("split"), batch_size, comm.rank(), comm.size(), true,
                            header.model.mean, header.model.std, true};
  options.group = batch_size;  // whole batches at fixed positions: the same embeddings for any rank count
  data::EvalReader reader(options);
  data::check_input_shape(reader.info(), header.model.input, s.text("data"));
  core::Model model(header.model.spec, header.model.input, batch_size);
  io::load_checkpoint(path, model, nullptr);
  const int layer = embedding_or_last_layer(model);
  const int dim = int(model.layers()[std::size_t(layer)]->output_shape().size());
  std::vector<float> mine;
  std::vector<std::int32_t> labels;
  data::Batch batch;
  while (reader.next(batch)) {
    model.forward(batch.images.data(), batch.count);
    const float* embedding = model.activation(layer);
    mine.insert(mine.end(), embedding, embedding + std::size_t(batch.count) * dim);
    labels.insert(labels.end(), batch.labels.begin(), batch.labels.begin() + (batch.labels.empty() ? 0 : batch.count));
  }
  // The ranks' parts are contiguous and in rank order: gathered, they are the split in order.
  const std::vector<float> embeddings = comm.gather_to_root(std::span<const float>(mine));
  const std::vector<std::int32_t> all_labels = comm.gather_to_root(std::span<const std::int32_t>(labels));
  if (!comm.is_root()) return 0;
  const std::size_t n = embeddings.size() / std::size_t(dim);
  std::vector<std::int32_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = std::int32_t(i);
  std::vector<core::Pair> pairs;
  if (!s.text("pairs").empty()) {
    std::ifstream in(s.text("pairs"));
    if (!in) throw IoError(s.text("pairs") + ": cannot open the pairs file");
    pairs = core::read_lfw_pairs(in, s.text("pairs"), sample_lookup(reader.info().class_names, all_labels));
  } else if (!all_labels.empty()) {
    pairs = core::pairs_from_labels(all_labels, std::uint64_t(s.integer("seed", 0)));
  }
  data::h5::Handle file = data::h5::create_file(s.text("output"));
  data::h5::write_dataset<float>(file.get(), "embeddings", embeddings, {n, hsize_t(dim)});
  data::h5::write_dataset<std::int32_t>(file.get(), "sample_ids", ids, {n});
  if (!all_labels.empty()) data::h5::write_dataset<std::int32_t>(file.get(), "labels", all_labels, {n});
  std::printf("embeddings of %zu samples (%d values, layer %d '%s') written to %s\n", n, dim, layer + 1,
              model.layers()[std::size_t(layer)]->spec().c_str(), s.text("output").c_str());
  if (pairs.size() < 10) return 0;  // fewer pairs than folds: no verification figures
  std::vector<bool> same(pairs.size());
  for (std::size_t i = 0; i < pairs.size(); ++i) same[i] = pairs[i].same;
  std::printf("verification on %zu pairs:", pairs.size());
  for (const auto& [name, value] : core::verification_metrics(core::pair_scores(embeddings, dim, pairs), same))
    std::printf("  %s %.4f", name.c_str(), value);
  std::printf("\n");
  return 0;
}

}  // namespace mpicnn::app
