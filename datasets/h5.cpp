#include "datasets/h5.hpp"

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "core/errors.hpp"

namespace mpicnn::data::h5 {
namespace {

// HDF5's innermost (most specific) error description on this thread's stack, then clears it.
std::string take_reason() {
  std::string reason;
  auto walk = [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
    auto* text = static_cast<std::string*>(data);
    if (text->empty() && e->desc && *e->desc) *text = e->desc;
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk, &reason);
  H5Eclear2(H5E_DEFAULT);
  // System errors read "file write failed: time = <ctime with a newline>, filename = ..., errno =
  // 27, error message = 'File too large', buf = ...": keep the action and the system's message.
  const std::size_t colon = reason.find(':'), message = reason.find("error message = '");
  if (colon != std::string::npos && message != std::string::npos) {
    const std::size_t start = message + 17, end = reason.find('\'', start);
    reason = reason.substr(0, colon) + ": " + reason.substr(start, end == std::string::npos ? end : end - start);
  }
  std::replace_if(reason.begin(), reason.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  while (!reason.empty() && reason.back() == ' ') reason.pop_back();
  return reason;
}

// Every HDF5 API call clears the error stack on entry, so callers take the reason before they ask
// HDF5 for the file and object names.
[[noreturn]] void throw_io(const std::string& reason, const std::string& file, const std::string& what) {
  std::string message = file + ": " + what;
  if (!reason.empty()) message += " (HDF5: " + reason + ")";
  throw IoError(message);
}

std::string join(hid_t location, const std::string& name) {
  if (!name.empty() && name[0] == '/') return name;
  std::string base = location >= 0 ? object_name(location) : std::string();
  if (base.empty() || base.back() != '/') base += '/';
  return base + name;
}

std::size_t product(const std::vector<hsize_t>& dims) {
  return std::accumulate(dims.begin(), dims.end(), std::size_t{1}, [](std::size_t a, hsize_t b) { return a * b; });
}

std::string type_text_of(hid_t type) {
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(8 * H5Tget_size(type));
    case H5T_FLOAT: return "float" + std::to_string(8 * H5Tget_size(type));
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length sequence";
    default: return "unsupported type";
  }
}

bool is_number(hid_t type) {
  const H5T_class_t c = H5Tget_class(type);
  return c == H5T_INTEGER || c == H5T_FLOAT;
}

Handle open_attribute(hid_t object, const std::string& name) {
  silence_errors();
  if (check(H5Aexists(object, name.c_str()), object, "look up attributes of") <= 0)
    fail(object, "missing attribute '" + name + "' on '" + object_name(object) + "'");
  return Handle(check(H5Aopen(object, name.c_str(), H5P_DEFAULT), object, "open attribute", name));
}

Handle replace_attribute(hid_t object, const std::string& name, hid_t type, hid_t space) {
  silence_errors();
  if (check(H5Aexists(object, name.c_str()), object, "look up attributes of") > 0)
    check(H5Adelete(object, name.c_str()), object, "replace attribute", name);
  return Handle(check(H5Acreate2(object, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), object,
                      "create attribute", name));
}

Handle vlen_string_type() {
  Handle type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  return type;
}

// Reads all strings of a string attribute, fixed or variable length.
std::vector<std::string> read_strings(hid_t object, const std::string& name) {
  Handle attribute = open_attribute(object, name);
  Handle type(H5Aget_type(attribute.get()));
  if (H5Tget_class(type.get()) != H5T_STRING)
    fail(object, "attribute '" + name + "' on '" + object_name(object) + "' is " + type_text_of(type.get()) +
                     ", expected a string");
  Handle space(H5Aget_space(attribute.get()));
  const hssize_t count = H5Sget_simple_extent_npoints(space.get());
  std::vector<std::string> out;
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle memory_type = vlen_string_type();
    std::vector<char*> pointers(std::size_t(count), nullptr);
    check(H5Aread(attribute.get(), memory_type.get(), pointers.data()), attribute.get(), "read attribute", name);
    for (char* p : pointers) out.emplace_back(p ? p : "");
    H5Dvlen_reclaim(memory_type.get(), space.get(), H5P_DEFAULT, pointers.data());
  } else {
    // One more byte per string than stored: the memory type is NUL-terminated.
    const std::size_t size = H5Tget_size(type.get()) + 1;
    Handle memory_type(H5Tcopy(H5T_C_S1));
    H5Tset_size(memory_type.get(), size);
    std::vector<char> text(size * std::size_t(count), '\0');
    check(H5Aread(attribute.get(), memory_type.get(), text.data()), attribute.get(), "read attribute", name);
    for (hssize_t i = 0; i < count; ++i) {
      std::string s(text.data() + std::size_t(i) * size, size);
      s.erase(s.find_last_not_of(std::string("\0 ", 2)) + 1);
      out.push_back(std::move(s));
    }
  }
  return out;
}

template <class T>
std::vector<T> read_numbers(hid_t object, const std::string& name) {
  Handle attribute = open_attribute(object, name);
  Handle type(H5Aget_type(attribute.get()));
  if (!is_number(type.get()))
    fail(object, "attribute '" + name + "' on '" + object_name(object) + "' is " + type_text_of(type.get()) +
                     ", expected a number");
  Handle space(H5Aget_space(attribute.get()));
  std::vector<T> out(std::size_t(H5Sget_simple_extent_npoints(space.get())));
  if (!out.empty())
    check(H5Aread(attribute.get(), native_type<T>(), out.data()), attribute.get(), "read attribute", name);
  return out;
}

}  // namespace

