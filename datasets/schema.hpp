#pragma once
// The checks of a dataset file against the format (datasets/README.md), internal to datasets/:
// read_info (reader.hpp) and the sample reader, which opens the file with its own access
// properties, both inspect through here, so a format change is checked in one place. Every
// failure names the file, the object or option, and what was expected versus found.
#include <hdf5.h>

#include <string>
#include <vector>

#include "datasets/reader.hpp"

namespace mpicnn::data {

// One split of the open `file` (named `path` in messages) against the whole schema.
// Throws IoError/ShapeError.
DatasetInfo inspect(hid_t file, const std::string& path, const std::string& split);

// A user's override of the file's per-channel statistics, `name` "mean" or "std": one finite value
// per channel, positive for std. Throws ConfigError.
void check_statistics(const std::vector<double>& values, const char* name, int channels);

}  // namespace mpicnn::data
