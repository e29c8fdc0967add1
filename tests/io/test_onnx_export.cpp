// The ONNX exporter against the engine's list of layer kinds: a kind added to core without an ONNX
// mapping fails here, not in a user's `mpicnn export`.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/layers.hpp"
#include "io/onnx_export.hpp"

namespace mpicnn::io {
namespace {

TEST(OnnxExport, EveryLayerKindHasAMapping) {
  const auto& exported = onnx_exported_kinds();
  for (const std::string& kind : core::known_layer_kinds())
    EXPECT_NE(std::find(exported.begin(), exported.end(), kind), exported.end())
        << "layer kind '" << kind << "' has no ONNX mapping in io/onnx_export.cpp";
}

}  // namespace
}  // namespace mpicnn::io
