// libFuzzer target: dataset schema validation (data::read_info) and the first batches a reader
// takes from a file that passed it (label range, NaN pixels, counts).
// Input byte 0 selects the mode:
//   even: the rest is the file itself (raw bytes, mostly exercising the HDF5 open path);
//   odd:  the rest is a recipe for a well-formed HDF5 file with fuzzed schema content (attributes
//         present/absent/of the wrong type, splits, dataset ranks, sizes, dtypes and values), so
//         the fuzzer reaches mpicnn's own checks instead of HDF5's superblock parser.
#include <hdf5.h>

#include <cstring>
#include <vector>

#include "datasets/reader.hpp"
#include "fuzz_hdf5.hpp"
#include "fuzz_util.hpp"

namespace {

class Bytes {
 public:
  Bytes(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }
  int below(int n) { return byte() % n; }
  double number() {
    std::uint64_t bits = 0;
    for (int i = 0; i < 8; ++i) bits = bits << 8 | byte();
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
  void fill(void* out, std::size_t n) {
    auto* p = static_cast<std::uint8_t*>(out);
    for (std::size_t i = 0; i < n; ++i) p[i] = byte();
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_, at_ = 0;
};

hid_t numeric_type(int choice) {
  static const hid_t* types[] = {&H5T_NATIVE_UINT8, &H5T_NATIVE_FLOAT, &H5T_NATIVE_DOUBLE, &H5T_NATIVE_INT16,
                                 &H5T_NATIVE_INT32, &H5T_NATIVE_INT64, &H5T_NATIVE_UINT32};
  return *types[choice % 7];
}

void string_attribute(hid_t object, const char* name, const std::string& value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, value.size() + 1);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attribute = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attribute, type, value.c_str());
  H5Aclose(attribute), H5Sclose(space), H5Tclose(type);
}

void number_attribute(hid_t object, const char* name, Bytes& in, int count, int type_choice) {
  const hsize_t n = hsize_t(count);
  hid_t space = count == 1 && in.below(2) ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr);
  const hid_t type = numeric_type(type_choice);
  std::vector<std::uint8_t> values(std::size_t(count) * H5Tget_size(type) + 8);
  in.fill(values.data(), values.size());
  hid_t attribute = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attribute, type, values.data());
  H5Aclose(attribute), H5Sclose(space);
}

// One root attribute: absent, the value a valid file has, a string instead, or fuzzed numbers.
void root_attribute(hid_t file, const char* name, Bytes& in, const std::string& good_text, double good_number,
                    int channels) {
  switch (in.below(5)) {
    case 0: return;
    case 1:
      if (!good_text.empty()) string_attribute(file, name, good_text);
      else {
        const hsize_t n = hsize_t(channels);
        hid_t space = H5Screate_simple(1, &n, nullptr);
        std::vector<double> values(std::size_t(channels), good_number);
        hid_t attribute = H5Acreate2(file, name, H5T_NATIVE_DOUBLE, space, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(attribute, H5T_NATIVE_DOUBLE, values.data());
        H5Aclose(attribute), H5Sclose(space);
      }
      return;
    case 2: string_attribute(file, name, std::string(1 + in.below(8), char('a' + in.below(26)))); return;
    default: number_attribute(file, name, in, 1 + in.below(4), in.byte()); return;
  }
}

void dataset(hid_t group, const char* name, Bytes& in) {
  const int rank = 1 + in.below(5);
  hsize_t dims[5];
  std::size_t count = 1;
  for (int d = 0; d < rank; ++d) count *= dims[d] = hsize_t(in.below(7));
  const hid_t type = numeric_type(in.byte());
  hid_t space = H5Screate_simple(rank, dims, nullptr);
  hid_t create = H5Pcreate(H5P_DATASET_CREATE);
  if (count > 0 && in.below(2)) {
    hsize_t chunk[5];
    for (int d = 0; d < rank; ++d) chunk[d] = dims[d] ? 1 + in.below(int(dims[d])) : 1;
    H5Pset_chunk(create, rank, chunk);
  }
  hid_t set = H5Dcreate2(group, name, type, space, H5P_DEFAULT, create, H5P_DEFAULT);
  std::vector<std::uint8_t> values(count * H5Tget_size(type) + 1);
  in.fill(values.data(), values.size());
  if (count) H5Dwrite(set, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
  H5Dclose(set), H5Pclose(create), H5Sclose(space);
}

void write_recipe(const std::string& path, Bytes& in) {
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  const int channels = 1 + in.below(3);
  root_attribute(file, "format", in, "mpicnn-dataset", 0, 0);
  if (in.below(2)) number_attribute(file, "format_version", in, 1, 5);
  else root_attribute(file, "format_version", in, "", 1, 1);
  root_attribute(file, "num_classes", in, "", 3, 1);
  root_attribute(file, "mean", in, "", 0.5, channels);
  root_attribute(file, "std", in, "", 0.25, channels);
  if (in.below(2)) string_attribute(file, "class_names", "a");
  static const char* splits[] = {"train", "test", "val", "x"};
  const int groups = in.below(4);
  for (int g = 0; g < groups; ++g) {
    hid_t group = H5Gcreate2(file, splits[g % 4], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (in.below(4)) dataset(group, "images", in);
    switch (in.below(4)) {
      case 0: dataset(group, "labels", in); break;
      case 1: dataset(group, "targets", in); break;
      case 2: dataset(group, "labels", in), dataset(group, "targets", in); break;
      default: break;
    }
    H5Gclose(group);
  }
  H5Fclose(file);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  static const std::string path = fuzz::temp_path(".h5");
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  Bytes in(data + 1, size - 1);
  int global_batch = 1, ranks = 1;
  bool cache = false;
  if (data[0] % 2 == 0) {
    fuzz::write_file(path, data + 1, size - 1);
  } else {
    global_batch = 1 + in.below(5);
    ranks = 1 + in.below(3);
    cache = in.below(2);
    write_recipe(path, in);
  }
  fuzz::expect_clean_rejection([&] {
    const mpicnn::data::DatasetInfo info = mpicnn::data::read_info(path, "train");
    if (info.count * info.shape.size() > (1u << 22)) return;  // a raw file may declare a large split
    mpicnn::data::ReaderOptions options;
    options.path = path;
    options.split = "train";
    options.global_batch = std::max(global_batch, ranks);
    options.rank = ranks - 1;
    options.ranks = ranks;
    options.prefetch = false;
    options.cache_bytes = cache ? (1u << 20) : 0;
    mpicnn::data::TrainReader reader(options);
    mpicnn::data::Batch batch;
    for (int i = 0; i < 3 && reader.next(batch); ++i) {
    }
  });
  fuzz::expect_hdf5_closed("read_info/TrainReader");
  return 0;
}
