// Reader throughput and memory. Subcommands (bench/reader_bench.sh runs them all):
//   reader_bench convert OUT.h5 [CHUNK_SAMPLES] [GZIP_LEVEL]  Fashion-MNIST from Debian's IDX files
//   reader_bench read FILE.h5 RANK RANKS [MODE] [EPOCHS]      one rank's samples/s over whole epochs
//       MODE: file (gzip chunks, default), cache (reader's in-memory cache, timed after one warm-up
//       epoch) or memory (the split in a plain array, same order and preprocessing, no HDF5)
//   reader_bench generate OUT.h5 GIGABYTES                      random-ish (3,64,64) uint8 images
//   reader_bench rss FILE.h5 STEPS                              peak RSS after STEPS steps of 256
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/errors.hpp"
#include "core/rng.hpp"
#include "datasets/convert.hpp"
#include "datasets/h5.hpp"
#include "datasets/reader.hpp"
#include "datasets/writer.hpp"

using namespace mpicnn;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kGlobalBatch = 256;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

int convert(const std::string& out, int chunk, int level) {
  data::ConvertOptions options;
  options.class_names = data::fashion_mnist_class_names();
  options.writer.chunk_samples = chunk;
  options.writer.compression_level = level;
  const auto start = Clock::now();
  data::convert_idx("/usr/share/datasets/fashion-mnist", out, options);
  std::printf("convert: %s (chunk %d samples, gzip %d) in %.2f s\n", out.c_str(),
              data::read_info(out, "train").chunk_samples, level, seconds_since(start));
  return 0;
}

// The baseline: this rank's samples of each step gathered from a plain in-memory array and
// normalised like the reader does, with no HDF5, no thread and no copy.
double read_from_memory(const std::string& path, int rank, int ranks, int epochs, long& samples) {
  const data::DatasetInfo info = data::read_info(path, "train");
  const std::size_t sample = info.shape.size();
  std::vector<std::uint8_t> pixels(info.count * sample);
  std::vector<std::int32_t> labels(info.count);
  {  // loaded through the reader in file order, then scaled back to the stored bytes
    data::EvalReader loader({.path = path, .split = "train", .batch = 1024, .normalize = false});
    data::Batch batch;
    std::size_t at = 0;
    while (loader.next(batch)) {
      for (std::size_t i = 0; i < std::size_t(batch.count) * sample; ++i)
        pixels[at * sample + i] = std::uint8_t(std::lround(batch.images[i] * 255));
      std::copy(batch.labels.begin(), batch.labels.end(), labels.begin() + long(at));
      at += std::size_t(batch.count);
    }
  }
  std::vector<float> lut(256);
  for (int v = 0; v < 256; ++v) lut[std::size_t(v)] = float((v / 255.0 - info.mean[0]) / info.std[0]);
  core::Buffer images(std::size_t(kGlobalBatch) * sample);
  std::vector<std::int32_t> batch_labels(kGlobalBatch);
  double checksum = 0;
  const auto start = Clock::now();
  for (int epoch = 0; epoch < epochs; ++epoch) {
    const auto order = data::epoch_order(info.count, 0, epoch, true);
    for (std::size_t first = 0; first < info.count; first += kGlobalBatch) {
      const data::Slice part = data::rank_slice(std::min<std::size_t>(kGlobalBatch, info.count - first), rank, ranks);
      for (std::size_t i = 0; i < part.count; ++i) {
        const std::uint32_t index = order[first + part.first + i];
        const std::uint8_t* in = pixels.data() + std::size_t(index) * sample;
        float* out = images.data() + i * sample;
        for (std::size_t p = 0; p < sample; ++p) out[p] = lut[in[p]];
        batch_labels[i] = labels[index];
      }
      checksum += images[0];
      samples += long(part.count);
    }
  }
  const double elapsed = seconds_since(start);
  if (checksum == 12345.678) std::puts("");
  return elapsed;
}

