#pragma once
// Inference bundles: one HDF5 file holding what a model needs to run and to be audited, and nothing
// needed only to continue training (no optimizer moments, no trainer position). Layout:
//
//   /                 attrs format = "mpicnn-bundle", format_version, mpicnn_version, created (UTC)
//   /model            attrs spec (canonical), input_shape (C,H,W), loss and its options
//                     (io/loss_io.hpp), mean, std, class_names, input_scaling, layout
//   /weights/<name>   float32, PyTorch state_dict names and layouts ("0.weight" conv (K,C,R,S),
//                     "7.weight" dense (out,in), "0.bias" (K))
//   /source           attrs of the checkpoint it came from: file (name only), sha256, created,
//                     mpicnn_version, ranks, epoch, global_step, config_ini
//   /metrics          attrs: the checkpoint's last evaluation (test_accuracy, test_loss, ...)
//
// Written atomically (temp file in the target folder, fsync, rename, fsync of the folder).
#include <string>
#include <utility>
#include <vector>

#include "core/model.hpp"
#include "io/checkpoint.hpp"

namespace mpicnn::io {

inline constexpr const char* kBundleFormat = "mpicnn-bundle";
inline constexpr int kBundleVersion = 1;

// What the network's input holds before the model's own normalisation, for bundles and ONNX
// metadata: the scale the training reader produced before it normalised.
inline constexpr const char* kInputScaling =
    "pixel/255 in [0,1] for uint8 datasets (every mpicnn converter writes uint8), the stored values "
    "unchanged for float32 datasets; the model then normalises x' = (x - mean[c]) / std[c] per channel";

struct BundleSource {
  std::string file, sha256, created, mpicnn_version, config_ini;
  int ranks = 0, epoch = 0;
  long global_step = 0;
};

struct BundleHeader {
  std::string path;
  int format_version = 0;
  std::string mpicnn_version, created;
  ModelMeta model;
  BundleSource source;
  std::vector<std::pair<std::string, double>> metrics;
};

// Writes the bundle of checkpoint `checkpoint_path` (validated as `mpicnn eval` does) to `path`.
BundleHeader export_bundle(const std::string& checkpoint_path, const std::string& path);
// Validates format, version and every weight shape against the spec; IoError names what differs.
BundleHeader read_bundle_header(const std::string& path);
// Loads the weights into a model built from the header's spec and input shape.
void load_bundle(const std::string& path, core::Model& model);

// Helpers shared by the exporters.

// SHA-256 (FIPS 180-4) of a file's bytes as 64 lowercase hex digits; of a byte string likewise.
std::string sha256_file(const std::string& path);
std::string sha256_hex(const std::string& bytes);
// Throws IoError when `output` cannot be an export target: it is a folder, its folder does not exist,
// or it is the source checkpoint itself.
void check_export_target(const std::string& output, const std::string& source);
// fsyncs `temp`, renames it over `path` and fsyncs the folder; on failure removes `temp` and throws.
void replace_file(const std::string& temp, const std::string& path);
// A temp name next to `path` (same file system, so the rename is atomic).
std::string temp_path_for(const std::string& path);

}  // namespace mpicnn::io
