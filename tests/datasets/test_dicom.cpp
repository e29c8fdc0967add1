// `convert --format dicom` on pydicom's own test files (python3-pydicom): CT_small.dcm (rescale
// intercept -1024), MR_small.dcm and its big-endian, implicit-VR, RLE, JPEG 2000 lossless and
// JPEG-LS lossless variants, JPEG2000.dcm (lossy). Each converted pixel must equal pydicom's
// pixel_array after its modality rescale (apply_modality_lut), as float32. Series are written by
// pydicom from CT_small.dcm (positions shuffled on disk, a rescale per slice) and must come back
// sorted by ImagePositionPatient. Bad input runs through the binary: exit 1, one line, no output.
#include <algorithm>
#include <filesystem>

#include "core/errors.hpp"
#include "datasets/convert.hpp"
#include "datasets/reader.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using testing::run_python;
using testing::TempDir;

const std::string kPydicomData = "/usr/lib/python3/dist-packages/pydicom/data/test_files";

// Copies the listed test files into dir/files and writes two CT series into dir/files/series:
// series A of 5 slices and B of 3, file names in shuffled slice order, each slice's pixels
// changed and its RescaleSlope/Intercept set.
void prepare(const TempDir& dir) {
  const auto python = run_python(dir, R"(
import os, shutil, numpy as np, pydicom
src, out = ")" + kPydicomData + R"(", ")" + dir.path().string() + R"(/files"
os.makedirs(out + "/series", exist_ok=True)
for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
             "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm"):
    shutil.copy(src + "/" + name, out + "/" + name)
rng = np.random.default_rng(3)
for uid, count in (("1.2.826.0.1.3680043.8.498.1", 5), ("1.2.826.0.1.3680043.8.498.2", 3)):
    order = rng.permutation(count)
    for k in range(count):
        d = pydicom.dcmread(src + "/CT_small.dcm")
        d.SeriesInstanceUID = uid
        d.SOPInstanceUID = uid + "." + str(k + 1)
        d.InstanceNumber = k + 1
        d.ImagePositionPatient = [-158.135803, -179.035797, -75.7 + 2.5 * k]
        d.RescaleSlope = [1, 2, 0.5, 1.25, 3][k]
        d.RescaleIntercept = -1024 + 10 * k
        d.PixelData = (d.pixel_array + 7 * k + 100 * int(uid[-1])).astype(np.int16).tobytes()
        d.save_as(out + "/series/" + uid[-1] + "_" + str(order[k]) + ".dcm")
)");
  ASSERT_EQ(python.status, 0) << python.output;
}

void write_csv(const TempDir& dir, const std::string& text) { std::ofstream(dir.file("labels.csv")) << text; }

// pydicom's view: a key is a file (one image) or a SeriesInstanceUID (its files sorted by the
// position along the slice normal), rescaled by apply_modality_lut; `reference` maps a file to the
// file pydicom decodes in its place (JPEG-LS: pydicom has no decoder here, and the file is MR_small
// losslessly compressed). The window, if any, clips after rescaling.
std::string pydicom_check(const TempDir& dir, const std::string& h5, const std::vector<std::string>& keys,
                          const std::string& window = "None") {
  std::string list;
  for (const auto& k : keys) list += "\"" + k + "\", ";
  return R"(
import glob, h5py, numpy as np, pydicom
from pydicom.pixel_data_handlers.util import apply_modality_lut
folder = ")" + dir.path().string() + R"(/files"
reference = {"MR_small_jpeg_ls_lossless.dcm": "MR_small.dcm"}
def image(path):
    d = pydicom.dcmread(path)
    return apply_modality_lut(d.pixel_array, d).astype(np.float64)
def volume(uid):
    slices = []
    for path in glob.glob(folder + "/**/*.dcm", recursive=True):
        d = pydicom.dcmread(path, stop_before_pixels=True)
        if d.SeriesInstanceUID == uid:
            o = np.array(d.ImageOrientationPatient, float)
            slices.append((float(np.dot(np.array(d.ImagePositionPatient, float), np.cross(o[:3], o[3:]))), path))
    return np.stack([image(p) for _, p in sorted(slices)])
got = h5py.File(")" + h5 + R"(", "r")["train/images"][...]
window = )" + window + R"(
for i, key in enumerate([)" + list + R"(]):
    e = volume(key) if key.startswith("1.2.826") else image(folder + "/" + reference.get(key, key))[None]
    if window:
        e = np.clip(e, window[0] - window[1] / 2, window[0] + window[1] / 2)
    g = got[i, 0] if got.ndim == 5 else got[i]
    assert g.shape == e.shape, (key, g.shape, e.shape)
    assert (g == e.astype(np.float32)).all(), (key, np.abs(g - e).max())
    print(key, e.shape, "equal, range", e.min(), e.max())
)";
}

