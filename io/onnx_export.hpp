#pragma once
// ONNX export of a checkpoint: one self-contained .onnx file (opset 13, IR version 7) that any ONNX
// runtime runs without mpicnn.
//
// Graph:  input [N,C,H,W] float32 (N symbolic)
//         -> Sub(mean[1,C,1,1]) -> Div(std[1,C,1,1])      the training reader's normalisation
//         -> the layer tree, walked as the engine nests it (core/blocks.hpp): per leaf layer one
//            node (Conv, MaxPool, AveragePool with count_include_pad=1, GlobalAveragePool,
//            GlobalMaxPool, Relu, LeakyRelu, Sigmoid, Tanh, Flatten, Gemm with transB=1,
//            BatchNormalization with the running statistics: evaluation semantics), dropout none
//            (the identity in evaluation); a residual block is its main branch and its shortcut
//            (or the input itself) from the same tensor, then Add; repeat(n) its copies in a row;
//            Unsqueeze where a dense output feeds a spatial layer, Flatten where a flat value
//            meets a spatial one in an Add
//         -> logits [N,K]  (and, for cross-entropy models, probabilities = Softmax(logits, axis=1));
//            cut at the embedding (OnnxExportOptions::embedding): embedding [N,D] alone
// Nodes are named by the parameter path of their layer: "layer3_conv" (top level),
// "layer3.main.0_conv" inside a block, "layer3_residual" for a block's Add.
// Weights and running statistics are initializers named as in the checkpoint ("0.weight",
// "3.main.1.running_var": PyTorch state_dict names and layouts); bn(affine=false) gets constant
// initializers "<prefix>scale_ones"/"<prefix>shift_zeros". BatchNorm is not folded into the
// convolution before it, so every initializer is a model tensor as it is (runtimes such as
// onnxruntime fold it when they load the graph). The input is what the reader produced before
// normalising (io::kInputScaling): pixel/255 for uint8 datasets. metadata_props record the spec,
// classes, normalisation, scaling, the source checkpoint's SHA-256 and the mpicnn version. The file
// has no timestamp: exporting one checkpoint twice gives the same bytes.
//
// The ModelProto is checked with onnx::checker::check_model and strict shape inference (whose
// result must agree with the declared output shapes) before it is written atomically.
#include <cstddef>
#include <string>
#include <vector>

#include "core/model.hpp"
#include "io/checkpoint.hpp"

namespace mpicnn::io {

inline constexpr int kOnnxOpset = 13;

struct OnnxExportOptions {
  bool probabilities = true;  // add the Softmax output "probabilities" (cross-entropy models only)
  // export_onnx: only the sub-model up to the embedding (core::embedding_layer), whose output is
  // "embedding" [N,D] (no probabilities); ConfigError when the model has no embedding head.
  bool embedding = false;
};

struct OnnxExportSummary {
  std::size_t bytes = 0;
  int nodes = 0;
  std::size_t parameters = 0;
  std::vector<std::string> outputs;  // "logits", optionally "probabilities"; or "embedding"
  std::string source_sha256;
};

// Reads and validates `checkpoint_path` (as `mpicnn eval` does), builds and checks the graph and
// writes `output_path` atomically. IoError for files, Error when the checker rejects the graph.
OnnxExportSummary export_onnx(const std::string& checkpoint_path, const std::string& output_path,
                              const OnnxExportOptions& options = {});

// The same for a model already in memory (a test builds one, or a caller that loaded it): `source`
// supplies what the file records besides the tensors (spec, input, loss, normalisation, class
// names, the source's file name, creation time, step and metrics), `source_sha256` the digest
// recorded as the source's. Error naming the layer path ("layer 4.main.1") for a layer kind the
// exporter cannot express, and for a BatchNorm whose running statistics were never updated
// (num_batches_tracked 0): its graph would not be the trained model.
OnnxExportSummary export_onnx_model(const core::Model& model, const CheckpointHeader& source,
                                    const std::string& source_sha256, const std::string& output_path,
                                    const OnnxExportOptions& options = {});

// The layer kinds the exporter maps (core::known_layer_kinds() must be among them).
const std::vector<std::string>& onnx_exported_kinds();

}  // namespace mpicnn::io
