#pragma once
// ONNX export of a checkpoint: one self-contained .onnx file (opset 13, IR version 7) that any ONNX
// runtime runs without mpicnn.
//
// Graph:  input [N,C,H,W] float32 (N symbolic)
//         -> Sub(mean[1,C,1,1]) -> Div(std[1,C,1,1])      the training reader's normalisation
//         -> one node per layer (Conv, MaxPool, AveragePool with count_include_pad=1, Relu,
//            LeakyRelu, Sigmoid, Tanh, Flatten, Gemm with transB=1)
//         -> logits [N,K]  (and, for cross-entropy models, probabilities = Softmax(logits, axis=1))
// Weights are initializers named as in the checkpoint ("0.weight": PyTorch state_dict names and
// layouts). The input is what the reader produced before normalising (io::kInputScaling): pixel/255
// for uint8 datasets. metadata_props record the spec, classes, normalisation, scaling, the source
// checkpoint's SHA-256 and the mpicnn version. The file has no timestamp: exporting one checkpoint
// twice gives the same bytes.
//
// The ModelProto is checked with onnx::checker::check_model and strict shape inference (whose
// result must agree with the declared output shapes) before it is written atomically.
#include <cstddef>
#include <string>
#include <vector>

namespace mpicnn::io {

inline constexpr int kOnnxOpset = 13;

struct OnnxExportOptions {
  bool probabilities = true;  // add the Softmax output "probabilities" (cross-entropy models only)
};

struct OnnxExportSummary {
  std::size_t bytes = 0;
  int nodes = 0;
  std::size_t parameters = 0;
  std::vector<std::string> outputs;  // "logits", optionally "probabilities"
  std::string source_sha256;
};

// Reads and validates `checkpoint_path` (as `mpicnn eval` does), builds and checks the graph and
// writes `output_path` atomically. IoError for files, Error when the checker rejects the graph.
OnnxExportSummary export_onnx(const std::string& checkpoint_path, const std::string& output_path,
                              const OnnxExportOptions& options = {});

}  // namespace mpicnn::io
