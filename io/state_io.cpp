#include "state_io.hpp"

#include <span>

#include "core/errors.hpp"
#include "datasets/h5.hpp"

namespace h5 = mpicnn::data::h5;

namespace mpicnn::io {
namespace {

constexpr const char* kGroup = "state";

std::vector<hsize_t> dims_of(const core::StateInfo& s) { return {s.dims.begin(), s.dims.end()}; }

[[noreturn]] void invalid(const std::string& path, const std::string& what) { throw IoError(path + ": " + what); }

void check_one(hid_t group, const std::string& path, const core::StateInfo& s) {
  const std::string where = std::string("/") + kGroup + "/" + s.name;
  if (!h5::exists(group, s.name)) invalid(path, "missing dataset '" + where + "' (BatchNorm state the spec declares)");
  h5::Handle dataset = h5::open_dataset(group, s.name);
  const auto found = h5::dims(dataset.get());
  if (found != dims_of(s))
    invalid(path, "dataset '" + where + "' has shape " + h5::dims_text(found) + ", the spec needs " +
                      h5::dims_text(dims_of(s)));
  const std::string type = h5::type_text(dataset.get());
  const char* expected = s.counter ? "int64" : "float32";
  if (type != expected) invalid(path, "dataset '" + where + "' holds " + type + ", expected " + expected);
}

}  // namespace

void write_state(hid_t file, const core::StateStore& state) {
  if (state.empty()) return;
  h5::Handle group = h5::create_group(file, kGroup);
  for (std::size_t i = 0; i < state.infos().size(); ++i) {
    const core::StateInfo& s = state.infos()[i];
    if (s.counter) {
      const std::int64_t count = state.counter(int(i));
      h5::write_dataset<std::int64_t>(group.get(), s.name, std::span<const std::int64_t>(&count, 1), {});
    } else {
      h5::write_dataset<float>(group.get(), s.name, std::span<const float>(state.value(int(i)), s.size), dims_of(s));
    }
  }
}

void check_state(hid_t file, const std::string& path, const std::vector<core::StateInfo>& plan) {
  if (plan.empty()) return;
  if (!h5::exists(file, kGroup))
    invalid(path, std::string("missing group '/") + kGroup + "': the spec has BatchNorm layers (" + plan.front().name + ", ...)");
  h5::Handle group = h5::open_group(file, kGroup);
  for (const auto& s : plan) check_one(group.get(), path, s);
}

void read_state(hid_t file, const std::string& path, core::StateStore& state) {
  check_state(file, path, state.infos());
  if (state.empty()) return;
  h5::Handle group = h5::open_group(file, kGroup);
  for (std::size_t i = 0; i < state.infos().size(); ++i) {
    const core::StateInfo& s = state.infos()[i];
    if (s.counter) {
      state.counter(int(i)) = h5::read_dataset<std::int64_t>(group.get(), s.name).at(0);
    } else {
      const auto values = h5::read_dataset<float>(group.get(), s.name);
      std::copy(values.begin(), values.end(), state.value(int(i)));
    }
  }
}

}  // namespace mpicnn::io