// HDF5 registers an atexit handler that closes every id still open. After a failed H5Fclose
// (a full disk, a file-size limit) the file id stays registered and that handler crashes with
// SIGSEGV at exit (HDF5 1.10.8), turning a clean error into a crash. Our handles close everything
// they own, so the handler is switched off before HDF5 initialises (at static initialisation, or
// at the latest on the first helper call).
namespace {
void keep_hdf5_out_of_atexit() {
  static const bool done = [] { return H5dont_atexit() >= 0; }();
  (void)done;
}
const bool kAtexitOff = (keep_hdf5_out_of_atexit(), true);
}  // namespace

void silence_errors() {
  thread_local bool silenced = false;
  if (!silenced) {
    keep_hdf5_out_of_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    silenced = true;
  }
}

void Handle::reset() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE: H5Fclose(id_); break;
    case H5I_GROUP: H5Gclose(id_); break;
    case H5I_DATASET: H5Dclose(id_); break;
    case H5I_DATASPACE: H5Sclose(id_); break;
    case H5I_DATATYPE: H5Tclose(id_); break;
    case H5I_ATTR: H5Aclose(id_); break;
    case H5I_GENPROP_LST: H5Pclose(id_); break;
    default: H5Idec_ref(id_); break;
  }
  id_ = H5I_INVALID_HID;
}

std::string file_name(hid_t object) {
  const ssize_t size = H5Fget_name(object, nullptr, 0);
  if (size <= 0) return "<unknown file>";
  std::string name(std::size_t(size), '\0');
  H5Fget_name(object, name.data(), std::size_t(size) + 1);
  return name;
}

std::string object_name(hid_t object) {
  const ssize_t size = H5Iget_name(object, nullptr, 0);
  if (size <= 0) return "/";
  std::string name(std::size_t(size), '\0');
  H5Iget_name(object, name.data(), std::size_t(size) + 1);
  return name;
}

void fail(hid_t location, const std::string& what) {
  const std::string reason = take_reason();
  throw_io(reason, location >= 0 ? file_name(location) : "<unknown file>", what);
}

void fail_file(const std::string& file, const std::string& what) {
  const std::string reason = take_reason();
  throw_io(reason, file, what);
}

void fail_action(hid_t object, const char* action, const std::string& name) {
  const std::string reason = take_reason();
  const std::string target = name.empty() ? object_name(object) : join(object, name);
  throw_io(reason, file_name(object), std::string("cannot ") + action + " '" + target + "'");
}

Handle open_file(const std::string& path, bool writable, hid_t access) {
  silence_errors();
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (!fs::exists(status)) throw IoError(path + ": file not found");
  if (fs::is_directory(status)) throw IoError(path + ": is a directory, expected an HDF5 file");
  if (fs::file_size(path, error) == 0) throw IoError(path + ": file is empty (0 bytes), expected an HDF5 file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 < 0) fail_file(path, "cannot read file");
  if (is_hdf5 == 0) throw IoError(path + ": not an HDF5 file (no HDF5 signature found)");
  const hid_t file = H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, access);
  if (file < 0) fail_file(path, "cannot open HDF5 file, it may be truncated or damaged");
  return Handle(file);
}

Handle create_file(const std::string& path, hid_t access) {
  silence_errors();
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access);
  if (file < 0) fail_file(path, "cannot create HDF5 file");
  return Handle(file);
}