ConvertSummary convert(const TempDir& dir, const std::string& rows, ConvertOptions options = {}) {
  write_csv(dir, rows);
  options.labels = dir.file("labels.csv");
  return convert_dicom(dir.file("files"), dir.file("out.h5"), options);
}

TEST(ConvertDicom, FilesEqualPydicomForEveryTransferSyntax) {
  TempDir dir;
  prepare(dir);
  const std::vector<std::string> mr = {"MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                       "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"};
  std::string rows = "file,label\n";
  for (std::size_t i = 0; i < mr.size(); ++i) rows += mr[i] + "," + std::to_string(i % 2) + "\n";
  for (const auto& [csv, keys] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {rows, mr}, {"CT_small.dcm,1\n", {"CT_small.dcm"}}, {"JPEG2000.dcm,0\n", {"JPEG2000.dcm"}}}) {
    SCOPED_TRACE(keys[0]);
    const ConvertSummary summary = convert(dir, csv);
    EXPECT_FALSE(summary.shape.is_volume());
    EXPECT_EQ(summary.split_counts.at("train"), keys.size());
    const auto python = run_python(dir, pydicom_check(dir, dir.file("out.h5"), keys));
    EXPECT_EQ(python.status, 0) << python.output;
    std::printf("%s", python.output.c_str());
  }
}

TEST(ConvertDicom, SeriesSortedByPositionAndWindowed) {
  TempDir dir;
  prepare(dir);
  const std::vector<std::string> keys = {"1.2.826.0.1.3680043.8.498.1"};
  const ConvertSummary summary = convert(dir, "1.2.826.0.1.3680043.8.498.1,1\n");
  EXPECT_EQ(summary.shape, (core::Shape{1, 128, 128, 5}));
  auto python = run_python(dir, pydicom_check(dir, dir.file("out.h5"), keys));
  EXPECT_EQ(python.status, 0) << python.output;
  std::printf("%s", python.output.c_str());
  // Two series of different depths, resized to one shape, are checked by shape and label; the
  // windowed single series against pydicom.
  ConvertOptions options;
  options.window = true;
  options.window_center = 40;
  options.window_width = 400;
  convert(dir, "1.2.826.0.1.3680043.8.498.1,1\n", options);
  python = run_python(dir, pydicom_check(dir, dir.file("out.h5"), keys, "(40, 400)"));
  EXPECT_EQ(python.status, 0) << python.output;
  std::printf("window 40,400: %s", python.output.c_str());
  ConvertOptions fixed;
  fixed.shape = {4, 32, 32};
  const ConvertSummary both = convert(dir, "1.2.826.0.1.3680043.8.498.1,1\n1.2.826.0.1.3680043.8.498.2,0,test\n", fixed);
  EXPECT_EQ(both.shape, (core::Shape{1, 32, 32, 4}));
  EXPECT_EQ(read_info(dir.file("out.h5"), "test").count, 1u);
}

