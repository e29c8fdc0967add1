// libFuzzer target: the DICOM converter (data::convert_dicom): GDCM's reading and decoding, then our
// checks (greyscale, image, frames, rescale, window, truncated pixel data) and the dataset written.
// Input byte 0 selects the options, the rest is the file:
//   bit 0: the rest is cut in two at its middle, two files a.dcm and b.dcm, both listed (and with
//          bit 2 set, of one --shape); bit 1: --window 40,400; bit 2: --shape 8,8 (bit 3: --fit crop).
// GDCM's own crashes on damaged files are tolerated as HDF5's are (tests/fuzz/README.md); ours not.
#include <hdf5.h>

#include <filesystem>

#include "datasets/convert.hpp"
#include "fuzz_hdf5.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  namespace fs = std::filesystem;
  static const std::string folder = fuzz::temp_path("-dicom"), output = folder + "-out.h5",
                           csv = folder + "-labels.csv";
  fs::remove_all(folder);
  fs::create_directories(folder);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::uint8_t mode = data[0];
  const std::uint8_t* file = data + 1;
  const std::size_t bytes = size - 1;
  std::string rows;
  if (mode & 1) {
    fuzz::write_file(folder + "/a.dcm", file, bytes / 2);
    fuzz::write_file(folder + "/b.dcm", file + bytes / 2, bytes - bytes / 2);
    rows = "a.dcm,0\nb.dcm,1,test\n";
  } else {
    fuzz::write_file(folder + "/a.dcm", file, bytes);
    rows = "a.dcm,1\n";
  }
  fuzz::write_file(csv, reinterpret_cast<const std::uint8_t*>(rows.data()), rows.size());
  fs::remove(output);
  mpicnn::data::ConvertOptions options;
  options.labels = csv;
  if (mode & 2) options.window = true, options.window_center = 40, options.window_width = 400;
  if (mode & 4) options.shape = {8, 8};
  options.fit = mode & 8 ? "crop" : "resize";
  fuzz::expect_clean_rejection([&] { mpicnn::data::convert_dicom(folder, output, options); });
  fuzz::expect_hdf5_closed("convert_dicom");
  return 0;
}
