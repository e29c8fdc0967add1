// `convert --format nifti` on nibabel's own test files (python3-nibabel: anatomical.nii is a
// big-endian NIfTI-1 volume, example4d.nii.gz a gzipped 4D NIfTI-1, example_nifti2.nii.gz a 4D
// NIfTI-2) and on copies whose scl_slope/scl_inter were set: every voxel must equal nibabel's
// get_fdata() rounded to float32. Resizing is checked against PyTorch's trilinear interpolate,
// cropping against numpy slicing, and bad input through the mpicnn binary's exit status.
#include <filesystem>

#include "core/errors.hpp"
#include "datasets/convert.hpp"
#include "datasets/reader.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using ::testing::HasSubstr;
using testing::run_python;
using testing::TempDir;

const std::string kNibabelData = "/usr/lib/python3/dist-packages/nibabel/tests/data";

// Copies nibabel's files into `dir` and writes scaled copies: scaled1.nii (NIfTI-1, big-endian
// float32 slope/inter at bytes 112/116) and scaled2.nii.gz (NIfTI-2, doubles at 176/184).
void prepare(const TempDir& dir) {
  const auto python = run_python(dir, R"(
import gzip, shutil, struct
d, out = ")" + kNibabelData + R"(", ")" + dir.path().string() + R"("
for name in ("anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz"):
    shutil.copy(d + "/" + name, out + "/" + name)
a = bytearray(open(d + "/anatomical.nii", "rb").read())
assert struct.unpack(">i", a[:4])[0] == 348
a[112:120] = struct.pack(">ff", 0.5, -3.25)
open(out + "/scaled1.nii", "wb").write(a)
b = bytearray(gzip.open(d + "/example_nifti2.nii.gz").read())
assert struct.unpack("<i", b[:4])[0] == 540
b[176:192] = struct.pack("<dd", 1.75, 100.5)
with gzip.open(out + "/scaled2.nii.gz", "wb") as f:
    f.write(b)
)");
  ASSERT_EQ(python.status, 0) << python.output;
}

void write_csv(const TempDir& dir, const std::string& text) { std::ofstream(dir.file("labels.csv")) << text; }

