#pragma once
// The rule of the targets whose code opens HDF5 files: whatever was thrown, every HDF5 handle is
// closed again afterwards (RAII in datasets/h5.hpp).
#include <hdf5.h>

#include <cstdio>
#include <cstdlib>

namespace fuzz {

inline void expect_hdf5_closed(const char* after) {
  const ssize_t open = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  if (open != 0) {
    std::fprintf(stderr, "FINDING: %zd HDF5 objects left open after %s\n", open, after);
    std::abort();
  }
}

}  // namespace fuzz
