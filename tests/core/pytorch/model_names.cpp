// Prints the tensors a spec declares, as the engine names them, for make_resnet_fixtures.py: the
// fixture script maps these names (not names it works out itself) to torchvision's.
//
//   model_names SPEC C H W
//   param <name> <d0>x<d1>...      a parameter, PyTorch layout
//   state <name> <d0>...|scalar    a state tensor (float32), or `counter` for an int64 counter
#include <cstdio>
#include <string>

#include "core/errors.hpp"
#include "core/model.hpp"
#include "core/parse.hpp"

namespace {

std::string dims_text(const std::vector<int>& dims) {
  std::string text;
  for (int d : dims) {
    if (!text.empty()) text += 'x';
    text += std::to_string(d);
  }
  return text.empty() ? "scalar" : text;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace mpicnn::core;
  if (argc != 5) {
    std::fprintf(stderr, "usage: model_names SPEC C H W\n");
    return 2;
  }
  try {
    const auto c = parse_whole<int>(argv[2]), h = parse_whole<int>(argv[3]), w = parse_whole<int>(argv[4]);
    if (!c || !h || !w) throw mpicnn::ConfigError("C H W must be integers");
    const Shape input{*c, *h, *w};
    for (const ParamInfo& p : plan_params(argv[1], input)) std::printf("param %s %s\n", p.name.c_str(), dims_text(p.dims).c_str());
    for (const StateInfo& s : plan_state(argv[1], input))
      std::printf("state %s %s\n", s.name.c_str(), s.counter ? "counter" : dims_text(s.dims).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
