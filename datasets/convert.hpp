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
  std::vector<std::string> class_names;  // IDX and NPZ: optional names, one per class
  // Image folders only.
  int height = 0, width = 0;   // resize every image to height x width (bilinear); 0: sizes must all match
  int channels = 0;            // 1 (grey) or 3 (RGB); 0: 1 if every image is grey, else 3 (alpha is dropped)
  double test_fraction = 0.0;  // part of each class written to /test (0: no /test)
  std::uint64_t seed = 0;      // chooses which images of each class go to /test
};

// What was written, for the command line to print.
struct ConvertSummary {
  std::map<std::string, std::size_t> split_counts;  // "train" -> 60000, ...
  core::Shape shape;
  int num_classes = 0;
};

// The ten Fashion-MNIST class names, in label order.
const std::vector<std::string>& fashion_mnist_class_names();

// MNIST-family IDX files in `folder`: train-images-idx3-ubyte, train-labels-idx1-ubyte,
// t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally gzipped (.gz) and with '.' or
// '-' before "idx". Writes /train and /test with uint8 images (N,1,H,W) and int32 labels.
// num_classes = class_names.size() if given, else the largest label + 1.
ConvertSummary convert_idx(const std::string& folder, const std::string& output_path, const ConvertOptions& options = {});

// A NumPy .npz in MedMNIST layout: train_images, train_labels, optional val_*, test_*. Images
// (N,H,W) or (N,H,W,C) uint8; labels (N) or (N,1) integers become labels, (N,K) with K > 1
// become multi-label targets (N,K) float32 with num_classes = K.
ConvertSummary convert_npz(const std::string& file, const std::string& output_path, const ConvertOptions& options = {});

// One subfolder per class (class names = subfolder names in byte order), PNG or JPEG files in
// each (other files are ignored). All images must have the first image's size unless
// options.height/width are set.
ConvertSummary convert_image_folder(const std::string& folder, const std::string& output_path,
                                    const ConvertOptions& options = {});

// Bilinear resize of an HWC uint8 image, pixel centres aligned (OpenCV's INTER_LINEAR, no
// antialiasing), rounded to nearest: the image-folder and COCO converters' resize.
void resize_bilinear(const unsigned char* in, int in_h, int in_w, unsigned char* out, int out_h, int out_w, int channels);

}  // namespace mpicnn::data
