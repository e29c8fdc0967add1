// `mpicnn export`: a checkpoint as an ONNX model (io/onnx_export.hpp) or as an HDF5 inference bundle
// (io/bundle.hpp). A single-process tool: under mpirun only rank 0 writes.
#include <cstdio>

#include "apps/commands.hpp"
#include "apps/settings.hpp"
#include "core/errors.hpp"
#include "io/bundle.hpp"
#include "io/checkpoint.hpp"
#include "io/onnx_export.hpp"

namespace mpicnn::app {

int run_export(const Args& args, const dist::Communicator& comm) {
  Settings s("export", {
      {"checkpoint", "", "checkpoint file, or a run folder (its latest checkpoint)", true},
      {"format", "", "onnx (ONNX opset 13 model) or h5 (weights-only HDF5 inference bundle)", true},
      {"output", "", "file to write (replaced atomically)", true},
      {"probabilities", "true", "onnx: add a 'probabilities' output (softmax) for classification models"},
      {"cut", "none", "onnx: none (the whole model) or embedding (only the layers up to the embedding, the output of "
                      "a final l2norm or the input of a final cosine(n); output 'embedding')"},
  });
  if (!parse_or_help(s, args, comm.is_root())) return 0;
  const std::string format = s.choice("format", {"h5", "onnx"});
  const bool probabilities = s.flag("probabilities");
  const bool embedding = s.choice("cut", {"none", "embedding"}) == "embedding";
  if (embedding && format != "onnx")
    throw ConfigError("'--cut embedding' applies to --format onnx; a bundle (--format h5) holds the whole model");
  const std::string checkpoint = io::resolve_checkpoint(s.text("checkpoint"));
  const std::string output = s.text("output");
  comm.on_root([&] {
    if (format == "onnx") {
      const io::OnnxExportSummary summary = io::export_onnx(checkpoint, output, {probabilities, embedding});
      std::string outputs;
      for (const auto& name : summary.outputs) outputs += (outputs.empty() ? "" : ", ") + name;
      std::printf("wrote %s: ONNX opset %d, %d nodes, %zu parameters, outputs %s; source %s (sha256 %s)\n",
                  output.c_str(), io::kOnnxOpset, summary.nodes, summary.parameters, outputs.c_str(), checkpoint.c_str(),
                  summary.source_sha256.c_str());
    } else {
      const io::BundleHeader bundle = io::export_bundle(checkpoint, output);
      std::printf("wrote %s: mpicnn inference bundle, spec %s; source %s (sha256 %s)\n", output.c_str(),
                  bundle.model.spec.c_str(), checkpoint.c_str(), bundle.source.sha256.c_str());
    }
  });
  return 0;
}

}  // namespace mpicnn::app
