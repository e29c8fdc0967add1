#pragma once
// RAII and error checking for the HDF5 C API, shared by the dataset code (datasets/) and the
// checkpoint code (io/). Usage:
//
//   h5::Handle file = h5::create_file("run/ckpt.h5");            // IoError if it cannot be created
//   h5::write_dataset<float>(file.get(), "weights", values, {n}); // parents must exist: create_group
//   h5::write_attribute(file.get(), "step", std::int64_t{1200});
//   h5::Handle in = h5::open_file("run/ckpt.h5");                 // IoError: missing, empty, not HDF5, truncated
//   auto values = h5::read_dataset<float>(in.get(), "weights", &dims);
//   long step = h5::read_attribute<std::int64_t>(in.get(), "step");
//
// Every failure throws mpicnn::IoError with one line "<file>: <what> '<object>' (<HDF5's reason>)":
// the file and object names are taken from the hid_t itself, so callers never pass them around.
// Raw C calls are checked with h5::check(status, object, "action").
//
// Threads: Debian's libhdf5 is built thread-safe (one global lock), so HDF5 may be called from a
// background thread, but its error settings are per thread: every helper here silences HDF5's own
// error printing for the calling thread first; a thread that calls the C API directly before any
// helper should call h5::silence_errors() once.
//
// Exit: HDF5's own atexit clean-up is switched off (it crashes after a failed H5Fclose, see
// h5.cpp), so every file must be closed by its Handle before the process ends; for a file being
// written, check H5Fflush before letting the Handle close it.
#include <hdf5.h>

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace mpicnn::data::h5 {

// Turns off HDF5's printing of its error stack for the calling thread (idempotent, cheap).
void silence_errors();

// Owns one HDF5 identifier of any kind (file, group, dataset, dataspace, datatype, attribute,
// property list) and closes it with the matching H5*close.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& other) noexcept : id_(other.release()) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) { reset(); id_ = other.release(); }
    return *this;
  }
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  hid_t release() { hid_t id = id_; id_ = H5I_INVALID_HID; return id; }
  void reset();

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// Names for messages: the file an object lives in, and the object's path inside it ("/train/images").
std::string file_name(hid_t object);
std::string object_name(hid_t object);

// Throws IoError "<file of location>: <what>" followed by HDF5's innermost reason when its error
// stack holds one. `location` may be invalid (then `file` alone is used).
[[noreturn]] void fail(hid_t location, const std::string& what);
[[noreturn]] void fail_file(const std::string& file, const std::string& what);

// The one checking helper: a negative HDF5 return becomes IoError
// "<file>: cannot <action> '<object path>' (<reason>)"; otherwise the value is passed through.
[[noreturn]] void fail_action(hid_t object, const char* action, const std::string& name);
template <class T>
T check(T status, hid_t object, const char* action, const std::string& name = {}) {
  if (status < 0) fail_action(object, action, name);
  return status;
}

// Files. open_file distinguishes a missing file, a zero-byte file, a file that is not HDF5 and one
// HDF5 cannot open (truncated or damaged), each with its own message.
Handle open_file(const std::string& path, bool writable = false, hid_t access = H5P_DEFAULT);  // access: file access properties
Handle create_file(const std::string& path, hid_t access = H5P_DEFAULT);  // truncates an existing file

// Links inside a file: `name` is relative to `location` and may contain '/'.
bool exists(hid_t location, const std::string& name);
Handle open_group(hid_t location, const std::string& name);
Handle create_group(hid_t location, const std::string& name);
Handle open_dataset(hid_t location, const std::string& name, hid_t access = H5P_DEFAULT);  // access: e.g. chunk cache

// Dataset helpers.
std::vector<hsize_t> dims(hid_t dataset);
std::string dims_text(const std::vector<hsize_t>& dims);  // "(60000,1,28,28)"
std::string type_text(hid_t dataset);                     // "uint8", "float32", "int64", "string", ...

// Mapping C++ element types to native HDF5 types. Defined for std::uint8_t, std::int32_t,
// std::int64_t, std::uint64_t, float, double.
template <class T> hid_t native_type();

// Whole small datasets (not chunked, not compressed). read_dataset converts from the stored
// numeric type and fails with a clear message for a non-numeric one.
template <class T>
void write_dataset(hid_t location, const std::string& name, std::span<const T> values,
                   const std::vector<hsize_t>& dims);
template <class T>
std::vector<T> read_dataset(hid_t location, const std::string& name, std::vector<hsize_t>* dims_out = nullptr);

// Attributes on any object (file root, group, dataset). Numbers are stored as int64 or float64;
// reading converts between numeric types and rejects strings and vice versa with a clear message.
bool has_attribute(hid_t object, const std::string& name);
// Names of the object's attributes, in creation order (HDF5's name order when it has none).
std::vector<std::string> attribute_names(hid_t object);
void write_attribute(hid_t object, const std::string& name, const std::string& value);
void write_attribute(hid_t object, const std::string& name, const char* value);
void write_number_attribute(hid_t object, const std::string& name, std::int64_t value);
void write_number_attribute(hid_t object, const std::string& name, double value);
template <class T>
  requires std::is_arithmetic_v<T>
void write_attribute(hid_t object, const std::string& name, T value) {
  if constexpr (std::is_integral_v<T>) write_number_attribute(object, name, std::int64_t(value));
  else write_number_attribute(object, name, double(value));
}
void write_attribute(hid_t object, const std::string& name, std::span<const double> values);
void write_attribute(hid_t object, const std::string& name, std::span<const std::int64_t> values);
void write_attribute(hid_t object, const std::string& name, const std::vector<std::string>& values);  // vlen strings
std::string read_string_attribute(hid_t object, const std::string& name);  // fixed or variable length
std::vector<std::string> read_string_array_attribute(hid_t object, const std::string& name);
template <class T> T read_attribute(hid_t object, const std::string& name);  // scalar or 1-element
template <class T> std::vector<T> read_array_attribute(hid_t object, const std::string& name);

}  // namespace mpicnn::data::h5
