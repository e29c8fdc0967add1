// `mpicnn eval` and `mpicnn predict`: a checkpoint applied to a dataset split, under mpirun or
// alone. Each rank evaluates its own part; sums are added and per-sample outputs gathered on rank 0.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "apps/commands.hpp"
#include "apps/evaluate.hpp"
#include "apps/metrics.hpp"
#include "apps/settings.hpp"
#include "core/errors.hpp"
#include "core/metrics.hpp"
#include "core/task.hpp"
#include "core/parallel.hpp"
#include "datasets/boxes.hpp"
#include "datasets/h5.hpp"
#include "io/checkpoint.hpp"
#include "io/loss_io.hpp"

namespace mpicnn::app {
namespace {

std::vector<Key> apply_keys(bool predict) {
  std::vector<Key> keys = {
      {"checkpoint", "", "checkpoint file or run folder (its latest checkpoint)", true},
      {"data", "", "HDF5 dataset file", true},
      {"split", "test", "split to use"},
      {"batch", "256", "samples per batch on each rank"},
      {"threads", "0", "threads per rank (0 = all this rank may use)"},
      {"winograd", "false", "Winograd F(2x2,3x3) for 3x3 stride-1 pad-1 convolutions of >= 32 channels (as model.winograd in training)"},
  };
  if (predict) {
    keys.push_back({"output", "", "predictions file: .h5 or .csv", true});
    keys.push_back({"cut", "none", "none: the task's predictions; embedding: each sample's embedding instead (the output "
                                   "of a final l2norm or the input of a final cosine(n)), as 'embeddings' (N,D)"});
  } else {
    keys.push_back({"json", "", "print the report as JSON", false, true});
  }
  return keys;
}

Loaded load(const Settings& s, const dist::Communicator& comm) {
  core::set_threads(int(s.integer("threads", 0)));
  core::allow_winograd(s.flag("winograd"));
  return load_checkpoint_for(s.text("checkpoint"), s.text("data"), s.text("split"), int(s.integer("batch", 1)), comm);
}

// Every sample's outputs (softmax probabilities for classification) and labels, on rank 0.
struct Outputs {
  std::vector<float> values;
  std::vector<std::int32_t> labels;
  std::vector<float> targets;
};

// `layer` >= 0: that layer's outputs (the embedding) rather than the task's predictions.
Evaluation run_collecting(Loaded& l, const dist::Communicator& comm, Outputs* gathered, int layer = -1) {
  const int k = int(l.model->output_shape().size());
  const int values = layer < 0 ? k : int(l.model->layers()[std::size_t(layer)]->output_shape().size());
  const std::size_t target_size = std::size_t(l.reader->info().target_size);
  Outputs mine;
  const Evaluation e = evaluate(*l.model, *l.task, *l.reader, comm, [&](const data::Batch& b, int start, int count, const float* out) {
    for (int n = 0; n < count; ++n) {
      const std::size_t at = mine.values.size();
      mine.values.resize(at + values);
      if (layer < 0) l.task->predict(mine.values.data() + at, out + std::size_t(n) * k, k);
      else std::copy_n(l.model->activation(layer) + std::size_t(n) * values, values, mine.values.data() + at);
      if (!b.labels.empty()) mine.labels.push_back(b.labels[start + n]);
      if (b.targets.size())
        mine.targets.insert(mine.targets.end(), b.targets.data() + std::size_t(start + n) * target_size,
                            b.targets.data() + std::size_t(start + n + 1) * target_size);
    }
  });
  gathered->values = comm.gather_to_root(std::span<const float>(mine.values));
  gathered->labels = comm.gather_to_root(std::span<const std::int32_t>(mine.labels));
  gathered->targets = comm.gather_to_root(std::span<const float>(mine.targets));
  return e;
}

std::string number(double v) {
  if (std::isnan(v)) return "null";
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", v);  // round-trips: scripts compare figures exactly
  return text;
}

void print_json(const Evaluation& e, const ClassificationReport* r, const std::vector<std::string>& names) {
  std::ostringstream out;
  out << "{\"samples\": " << e.count << ", \"loss\": " << number(e.loss) << ", \"metrics\": {";
  for (std::size_t i = 0; i < e.metrics.size(); ++i)
    out << (i ? ", " : "") << "\"" << e.metrics[i].first << "\": " << number(e.metrics[i].second);
  out << "}";
  if (r) {
    out << ", \"accuracy\": " << number(e.accuracy) << ", \"confusion_matrix\": [";
    for (int i = 0; i < e.classes; ++i) {
      out << (i ? ", [" : "[");
      for (int j = 0; j < e.classes; ++j) out << (j ? ", " : "") << e.confusion[std::size_t(i) * e.classes + j];
      out << "]";
    }
    auto metrics = [&](const ClassMetrics& m) {
      std::ostringstream o;
      o << "{\"precision\": " << number(m.precision) << ", \"sensitivity\": " << number(m.recall)
        << ", \"specificity\": " << number(m.specificity) << ", \"f1\": " << number(m.f1)
        << ", \"roc_auc\": " << number(m.auc) << ", \"support\": " << m.support << "}";
      return o.str();
    };
    out << "], \"per_class\": {";
    for (std::size_t k = 0; k < r->per_class.size(); ++k)
      out << (k ? ", " : "") << "\"" << (k < names.size() ? names[k] : std::to_string(k)) << "\": " << metrics(r->per_class[k]);
    out << "}, \"macro\": " << metrics(r->macro) << ", \"weighted\": " << metrics(r->weighted);
  }
  out << "}\n";
  std::fputs(out.str().c_str(), stdout);
}

// Per-label metrics ("auc_3", multi-label) as one row per label, one column per metric.
void print_per_label(const Evaluation& e, const std::vector<std::string>& names) {
  std::vector<std::string> columns;
  std::map<int, std::map<std::string, double>> rows;
  for (const auto& [name, value] : e.metrics) {
    const int k = core::per_label_index(name);
    if (k < 0) continue;
    const std::string metric = name.substr(0, name.rfind('_'));
    if (std::find(columns.begin(), columns.end(), metric) == columns.end()) columns.push_back(metric);
    rows[k][metric] = value;
  }
  if (rows.empty()) return;
  std::printf("\n%-16s", "label");
  for (const std::string& c : columns) std::printf(" %11s", c.c_str());
  std::printf("\n");
  for (const auto& [k, values] : rows) {
    std::printf("%-16s", (std::size_t(k) < names.size() ? names[k] : std::to_string(k)).c_str());
    for (const std::string& c : columns) std::printf(" %11.4f", values.count(c) ? values.at(c) : std::nan(""));
    std::printf("\n");
  }
}

void print_text(const Evaluation& e, const ClassificationReport* r, const std::vector<std::string>& names) {
  std::printf("samples %lld  loss %.6f", (long long)e.count, e.loss);
  for (const auto& [name, value] : e.metrics)
    if (core::per_label_index(name) < 0) std::printf("  %s %.4f", name.c_str(), value);
  std::printf("\n");
  print_per_label(e, names);
  if (!r) return;
  std::printf("\nconfusion matrix (rows: true class, columns: predicted)\n");
  for (int i = 0; i < e.classes; ++i) {
    for (int j = 0; j < e.classes; ++j) std::printf("%7lld", (long long)e.confusion[std::size_t(i) * e.classes + j]);
    std::printf("\n");
  }
  std::printf("\n%-16s %9s %11s %11s %9s %9s %8s\n", "class", "precision", "sensitivity", "specificity", "f1", "roc_auc", "support");
  auto row = [](const std::string& name, const ClassMetrics& m) {
    std::printf("%-16s %9.4f %11.4f %11.4f %9.4f %9.4f %8lld\n", name.c_str(), m.precision, m.recall, m.specificity, m.f1,
                m.auc, (long long)m.support);
  };
  for (std::size_t k = 0; k < r->per_class.size(); ++k) row(k < names.size() ? names[k] : std::to_string(k), r->per_class[k]);
  row("macro avg", r->macro);
  row("weighted avg", r->weighted);
}

// What a predictions file holds per sample: its dataset (h5) and column prefix (csv), and whether
// the values are class probabilities (then the predicted class is written too).
struct PredictionLayout {
  std::string name, column;
  bool classify = false;
  int values = 0;
};

void write_predictions(const std::string& path, const Outputs& o, const PredictionLayout& layout) {
  const bool classify = layout.classify;
  const int k = layout.values;
  const std::size_t n = o.values.size() / k;
  std::vector<std::int32_t> predicted(n);
  for (std::size_t i = 0; i < n; ++i)
    predicted[i] = std::int32_t(std::max_element(&o.values[i * k], &o.values[i * k] + k) - &o.values[i * k]);
  if (path.size() > 4 && path.substr(path.size() - 4) == ".csv") {
    std::ofstream out(path);
    if (!out) throw IoError(path + ": cannot write predictions");
    out << "index" << (o.labels.empty() ? "" : ",label") << (classify ? ",predicted" : "");
    for (int j = 0; j < k; ++j) out << "," << layout.column << j;
    out << "\n";
    out.precision(7);
    for (std::size_t i = 0; i < n; ++i) {
      out << i;
      if (!o.labels.empty()) out << "," << o.labels[i];
      if (classify) out << "," << predicted[i];
      for (int j = 0; j < k; ++j) out << "," << o.values[i * k + j];
      out << "\n";
    }
    if (!out) throw IoError(path + ": write failed");
    return;
  }
  namespace h5 = data::h5;
  h5::Handle file = h5::create_file(path);
  h5::write_dataset<float>(file.get(), layout.name, o.values, {n, hsize_t(k)});
  if (classify) h5::write_dataset<std::int32_t>(file.get(), "predicted", predicted, {n});
  if (!o.labels.empty()) h5::write_dataset<std::int32_t>(file.get(), "labels", o.labels, {n});
  if (!o.targets.empty())
    h5::write_dataset<float>(file.get(), "targets", o.targets, {n, hsize_t(o.targets.size() / n)});
}

}  // namespace

int run_eval(const Args& args, const dist::Communicator& comm) {
  Settings s("eval", apply_keys(false));
  if (!parse_or_help(s, args, comm.is_root())) return 0;
  Loaded l = load(s, comm);
  Outputs o;
  const Evaluation e = run_collecting(l, comm, &o);
  if (!comm.is_root()) return 0;
  const bool classify = e.classes > 0;
  ClassificationReport report;
  if (classify) report = classification_report(e.confusion, e.classes, o.values, o.labels);
  const auto& names = l.header.model.class_names;
  if (s.flag("json")) print_json(e, classify ? &report : nullptr, names);
  else print_text(e, classify ? &report : nullptr, names);
  return 0;
}

int run_predict(const Args& args, const dist::Communicator& comm) {
  Settings s("predict", apply_keys(true));
  if (!parse_or_help(s, args, comm.is_root())) return 0;
  const bool cut = s.choice("cut", {"none", "embedding"}) == "embedding";
  Loaded l = load(s, comm);
  const int k = int(l.model->output_shape().size());
  PredictionLayout layout{l.task->prediction_name(), l.task->classifies() ? "p" : "y", l.task->classifies(), k};
  int layer = -1;
  if (cut) {
    layer = core::embedding_layer_to_cut(*l.model, "--cut embedding: " + l.header.path);
    layout = {"embeddings", "e", false, int(l.model->layers()[std::size_t(layer)]->output_shape().size())};
  }
  Outputs o;
  run_collecting(l, comm, &o, layer);
  comm.on_root([&] {
    write_predictions(s.text("output"), o, layout);
    std::printf("%s for %zu samples written to %s\n", cut ? "embeddings" : "predictions", o.values.size() / layout.values,
                s.text("output").c_str());
  });
  return 0;
}

}  // namespace mpicnn::app
