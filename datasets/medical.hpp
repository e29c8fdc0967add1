#pragma once
// What the NIfTI and DICOM converters share, internal to datasets/: the labels CSV, fitting a
// volume to a fixed shape (resize or centre crop), and writing the samples split by split. A
// converter lists its samples first (headers only), so every error in the input is found before
// anything is written, then loads one sample at a time.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "datasets/convert.hpp"

namespace mpicnn::data {

// One row of a labels CSV: "key,label[,split]" (an optional header row "file,label[,split]").
struct LabelRow {
  std::string key;            // a file path relative to the input folder, or a DICOM SeriesInstanceUID
  double label = 0;
  std::string split = "train";  // train, val or test
  std::size_t line = 0;        // 1-based, for messages
};
// Throws IoError "<csv>: line <n>: ..." for a malformed row, a repeated key or a bad split name.
std::vector<LabelRow> read_label_csv(const std::string& path);

// The extent of one sample: d slices of h x w (d = 1 for a 2D image).
struct Extent {
  int d = 1, h = 1, w = 1;
  std::size_t size() const { return std::size_t(d) * h * w; }
  bool operator==(const Extent&) const = default;
  std::string str() const;  // "DxHxW" or "HxW"
};

// `in` (D,H,W) to `out` (D',H',W'): "resize" is trilinear with pixel centres aligned
// (x_in = (x_out + 0.5) * in/out - 0.5, clamped to [0, in-1]: PyTorch's interpolate with
// align_corners=False), in double precision; "crop" takes the centred window (offset
// floor((in - out) / 2)), padding with 0 where the output is larger.
std::vector<float> fit_volume(const std::vector<double>& in, const Extent& from, const Extent& to, const std::string& fit);

// One sample to write: its source, label row and extent; `part` tells the loader which piece of
// the source it is (a time point of a 4D NIfTI file).
struct MedicalSample {
  std::string source;  // the file or series named in messages
  const LabelRow* row = nullptr;
  Extent extent;
  int part = 0;
};

// The fixed output extent: options.shape (fitted with options.fit), else every sample's extent,
// which must then agree (ShapeError naming the first sample that differs).
Extent output_extent(const std::vector<MedicalSample>& samples, const ConvertOptions& options);

// Plans the labels (labels.hpp) from the rows and writes /train, /val, /test with float32 images
// (N,1,H,W) or volumes (N,1,D,H,W), loading each sample with `load` (voxels (D,H,W) in double).
ConvertSummary write_medical(const std::string& csv, const std::vector<MedicalSample>& samples,
                             const std::function<std::vector<double>(const MedicalSample&)>& load,
                             const std::string& output_path, const ConvertOptions& options);

}  // namespace mpicnn::data
