#include "datasets/medical.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include "core/errors.hpp"
#include "datasets/labels.hpp"
#include "datasets/writer.hpp"

namespace mpicnn::data {
namespace {

std::string trimmed(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r"), last = text.find_last_not_of(" \t\r");
  return first == std::string::npos ? "" : text.substr(first, last - first + 1);
}

std::vector<std::string> fields(const std::string& line) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t comma; (comma = line.find(',', start)) != std::string::npos; start = comma + 1)
    out.push_back(trimmed(line.substr(start, comma - start)));
  out.push_back(trimmed(line.substr(start)));
  return out;
}

bool parse_number(const std::string& text, double& value) {
  if (text.empty()) return false;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && std::isfinite(value);
}

// One output axis of a trilinear resize: the two source indices and the weight of the second.
struct Tap {
  int i0 = 0, i1 = 0;
  double f = 0;
};
// The source position is scale * (o + 0.5) - 0.5 with scale = in / out, in this order, as PyTorch
// computes it (area_pixel_compute_source_index), so that the two agree to the last bit.
std::vector<Tap> taps(int in, int out) {
  std::vector<Tap> t(static_cast<std::size_t>(out));
  const double scale = double(in) / double(out);
  for (int o = 0; o < out; ++o) {
    const double s = std::clamp(scale * (o + 0.5) - 0.5, 0.0, double(in - 1));
    t[std::size_t(o)] = {int(s), std::min(int(s) + 1, in - 1), s - int(s)};
  }
  return t;
}

}  // namespace

std::string Extent::str() const {
  return (d > 1 ? std::to_string(d) + "x" : std::string()) + std::to_string(h) + "x" + std::to_string(w);
}

std::vector<LabelRow> read_label_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw IoError(path + ": labels CSV not found (expected rows \"file,label[,split]\")");
  std::vector<LabelRow> rows;
  std::set<std::string> keys;
  std::string line;
  bool first_row = true;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    if (trimmed(line).empty() || trimmed(line)[0] == '#') continue;
    const std::vector<std::string> f = fields(line);
    auto bad = [&](const std::string& what) { throw IoError(path + ": line " + std::to_string(number) + ": " + what); };
    LabelRow row;
    row.line = number;
    if (f.size() < 2 || f.size() > 3) bad("expected \"file,label[,split]\", found " + std::to_string(f.size()) + " fields");
    const bool header = first_row;
    first_row = false;
    if (!parse_number(f[1], row.label)) {
      if (header) continue;  // a header row ("file,label"): names, not a label
      bad("label '" + f[1] + "' is not a number");
    }
    row.key = f[0];
    if (row.key.empty()) bad("empty file or series name");
    if (f.size() == 3) row.split = f[2];
    if (row.split != "train" && row.split != "val" && row.split != "test")
      bad("split '" + row.split + "', expected train, val or test");
    if (!keys.insert(row.key).second) bad("'" + row.key + "' is listed twice");
    rows.push_back(row);
  }
  if (rows.empty()) throw IoError(path + ": labels CSV has no rows (expected \"file,label[,split]\")");
  return rows;
}

std::vector<float> fit_volume(const std::vector<double>& in, const Extent& from, const Extent& to, const std::string& fit) {
  std::vector<float> out(to.size(), 0.0f);
  auto at = [&](int z, int y, int x) { return in[(std::size_t(z) * from.h + y) * from.w + x]; };
  if (fit == "crop") {
    // The source index of output 0: floor((in - out) / 2), negative where the output is larger (padding).
    auto offset = [](int in_size, int out_size) {
      return in_size >= out_size ? (in_size - out_size) / 2 : -((out_size - in_size + 1) / 2);
    };
    const int sz = offset(from.d, to.d), sy = offset(from.h, to.h), sx = offset(from.w, to.w);
    for (int z = 0; z < to.d; ++z)
      for (int y = 0; y < to.h; ++y)
        for (int x = 0; x < to.w; ++x) {
          const int iz = z + sz, iy = y + sy, ix = x + sx;
          if (iz >= 0 && iz < from.d && iy >= 0 && iy < from.h && ix >= 0 && ix < from.w)
            out[(std::size_t(z) * to.h + y) * to.w + x] = float(at(iz, iy, ix));
        }
    return out;
  }
  const std::vector<Tap> tz = taps(from.d, to.d), ty = taps(from.h, to.h), tx = taps(from.w, to.w);
  for (int z = 0; z < to.d; ++z)
    for (int y = 0; y < to.h; ++y)
      for (int x = 0; x < to.w; ++x) {
        const Tap &a = tz[std::size_t(z)], &b = ty[std::size_t(y)], &c = tx[std::size_t(x)];
        auto line = [&](int zz, int yy) { return (1 - c.f) * at(zz, yy, c.i0) + c.f * at(zz, yy, c.i1); };
        auto plane = [&](int zz) { return (1 - b.f) * line(zz, b.i0) + b.f * line(zz, b.i1); };
        out[(std::size_t(z) * to.h + y) * to.w + x] = float((1 - a.f) * plane(a.i0) + a.f * plane(a.i1));
      }
  return out;
}

