#pragma once
// Typed errors. Library code throws these; only main() catches, prints "error: <what>" and ends the job.
#include <stdexcept>
#include <string>

namespace mpicnn {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct ConfigError : Error { using Error::Error; };  // a config key, option or layer spec
struct ShapeError : Error { using Error::Error; };   // tensors or layers that do not fit
struct IoError : Error { using Error::Error; };      // a file: missing, unreadable, wrong format
struct NumericError : Error { using Error::Error; }; // NaN/Inf in training

}  // namespace mpicnn
