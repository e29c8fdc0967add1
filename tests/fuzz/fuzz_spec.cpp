// libFuzzer target: the layer-spec parser and shape planner (core/model.cpp, core/layers.cpp).
// Input: three bytes giving a small input shape (C,H,W in 1..32), then the spec text. When the
// spec is accepted and small, the model is built and its canonical spec must plan the same
// parameters (the round trip checkpoints rely on).
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <vector>

#include "core/model.hpp"
#include "fuzz_util.hpp"

namespace {

// Builds only models whose buffers stay small: every number in the spec at most 256 on inputs of
// at most 32x32 (activations of a few MB at most). Large sizes are covered by plan_params alone.
bool small_enough(const std::string& spec) {
  long number = 0;
  for (char ch : spec) {
    if (std::isdigit(static_cast<unsigned char>(ch))) {
      number = std::min(number * 10 + (ch - '0'), 1L << 20);
      if (number > 256) return false;
    } else {
      number = 0;
    }
  }
  return spec.size() < 256;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const mpicnn::core::Shape input{1 + data[0] % 32, 1 + data[1] % 32, 1 + data[2] % 32};
  const std::string spec(reinterpret_cast<const char*>(data + 3), size - 3);
  fuzz::expect_clean_rejection([&] {
    (void)mpicnn::core::parse_spec(spec);
    const auto plan = mpicnn::core::plan_params(spec, input);
    std::size_t total = 0;
    for (const auto& p : plan) {
      std::size_t product = 1;
      for (int d : p.dims) {
        if (d < 0) {
          std::fprintf(stderr, "FINDING: parameter '%s' has a negative dimension %d\n", p.name.c_str(), d);
          std::abort();
        }
        product *= std::size_t(d);
      }
      if (product != p.size) std::abort();
      total += p.size;
    }
    // A convolution's im2col workspace holds at most half its forward FLOPs in floats: a bound on
    // FLOPs keeps a heavily padded convolution over many channels (12 GB of columns) out.
    if (!small_enough(spec) || total > (1u << 20) || mpicnn::core::plan_forward_flops(spec, input) > 1 << 26) return;
    mpicnn::core::Model model(spec, input, 1);
    const std::string canonical = model.canonical_spec();
    const auto again = mpicnn::core::plan_params(canonical, input);
    if (again.size() != plan.size()) {
      std::fprintf(stderr, "FINDING: canonical spec '%s' plans %zu parameters, the spec %zu\n", canonical.c_str(),
                   again.size(), plan.size());
      std::abort();
    }
    for (std::size_t i = 0; i < plan.size(); ++i)
      if (again[i].dims != plan[i].dims || again[i].name != plan[i].name) {
        std::fprintf(stderr, "FINDING: canonical spec '%s' changes parameter '%s'\n", canonical.c_str(),
                     plan[i].name.c_str());
        std::abort();
      }
    // The layers run (training and evaluation mode: BatchNorm, dropout, blocks) without crashing;
    // a BatchNorm meeting one value per channel in training is a clean rejection.
    std::vector<float> x(input.size(), 0.5f), dy(model.output_shape().size(), 1.f);
    for (bool training : {false, true}) {
      model.run().training = training;
      model.forward(x.data(), 1);
      model.backward(dy.data(), 1);
    }
    mpicnn::core::Model rebuilt(canonical, input, 1);
    if (rebuilt.canonical_spec() != canonical) {
      std::fprintf(stderr, "FINDING: canonical spec is not a fixed point: '%s' -> '%s'\n", canonical.c_str(),
                   rebuilt.canonical_spec().c_str());
      std::abort();
    }
  });
  return 0;
}
