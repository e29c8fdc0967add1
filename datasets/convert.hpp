#pragma once
// Converters from common dataset layouts to the mpicnn HDF5 format (datasets/README.md). Each
// streams its input in blocks, so memory stays small whatever the dataset size; errors are
// IoError/ShapeError/ConfigError naming the input file.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "datasets/writer.hpp"

namespace mpicnn::data {

struct ConvertOptions {
  WriterOptions writer;                  // gzip level and chunk length of the output
  std::vector<std::string> class_names;  // IDX, NPZ, NIfTI, DICOM: optional names, one per class (or label)
  // NPZ, NIfTI, DICOM: the task kind recorded in the dataset (multi-class, binary, multi-label,
  // regression); empty: multi-class for one label per sample, an error for several.
  std::string task;
  // NPZ: how a rank-4 image array reads: auto, grey (N,H,W), channels_last (N,H,W,C) or
  // volume (N,D,H,W); auto refuses a last axis of 1, 3 or 4 (channels or a volume's width?).
  std::string layout = "auto";
  // Image folders only.
  int height = 0, width = 0;   // resize every image to height x width (bilinear); 0: sizes must all match
  int channels = 0;            // 1 (grey) or 3 (RGB); 0: 1 if every image is grey, else 3 (alpha is dropped)
  double test_fraction = 0.0;  // part of each class written to /test (0: no /test)
  std::uint64_t seed = 0;      // chooses which images of each class go to /test
  // NIfTI and DICOM.
  std::string labels;          // the labels CSV: "file-or-series,label[,split]"
  std::vector<int> shape;      // fixed output D,H,W (or H,W); empty: every sample must have one shape
  std::string fit = "resize";  // how a sample reaches `shape`: resize (trilinear) or crop (centred, zero padded)
  bool time_points = false;    // NIfTI: a 4D file gives one sample per time point (else it is refused)
  bool window = false;         // DICOM: clip to [center - width/2, center + width/2] after rescaling
  double window_center = 0, window_width = 0;
};

// What was written, for the command line to print.
struct ConvertSummary {
  std::map<std::string, std::size_t> split_counts;  // "train" -> 60000, ...
  core::Shape shape;
  int num_classes = 0;
  std::string task;  // as recorded; empty when the converter records none (IDX, folder)
};

// The ten Fashion-MNIST class names, in label order.
const std::vector<std::string>& fashion_mnist_class_names();

// MNIST-family IDX files in `folder`: train-images-idx3-ubyte, train-labels-idx1-ubyte,
// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally gzipped (.gz) and with '.' or
// '-' before "idx". Writes /train and /test with uint8 images (N,1,H,W) and int32 labels.
// num_classes = class_names.size() if given, else the largest label + 1.
ConvertSummary convert_idx(const std::string& folder, const std::string& output_path, const ConvertOptions& options = {});

// A NumPy .npz in MedMNIST layout: train_images, train_labels, optional val_*, test_*. Images
// uint8 (N,H,W) grey, (N,H,W,C) channels last or (N,D,H,W) volumes (options.layout decides a
// rank-4 array whose last axis is 1, 3 or 4 long); labels (N) or (N,1) class indices, (N,K)
// multi-label 0/1 or regression targets as options.task says (labels.hpp).
ConvertSummary convert_npz(const std::string& file, const std::string& output_path, const ConvertOptions& options = {});

// One subfolder per class (class names = subfolder names in byte order), PNG or JPEG files in
// each (other files are ignored). All images must have the first image's size unless
// options.height/width are set.
ConvertSummary convert_image_folder(const std::string& folder, const std::string& output_path,
                                    const ConvertOptions& options = {});

// A folder of NIfTI-1 or NIfTI-2 files (.nii, .nii.gz), read by niftilib, labelled by the CSV
// options.labels ("file,label[,split]", file relative to the folder). Voxels are scaled by
// scl_slope/scl_inter as nibabel does (a slope of 0 or not finite: unscaled) and written as
// float32: 3D files as volumes (N,1,D,H,W) with D = z, H = y, W = x; 2D files as images.
ConvertSummary convert_nifti(const std::string& folder, const std::string& output_path, const ConvertOptions& options);

// A folder of DICOM files (searched recursively; every file but hidden ones and the CSV must be
// DICOM), read by GDCM with its codecs, labelled by the CSV options.labels: a row keyed by a file
// (relative to the folder) is one sample (a 2D image, or a volume of its frames); a row keyed by a
// SeriesInstanceUID is a volume of the series' files sorted by ImagePositionPatient along the
// slice normal. Pixels are rescaled (slope, intercept), optionally windowed, written as float32.
ConvertSummary convert_dicom(const std::string& folder, const std::string& output_path, const ConvertOptions& options);

// Bilinear resize of an HWC uint8 image, pixel centres aligned (OpenCV's INTER_LINEAR, no
// antialiasing), rounded to nearest: the image-folder and COCO converters' resize.
void resize_bilinear(const unsigned char* in, int in_h, int in_w, unsigned char* out, int out_h, int out_w, int channels);

}  // namespace mpicnn::data
