#include "apps/sharded_head.hpp"

#include <cstdio>

#include "core/errors.hpp"

namespace mpicnn::app {
namespace {

constexpr int kRowsTag = 18;  // the classifier's rows on their way to rank 0's checkpoint

void check_shardable(const TrainConfig& c, const std::vector<std::string>& layers) {
  if (!c.task->margin_softmax())
    throw ConfigError("'train.classifier' = sharded needs loss.kind = arcface or cosface, got '" + c.task->kind() + "'");
  if (layers.size() < 2 || layers.back().rfind("cosine(", 0) != 0)
    throw ConfigError("'train.classifier' = sharded needs model.spec to end with cosine(identities) after the embedding, but it "
                      "ends with '" + layers.back() + "'");
  if (!c.exact_reduction) throw ConfigError("'train.classifier' = sharded needs train.reduction = exact, got fast");
  // Its step runs the backbone one micro-batch at a time, twice; global-batch statistics run them all at once.
  if (c.global_batch_statistics())
    throw ConfigError("'train.classifier' = sharded needs model.bn_statistics = micro_batch, got global_batch");
  // Evaluation runs the whole model on each rank's own samples, which a split classifier cannot.
  if (!c.eval_split.empty() || !c.test_split.empty())
    throw ConfigError("'train.classifier' = sharded evaluates no split while training (the classifier is split across "
                      "ranks): set data.eval_split = none and data.test_split = none, then run mpicnn eval or embed on "
                      "the checkpoint");
}

}  // namespace

ShardedHead::ShardedHead(const TrainConfig& c, const core::Shape& input, const dist::Communicator& comm) : comm_(comm) {
  const std::vector<std::string> layers = core::top_level_specs(c.spec, input);
  check_shardable(c, layers);
  last_spec_ = layers.back();
  for (std::size_t i = 0; i + 1 < layers.size(); ++i) backbone_spec_ += (i ? " " : "") + layers[i];
  full_params_ = core::plan_params(c.spec, input);
  const core::ParamInfo& weight = full_params_.back();
  classes_ = weight.dims[0];
  dist::ShardedClassifier::Options options{*c.task->margin_softmax(), weight.dims[0], weight.dims[1], c.micro_batch,
                                           weight.name, c.optimizer, c.sample_rate, c.seed};
  classifier_ = std::make_unique<dist::ShardedClassifier>(comm, options);
  micro_batch_ = c.micro_batch;
  rows_.info = weight;
  for (const auto& [name, buffer] : classifier_->optimizer().state()) rows_.states.push_back(name);
  rows_.write_rows = [this](const io::ExtraParam::Sink& sink) {
    const dist::RowRange& own = classifier_->rows();
    sink(0, own.first, own.count, classifier_->params().value(0));
    std::size_t group = 1;
    for (const auto& [name, buffer] : classifier_->optimizer().state()) sink(group++, own.first, own.count, buffer->data());
    for (long i = 0; i < long(comm_.size() - 1) * groups(); ++i) receive_next(&sink);
  };
}

core::LossSum ShardedHead::accumulate(core::Model& model, dist::GradientReducer& reducer, dist::Watchdog& watchdog,
                                     const data::Batch& batch, long global_step, const std::function<void(int)>& set_run) {
  const int micro = micro_batch_, dim = int(model.output_shape().size());
  const std::size_t sample = model.input_shape().size();
  reducer.begin_step((batch.global_count + micro - 1) / micro);
  model.state().clear_statistics();
  embeddings_.resize(std::size_t(batch.count) * dim);
  embedding_grad_.resize(embeddings_.size());
  auto forward = [&](int start) {
    set_run(start);
    return model.forward(batch.images.data() + std::size_t(start) * sample, std::min(micro, batch.count - start));
  };
  for (int start = 0; start < batch.count; start += micro) {
    const float* out = forward(start);
    std::copy(out, out + std::size_t(std::min(micro, batch.count - start)) * dim,
              embeddings_.begin() + std::ptrdiff_t(start) * dim);
  }
  const core::LossSum sums = classifier_->forward_backward(embedding_grad_.data(), embeddings_.data(), batch.labels.data(),
                                                           batch.count, batch.global_count, global_step, watchdog,
                                                           "step " + std::to_string(global_step + 1));
  const int last = batch.count == 0 ? 0 : (batch.count - 1) / micro * micro;
  for (int start = last; start >= 0; start -= micro) {
    auto done = [&reducer, start, last](int layer) { reducer.layer_done(layer, start == last, start == 0); };
    if (batch.count == 0) {  // no samples: still every layer's part of the sums
      for (int layer = int(model.layers().size()) - 1; layer >= 0; --layer) done(layer);
      break;
    }
    if (start != last) forward(start);
    model.backward(embedding_grad_.data() + std::size_t(start) * dim, std::min(micro, batch.count - start), done);
  }
  return sums;
}

void ShardedHead::init(const std::string& scheme, std::uint64_t seed) {
  const dist::RowRange& rows = classifier_->rows();
  core::init_param_rows(classifier_->params().value(0), full_params_, int(full_params_.size()) - 1, rows.first, rows.count,
                        scheme, seed);
}

void ShardedHead::begin_files(int files) {
  core::ParamStore& params = classifier_->params();
  const int floats = int(params.info(0).size);
  if (!comm_.is_root()) {
    for (int file = 0; file < files; ++file) {
      dist::check(MPI_Send(params.value(0), floats, MPI_FLOAT, 0, kRowsTag, comm_.handle()), "MPI_Send");
      for (const auto& [name, buffer] : classifier_->optimizer().state())
        dist::check(MPI_Send(buffer->data(), floats, MPI_FLOAT, 0, kRowsTag, comm_.handle()), "MPI_Send");
    }
    return;
  }
  messages_ = received_ + long(files) * (comm_.size() - 1) * groups();
}

// The next message in the order the ranks send: file by file, rank by rank, weights then states.
void ShardedHead::receive_next(const io::ExtraParam::Sink* sink) {
  const long per_file = long(comm_.size() - 1) * groups(), at = received_ % per_file;
  const int rank = 1 + int(at / groups()), group = int(at % groups());
  const dist::RowRange block = dist::shard_rows(classes_, rank, comm_.size());
  shard_.resize(std::size_t(block.count) * classifier_->dim());
  dist::check(MPI_Recv(shard_.data(), int(shard_.size()), MPI_FLOAT, rank, kRowsTag, comm_.handle(), MPI_STATUS_IGNORE),
              "MPI_Recv");
  ++received_;
  if (sink) (*sink)(std::size_t(group), block.first, block.count, shard_.data());
}

void ShardedHead::drain() {
  while (received_ < messages_) receive_next(nullptr);
}

void ShardedHead::load(const std::string& path, long optimizer_steps) {
  const dist::RowRange& rows = classifier_->rows();
  const core::ParamInfo& whole = full_params_.back();
  io::read_param_rows(path, "/model/" + whole.name, whole, rows.first, rows.count, classifier_->params().value(0));
  for (const auto& [state, buffer] : classifier_->optimizer().state())
    io::read_param_rows(path, "/optimizer/" + state + "/" + whole.name, whole, rows.first, rows.count, buffer->data());
  classifier_->optimizer().set_steps(optimizer_steps);
}

std::string ShardedHead::describe() const {
  const dist::RowRange& rows = classifier_->rows();
  char line[256];
  std::snprintf(line, sizeof line,
                "classifier: sharded, rank 0 holds rows [%d, %d) of %d x %d; weights and optimizer state %zu bytes "
                "(%.1f MB) per rank",
                rows.first, rows.first + rows.count, classes_, classifier_->dim(), classifier_->state_bytes(),
                double(classifier_->state_bytes()) / 1e6);
  return line;
}

}  // namespace mpicnn::app
