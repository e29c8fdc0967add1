#pragma once
// Helpers shared by the libFuzzer targets: a per-process temp file for inputs that the code under
// test reads from a path, and the one rule every target checks: bad input may only end in an
// mpicnn::Error (what main() turns into "error: ..."); any other exception is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>

#include "core/errors.hpp"

namespace fuzz {

inline std::string temp_path(const char* suffix) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir && *dir ? dir : "/tmp") + "/mpicnn-fuzz-" + std::to_string(::getpid()) + suffix;
}

inline void write_file(const std::string& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
}

// Runs `body`; an mpicnn::Error is the expected way to reject input, anything else aborts so that
// libFuzzer records the input.
template <class Body>
void expect_clean_rejection(Body&& body) {
  try {
    body();
  } catch (const mpicnn::Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FINDING: exception other than mpicnn::Error: %s\n", e.what());
    std::abort();
  }
}

}  // namespace fuzz
