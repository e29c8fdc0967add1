#pragma once
// A minimal reader of the PyTorch fixture files (HDF5): RAII handles, every return code checked,
// errors naming the file and the dataset or attribute.
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/errors.hpp"

namespace mpicnn::core::fixtures {

class Handle {
 public:
  Handle(hid_t id, herr_t (*close)(hid_t), const std::string& what) : id_(id), close_(close) {
    if (id < 0) throw IoError("HDF5: cannot open " + what);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { close_(id_); }
  hid_t get() const { return id_; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

inline void check(herr_t status, const std::string& what) {
  if (status < 0) throw IoError("HDF5: " + what + " failed");
}

class Fixture {
 public:
  explicit Fixture(const std::string& path)
      : path_(path), file_(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, "file " + path) {}

  // True if every link along `name` ("a/b/c") exists.
  bool has(const std::string& name) const {
    for (std::size_t slash = name.find('/'); ; slash = name.find('/', slash + 1)) {
      const htri_t found = H5Lexists(file_.get(), name.substr(0, slash).c_str(), H5P_DEFAULT);
      check(found, where(name) + " existence check");
      if (!found) return false;
      if (slash == std::string::npos) return true;
    }
  }

  std::vector<float> floats(const std::string& name, std::vector<int>* dims = nullptr) const {
    return read<float>(name, H5T_NATIVE_FLOAT, dims);
  }
  std::vector<double> doubles(const std::string& name, std::vector<int>* dims = nullptr) const {
    return read<double>(name, H5T_NATIVE_DOUBLE, dims);
  }
  std::vector<std::int32_t> ints(const std::string& name) const { return read<std::int32_t>(name, H5T_NATIVE_INT32, nullptr); }
  std::vector<std::int64_t> int64s(const std::string& name) const { return read<std::int64_t>(name, H5T_NATIVE_INT64, nullptr); }

  std::string text(const std::string& object, const std::string& attribute) const {
    Handle attr(H5Aopen_by_name(file_.get(), object.c_str(), attribute.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                where(object) + " attribute '" + attribute + "'");
    Handle type(H5Aget_type(attr.get()), H5Tclose, where(object) + " attribute '" + attribute + "' type");
    if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) != 0)
      throw IoError(where(object) + " attribute '" + attribute + "': expected a fixed-length string");
    std::string value(H5Tget_size(type.get()), '\0');
    check(H5Aread(attr.get(), type.get(), value.data()), "reading " + where(object) + " attribute '" + attribute + "'");
    return value.substr(0, value.find('\0'));
  }

  std::vector<double> numbers(const std::string& object, const std::string& attribute) const {
    Handle attr(H5Aopen_by_name(file_.get(), object.c_str(), attribute.c_str(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                where(object) + " attribute '" + attribute + "'");
    Handle space(H5Aget_space(attr.get()), H5Sclose, where(object) + " attribute '" + attribute + "' space");
    const hssize_t count = H5Sget_simple_extent_npoints(space.get());
    check(herr_t(count), where(object) + " attribute '" + attribute + "' size");
    std::vector<double> values(count);
    check(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, values.data()), "reading " + where(object) + " attribute '" + attribute + "'");
    return values;
  }
  double number(const std::string& object, const std::string& attribute) const {
    const std::vector<double> values = numbers(object, attribute);
    if (values.size() != 1) throw IoError(where(object) + " attribute '" + attribute + "': expected one value");
    return values[0];
  }

  std::vector<std::string> members(const std::string& group_name) const {
    Handle group(H5Gopen2(file_.get(), group_name.c_str(), H5P_DEFAULT), H5Gclose, where(group_name));
    H5G_info_t info;
    check(H5Gget_info(group.get(), &info), "listing " + where(group_name));
    std::vector<std::string> names;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      char name[256];
      check(herr_t(H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT)),
            "listing " + where(group_name));
      names.emplace_back(name);
    }
    return names;
  }

 private:
  std::string where(const std::string& name) const { return path_ + ":" + name; }

  template <class T>
  std::vector<T> read(const std::string& name, hid_t memory_type, std::vector<int>* dims) const {
    Handle dataset(H5Dopen2(file_.get(), name.c_str(), H5P_DEFAULT), H5Dclose, "dataset " + where(name));
    Handle space(H5Dget_space(dataset.get()), H5Sclose, "dataspace of " + where(name));
    const int rank = H5Sget_simple_extent_ndims(space.get());
    check(rank, "rank of " + where(name));
    std::vector<hsize_t> extent(rank);
    check(H5Sget_simple_extent_dims(space.get(), extent.data(), nullptr), "shape of " + where(name));
    std::size_t count = 1;
    for (hsize_t d : extent) count *= d;
    if (dims) dims->assign(extent.begin(), extent.end());
    std::vector<T> values(count);
    check(H5Dread(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), "reading " + where(name));
    return values;
  }

  std::string path_;
  Handle file_;
};

}  // namespace mpicnn::core::fixtures