bool exists(hid_t location, const std::string& name) {
  silence_errors();
  std::size_t pos = name.starts_with('/') ? 1 : 0;
  if (name == "/") return true;
  while (true) {
    const std::size_t slash = name.find('/', pos);
    const std::string prefix = name.substr(0, slash);
    const htri_t found = H5Lexists(location, prefix.c_str(), H5P_DEFAULT);
    if (found < 0) fail_action(location, "look up", prefix);
    if (found == 0) return false;
    if (slash == std::string::npos || slash + 1 == name.size()) return true;
    pos = slash + 1;
  }
}

Handle open_group(hid_t location, const std::string& name) {
  if (!exists(location, name)) fail(location, "no group '" + join(location, name) + "'");
  return Handle(check(H5Gopen2(location, name.c_str(), H5P_DEFAULT), location, "open group", name));
}

Handle create_group(hid_t location, const std::string& name) {
  silence_errors();
  Handle links(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(links.get(), 1);
  return Handle(check(H5Gcreate2(location, name.c_str(), links.get(), H5P_DEFAULT, H5P_DEFAULT), location,
                      "create group", name));
}

Handle open_dataset(hid_t location, const std::string& name, hid_t access) {
  if (!exists(location, name)) fail(location, "no dataset '" + join(location, name) + "'");
  return Handle(check(H5Dopen2(location, name.c_str(), access), location, "open dataset", name));
}

std::vector<hsize_t> dims(hid_t dataset) {
  Handle space(check(H5Dget_space(dataset), dataset, "get the shape of"));
  const int rank = check(H5Sget_simple_extent_ndims(space.get()), dataset, "get the rank of");
  std::vector<hsize_t> out(static_cast<std::size_t>(rank));
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), out.data(), nullptr);
  return out;
}

std::string dims_text(const std::vector<hsize_t>& dims) {
  std::string text = "(";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (i) text += ',';
    text += std::to_string(dims[i]);  // appended separately: GCC 12 warns falsely on "," + string (bug 105651)
  }
  return text + ")";
}

std::string type_text(hid_t object) {
  Handle type;
  switch (H5Iget_type(object)) {
    case H5I_DATASET: type = Handle(H5Dget_type(object)); break;
    case H5I_ATTR: type = Handle(H5Aget_type(object)); break;
    case H5I_DATATYPE: return type_text_of(object);
    default: return "not a typed object";
  }
  return type_text_of(type.get());
}

template <> hid_t native_type<std::uint8_t>() { return H5T_NATIVE_UINT8; }
template <> hid_t native_type<std::int32_t>() { return H5T_NATIVE_INT32; }
template <> hid_t native_type<std::int64_t>() { return H5T_NATIVE_INT64; }
template <> hid_t native_type<std::uint64_t>() { return H5T_NATIVE_UINT64; }
template <> hid_t native_type<float>() { return H5T_NATIVE_FLOAT; }
template <> hid_t native_type<double>() { return H5T_NATIVE_DOUBLE; }

template <class T>
void write_dataset(hid_t location, const std::string& name, std::span<const T> values,
                   const std::vector<hsize_t>& dims) {
  silence_errors();
  if (product(dims) != values.size())
    fail(location, "cannot write '" + join(location, name) + "': " + std::to_string(values.size()) +
                       " values do not fill shape " + dims_text(dims));
  Handle space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(int(dims.size()), dims.data(), nullptr));
  Handle links(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(links.get(), 1);
  Handle dataset(check(H5Dcreate2(location, name.c_str(), native_type<T>(), space.get(), links.get(), H5P_DEFAULT,
                                  H5P_DEFAULT),
                       location, "create dataset", name));
  if (!values.empty())
    check(H5Dwrite(dataset.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), dataset.get(),
          "write dataset");
}

template <class T>
std::vector<T> read_dataset(hid_t location, const std::string& name, std::vector<hsize_t>* dims_out) {
  Handle dataset = open_dataset(location, name);
  Handle type(H5Dget_type(dataset.get()));
  if (!is_number(type.get()))
    fail(location, "dataset '" + join(location, name) + "' holds " + type_text_of(type.get()) + ", expected numbers");
  const std::vector<hsize_t> shape = dims(dataset.get());
  std::vector<T> values(product(shape));
  if (!values.empty())
    check(H5Dread(dataset.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), dataset.get(),
          "read dataset");
  if (dims_out) *dims_out = shape;
  return values;
}

#define MPICNN_H5_INSTANTIATE(T)                                                                        \
  template void write_dataset<T>(hid_t, const std::string&, std::span<const T>, const std::vector<hsize_t>&); \
  template std::vector<T> read_dataset<T>(hid_t, const std::string&, std::vector<hsize_t>*);
