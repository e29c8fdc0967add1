// DICOM files and series through GDCM (Debian libgdcm-dev). GDCM rather than DCMTK: its one
// gdcm::ImageReader decodes every transfer syntax Debian builds it with (JPEG baseline, extended
// and lossless through its 8/12/16-bit libjpeg builds, JPEG-LS through CharLS, JPEG 2000 through
// OpenJPEG, RLE, deflate) behind one GetBuffer call, where DCMTK needs a decoder registered per
// codec family and has no JPEG 2000 codec in its free edition.
#include <gdcmImage.h>
#include <gdcmImageReader.h>
#include <gdcmReader.h>
#include <gdcmStringFilter.h>
#include <gdcmTrace.h>
#include <gdcmTransferSyntax.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "core/errors.hpp"
#include "datasets/convert.hpp"
#include "datasets/medical.hpp"

namespace mpicnn::data {
namespace {
namespace fs = std::filesystem;

const gdcm::Tag kSeriesUid(0x0020, 0x000e), kPosition(0x0020, 0x0032), kOrientation(0x0020, 0x0037),
    kSamples(0x0028, 0x0002), kFrames(0x0028, 0x0008), kRows(0x0028, 0x0010), kColumns(0x0028, 0x0011),
    kPixelData(0x7fe0, 0x0010);

// What the scan of one file found (everything but the pixels).
struct DicomFile {
  std::string path, relative, series;
  int rows = 0, columns = 0, frames = 1;
  std::vector<double> position, orientation;  // empty when absent
};

std::vector<double> numbers(const std::string& text) {
  std::vector<double> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, '\\')) values.push_back(std::strtod(item.c_str(), nullptr));
  return values;
}

// GDCM reads a file that ends inside its pixel data without failing: it only warns ("Incomplete
// Pixel Data found") and fills the rest with zeros. Its warnings are caught here, off the terminal.
class GdcmWarnings {
 public:
  GdcmWarnings() {
    gdcm::Trace::SetWarningStream(text_);
    gdcm::Trace::WarningOn();
  }
  ~GdcmWarnings() {
    gdcm::Trace::WarningOff();
    gdcm::Trace::SetWarningStream(std::cerr);
  }
  bool incomplete_pixels() const { return text_.str().find("Incomplete Pixel Data") != std::string::npos; }

 private:
  std::ostringstream text_;
};

// Headers and the pixel data's size (its value is read too: GDCM's ReadUpToTag includes the tag).
DicomFile scan(const fs::path& path, const fs::path& folder) {
  DicomFile file;
  file.path = path.string();
  file.relative = fs::relative(path, folder).string();
  gdcm::Reader reader;
  reader.SetFileName(file.path.c_str());
  const GdcmWarnings warnings;
  if (!reader.ReadUpToTag(kPixelData)) throw IoError(file.path + ": not a DICOM file (GDCM cannot read it)");
  if (warnings.incomplete_pixels()) throw IoError(file.path + ": pixel data ends early (the file is truncated)");
  const gdcm::DataSet& data = reader.GetFile().GetDataSet();
  gdcm::StringFilter strings;
  strings.SetFile(reader.GetFile());
  auto text = [&](const gdcm::Tag& tag) { return data.FindDataElement(tag) ? strings.ToString(tag) : std::string(); };
  if (!data.FindDataElement(kPixelData)) throw IoError(file.path + ": DICOM file without pixel data (not an image)");
  file.series = text(kSeriesUid);
  file.series.erase(file.series.find_last_not_of(std::string(" \0", 2)) + 1);
  file.rows = std::atoi(text(kRows).c_str());
  file.columns = std::atoi(text(kColumns).c_str());
  if (const std::string frames = text(kFrames); !frames.empty()) file.frames = std::max(1, std::atoi(frames.c_str()));
  const int samples = text(kSamples).empty() ? 1 : std::atoi(text(kSamples).c_str());
  if (samples != 1)
    throw IoError(file.path + ": " + std::to_string(samples) + " samples per pixel (colour), expected 1 (greyscale)");
  if (file.rows < 1 || file.columns < 1 || file.rows > 4096 || file.columns > 4096 || file.frames > 4096)
    throw IoError(file.path + ": " + std::to_string(file.rows) + "x" + std::to_string(file.columns) + " pixels in " +
                  std::to_string(file.frames) + " frames, expected 1..4096 each");
  file.position = numbers(text(kPosition));
  file.orientation = numbers(text(kOrientation));
  return file;
}

