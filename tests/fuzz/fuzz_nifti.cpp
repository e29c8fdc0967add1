// libFuzzer target: the NIfTI converter (data::convert_nifti) on one fuzzed file, from niftilib's
// header read through our dimension, datatype and scaling checks to the voxels written as a dataset.
// Input byte 0 selects the options, the rest is the file:
//   bit 0: the file is named x.nii.gz and written gzip-compressed (niftilib reads it through znz);
//   bit 1: --time_points true (4D files become one sample per time point);
//   bit 2: --shape 4,4,4 (bit 3: --fit crop, else resize); bit 4: --task regression.
// niftilib's own crashes on damaged files are tolerated as HDF5's are (tests/fuzz/README.md); ours not.
#include <hdf5.h>
#include <zlib.h>

#include <filesystem>

#include "datasets/convert.hpp"
#include "fuzz_hdf5.hpp"
#include "fuzz_util.hpp"

namespace {

void write_gzip(const std::string& path, const std::uint8_t* data, std::size_t size) {
  gzFile out = gzopen(path.c_str(), "wb1");
  if (size) gzwrite(out, data, unsigned(size));
  gzclose(out);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  namespace fs = std::filesystem;
  static const std::string folder = fuzz::temp_path("-nifti");
  fs::create_directories(folder);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::uint8_t mode = data[0];
  const std::string name = mode & 1 ? "x.nii.gz" : "x.nii";
  for (const char* old : {"x.nii", "x.nii.gz"}) fs::remove(fs::path(folder) / old);
  if (mode & 1) write_gzip(folder + "/" + name, data + 1, size - 1);
  else fuzz::write_file(folder + "/" + name, data + 1, size - 1);
  const std::string csv = folder + "/labels.csv", output = folder + "/out.h5";
  const std::string rows = name + ",1\n";
  fuzz::write_file(csv, reinterpret_cast<const std::uint8_t*>(rows.data()), rows.size());
  fs::remove(output);
  mpicnn::data::ConvertOptions options;
  options.labels = csv;
  options.time_points = mode & 2;
  if (mode & 4) options.shape = {4, 4, 4};
  options.fit = mode & 8 ? "crop" : "resize";
  if (mode & 16) options.task = "regression";
  fuzz::expect_clean_rejection([&] { mpicnn::data::convert_nifti(folder, output, options); });
  fuzz::expect_hdf5_closed("convert_nifti");
  return 0;
}
