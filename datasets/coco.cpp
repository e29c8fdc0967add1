#include "datasets/coco.hpp"

#include <stb/stb_image.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/errors.hpp"
#include "datasets/boxes.hpp"
#include "datasets/h5.hpp"

namespace mpicnn::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct CocoImage {
  std::int64_t id = 0;
  std::string file_name;
  int width = 0, height = 0;
  fs::path path;
};

struct CocoAnnotation {
  std::int64_t id = 0, image_id = 0, category_id = 0;
  double x = 0, y = 0, w = 0, h = 0;
  bool crowd = false;
};

struct CocoFile {
  std::string path;
  std::vector<CocoImage> images;  // increasing id
  std::vector<CocoAnnotation> annotations;
  std::vector<std::pair<std::int64_t, std::string>> categories;  // increasing id
};

// Checked access to a JSON member; `where` names the file and the entry ("annotation 17").
const json& member(const json& object, const char* key, const std::string& where) {
  if (!object.is_object()) throw IoError(where + ": expected a JSON object, found " + object.type_name());
  const auto it = object.find(key);
  if (it == object.end()) throw IoError(where + ": missing '" + key + "'");
  return *it;
}

std::int64_t integer(const json& object, const char* key, const std::string& where) {
  const json& v = member(object, key, where);
  if (!v.is_number_integer()) throw IoError(where + ": '" + key + "' is " + v.dump() + ", expected an integer");
  return v.get<std::int64_t>();
}

std::string text(const json& object, const char* key, const std::string& where) {
  const json& v = member(object, key, where);
  if (!v.is_string()) throw IoError(where + ": '" + key + "' is " + v.dump() + ", expected a string");
  return v.get<std::string>();
}

const json& array(const json& object, const char* key, const std::string& where) {
  const json& v = member(object, key, where);
  if (!v.is_array()) throw IoError(where + ": '" + key + "' is " + std::string(v.type_name()) + ", expected an array (COCO's schema)");
  return v;
}

template <class Input>
json parse(Input&& input, const std::string& path) {
  try {
    return json::parse(input);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number past double's range
    std::string reason = e.what();
    std::replace(reason.begin(), reason.end(), '\n', ' ');
    throw IoError(path + ": not valid JSON (" + reason + ")");
  }
}

json parse_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw IoError(path + ": file not found");
  return parse(in, path);
}

CocoAnnotation read_annotation(const json& a, const std::string& path, std::size_t index) {
  const std::string unnamed = path + ": annotation #" + std::to_string(index);
  CocoAnnotation out;
  out.id = integer(a, "id", unnamed);
  const std::string where = path + ": annotation " + std::to_string(out.id);
  out.image_id = integer(a, "image_id", where);
  out.category_id = integer(a, "category_id", where);
  const json& bbox = member(a, "bbox", where);
  if (!bbox.is_array() || bbox.size() != 4 || !std::all_of(bbox.begin(), bbox.end(), [](const json& v) { return v.is_number(); }))
    throw IoError(where + ": 'bbox' is " + bbox.dump() + ", expected [x, y, width, height] numbers");
  out.x = bbox[0].get<double>(), out.y = bbox[1].get<double>(), out.w = bbox[2].get<double>(), out.h = bbox[3].get<double>();
  if (a.contains("iscrowd")) {
    const json& crowd = a["iscrowd"];
    if (!crowd.is_number_integer() || (crowd.get<std::int64_t>() != 0 && crowd.get<std::int64_t>() != 1))
      throw IoError(where + ": 'iscrowd' is " + crowd.dump() + ", expected 0 or 1");
    out.crowd = crowd.get<std::int64_t>() == 1;
  }
  return out;
}

