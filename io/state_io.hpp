#pragma once
// The model's state area (BatchNorm running statistics) in checkpoints and bundles: group
// /state, one dataset per tensor under its PyTorch state_dict name ("1.running_mean" float32 (C),
// "1.num_batches_tracked" int64 scalar). Models without state write no group, so files of the
// earlier format (written before there was state) still load.
#include <hdf5.h>

#include <string>
#include <vector>

#include "core/params.hpp"

namespace mpicnn::io {

void write_state(hid_t file, const core::StateStore& state);
// Throws IoError naming the file and the dataset when the state the spec declares is missing or
// misshapen (called while validating a header, before anything is loaded).
void check_state(hid_t file, const std::string& path, const std::vector<core::StateInfo>& plan);
void read_state(hid_t file, const std::string& path, core::StateStore& state);

}  // namespace mpicnn::io