Extent output_extent(const std::vector<MedicalSample>& samples, const ConvertOptions& options) {
  if (options.fit != "resize" && options.fit != "crop")
    throw ConfigError("--fit '" + options.fit + "', expected resize or crop");
  const bool volumes = std::any_of(samples.begin(), samples.end(), [](const MedicalSample& s) { return s.extent.d > 1; });
  if (!options.shape.empty()) {
    const auto& s = options.shape;
    if ((s.size() != 2 && s.size() != 3) || std::any_of(s.begin(), s.end(), [](int v) { return v < 1 || v > 4096; }))
      throw ConfigError("--shape expects D,H,W (volumes) or H,W (images), each 1..4096");
    if (s.size() == 2 && volumes)
      throw ConfigError("--shape " + std::to_string(s[0]) + "," + std::to_string(s[1]) +
                        " is 2D, but the input holds volumes (give D,H,W)");
    return s.size() == 3 ? Extent{s[0], s[1], s[2]} : Extent{1, s[0], s[1]};
  }
  const MedicalSample& first = samples.front();
  for (const MedicalSample& s : samples)
    if (s.extent != first.extent)
      throw ShapeError(s.source + ": " + (s.extent.d > 1 ? "volume " : "image ") + s.extent.str() + ", expected " +
                       first.extent.str() + " like " + first.source + " (give --shape to resize or crop to one shape)");
  return first.extent;
}

ConvertSummary write_medical(const std::string& csv, const std::vector<MedicalSample>& samples,
                             const std::function<std::vector<double>(const MedicalSample&)>& load,
                             const std::string& output_path, const ConvertOptions& options) {
  const Extent extent = output_extent(samples, options);
  std::map<std::string, std::vector<const MedicalSample*>> splits;
  for (const MedicalSample& s : samples) splits[s.row->split].push_back(&s);
  if (!splits.count("train")) throw ConfigError(csv + ": no row of split train (the dataset needs /train)");
  // One source per CSV row, so that a bad label is named by its line and file.
  std::vector<std::vector<double>> values;
  values.reserve(samples.size());
  std::vector<LabelSource> sources;
  for (const MedicalSample& s : samples) {
    values.push_back({s.row->label});
    sources.push_back({csv + ": line " + std::to_string(s.row->line) + " ('" + s.row->key + "')", &values.back(), 1, true});
  }
  const LabelPlan plan = plan_labels(sources, options.task, options.class_names);
  ConvertSummary summary;
  summary.shape = core::Shape{1, extent.h, extent.w, extent.d};
  summary.num_classes = plan.num_classes;
  summary.task = plan.task;
  DatasetWriter writer(output_path, {plan.num_classes, options.class_names, plan.task}, options.writer);
  for (const char* split : {"train", "val", "test"}) {
    if (!splits.count(split)) continue;
    const auto& members = splits[split];
    writer.begin_split(split, summary.shape, members.size(), false, plan.target_size);
    for (const MedicalSample* s : members) {
      const std::vector<double> voxels = load(*s);
      const std::vector<float> image = s->extent == extent ? std::vector<float>(voxels.begin(), voxels.end())
                                                           : fit_volume(voxels, s->extent, extent, options.fit);
      const std::vector<double> label{s->row->label};
      if (plan.target_size) writer.append_targets(std::span<const float>(image), target_values(label));
      else writer.append(std::span<const float>(image), class_labels(label));
    }
    summary.split_counts[split] = members.size();
  }
  writer.finish();
  return summary;
}

}  // namespace mpicnn::data