CocoFile read_coco(const json& root, const std::string& path, const std::string& image_folder) {
  if (!root.is_object()) throw IoError(path + ": top level is " + std::string(root.type_name()) + ", expected COCO's object with images, annotations, categories");
  CocoFile file;
  file.path = path;
  const fs::path folder = image_folder.empty() ? fs::path(path).parent_path() : fs::path(image_folder);
  const json& images = array(root, "images", path);
  for (std::size_t i = 0; i < images.size(); ++i) {
    CocoImage image;
    image.id = integer(images[i], "id", path + ": image #" + std::to_string(i));
    const std::string where = path + ": image " + std::to_string(image.id);
    image.file_name = text(images[i], "file_name", where);
    const std::int64_t width = integer(images[i], "width", where), height = integer(images[i], "height", where);
    if (width < 1 || height < 1 || width > 1 << 16 || height > 1 << 16)
      throw IoError(where + ": size " + std::to_string(width) + "x" + std::to_string(height) + ", expected 1..65536 pixels a side");
    image.width = int(width), image.height = int(height);
    image.path = folder / image.file_name;
    file.images.push_back(image);
  }
  std::sort(file.images.begin(), file.images.end(), [](const CocoImage& a, const CocoImage& b) { return a.id < b.id; });
  for (std::size_t i = 1; i < file.images.size(); ++i)
    if (file.images[i].id == file.images[i - 1].id) throw IoError(path + ": image id " + std::to_string(file.images[i].id) + " appears twice");
  const json& categories = array(root, "categories", path);
  for (std::size_t i = 0; i < categories.size(); ++i) {
    const std::int64_t id = integer(categories[i], "id", path + ": category #" + std::to_string(i));
    file.categories.push_back({id, text(categories[i], "name", path + ": category " + std::to_string(id))});
  }
  std::sort(file.categories.begin(), file.categories.end());
  for (std::size_t i = 1; i < file.categories.size(); ++i)
    if (file.categories[i].first == file.categories[i - 1].first)
      throw IoError(path + ": category id " + std::to_string(file.categories[i].first) + " appears twice");
  if (file.categories.empty()) throw IoError(path + ": 'categories' is empty, expected at least one category");
  const json& annotations = array(root, "annotations", path);
  for (std::size_t i = 0; i < annotations.size(); ++i) file.annotations.push_back(read_annotation(annotations[i], path, i));
  return file;
}

// Where each annotation goes: its image's position and class, checked against the image's size.
struct Placed {
  std::size_t image = 0;
  std::int32_t class_index = 0;
};

Placed place(const CocoAnnotation& a, const CocoFile& file, const std::map<std::int64_t, std::int32_t>& classes) {
  const std::string where = file.path + ": annotation " + std::to_string(a.id);
  const auto image = std::lower_bound(file.images.begin(), file.images.end(), a.image_id,
                                      [](const CocoImage& i, std::int64_t id) { return i.id < id; });
  if (image == file.images.end() || image->id != a.image_id)
    throw IoError(where + ": image_id " + std::to_string(a.image_id) + " is not in 'images'");
  const auto category = classes.find(a.category_id);
  if (category == classes.end()) {
    std::string known;
    for (const auto& [id, _] : classes) known += (known.empty() ? "" : ", ") + std::to_string(id);
    throw IoError(where + ": unknown category_id " + std::to_string(a.category_id) + " (categories: " + known + ")");
  }
  std::ostringstream box;
  box << "bbox [" << a.x << ", " << a.y << ", " << a.w << ", " << a.h << "]";
  if (!(a.w > 0 && a.h > 0)) throw IoError(where + ": " + box.str() + " has zero area, expected width and height > 0");
  if (a.x < 0 || a.y < 0 || a.x + a.w > image->width || a.y + a.h > image->height)
    throw IoError(where + ": " + box.str() + " is outside image " + std::to_string(image->id) + " (" +
                  std::to_string(image->width) + "x" + std::to_string(image->height) + ", WxH)");
  return {std::size_t(image - file.images.begin()), category->second};
}