// Bad input through the binary: exit status 1, one line "error: <file>: ...", no output file.
TEST(ConvertDicom, BadInputIsOneLineNamingTheFile) {
  TempDir dir;
  prepare(dir);
  const std::string files = dir.file("files"), csv = dir.file("labels.csv"), h5 = dir.file("out.h5");
  // `expected` is the whole line, or its beginning when it ends in "...".
  auto fails = [&](const std::string& rows, std::string expected, const std::string& extra = "") {
    write_csv(dir, rows);
    const testing::CommandResult r = testing::run_command(std::string(MPICNN_BINARY) + " convert --format dicom --input " +
                                                          files + " --labels " + csv + " --output " + h5 + extra);
    EXPECT_EQ(r.status, 1) << r.output;
    if (expected.ends_with("...")) {
      expected.resize(expected.size() - 3);
      EXPECT_EQ(r.output.substr(0, expected.size() + 7), "error: " + expected);
      EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1);
    } else {
      EXPECT_EQ(r.output, "error: " + expected + "\n");
    }
    EXPECT_FALSE(std::filesystem::exists(h5));
    EXPECT_FALSE(std::filesystem::exists(h5 + ".partial"));
  };
  fails("MR_small.dcm,0\nmissing.dcm,1\n", csv + ": line 2: 'missing.dcm' is neither a file in " + files +
                                                " nor the SeriesInstanceUID of its DICOM files");
  fails("MR_small.dcm,0\nMR_small_RLE.dcm,3\n",
        csv + ": line 2 ('MR_small_RLE.dcm'): label 3 is outside the declared classes 0..1 (--task binary)", " --task binary");
  // A compressed transfer syntax GDCM has no codec for: MPEG-2 video around MR_small's pixels.
  auto python = run_python(dir, R"(
import pydicom
from pydicom.encaps import encapsulate
d = pydicom.dcmread(")" + kPydicomData + R"(/MR_small.dcm")
d.PixelData = encapsulate([d.PixelData])
d.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
d.is_implicit_VR, d.is_little_endian = False, True
d.save_as(")" + files + R"(/mpeg2.dcm")
)");
  ASSERT_EQ(python.status, 0) << python.output;
  fails("MR_small.dcm,0\nmpeg2.dcm,1\n", files + "/mpeg2.dcm: cannot decode pixel data of transfer syntax "
                                         "1.2.840.10008.1.2.4.100 (GDCM has no codec for it here, or the data is damaged)");
  std::filesystem::remove(files + "/mpeg2.dcm");
  std::filesystem::copy(kPydicomData + "/MR_truncated.dcm", files + "/MR_truncated.dcm");
  fails("MR_small.dcm,0\n", files + "/MR_truncated.dcm: pixel data ends early (the file is truncated)");
  std::filesystem::remove(files + "/MR_truncated.dcm");
  // A slice of another shape in series A: MR_small (64x64) given A's series UID and a position.
  python = run_python(dir, R"(
import pydicom
d = pydicom.dcmread(")" + kPydicomData + R"(/MR_small.dcm")
d.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
d.ImagePositionPatient = [-158.135803, -179.035797, 50.0]
d.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
d.save_as(")" + files + R"(/series/odd.dcm")
)");
  ASSERT_EQ(python.status, 0) << python.output;
  fails("1.2.826.0.1.3680043.8.498.1,0\n", files + "/series/odd.dcm: slice of 64x64 pixels in series "
                                             "1.2.826.0.1.3680043.8.498.1, expected one frame of 128x128 like " +
                                             files + "/series/1_...");
  std::filesystem::remove(files + "/series/odd.dcm");
  std::filesystem::copy(kPydicomData + "/SC_rgb_jpeg.dcm", files + "/colour.dcm");
  fails("MR_small.dcm,0\n", files + "/colour.dcm: 3 samples per pixel (colour), expected 1 (greyscale)");
  std::filesystem::remove(files + "/colour.dcm");
  std::filesystem::copy(kPydicomData + "/README.txt", files + "/notes.txt");
  fails("MR_small.dcm,0\n", files + "/notes.txt: not a DICOM file (GDCM cannot read it)");
}

}  // namespace
}  // namespace mpicnn::data
