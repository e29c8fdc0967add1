#pragma once
// Fixtures for the dataset tests: a temporary folder, small generated datasets, and a way to run
// a Python check with Debian's interpreter (numpy, h5py).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "datasets/writer.hpp"

namespace mpicnn::data::testing {

namespace fs = std::filesystem;

// A fresh folder under the system temp dir, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "mpicnn-datasets-XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

struct PythonResult {
  int status = -1;
  std::string output;  // stdout and stderr
};

// Runs `script` with /usr/bin/python3 and returns its exit status and output.
inline PythonResult run_python(const TempDir& dir, const std::string& script) {
  const std::string script_path = dir.file("check.py"), output_path = dir.file("check.out");
  std::ofstream(script_path) << script;
  PythonResult result;
  const int raw = std::system(("/usr/bin/python3 " + script_path + " > " + output_path + " 2>&1").c_str());
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream in(output_path);
  result.output.assign(std::istreambuf_iterator<char>(in), {});
  return result;
}

struct CommandResult {
  int status = -1;
  std::string output;  // stdout and stderr
};

// Runs a shell command and returns its exit status and output (stdout and stderr).
inline CommandResult run_command(const std::string& command) {
  const std::string output_path = (fs::temp_directory_path() / ("mpicnn-command-" + std::to_string(::getpid()))).string();
  CommandResult result;
  const int raw = std::system((command + " > " + output_path + " 2>&1").c_str());
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream in(output_path);
  result.output.assign(std::istreambuf_iterator<char>(in), {});
  std::error_code ignored;
  fs::remove(output_path, ignored);
  return result;
}

// A dataset whose float32 pixels identify the sample: every pixel of sample i is i + 0.25 * c
// (c the channel), so a reader run with normalize = false shows which samples it returned.
// Labels are i % num_classes.
inline void write_indexed_dataset(const std::string& path, std::size_t train, std::size_t test = 3,
                                  core::Shape shape = {2, 3, 4}, int num_classes = 5, WriterOptions options = {4, 4}) {
  DatasetWriter writer(path, {num_classes, {}}, options);
  for (const auto& [split, count] : {std::pair<std::string, std::size_t>{"train", train}, {"test", test}}) {
    if (count == 0) continue;
    writer.begin_split(split, shape, count, false);
    std::vector<float> images(count * shape.size());
    std::vector<std::int32_t> labels(count);
    const std::size_t plane = std::size_t(shape.h) * shape.w;
    for (std::size_t i = 0; i < count; ++i) {
      labels[i] = std::int32_t(i % std::size_t(num_classes));
      for (int c = 0; c < shape.c; ++c)
        for (std::size_t p = 0; p < plane; ++p) images[i * shape.size() + c * plane + p] = float(i) + 0.25f * c;
    }
    writer.append(images, labels);
  }
  writer.finish();
}

// The sample index a normalize = false batch row of shape (2,3,4) holds (see
// write_indexed_dataset): pixel (0,1,1) comes from the image even after a flip or a crop with
// padding 1.
inline long sample_of(const float* row) { return std::lround(row[5]); }

}  // namespace mpicnn::data::testing