// The image's pixels as CHW uint8 of `shape`, resized when its size differs.
std::vector<std::uint8_t> load_image(const CocoImage& image, const std::string& json_path, const core::Shape& shape) {
  const std::string where = json_path + ": image " + std::to_string(image.id) + " ('" + image.path.string() + "')";
  if (!fs::exists(image.path)) throw IoError(where + ": file not found");
  int w = 0, h = 0, channels_in_file = 0;
  using Pixels = std::unique_ptr<unsigned char, void (*)(void*)>;
  Pixels pixels(stbi_load(image.path.c_str(), &w, &h, &channels_in_file, shape.c), &stbi_image_free);
  if (!pixels) throw IoError(where + ": cannot decode image (stb: " + std::string(stbi_failure_reason()) + ")");
  if (w != image.width || h != image.height)
    throw IoError(where + ": the file is " + std::to_string(w) + "x" + std::to_string(h) + ", the JSON says " +
                  std::to_string(image.width) + "x" + std::to_string(image.height) + " (WxH)");
  std::vector<unsigned char> resized;
  const unsigned char* hwc = pixels.get();
  if (h != shape.h || w != shape.w) {
    resized.resize(shape.size());
    resize_bilinear(pixels.get(), h, w, resized.data(), shape.h, shape.w, shape.c);
    hwc = resized.data();
  }
  const std::size_t plane = std::size_t(shape.h) * shape.w;
  std::vector<std::uint8_t> chw(shape.size());
  for (int c = 0; c < shape.c; ++c)
    for (std::size_t p = 0; p < plane; ++p) chw[std::size_t(c) * plane + p] = hwc[p * shape.c + c];
  return chw;
}

// The annotation's box in the stored image's pixels: corners scaled by out/in per axis, kept inside
// the image against rounding.
core::Box scaled_box(const CocoAnnotation& a, const CocoImage& image, const core::Shape& shape, const std::string& path) {
  const double sx = double(shape.w) / image.width, sy = double(shape.h) / image.height;
  const core::Box box{float(a.x * sx), float(a.y * sy), std::min(float((a.x + a.w) * sx), float(shape.w)),
                      std::min(float((a.y + a.h) * sy), float(shape.h))};
  if (!(box.x1 < box.x2 && box.y1 < box.y2))
    throw IoError(path + ": annotation " + std::to_string(a.id) + ": box has no area after resizing image " +
                  std::to_string(image.id) + " to " + std::to_string(shape.w) + "x" + std::to_string(shape.h));
  return box;
}

std::vector<Placed> place_all(const CocoFile& file, const std::map<std::int64_t, std::int32_t>& classes) {
  std::vector<Placed> placed(file.annotations.size());
  for (std::size_t i = 0; i < file.annotations.size(); ++i) placed[i] = place(file.annotations[i], file, classes);
  return placed;
}

std::map<std::int64_t, std::int32_t> class_indices(const CocoFile& file) {
  std::map<std::int64_t, std::int32_t> classes;
  for (const auto& [id, name] : file.categories) classes[id] = std::int32_t(classes.size());
  return classes;
}

void write_coco_split(DatasetWriter& writer, const std::string& split, const CocoFile& file,
                      const std::map<std::int64_t, std::int32_t>& classes, const core::Shape& shape) {
  const int K = int(classes.size());
  const std::vector<Placed> placed = place_all(file, classes);
  std::vector<std::vector<std::size_t>> of_image(file.images.size());
  for (std::size_t i = 0; i < placed.size(); ++i) of_image[placed[i].image].push_back(i);
  SplitBoxes boxes;
  boxes.offsets.push_back(0);
  writer.begin_split(split, shape, file.images.size(), true, K);
  for (std::size_t n = 0; n < file.images.size(); ++n) {
    std::vector<float> present(std::size_t(K), 0.f);
    for (std::size_t i : of_image[n]) {  // annotations in file order within an image
      boxes.boxes.push_back(scaled_box(file.annotations[i], file.images[n], shape, file.path));
      boxes.classes.push_back(placed[i].class_index);
      boxes.crowd.push_back(file.annotations[i].crowd);
      present[std::size_t(placed[i].class_index)] = 1.f;
    }
    boxes.offsets.push_back(std::int64_t(boxes.boxes.size()));
    boxes.image_ids.push_back(file.images[n].id);
    writer.append_targets(load_image(file.images[n], file.path, shape), present);
  }
  write_boxes(writer.file(), split, boxes, shape, K);
}

