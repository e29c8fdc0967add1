#include "parallel.hpp"

#include <memory>
#include <tbb/global_control.h>
#include <tbb/info.h>

namespace mpicnn::core {
namespace {
std::unique_ptr<tbb::global_control> thread_limit;
}

void set_threads(int threads) {
  const int n = threads > 0 ? threads : tbb::info::default_concurrency();
  thread_limit = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism, std::size_t(n));
}

int max_threads() {
  return int(tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
}

}  // namespace mpicnn::core
