// Test helper: the logits (raw network outputs, before any softmax) of a checkpoint or an inference
// bundle on one split of a dataset, with the reader normalisation `mpicnn predict` uses, written as
// /logits (N,K) float32. `mpicnn predict` writes probabilities only; the export tests need the
// logits themselves to compare with onnxruntime and PyTorch.
// usage: io_dump_logits MODEL.h5 DATASET.h5 SPLIT OUTPUT.h5
#include <cstdio>
#include <exception>
#include <vector>

#include "core/model.hpp"
#include "datasets/h5.hpp"
#include "datasets/reader.hpp"
#include "io/bundle.hpp"
#include "io/checkpoint.hpp"

namespace h5 = mpicnn::data::h5;
using namespace mpicnn;

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: io_dump_logits MODEL.h5 DATASET.h5 SPLIT OUTPUT.h5\n");
    return 2;
  }
  try {
    const std::string path = argv[1];
    std::string format;
    {
      h5::Handle file = h5::open_file(path);
      format = h5::read_string_attribute(file.get(), "format");
    }
    const bool bundle = format == io::kBundleFormat;
    const io::ModelMeta meta = bundle ? io::read_bundle_header(path).model : io::read_checkpoint_header(path).model;
    constexpr int kBatch = 64;
    data::EvalReader reader(data::EvalOptions{argv[2], argv[3], kBatch, 0, 1, true, meta.mean, meta.std, false});
    core::Model model(meta.spec, meta.input, kBatch);
    if (bundle) io::load_bundle(path, model);
    else io::load_checkpoint(path, model, nullptr);
    // Inference: BatchNorm with its running statistics, dropout the identity (as the ONNX graph).
    model.run().training = false;
    const std::size_t k = model.output_shape().size();
    std::vector<float> logits;
    data::Batch batch;
    while (reader.next(batch)) {
      const float* out = model.forward(batch.images.data(), batch.count);
      logits.insert(logits.end(), out, out + batch.count * k);
    }
    h5::Handle file = h5::create_file(argv[4]);
    h5::write_dataset<float>(file.get(), "logits", logits, {logits.size() / k, k});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
