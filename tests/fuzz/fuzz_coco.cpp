// libFuzzer target: COCO detection JSON (data::check_coco_json: parsing, COCO's schema, ids, every
// annotation against its image's declared size and the categories), the checks `mpicnn convert
// --format coco` makes before it opens any image. The input is the JSON text.
#include <string>

#include "datasets/coco.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean_rejection([&] { mpicnn::data::check_coco_json(text, "fuzz.json"); });
  return 0;
}