// nibabel reads each listed file; the dataset holds, in CSV order (time points in order), the
// float32 of get_fdata() with x, y, z as W, H, D, or its resize/crop to `shape`.
std::string nibabel_check(const TempDir& dir, const std::string& h5, const std::string& split,
                          const std::vector<std::string>& files, const std::string& fit, const std::string& shape) {
  std::string list;
  for (const auto& f : files) list += "\"" + f + "\", ";
  return R"(
import h5py, numpy as np, nibabel as nib
got = h5py.File(")" + h5 + R"(", "r")[")" + split + R"(/images"][...]
expected = []
for name in [)" + list + R"(]:
    img = nib.load(")" + dir.path().string() + R"(/" + name)
    f = img.get_fdata()
    for t in range(f.shape[3] if f.ndim == 4 else 1):
        expected.append((f[..., t] if f.ndim == 4 else f).transpose(2, 1, 0))
fit, shape = ")" + fit + R"(", ()" + shape + R"()
def fitted(v):
    if fit == "resize":
        import torch
        x = torch.from_numpy(v.copy())[None, None]
        return torch.nn.functional.interpolate(x, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    if fit == "crop":
        out = np.zeros(shape)
        src = [slice(max(0, (i - o) // 2), max(0, (i - o) // 2) + min(i, o)) for i, o in zip(v.shape, shape)]
        dst = [slice(max(0, -((i - o) // 2)), max(0, -((i - o) // 2)) + min(i, o)) for i, o in zip(v.shape, shape)]
        out[tuple(dst)] = v[tuple(src)]
        return out
    return v
assert got.shape[0] == len(expected), (got.shape, len(expected))
# Both sides compute in float64 and store float32. A resize's float64 values differ from PyTorch's
# in the last bits (PyTorch floors source indices with floorf, in float32), which can move the
# float32 rounding by one step: a resize may differ by at most one float32 ulp of the reference,
# anything else must be equal.
ulps = 1 if fit == "resize" else 0
worst, off, voxels = 0.0, 0, 0
for i, v in enumerate(expected):
    reference = fitted(v)
    e = reference.astype(np.float32)
    assert got[i, 0].shape == e.shape, (got[i].shape, e.shape)
    difference = np.abs(got[i, 0].astype(np.float64) - e.astype(np.float64))
    worst = max(worst, float(difference.max()))
    off += int((difference > 0).sum())
    voxels += e.size
    assert (difference <= ulps * np.spacing(np.abs(e)).astype(np.float64)).all(), (i, difference.max())
print("samples", len(expected), "voxels", voxels, "differing", off, "largest difference", worst)
)";
}

TEST(ConvertNifti, VoxelsEqualNibabel) {
  TempDir dir;
  prepare(dir);
  // The files have three shapes: one conversion per shape (a header row, a split column, 4D files).
  struct Part { std::string csv, split; std::vector<std::string> files; };
  const std::vector<Part> parts = {
      {"file,label\nanatomical.nii,0\nscaled1.nii,1\n", "train", {"anatomical.nii", "scaled1.nii"}},
      {"example4d.nii.gz,2\n", "train", {"example4d.nii.gz"}},
      {"example_nifti2.nii.gz,0\nscaled2.nii.gz,1,test\n", "test", {"scaled2.nii.gz"}},
      {"example_nifti2.nii.gz,0\nscaled2.nii.gz,1,test\n", "train", {"example_nifti2.nii.gz"}},
  };
  for (const Part& part : parts) {
    SCOPED_TRACE(part.files[0]);
    write_csv(dir, part.csv);
    ConvertOptions options;
    options.labels = dir.file("labels.csv");
    options.time_points = true;
    const std::string h5 = dir.file("out.h5");
    const ConvertSummary summary = convert_nifti(dir.path().string(), h5, options);
    EXPECT_EQ(summary.task, "multi-class");
    const DatasetInfo info = read_info(h5, part.split);
    EXPECT_FALSE(info.uint8);
    EXPECT_TRUE(info.shape.is_volume());
    const auto python = run_python(dir, nibabel_check(dir, h5, part.split, part.files, "none", ""));
    EXPECT_EQ(python.status, 0) << python.output;
    std::printf("%s", python.output.c_str());
  }
}

TEST(ConvertNifti, ResizeMatchesPyTorchAndCropMatchesNumpy) {
  TempDir dir;
  prepare(dir);
  write_csv(dir, "scaled1.nii,0\nexample_nifti2.nii.gz,1\nexample4d.nii.gz,1\n");
  for (const auto& [fit, shape] : std::vector<std::pair<std::string, std::vector<int>>>{
           {"resize", {16, 28, 28}}, {"resize", {40, 9, 50}}, {"crop", {16, 28, 28}}, {"crop", {30, 9, 50}}}) {
    SCOPED_TRACE(fit);
    ConvertOptions options;
    options.labels = dir.file("labels.csv");
    options.time_points = true;
    options.fit = fit;
    options.shape = shape;
    const std::string h5 = dir.file("out.h5");
    const ConvertSummary summary = convert_nifti(dir.path().string(), h5, options);
    EXPECT_EQ(summary.shape, (core::Shape{1, shape[1], shape[2], shape[0]}));
    EXPECT_EQ(summary.split_counts.at("train"), 5u);  // 1 + 2 + 2 time points
    const std::string text = std::to_string(shape[0]) + ", " + std::to_string(shape[1]) + ", " + std::to_string(shape[2]);
    const auto python = run_python(dir, nibabel_check(dir, h5, "train", {"scaled1.nii", "example_nifti2.nii.gz", "example4d.nii.gz"}, fit, text));
    EXPECT_EQ(python.status, 0) << python.output;
    std::printf("%s %s: %s", fit.c_str(), text.c_str(), python.output.c_str());
  }
}

// Bad input through the binary: exit status 1, one line "error: <file>: ...", no output file.
TEST(ConvertNifti, BadInputIsOneLineNamingTheFile) {
  TempDir dir;
  prepare(dir);
  const auto python = run_python(dir, R"(
import nibabel as nib, numpy as np
d = ")" + dir.path().string() + R"("
nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2, 2), np.int16), np.eye(4)), d + "/five.nii")
open(d + "/garbage.nii", "wb").write(bytes(range(256)) * 2)
a = open(d + "/anatomical.nii", "rb").read()
open(d + "/truncated.nii", "wb").write(a[:len(a) // 2])
)");
  ASSERT_EQ(python.status, 0) << python.output;
  const std::string folder = dir.path().string(), csv = dir.file("labels.csv"), h5 = dir.file("out.h5");
  auto fails = [&](const std::string& rows, const std::string& extra, const std::string& expected) {
    write_csv(dir, rows);
    const testing::CommandResult r = testing::run_command(std::string(MPICNN_BINARY) + " convert --format nifti --input " +
                                                          folder + " --labels " + csv + " --output " + h5 + extra);
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "error: " + expected + "\n");
    EXPECT_FALSE(std::filesystem::exists(h5));
    EXPECT_FALSE(std::filesystem::exists(h5 + ".partial"));
  };
  fails("anatomical.nii,0\nmissing.nii,1\n", "", csv + ": line 2: file 'missing.nii' not found in " + folder);
  fails("anatomical.nii,0\ngarbage.nii,1\n", "",
        folder + "/garbage.nii: not a readable NIfTI-1 or NIfTI-2 file (niftilib cannot read its header)");
  fails("five.nii,0\n", "", folder + "/five.nii: 5 dimensions (4x4x4x2x2), expected 2 (image), 3 (volume) or 4 (volume per time point)");
  fails("anatomical.nii,0\ntruncated.nii,1\n", "",
        folder + "/truncated.nii: not a readable NIfTI-1 or NIfTI-2 file (niftilib cannot read its header or its voxels)");
  fails("anatomical.nii,0\nexample4d.nii.gz,1\n", " --shape 8,8,8",
        folder + "/example4d.nii.gz: 4D file (128x96x24x2), expected 3D; give --time_points to write one sample per time point");
  fails("anatomical.nii,0\nscaled1.nii,2\n", " --names a,b",
        csv + ": line 2 ('scaled1.nii'): label 2 is outside the declared classes 0..1 (2 names given by --names)");
  fails("anatomical.nii,0\nscaled1.nii,1\n", " --task binary --names a,b,c",
        "--names gives 3 names, expected 2 for --task binary");
  fails("anatomical.nii,0\nscaled1.nii,1.5\n", "",
        csv + ": line 2 ('scaled1.nii'): label 1.500000 is not a class index, expected an integer >= 0");
  fails("anatomical.nii,0\nexample4d.nii.gz,1\n", " --time_points true",
        folder + "/example4d.nii.gz (time point 0): volume 24x96x128, expected 25x41x33 like " + folder +
            "/anatomical.nii (give --shape to resize or crop to one shape)");
}

}  // namespace
}  // namespace mpicnn::data
