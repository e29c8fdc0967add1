// The HDF5 helpers: handles close, values round-trip, h5py reads what we write, errors name things.
#include "datasets/h5.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <fstream>

#include "core/errors.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

TEST(H5, HandleClosesWithTheMatchingCall) {
  TempDir dir;
  h5::Handle file = h5::create_file(dir.file("a.h5"));
  h5::Handle group = h5::create_group(file.get(), "g/inner");
  const hsize_t n = 3;
  h5::Handle space(H5Screate_simple(1, &n, nullptr));
  h5::Handle type(H5Tcopy(H5T_NATIVE_FLOAT));
  h5::Handle plist(H5Pcreate(H5P_DATASET_CREATE));
  std::vector<hid_t> ids = {file.get(), group.get(), space.get(), type.get(), plist.get()};
  for (hid_t id : ids) EXPECT_GT(H5Iis_valid(id), 0);
  h5::Handle moved = std::move(group);
  EXPECT_FALSE(group.valid());
  moved.reset();
  space.reset();
  type.reset();
  plist.reset();
  for (std::size_t i = 1; i < ids.size(); ++i) EXPECT_LE(H5Iis_valid(ids[i]), 0);
  file.reset();
  EXPECT_LE(H5Iis_valid(ids[0]), 0);
}

TEST(H5, DatasetsAndAttributesRoundTripAndH5pyReadsThem) {
  TempDir dir;
  const std::string path = dir.file("values.h5");
  {
    h5::Handle file = h5::create_file(path);
    const std::vector<float> weights = {1.5f, -2.f, 3.25f, 0.f, 7.f, 8.f};
    h5::write_dataset<float>(file.get(), "model/weights", weights, {2, 3});
    const std::vector<std::int64_t> steps = {1, 2, 3};
    h5::write_dataset<std::int64_t>(file.get(), "steps", steps, {3});
    h5::write_attribute(file.get(), "name", "run one");
    h5::write_attribute(file.get(), "count", 42);
    h5::write_attribute(file.get(), "rate", 0.125);
    h5::write_attribute(file.get(), "count", 43);  // replaces
    const std::vector<double> mean = {0.25, 0.5};
    h5::write_attribute(file.get(), "mean", std::span<const double>(mean));
    h5::write_attribute(file.get(), "names", std::vector<std::string>{"a", "bé", ""});
  }
  h5::Handle file = h5::open_file(path);
  std::vector<hsize_t> dims;
  EXPECT_EQ(h5::read_dataset<float>(file.get(), "model/weights", &dims),
            (std::vector<float>{1.5f, -2.f, 3.25f, 0.f, 7.f, 8.f}));
  EXPECT_EQ(dims, (std::vector<hsize_t>{2, 3}));
  EXPECT_EQ(h5::read_dataset<double>(file.get(), "/steps"), (std::vector<double>{1, 2, 3}));  // converted
  EXPECT_EQ(h5::read_string_attribute(file.get(), "name"), "run one");
  EXPECT_EQ(h5::read_attribute<std::int64_t>(file.get(), "count"), 43);
  EXPECT_EQ(h5::read_attribute<double>(file.get(), "count"), 43.0);
  EXPECT_EQ(h5::read_attribute<double>(file.get(), "rate"), 0.125);
  EXPECT_EQ(h5::read_array_attribute<double>(file.get(), "mean"), (std::vector<double>{0.25, 0.5}));
  EXPECT_EQ(h5::read_string_array_attribute(file.get(), "names"), (std::vector<std::string>{"a", "bé", ""}));
  EXPECT_TRUE(h5::exists(file.get(), "model/weights"));
  EXPECT_FALSE(h5::exists(file.get(), "model/bias"));
  EXPECT_FALSE(h5::exists(file.get(), "nothing/at/all"));
  EXPECT_EQ(h5::type_text(h5::open_dataset(file.get(), "steps").get()), "int64");
  file.reset();

  const auto python = testing::run_python(dir, R"(
import h5py, numpy as np
f = h5py.File(")" + path + R"(", "r")
assert f["model/weights"].shape == (2, 3) and f["model/weights"].dtype == np.float32
assert f.attrs["name"] == "run one", f.attrs["name"]
assert f.attrs["count"] == 43 and f.attrs["rate"] == 0.125
assert list(f.attrs["mean"]) == [0.25, 0.5]
assert list(f.attrs["names"]) == ["a", "bé", ""], f.attrs["names"]
print("ok")
)");
  EXPECT_EQ(python.status, 0) << python.output;
}

