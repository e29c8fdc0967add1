// `mpicnn export`: placeholder until the ONNX and bundle exporters land (issue 5).
#include "apps/commands.hpp"
#include "core/errors.hpp"

namespace mpicnn::app {

int run_export(const Args&, const dist::Communicator&) {
  throw ConfigError("'mpicnn export' is not available in this build yet");
}

}  // namespace mpicnn::app