// The pixels of one file, decoded by GDCM's codecs, rescaled (slope, intercept), in double.
template <class T>
void widen(const std::vector<char>& buffer, double slope, double intercept, double* out, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, buffer.data() + i * sizeof(T), sizeof(T));
    out[i] = double(v) * slope + intercept;
  }
}

void read_pixels(const DicomFile& file, double* out, std::size_t count) {
  gdcm::ImageReader reader;
  reader.SetFileName(file.path.c_str());
  const GdcmWarnings warnings;
  if (!reader.Read() || warnings.incomplete_pixels()) throw IoError(file.path + ": not a readable DICOM image (GDCM cannot read it)");
  const gdcm::Image& image = reader.GetImage();
  const gdcm::TransferSyntax syntax = image.GetTransferSyntax();
  const char* uid = gdcm::TransferSyntax::GetTSString(syntax);  // GDCM knows UIDs, not names
  const std::string syntax_text = uid ? uid : "(unknown)";
  const gdcm::PixelFormat format = image.GetPixelFormat();
  if (format.GetSamplesPerPixel() != 1)
    throw IoError(file.path + ": " + std::to_string(format.GetSamplesPerPixel()) + " samples per pixel, expected 1");
  std::vector<char> buffer(image.GetBufferLength());
  if (buffer.size() != count * format.GetPixelSize())
    throw IoError(file.path + ": pixel data decodes to " + std::to_string(buffer.size()) + " bytes, expected " +
                  std::to_string(count * format.GetPixelSize()));
  if (!image.GetBuffer(buffer.data()))
    throw IoError(file.path + ": cannot decode pixel data of transfer syntax " + syntax_text +
                  " (GDCM has no codec for it here, or the data is damaged)");
  const double slope = image.GetSlope(), intercept = image.GetIntercept();
  switch (format.GetScalarType()) {
    case gdcm::PixelFormat::UINT8: return widen<std::uint8_t>(buffer, slope, intercept, out, count);
    case gdcm::PixelFormat::INT8: return widen<std::int8_t>(buffer, slope, intercept, out, count);
    case gdcm::PixelFormat::UINT16: return widen<std::uint16_t>(buffer, slope, intercept, out, count);
    case gdcm::PixelFormat::INT16: return widen<std::int16_t>(buffer, slope, intercept, out, count);
    case gdcm::PixelFormat::UINT32: return widen<std::uint32_t>(buffer, slope, intercept, out, count);
    case gdcm::PixelFormat::INT32: return widen<std::int32_t>(buffer, slope, intercept, out, count);
    case gdcm::PixelFormat::FLOAT32: return widen<float>(buffer, slope, intercept, out, count);
    case gdcm::PixelFormat::FLOAT64: return widen<double>(buffer, slope, intercept, out, count);
    default:
      throw IoError(file.path + ": pixel type " + format.GetScalarTypeAsString() + ", expected 8 to 32-bit integers or floats");
  }
}

// Position along the slice normal (row direction x column direction), the order of a series.
double slice_position(const DicomFile& file, const std::string& series) {
  if (file.position.size() != 3)
    throw IoError(file.path + ": no ImagePositionPatient (0020,0032), needed to order the slices of series " + series);
  double normal[3] = {0, 0, 1};
  if (file.orientation.size() == 6) {
    const double* r = file.orientation.data();
    const double* c = r + 3;
    normal[0] = r[1] * c[2] - r[2] * c[1];
    normal[1] = r[2] * c[0] - r[0] * c[2];
    normal[2] = r[0] * c[1] - r[1] * c[0];
  }
  return file.position[0] * normal[0] + file.position[1] * normal[1] + file.position[2] * normal[2];
}

