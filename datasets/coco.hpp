#pragma once
// COCO detection annotations (the JSON of instances_*.json: images, annotations with bbox
// [x, y, w, h] in pixels and iscrowd, categories) plus an image folder, converted into the dataset
// format with boxes (datasets/README.md, "Boxes" and "Converters").
#include <string>
#include <utility>
#include <vector>

#include "datasets/convert.hpp"

namespace mpicnn::data {

struct CocoSplit {
  std::string split;      // "train", "test", "val"
  std::string json_path;  // its annotations
};

// Writes one split per entry. Images are found at <image_folder>/<file_name> (the JSON's own folder
// when image_folder is empty), taken in increasing image id, resized to options.height x
// options.width, or options.shape {H, W} (bilinear) with their boxes scaled, or all of one size when no size is given.
// Category ids of the first split's JSON map to classes 0..K-1 in increasing id, names kept; every
// split must list the same categories. Bad input throws a one-line IoError/ConfigError naming the
// JSON file and the annotation or image id.
ConvertSummary convert_coco(const std::vector<CocoSplit>& splits, const std::string& image_folder,
                            const std::string& output_path, const ConvertOptions& options = {});

// The checks convert_coco makes before it opens any image, on one JSON text: COCO's schema, ids,
// and every annotation against its image's declared size and the categories. Returns the number
// of annotations. (The fuzz target's entry point.)
std::size_t check_coco_json(const std::string& text, const std::string& path);

// "train.json" -> {{"train", "train.json"}}; "train=a.json,test=b.json" -> both.
std::vector<CocoSplit> parse_coco_inputs(const std::string& text);

}  // namespace mpicnn::data
