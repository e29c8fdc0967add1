// NIfTI-1 and NIfTI-2 volumes through niftilib (Debian libnifti2-dev: nifti2_io reads both
// versions, .nii and .nii.gz through znzlib, and swaps big-endian files).
#include <nifti2_io.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>

#include "core/errors.hpp"
#include "datasets/convert.hpp"
#include "datasets/medical.hpp"

namespace mpicnn::data {
namespace {
namespace fs = std::filesystem;

struct NiftiFree {
  void operator()(nifti_image* image) const { nifti_image_free(image); }
};
using NiftiImage = std::unique_ptr<nifti_image, NiftiFree>;

// niftilib prints its diagnostics to stderr; ours are the one-line errors below.
NiftiImage open_nifti(const std::string& path, bool with_data) {
  nifti_set_debug_level(0);
  NiftiImage image(nifti_image_read(path.c_str(), with_data ? 1 : 0));
  if (!image)
    throw IoError(path + ": not a readable NIfTI-1 or NIfTI-2 file (niftilib cannot read its header" +
                  std::string(with_data ? " or its voxels" : "") + ")");
  return image;
}

// nibabel's reading of scl_slope/scl_inter: a slope of 0 or not finite means unscaled; a valid
// slope with an intercept that is not finite is a bad header.
void scaling(const nifti_image& image, const std::string& path, double& slope, double& inter) {
  slope = image.scl_slope;
  inter = image.scl_inter;
  if (slope == 0 || !std::isfinite(slope)) {
    slope = 1;
    inter = 0;
  } else if (!std::isfinite(inter)) {
    throw IoError(path + ": scl_slope " + std::to_string(slope) + " with scl_inter " + std::to_string(inter) +
                  ", expected a finite intercept");
  }
}

// The extent and the time points of a header: x, y, z become W, H, D.
Extent nifti_extent(const nifti_image& image, const std::string& path, bool time_points, int& parts) {
  const std::int64_t dims = image.dim[0];
  std::string shape;
  for (std::int64_t i = 1; i <= std::min<std::int64_t>(dims, 7); ++i) {  // appended: GCC 12 warns falsely on "x" + string
    if (i > 1) shape += "x";
    shape += std::to_string(image.dim[i]);
  }
  if (dims < 2 || dims > 4)
    throw ShapeError(path + ": " + std::to_string(dims) + " dimensions (" + shape +
                     "), expected 2 (image), 3 (volume) or 4 (volume per time point)");
  for (std::int64_t i = 1; i <= dims; ++i)
    if (image.dim[i] < 1 || image.dim[i] > 4096)
      throw ShapeError(path + ": dimension " + std::to_string(i) + " is " + std::to_string(image.dim[i]) + " (" + shape +
                       "), expected 1..4096");
  parts = dims == 4 ? int(image.dim[4]) : 1;
  if (dims == 4 && parts > 1 && !time_points)
    throw ConfigError(path + ": 4D file (" + shape + "), expected 3D; give --time_points to write one sample per time point");
  return {dims >= 3 ? int(image.dim[3]) : 1, int(image.dim[2]), int(image.dim[1])};
}

template <class T>
void widen(const void* data, std::size_t first, std::size_t count, double slope, double inter, double* out) {
  const T* values = static_cast<const T*>(data) + first;
  for (std::size_t i = 0; i < count; ++i) out[i] = double(values[i]) * slope + inter;
}

// Voxels [first, first + count) of a loaded image, scaled, in double.
void scaled_voxels(const nifti_image& image, const std::string& path, std::size_t first, std::size_t count,
                   double* out) {
  double slope = 1, inter = 0;
  scaling(image, path, slope, inter);
  switch (image.datatype) {
    case DT_UINT8: return widen<std::uint8_t>(image.data, first, count, slope, inter, out);
    case DT_INT8: return widen<std::int8_t>(image.data, first, count, slope, inter, out);
    case DT_INT16: return widen<std::int16_t>(image.data, first, count, slope, inter, out);
    case DT_UINT16: return widen<std::uint16_t>(image.data, first, count, slope, inter, out);
    case DT_INT32: return widen<std::int32_t>(image.data, first, count, slope, inter, out);
    case DT_UINT32: return widen<std::uint32_t>(image.data, first, count, slope, inter, out);
    case DT_INT64: return widen<std::int64_t>(image.data, first, count, slope, inter, out);
    case DT_UINT64: return widen<std::uint64_t>(image.data, first, count, slope, inter, out);
    case DT_FLOAT32: return widen<float>(image.data, first, count, slope, inter, out);
    case DT_FLOAT64: return widen<double>(image.data, first, count, slope, inter, out);
    default:
      throw IoError(path + ": voxel datatype " + nifti_datatype_string(image.datatype) +
                    ", expected an integer or float32/float64 scalar type");
  }
}

bool is_nifti_name(const std::string& name) { return name.ends_with(".nii") || name.ends_with(".nii.gz"); }

}  // namespace

ConvertSummary convert_nifti(const std::string& folder, const std::string& output_path, const ConvertOptions& options) {
  if (!fs::is_directory(folder)) throw IoError(folder + ": folder not found");
  if (options.labels.empty()) throw ConfigError("--labels is required for --format nifti (a CSV \"file,label[,split]\")");
  const std::vector<LabelRow> rows = read_label_csv(options.labels);
  // Headers first: every file, dimension and type is checked before anything is written.
  std::vector<MedicalSample> samples;
  for (const LabelRow& row : rows) {
    const std::string path = (fs::path(folder) / row.key).string();
    if (!fs::is_regular_file(path))
      throw IoError(options.labels + ": line " + std::to_string(row.line) + ": file '" + row.key + "' not found in " + folder);
    if (!is_nifti_name(row.key))
      throw IoError(path + ": not a NIfTI file name (expected .nii or .nii.gz)");
    const NiftiImage header = open_nifti(path, false);
    double slope = 1, inter = 0;
    scaling(*header, path, slope, inter);
    int parts = 1;
    const Extent extent = nifti_extent(*header, path, options.time_points, parts);
    for (int t = 0; t < parts; ++t) samples.push_back({parts > 1 ? path + " (time point " + std::to_string(t) + ")" : path, &row, extent, t});
  }
  // A 4D file's time points are consecutive samples: it is read once for all of them.
  std::string loaded_path;
  NiftiImage loaded;
  auto load = [&](const MedicalSample& s) {
    const std::string path = (fs::path(folder) / s.row->key).string();
    if (path != loaded_path) {
      loaded = open_nifti(path, true);
      loaded_path = path;
      int parts = 1;
      nifti_extent(*loaded, path, options.time_points, parts);
    }
    std::vector<double> voxels(s.extent.size());
    scaled_voxels(*loaded, path, std::size_t(s.part) * voxels.size(), voxels.size(), voxels.data());
    return voxels;
  };
  return write_medical(options.labels, samples, load, output_path, options);
}

}  // namespace mpicnn::data