// 1 if every image is grey, else 3; and the size all images share (0x0 when they differ).
std::pair<int, std::pair<int, int>> survey(const std::vector<CocoFile>& files) {
  bool colour = false, same = true;
  int h = -1, w = -1;
  for (const CocoFile& file : files)
    for (const CocoImage& image : file.images) {
      int iw = 0, ih = 0, channels = 0;
      if (!fs::exists(image.path))
        throw IoError(file.path + ": image " + std::to_string(image.id) + " ('" + image.path.string() + "'): file not found");
      if (!stbi_info(image.path.c_str(), &iw, &ih, &channels))
        throw IoError(file.path + ": image " + std::to_string(image.id) + " ('" + image.path.string() +
                      "'): not a readable PNG/JPEG image (stb: " + stbi_failure_reason() + ")");
      colour = colour || channels >= 3;
      if (h < 0) h = ih, w = iw;
      same = same && ih == h && iw == w;
    }
  return {colour ? 3 : 1, same ? std::pair{h, w} : std::pair{0, 0}};
}

}  // namespace

std::size_t check_coco_json(const std::string& text, const std::string& path) {
  const CocoFile file = read_coco(parse(text, path), path, "");
  return place_all(file, class_indices(file)).size();
}

std::vector<CocoSplit> parse_coco_inputs(const std::string& text) {
  std::vector<CocoSplit> splits;
  std::stringstream stream(text);
  for (std::string item; std::getline(stream, item, ',');) {
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos) splits.push_back({"train", item});
    else splits.push_back({item.substr(0, eq), item.substr(eq + 1)});
    const std::string& split = splits.back().split;
    if (split != "train" && split != "test" && split != "val")
      throw ConfigError("--input: split '" + split + "' in '" + item + "', expected train, test or val");
  }
  if (splits.empty() || splits.front().split != "train")
    throw ConfigError("--input '" + text + "': expected the train split's JSON first (FILE.json or train=FILE.json,test=FILE.json)");
  return splits;
}

ConvertSummary convert_coco(const std::vector<CocoSplit>& splits, const std::string& image_folder,
                            const std::string& output_path, const ConvertOptions& options) {
  int target_h = options.height, target_w = options.width;
  if (!options.shape.empty()) {  // --shape H,W: the same as --height H --width W
    if (options.shape.size() != 2 || target_h || target_w)
      throw ConfigError("coco: --shape takes H,W (" + std::to_string(options.shape.size()) +
                        " values given) and replaces --height/--width");
    if (options.fit != "resize") throw ConfigError("coco: --fit " + options.fit + ", expected resize (boxes are scaled)");
    target_h = options.shape[0], target_w = options.shape[1];
  }
  if ((target_h > 0) != (target_w > 0) || target_h < 0 || target_w < 0)
    throw ConfigError("coco: resize target " + std::to_string(target_h) + "x" + std::to_string(target_w) +
                      ", expected both height and width > 0, or both 0");
  std::vector<CocoFile> files;
  for (const CocoSplit& s : splits) files.push_back(read_coco(parse_file(s.json_path), s.json_path, image_folder));
  const std::map<std::int64_t, std::int32_t> classes = class_indices(files.front());
  std::vector<std::string> names;
  for (const auto& category : files.front().categories) names.push_back(category.second);
  for (const CocoFile& file : files) place_all(file, classes);  // every annotation checked before any image is read
  for (const CocoFile& file : files)
    if (file.categories != files.front().categories)
      throw IoError(file.path + ": its categories differ from " + files.front().path + "'s (every split needs the same list)");
  const auto [colour_channels, common_size] = survey(files);
  const int height = target_h ? target_h : common_size.first, width = target_w ? target_w : common_size.second;
  if (height == 0)
    throw ShapeError(files.front().path + ": images of different sizes (give --height and --width to resize them)");
  const core::Shape shape{options.channels ? options.channels : colour_channels, height, width};
  DatasetWriter writer(output_path, {int(names.size()), names}, options.writer);
  ConvertSummary summary;
  for (std::size_t i = 0; i < files.size(); ++i) {
    write_coco_split(writer, splits[i].split, files[i], classes, shape);
    summary.split_counts[splits[i].split] = files[i].images.size();
  }
  // COCO's category id of each class, so that detections can be written back in COCO's ids.
  std::vector<std::int64_t> category_ids;
  for (const auto& category : files.front().categories) category_ids.push_back(category.first);
  h5::write_attribute(writer.file(), "category_ids", std::span<const std::int64_t>(category_ids));
  writer.finish();
  summary.shape = shape;
  summary.num_classes = int(names.size());
  return summary;
}

}  // namespace mpicnn::data
