// libFuzzer target: the checkpoint loader (io/checkpoint.cpp). The input is the file. A header
// that passes read_checkpoint_header must describe a model that can be built and loaded, with
// and without the optimizer state: everything after the header check may only fail with an
// mpicnn::Error, never crash or read out of bounds.
#include <hdf5.h>

#include <cctype>

#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "fuzz_hdf5.hpp"
#include "fuzz_util.hpp"
#include "io/checkpoint.hpp"

namespace {

// The header bounds sizes by parameter count only; activations of a (legal) large input would
// allocate gigabytes (reported: bad-input case ckpt_huge_activations). Build only small models.
bool small_model(const mpicnn::io::CheckpointHeader& h) {
  if (h.model.input.size() > 4096 || h.model.spec.size() > 512) return false;
  long number = 0;
  for (char ch : h.model.spec) {
    number = std::isdigit(static_cast<unsigned char>(ch)) ? std::min(number * 10 + (ch - '0'), 1L << 20) : 0;
    if (number > 64) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = fuzz::temp_path(".h5");
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  fuzz::write_file(path, data, size);
  fuzz::expect_clean_rejection([&] {
    const mpicnn::io::CheckpointHeader header = mpicnn::io::read_checkpoint_header(path);
    if (!small_model(header)) return;
    mpicnn::core::Model model(header.model.spec, header.model.input, 1);
    mpicnn::io::load_checkpoint(path, model, nullptr);
    mpicnn::core::Optimizer optimizer(header.optimizer, model.params().size());
    mpicnn::io::load_checkpoint(path, model, &optimizer);
  });
  fuzz::expect_hdf5_closed("loading a checkpoint");
  return 0;
}