int read(const std::string& path, int rank, int ranks, const std::string& mode, int epochs) {
  long samples = 0;
  double elapsed = 0;
  if (mode == "memory") {
    elapsed = read_from_memory(path, rank, ranks, epochs, samples);
  } else {
    data::ReaderOptions options{.path = path, .global_batch = kGlobalBatch, .rank = rank, .ranks = ranks};
    if (mode == "cache") options.cache_bytes = std::size_t(1) << 30;
    data::TrainReader reader(options);
    data::Batch batch;
    if (mode == "cache")
      while (reader.next(batch)) {}  // the first epoch fills the cache
    double checksum = 0;
    const auto start = Clock::now();
    for (int epoch = 0; epoch < epochs; ++epoch)
      while (reader.next(batch)) {
        checksum += batch.count ? batch.images[0] : 0.f;
        samples += batch.count;
      }
    elapsed = seconds_since(start);
    if (checksum == 12345.678) std::puts("");
  }
  std::printf("read %-6s rank %d of %d: %ld samples in %.3f s = %.0f samples/s, peak RSS %.1f MB\n", mode.c_str(),
              rank, ranks, samples, elapsed, double(samples) / elapsed, peak_rss_mb());
  return 0;
}

int generate(const std::string& out, double gigabytes) {
  const core::Shape shape{3, 64, 64};
  const std::size_t count = std::size_t(gigabytes * 1e9 / double(shape.size()));
  const auto start = Clock::now();
  data::DatasetWriter writer(out, {100, {}}, {.compression_level = 1});
  writer.begin_split("train", shape, count, true);
  core::Rng rng(1);
  const std::size_t block = 256;
  std::vector<std::uint8_t> images(block * shape.size());
  std::vector<std::int32_t> labels(block);
  for (std::size_t first = 0; first < count; first += block) {
    const std::size_t n = std::min(block, count - first);
    // Smooth images with a little noise: compressible about as much as photographs.
    for (std::size_t i = 0; i < n; ++i) {
      const int base = int(rng.below(200));
      for (std::size_t p = 0; p < shape.size(); ++p)
        images[i * shape.size() + p] = std::uint8_t(base + int((p % 64) / 2) + int(rng.next() & 15));
      labels[i] = std::int32_t(rng.below(100));
    }
    writer.append(std::span(images.data(), n * shape.size()), std::span(labels.data(), n));
  }
  writer.finish();
  std::printf("generate: %s, %zu samples of %s uint8 = %.2f GB of pixels in %.1f s\n", out.c_str(), count,
              shape.str().c_str(), double(count * shape.size()) / 1e9, seconds_since(start));
  return 0;
}

int rss(const std::string& path, long steps) {
  data::TrainReader reader({.path = path, .global_batch = kGlobalBatch});
  data::Batch batch;
  const auto start = Clock::now();
  long done = 0, samples = 0;
  while (done < steps) {
    if (!reader.next(batch)) continue;
    samples += batch.count;
    ++done;
  }
  const data::DatasetInfo& info = reader.info();
  std::printf("rss: %s: %zu samples (%.2f GB of pixels), %ld steps of %d in %.1f s, peak RSS %.1f MB\n", path.c_str(),
              info.count, double(info.count * info.shape.size()) / 1e9, done, kGlobalBatch, seconds_since(start),
              peak_rss_mb());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    auto arg = [&](std::size_t i, const char* fallback) { return i < args.size() ? args[i] : std::string(fallback); };
    if (args.size() >= 2 && args[0] == "convert") return convert(args[1], std::stoi(arg(2, "0")), std::stoi(arg(3, "4")));
    if (args.size() >= 4 && args[0] == "read")
      return read(args[1], std::stoi(args[2]), std::stoi(args[3]), arg(4, "file"), std::stoi(arg(5, "1")));
    if (args.size() >= 3 && args[0] == "generate") return generate(args[1], std::stod(args[2]));
    if (args.size() >= 3 && args[0] == "rss") return rss(args[1], std::stol(args[2]));
    std::fprintf(stderr, "usage: see the comment at the top of bench/reader_bench.cpp\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