TEST(H5, ReadsFixedLengthStringsWrittenByH5py) {
  TempDir dir;
  const std::string path = dir.file("fixed.h5");
  const auto python = testing::run_python(dir, R"(
import h5py, numpy as np
f = h5py.File(")" + path + R"(", "w")
f.attrs["format"] = np.bytes_(b"mpicnn-dataset")
f.attrs["names"] = np.array([b"cat", b"dog"], dtype="S3")
f.attrs["version"] = np.int8(1)
)");
  ASSERT_EQ(python.status, 0) << python.output;
  h5::Handle file = h5::open_file(path);
  EXPECT_EQ(h5::read_string_attribute(file.get(), "format"), "mpicnn-dataset");
  EXPECT_EQ(h5::read_string_array_attribute(file.get(), "names"), (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(h5::read_attribute<std::int64_t>(file.get(), "version"), 1);
}

TEST(H5, ErrorsNameTheFileAndTheObject) {
  TempDir dir;
  const std::string path = dir.file("errors.h5");
  {
    h5::Handle file = h5::create_file(path);
    h5::write_attribute(file.get(), "name", "x");
    h5::create_group(file.get(), "train");
  }
  h5::Handle file = h5::open_file(path);
  h5::Handle group = h5::open_group(file.get(), "train");
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const IoError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_THAT(message([&] { h5::open_dataset(group.get(), "images"); }),
              HasSubstr(path + ": no dataset '/train/images'"));
  EXPECT_THAT(message([&] { h5::read_attribute<std::int64_t>(file.get(), "missing"); }),
              HasSubstr(path + ": missing attribute 'missing' on '/'"));
  EXPECT_THAT(message([&] { h5::read_attribute<std::int64_t>(file.get(), "name"); }),
              HasSubstr("attribute 'name' on '/' is string, expected a number"));
  // A raw call through check(): the message names the file, the object and HDF5's reason.
  const std::string raw = message([&] { h5::check(H5Dopen2(group.get(), "labels", H5P_DEFAULT), group.get(), "open dataset", "labels"); });
  EXPECT_THAT(raw, HasSubstr(path + ": cannot open dataset '/train/labels' (HDF5: "));
  EXPECT_THAT(message([&] { h5::create_file(dir.file("no/such/folder/x.h5")); }),
              HasSubstr("no/such/folder/x.h5: cannot create HDF5 file"));
  EXPECT_THAT(message([&] { h5::open_file(dir.path().string()); }), HasSubstr("is a directory"));
}

// A system error inside HDF5 (here: the file-size limit) gives one line with the system's message,
// and the process still exits cleanly although the file could not be closed.
TEST(H5, SystemErrorsGiveOneLineAndACleanExit) {
  TempDir dir;
  const std::string path = dir.file("big.h5"), report = dir.file("message.txt");
  std::fflush(nullptr);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{1 << 16, 1 << 16};
    setrlimit(RLIMIT_FSIZE, &limit);
    std::string message = "no error";
    try {
      h5::Handle file = h5::create_file(path);
      const std::vector<float> values(1 << 20, 1.f);
      h5::write_dataset<float>(file.get(), "values", values, {values.size()});
      h5::check(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), file.get(), "flush");
    } catch (const IoError& e) {
      message = e.what();
    }
    std::ofstream(report) << message;
    std::exit(0);  // runs the atexit handlers, where HDF5's own clean-up used to crash
  }
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  std::ifstream in(report);
  const std::string message((std::istreambuf_iterator<char>(in)), {});
  EXPECT_THAT(message, HasSubstr(path + ": cannot "));
  EXPECT_THAT(message, HasSubstr("File too large"));
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

}  // namespace
}  // namespace mpicnn::data