MPICNN_H5_INSTANTIATE(std::uint8_t)
MPICNN_H5_INSTANTIATE(std::int32_t)
MPICNN_H5_INSTANTIATE(std::int64_t)
MPICNN_H5_INSTANTIATE(std::uint64_t)
MPICNN_H5_INSTANTIATE(float)
MPICNN_H5_INSTANTIATE(double)
#undef MPICNN_H5_INSTANTIATE

std::vector<std::string> attribute_names(hid_t object) {
  std::vector<std::string> names;
  hsize_t index = 0;
  const auto collect = [](hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->push_back(name);
    return 0;
  };
  check(H5Aiterate2(object, H5_INDEX_NAME, H5_ITER_INC, &index, collect, &names), object, "list attributes of");
  return names;
}

bool has_attribute(hid_t object, const std::string& name) {
  silence_errors();
  return check(H5Aexists(object, name.c_str()), object, "look up attributes of") > 0;
}

void write_attribute(hid_t object, const std::string& name, const std::string& value) {
  write_attribute(object, name, value.c_str());
}

void write_attribute(hid_t object, const std::string& name, const char* value) {
  Handle type = vlen_string_type();
  Handle space(H5Screate(H5S_SCALAR));
  Handle attribute = replace_attribute(object, name, type.get(), space.get());
  check(H5Awrite(attribute.get(), type.get(), &value), attribute.get(), "write attribute", name);
}

void write_attribute(hid_t object, const std::string& name, const std::vector<std::string>& values) {
  Handle type = vlen_string_type();
  const hsize_t count = values.size();
  Handle space(H5Screate_simple(1, &count, nullptr));
  std::vector<const char*> pointers;
  for (const std::string& s : values) pointers.push_back(s.c_str());
  Handle attribute = replace_attribute(object, name, type.get(), space.get());
  if (count) check(H5Awrite(attribute.get(), type.get(), pointers.data()), attribute.get(), "write attribute", name);
}

void write_number_attribute(hid_t object, const std::string& name, std::int64_t value) {
  Handle space(H5Screate(H5S_SCALAR));
  Handle attribute = replace_attribute(object, name, H5T_STD_I64LE, space.get());
  check(H5Awrite(attribute.get(), H5T_NATIVE_INT64, &value), attribute.get(), "write attribute", name);
}

void write_number_attribute(hid_t object, const std::string& name, double value) {
  Handle space(H5Screate(H5S_SCALAR));
  Handle attribute = replace_attribute(object, name, H5T_IEEE_F64LE, space.get());
  check(H5Awrite(attribute.get(), H5T_NATIVE_DOUBLE, &value), attribute.get(), "write attribute", name);
}

void write_attribute(hid_t object, const std::string& name, std::span<const double> values) {
  const hsize_t count = values.size();
  Handle space(H5Screate_simple(1, &count, nullptr));
  Handle attribute = replace_attribute(object, name, H5T_IEEE_F64LE, space.get());
  if (count) check(H5Awrite(attribute.get(), H5T_NATIVE_DOUBLE, values.data()), attribute.get(), "write attribute", name);
}

void write_attribute(hid_t object, const std::string& name, std::span<const std::int64_t> values) {
  const hsize_t count = values.size();
  Handle space(H5Screate_simple(1, &count, nullptr));
  Handle attribute = replace_attribute(object, name, H5T_STD_I64LE, space.get());
  if (count) check(H5Awrite(attribute.get(), H5T_NATIVE_INT64, values.data()), attribute.get(), "write attribute", name);
}

std::string read_string_attribute(hid_t object, const std::string& name) {
  std::vector<std::string> values = read_strings(object, name);
  if (values.size() != 1)
    fail(object, "attribute '" + name + "' on '" + object_name(object) + "' holds " + std::to_string(values.size()) +
                     " strings, expected one");
  return values[0];
}

std::vector<std::string> read_string_array_attribute(hid_t object, const std::string& name) {
  return read_strings(object, name);
}

template <class T>
T read_attribute(hid_t object, const std::string& name) {
  std::vector<T> values = read_numbers<T>(object, name);
  if (values.size() != 1)
    fail(object, "attribute '" + name + "' on '" + object_name(object) + "' holds " + std::to_string(values.size()) +
                     " values, expected one");
  return values[0];
}

template <class T>
std::vector<T> read_array_attribute(hid_t object, const std::string& name) {
  return read_numbers<T>(object, name);
}

template std::int64_t read_attribute<std::int64_t>(hid_t, const std::string&);
template double read_attribute<double>(hid_t, const std::string&);
template std::vector<std::int64_t> read_array_attribute<std::int64_t>(hid_t, const std::string&);
template std::vector<double> read_array_attribute<double>(hid_t, const std::string&);

}  // namespace mpicnn::data::h5