// The files of one series, in slice order, all of one 2D shape.
std::vector<const DicomFile*> series_slices(const std::vector<DicomFile>& files, const std::string& series) {
  std::vector<std::pair<double, const DicomFile*>> slices;
  for (const DicomFile& f : files)
    if (f.series == series) slices.push_back({slice_position(f, series), &f});
  std::sort(slices.begin(), slices.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : a.second->relative < b.second->relative;
  });
  const DicomFile& first = *slices.front().second;
  std::vector<const DicomFile*> ordered;
  for (std::size_t i = 0; i < slices.size(); ++i) {
    const DicomFile& f = *slices[i].second;
    if (f.rows != first.rows || f.columns != first.columns || f.frames != 1)
      throw ShapeError(f.path + ": slice of " + std::to_string(f.rows) + "x" + std::to_string(f.columns) + " pixels" +
                       (f.frames != 1 ? " in " + std::to_string(f.frames) + " frames" : std::string()) + " in series " +
                       series + ", expected one frame of " + std::to_string(first.rows) + "x" +
                       std::to_string(first.columns) + " like " + first.path);
    if (i > 0 && slices[i].first == slices[i - 1].first)
      throw IoError(f.path + ": same slice position as " + slices[i - 1].second->path + " in series " + series);
    ordered.push_back(&f);
  }
  return ordered;
}

}  // namespace

ConvertSummary convert_dicom(const std::string& folder, const std::string& output_path, const ConvertOptions& options) {
  if (!fs::is_directory(folder)) throw IoError(folder + ": folder not found");
  if (options.labels.empty()) throw ConfigError("--labels is required for --format dicom (a CSV \"file-or-series,label[,split]\")");
  gdcm::Trace::ErrorOff();  // our errors are the one-line messages below
  gdcm::Trace::DebugOff();
  const std::vector<LabelRow> rows = read_label_csv(options.labels);
  // Every file of the folder (hidden ones and the labels CSV aside) must be DICOM: a stray file
  // in a series folder is more often a mistake than a note.
  std::vector<fs::path> paths;
  std::error_code same;
  for (const auto& entry : fs::recursive_directory_iterator(folder)) {
    if (!entry.is_regular_file() || entry.path().filename().string().starts_with('.')) continue;
    if (fs::equivalent(entry.path(), options.labels, same)) continue;
    paths.push_back(entry.path());
  }
  std::sort(paths.begin(), paths.end());
  std::vector<DicomFile> files;
  for (const fs::path& path : paths) files.push_back(scan(path, folder));
  std::map<std::string, const DicomFile*> by_name;
  std::set<std::string> series;
  for (const DicomFile& f : files) {
    by_name[f.relative] = &f;
    if (!f.series.empty()) series.insert(f.series);
  }
  std::vector<MedicalSample> samples;
  std::vector<std::vector<const DicomFile*>> parts;  // the files of each sample, in slice order
  for (const LabelRow& row : rows) {
    if (const auto found = by_name.find(row.key); found != by_name.end()) {
      const DicomFile& f = *found->second;
      parts.push_back({&f});
      samples.push_back({f.path, &row, {f.frames, f.rows, f.columns}, int(parts.size() - 1)});
    } else if (series.count(row.key)) {
      parts.push_back(series_slices(files, row.key));
      const DicomFile& first = *parts.back().front();
      samples.push_back({"series " + row.key, &row, {int(parts.back().size()), first.rows, first.columns},
                         int(parts.size() - 1)});
    } else {
      throw IoError(options.labels + ": line " + std::to_string(row.line) + ": '" + row.key +
                    "' is neither a file in " + folder + " nor the SeriesInstanceUID of its DICOM files");
    }
  }
  auto load = [&](const MedicalSample& s) {
    std::vector<double> voxels(s.extent.size());
    const auto& slices = parts[std::size_t(s.part)];
    const std::size_t per_file = voxels.size() / slices.size();
    for (std::size_t i = 0; i < slices.size(); ++i) read_pixels(*slices[i], voxels.data() + i * per_file, per_file);
    if (options.window) {
      const double low = options.window_center - options.window_width / 2, high = options.window_center + options.window_width / 2;
      for (double& v : voxels) v = std::clamp(v, low, high);
    }
    return voxels;
  };
  return write_medical(options.labels, samples, load, output_path, options);
}

}  // namespace mpicnn::data
