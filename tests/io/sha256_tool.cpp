// Test helper: prints io::sha256_file of each argument in sha256sum's format, so the export tests
// can check mpicnn's own SHA-256 against Python's hashlib at the padding boundaries.
// usage: io_sha256 FILE...
#include <cstdio>
#include <exception>

#include "io/bundle.hpp"

int main(int argc, char** argv) {
  try {
    for (int i = 1; i < argc; ++i) std::printf("%s  %s\n", mpicnn::io::sha256_file(argv[i]).c_str(), argv[i]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
