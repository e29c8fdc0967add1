// The reader's order, partition, resume, preprocessing and augmentation contracts.
#include <algorithm>
#include <map>
#include <numeric>
#include <set>

#include "core/errors.hpp"
#include "datasets/reader.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using testing::sample_of;
using testing::TempDir;
using testing::write_indexed_dataset;

// Every (epoch, step) of `epochs` epochs as seen by one rank: the sample indices of each step.
std::vector<std::vector<long>> read_rank(ReaderOptions options, int epochs) {
  TrainReader reader(options);
  std::vector<std::vector<long>> steps;
  Batch batch;
  for (int e = 0; e < epochs; ++e) {
    long step = 0;
    while (reader.next(batch)) {
      EXPECT_EQ(batch.epoch, e);
      EXPECT_EQ(batch.step, step++);
      std::vector<long> samples;
      for (int i = 0; i < batch.count; ++i) {
        samples.push_back(sample_of(batch.images.data() + i * reader.info().shape.size()));
        EXPECT_EQ(batch.labels[std::size_t(i)], samples.back() % 5);
      }
      EXPECT_EQ(int(batch.labels.size()), batch.count);
      steps.push_back(samples);
    }
    EXPECT_EQ(step, reader.steps_per_epoch());
  }
  return steps;
}

TEST(EpochOrder, IsAPermutationFixedBySeedAndEpoch) {
  const auto a = epoch_order(1000, 7, 0, true);
  std::vector<std::uint32_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (std::uint32_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_EQ(a, epoch_order(1000, 7, 0, true));
  EXPECT_NE(a, epoch_order(1000, 7, 1, true));
  EXPECT_NE(a, epoch_order(1000, 8, 0, true));
  const auto identity = epoch_order(10, 7, 3, false);
  for (std::uint32_t i = 0; i < 10; ++i) EXPECT_EQ(identity[i], i);
}

TEST(RankSlice, ContiguousNearEqualAndCovering) {
  for (std::size_t total : {0, 1, 3, 7, 10, 103})
    for (int ranks = 1; ranks <= 5; ++ranks) {
      std::size_t next = 0, smallest = total, largest = 0;
      for (int r = 0; r < ranks; ++r) {
        const Slice s = rank_slice(total, r, ranks);
        EXPECT_EQ(s.first, next);
        next += s.count;
        smallest = std::min(smallest, s.count);
        largest = std::max(largest, s.count);
      }
      EXPECT_EQ(next, total);
      EXPECT_LE(largest - smallest, 1u);
    }
}

// N = 103 and B = 10 are divisible by none of the rank counts; the last step holds 3 samples, so
// with 4 ranks one rank gets none in it.
TEST(TrainReader, UnionOverRanksIsTheGlobalBatchForAnyRankCount) {
  TempDir dir;
  const std::string path = dir.file("data.h5");
  write_indexed_dataset(path, 103);
  const int epochs = 2;
  std::vector<std::vector<long>> reference;  // global batches with 1 rank
  for (int ranks = 1; ranks <= 4; ++ranks) {
    std::vector<std::vector<std::vector<long>>> per_rank;
    for (int r = 0; r < ranks; ++r) {
      ReaderOptions o{.path = path, .global_batch = 10, .rank = r, .ranks = ranks, .seed = 42, .normalize = false};
      per_rank.push_back(read_rank(o, epochs));
    }
    const std::size_t steps = per_rank[0].size();
    ASSERT_EQ(steps, 2u * 11u);
    std::vector<std::vector<long>> global(steps);
    for (std::size_t s = 0; s < steps; ++s) {
      std::size_t counts_min = 100, counts_max = 0;
      for (int r = 0; r < ranks; ++r) {
        ASSERT_EQ(per_rank[std::size_t(r)].size(), steps);
        const auto& part = per_rank[std::size_t(r)][s];
        global[s].insert(global[s].end(), part.begin(), part.end());
        counts_min = std::min(counts_min, part.size());
        counts_max = std::max(counts_max, part.size());
      }
      EXPECT_LE(counts_max - counts_min, 1u);
      EXPECT_EQ(global[s].size(), s % 11 == 10 ? 3u : 10u);
    }
    if (ranks == 4) {
      EXPECT_TRUE(per_rank[3][10].empty());  // the zero-sample rank still had its step
    }
    for (int e = 0; e < epochs; ++e) {  // every sample exactly once per epoch, in the epoch's order
      std::vector<long> all;
      for (std::size_t s = 0; s < 11; ++s) all.insert(all.end(), global[e * 11 + s].begin(), global[e * 11 + s].end());
      const auto order = epoch_order(103, 42, e, true);
      EXPECT_EQ(all, std::vector<long>(order.begin(), order.end()));
    }
    if (ranks == 1) reference = global;
    EXPECT_EQ(global, reference) << "with " << ranks << " ranks";
  }
}

// Every chunk length (one sample, lengths that do not divide N or the batch, one chunk for all),
// raw or deflated chunks (both read directly), and the in-memory cache return the right samples
// in the right order.
TEST(TrainReader, ReadsTheRightSamplesForEveryChunkLength) {
  TempDir dir;
  for (int level : {0, 2}) {
    for (int chunk : {1, 3, 7, 64}) {
      const std::string path = dir.file("chunk" + std::to_string(chunk) + "_gzip" + std::to_string(level) + ".h5");
      write_indexed_dataset(path, 50, 3, {2, 3, 4}, 5, {.compression_level = level, .chunk_samples = chunk});
      EXPECT_EQ(read_info(path, "train").chunk_samples, std::min(chunk, 50));
      for (std::size_t cache : {std::size_t(0), std::size_t(1) << 20}) {
        TrainReader reader({.path = path, .global_batch = 16, .seed = 1, .normalize = false, .cache_bytes = cache});
        Batch batch;
        for (int epoch = 0; epoch < 2; ++epoch) {
          const auto order = epoch_order(50, 1, epoch, true);
          std::size_t position = 0;
          while (reader.next(batch))
            for (int i = 0; i < batch.count; ++i, ++position) {
              ASSERT_EQ(sample_of(batch.images.data() + i * 24), long(order[position])) << "chunk " << chunk;
              ASSERT_FLOAT_EQ(batch.images[std::size_t(i) * 24 + 12], float(order[position]) + 0.25f);  // channel 1
            }
          EXPECT_EQ(position, 50u);
        }
      }
      EvalReader eval({.path = path, .split = "train", .batch = 6, .normalize = false});
      Batch batch;
      long next = 0;
      while (eval.next(batch))
        for (int i = 0; i < batch.count; ++i) ASSERT_EQ(sample_of(batch.images.data() + i * 24), next++);
      EXPECT_EQ(next, 50);
    }
  }
}

// With micro_batch m, ranks get whole groups of m positions: micro-batch j of a step holds the
// same samples whatever the rank count.
TEST(TrainReader, MicroBatchesAreDealtWhole) {
  TempDir dir;
  const std::string path = dir.file("data.h5");
  write_indexed_dataset(path, 103);
  const auto order = epoch_order(103, 4, 0, true);
  for (int ranks = 1; ranks <= 4; ++ranks) {
    std::vector<std::vector<long>> global(11);
    for (int r = 0; r < ranks; ++r) {
      TrainReader reader({.path = path, .global_batch = 10, .rank = r, .ranks = ranks, .seed = 4, .normalize = false,
                          .micro_batch = 4});
      // 10 samples = groups of 4, 4, 2, dealt as evenly as possible.
      EXPECT_EQ(reader.capacity(), ranks == 1 ? 10 : ranks == 2 ? 8 : 4);
      Batch batch;
      for (long step = 0; reader.next(batch); ++step) {
        const Slice part = rank_slice(std::size_t(batch.global_count), r, ranks, 4);
        EXPECT_TRUE(part.count == 0 || part.first % 4 == 0) << part.first;
        EXPECT_EQ(std::size_t(batch.count), part.count);
        EXPECT_LE(batch.count, reader.capacity());
        for (int i = 0; i < batch.count; ++i) {
          EXPECT_EQ(sample_of(batch.images.data() + i * 24), long(order[std::size_t(step * 10) + part.first + i]));
          global[std::size_t(step)].push_back(sample_of(batch.images.data() + i * 24));
        }
      }
    }
    for (std::size_t s = 0; s < 11; ++s)
      EXPECT_EQ(global[s], std::vector<long>(order.begin() + long(s * 10), order.begin() + long(std::min<std::size_t>(103, s * 10 + 10))));
  }
  EXPECT_EQ(rank_slice(10, 2, 3, 4).count, 2u);  // the short last group
  EXPECT_EQ(rank_slice(3, 1, 2, 4).count, 0u);
  EXPECT_THROW(TrainReader({.path = path, .global_batch = 10, .micro_batch = 0}), ConfigError);
}

TEST(TrainReader, GlobalCountAndZeroSampleRank) {
  TempDir dir;
  const std::string path = dir.file("data.h5");
  write_indexed_dataset(path, 13);
  TrainReader reader({.path = path, .global_batch = 5, .rank = 3, .ranks = 4, .normalize = false});
  EXPECT_EQ(reader.steps_per_epoch(), 3);
  EXPECT_EQ(reader.capacity(), 2);
  Batch batch;
  std::vector<std::pair<int, int>> seen;
  while (reader.next(batch)) seen.push_back({batch.count, batch.global_count});
  // Steps of 5, 5, 3 samples: rank 3 of 4 gets 1, 1 and 0.
  EXPECT_EQ(seen, (std::vector<std::pair<int, int>>{{1, 5}, {1, 5}, {0, 3}}));
  EXPECT_TRUE(reader.next(batch));  // the next epoch starts
  EXPECT_EQ(batch.epoch, 1);
  EXPECT_EQ(batch.step, 0);
}

TEST(TrainReader, SeekRestoresTheExactOrder) {
  TempDir dir;
  const std::string path = dir.file("data.h5");
  write_indexed_dataset(path, 37);
  for (bool prefetch : {true, false}) {
    const ReaderOptions o{.path = path, .global_batch = 8, .rank = 1, .ranks = 2, .seed = 3, .normalize = false,
                          .augment = {.flip = {.w = true}, .crop_pad = 1}, .prefetch = prefetch};
    const auto straight = read_rank(o, 3);  // 5 steps per epoch
    TrainReader resumed(o);
    resumed.seek(1, 2);
    Batch batch;
    std::vector<std::vector<float>> rows;
    for (std::size_t k = 7; k < straight.size(); ++k) {
      ASSERT_TRUE(resumed.next(batch));
      EXPECT_EQ(batch.epoch, int(k / 5));
      EXPECT_EQ(batch.step, long(k % 5));
      std::vector<long> samples;
      for (int i = 0; i < batch.count; ++i) samples.push_back(sample_of(batch.images.data() + i * 24));
      EXPECT_EQ(samples, straight[k]);
      if (k % 5 == 4) {
        EXPECT_FALSE(resumed.next(batch));
      }
    }
    // Seeking back after reading ahead (a prefetched batch is discarded) gives the same again.
    resumed.seek(0, 4);
    ASSERT_TRUE(resumed.next(batch));
    std::vector<long> samples;
    for (int i = 0; i < batch.count; ++i) samples.push_back(sample_of(batch.images.data() + i * 24));
    EXPECT_EQ(samples, straight[4]);
    resumed.seek(2, 5);  // the end of epoch 2
    EXPECT_FALSE(resumed.next(batch));
    ASSERT_TRUE(resumed.next(batch));
    EXPECT_EQ(batch.epoch, 3);
    EXPECT_THROW(resumed.seek(0, 6), ConfigError);
  }
}

TEST(TrainReader, BatchBuffersKeepTheirAddress) {
  TempDir dir;
  const std::string path = dir.file("data.h5");
  write_indexed_dataset(path, 20);
  TrainReader reader({.path = path, .global_batch = 6});
  Batch batch;
  ASSERT_TRUE(reader.next(batch));
  const float* images = batch.images.data();
  EXPECT_EQ(batch.images.size(), 6u * 24u);
  while (reader.next(batch)) EXPECT_EQ(batch.images.data(), images);
}

// A uint8 image whose pixel (c,y,x) is 10*x + 50*c + y + sample: augmentation can be recognised.
void write_pattern_dataset(const std::string& path, std::size_t count, core::Shape shape) {
  DatasetWriter writer(path, {3, {}}, {1, 4});
  writer.begin_split("train", shape, count, true);
  std::vector<std::uint8_t> images;
  std::vector<std::int32_t> labels;
  for (std::size_t i = 0; i < count; ++i) {
    for (int c = 0; c < shape.c; ++c)
      for (int y = 0; y < shape.h; ++y)
        for (int x = 0; x < shape.w; ++x) images.push_back(std::uint8_t(10 * x + 50 * c + y + i % 7 + 1));
    labels.push_back(std::int32_t(i % 3));
  }
  writer.append(images, labels);
  writer.finish();
}

// Output rows keyed by the sample's global position in the epoch.
std::map<long, std::vector<float>> rows_by_position(ReaderOptions o, int epochs) {
  std::map<long, std::vector<float>> rows;
  TrainReader reader(o);
  const std::size_t sample = reader.info().shape.size();
  Batch batch;
  for (int e = 0; e < epochs; ++e)
    while (reader.next(batch)) {
      const Slice part = rank_slice(std::size_t(batch.global_count), o.rank, o.ranks);
      for (int i = 0; i < batch.count; ++i) {
        const long position = long(e) * 1000 + batch.step * o.global_batch + long(part.first) + i;
        rows[position].assign(batch.images.data() + i * sample, batch.images.data() + (i + 1) * sample);
      }
    }
  return rows;
}

TEST(TrainReader, AugmentationIsSeededPerSampleAndIndependentOfRanksCacheAndPrefetch) {
  TempDir dir;
  const std::string path = dir.file("pattern.h5");
  const core::Shape shape{2, 5, 6};
  write_pattern_dataset(path, 50, shape);
  ReaderOptions base{.path = path, .global_batch = 9, .seed = 11, .normalize = false,
                     .augment = {.flip = {.w = true}, .crop_pad = 2}};
  const auto reference = rows_by_position(base, 2);
  ASSERT_EQ(reference.size(), 100u);
  for (int ranks : {2, 3}) {
    std::map<long, std::vector<float>> merged;
    for (int r = 0; r < ranks; ++r) {
      ReaderOptions o = base;
      o.rank = r;
      o.ranks = ranks;
      o.prefetch = r % 2 == 0;
      o.cache_bytes = r == 1 ? (1u << 20) : 0;
      merged.merge(rows_by_position(o, 2));
    }
    EXPECT_EQ(merged, reference) << ranks << " ranks";
  }
  // Every output is the image, maybe flipped, shifted by at most 2 pixels with black filling.
  TrainReader plain({.path = path, .global_batch = 50, .shuffle = false, .normalize = false});
  Batch originals;
  ASSERT_TRUE(plain.next(originals));
  const auto order = epoch_order(50, 11, 0, true);
  std::set<std::pair<int, int>> shifts;
  int flips = 0;
  for (long p = 0; p < 50; ++p) {
    const float* in = originals.images.data() + order[std::size_t(p)] * shape.size();
    const std::vector<float>& out = reference.at(p);
    bool found = false;
    for (int flip = 0; flip < 2 && !found; ++flip)
      for (int dy = -2; dy <= 2 && !found; ++dy)
        for (int dx = -2; dx <= 2 && !found; ++dx) {
          bool same = true;
          for (int c = 0; c < shape.c; ++c)
            for (int y = 0; y < shape.h; ++y)
              for (int x = 0; x < shape.w; ++x) {
                const int sy = y + dy, sx = (flip ? shape.w - 1 - x : x) + dx;
                const float want = sy < 0 || sy >= shape.h || sx < 0 || sx >= shape.w
                                       ? 0.f
                                       : in[(c * shape.h + sy) * shape.w + sx];
                same = same && out[std::size_t((c * shape.h + y) * shape.w + x)] == want;
              }
          if (same) {
            found = true;
            flips += flip;
            shifts.insert({dy, dx});
          }
        }
    EXPECT_TRUE(found) << "position " << p;
  }
  EXPECT_GT(flips, 10);
  EXPECT_LT(flips, 40);
  EXPECT_GT(shifts.size(), 10u);
}

TEST(TrainReader, NormalisesUint8AndHonoursOverrides) {
  TempDir dir;
  const std::string path = dir.file("pattern.h5");
  const core::Shape shape{2, 5, 6};
  write_pattern_dataset(path, 10, shape);
  const DatasetInfo info = read_info(path, "train");
  TrainReader raw({.path = path, .global_batch = 10, .shuffle = false, .normalize = false});
  TrainReader normalised({.path = path, .global_batch = 10, .shuffle = false});
  TrainReader overridden({.path = path, .global_batch = 10, .shuffle = false, .mean = {0.5, 0.25}, .std = {2, 4}});
  Batch a, b, c;
  ASSERT_TRUE(raw.next(a));
  ASSERT_TRUE(normalised.next(b));
  ASSERT_TRUE(overridden.next(c));
  const std::size_t plane = 30;
  for (std::size_t i = 0; i < 10 * shape.size(); ++i) {
    const std::size_t channel = (i % shape.size()) / plane;
    const double x = a.images[i];
    EXPECT_NEAR(x * 255, std::round(x * 255), 1e-4);
    EXPECT_NEAR(b.images[i], (x - info.mean[channel]) / info.std[channel], 1e-5);
    EXPECT_NEAR(c.images[i], (x - (channel ? 0.25 : 0.5)) / (channel ? 4 : 2), 1e-6);
  }
  EXPECT_THROW(TrainReader({.path = path, .global_batch = 1, .mean = {0.5}}), ConfigError);
  EXPECT_THROW(TrainReader({.path = path, .global_batch = 1, .std = {1, 0}}), ConfigError);
}

TEST(TrainReader, ReadsRegressionTargets) {
  TempDir dir;
  const std::string path = dir.file("targets.h5");
  {
    DatasetWriter writer(path, {0, {}});
    writer.begin_split("train", {1, 2, 2}, 7, true, 3);
    std::vector<std::uint8_t> images(7 * 4);
    std::vector<float> targets;
    for (int i = 0; i < 7; ++i) {
      std::fill(images.begin() + i * 4, images.begin() + i * 4 + 4, std::uint8_t(i));
      for (int k = 0; k < 3; ++k) targets.push_back(float(i * 10 + k));
    }
    writer.append_targets(images, targets);
    writer.finish();
  }
  const DatasetInfo info = read_info(path, "train");
  EXPECT_EQ(info.target_size, 3);
  EXPECT_EQ(info.num_classes, 0);
  TrainReader reader({.path = path, .global_batch = 4, .seed = 5, .normalize = false});
  Batch batch;
  int seen = 0;
  while (reader.next(batch)) {
    EXPECT_TRUE(batch.labels.empty());
    for (int i = 0; i < batch.count; ++i) {
      const int sample = int(std::lround(batch.images[std::size_t(i) * 4] * 255));
      for (int k = 0; k < 3; ++k) EXPECT_EQ(batch.targets[std::size_t(i) * 3 + k], float(sample * 10 + k));
      ++seen;
    }
  }
  EXPECT_EQ(seen, 7);
}

TEST(EvalReader, RanksCoverTheSplitExactlyOnceInOrder) {
  TempDir dir;
  const std::string path = dir.file("data.h5");
  write_indexed_dataset(path, 5, 103);
  for (int ranks = 1; ranks <= 4; ++ranks) {
    std::vector<long> all;
    long max_steps = 0;
    for (int r = 0; r < ranks; ++r) {
      EvalReader reader({.path = path, .batch = 8, .rank = r, .ranks = ranks, .normalize = false, .prefetch = r != 1, .group = 8});
      // Groups of 8 = the batch: batch j holds samples [8j, 8j + 8) on every rank count.
      EXPECT_EQ(reader.part().count, rank_slice(103, r, ranks, 8).count);
      EXPECT_EQ(reader.part().first % 8, 0u);
      long steps = 0;
      Batch batch;
      for (int pass = 0; pass < 2; ++pass) {
        std::vector<long> seen;
        while (reader.next(batch)) {
          EXPECT_LE(batch.count, 8);
          for (int i = 0; i < batch.count; ++i) seen.push_back(sample_of(batch.images.data() + i * 24));
          EXPECT_EQ(sample_of(batch.images.data()) % 8, 0) << ranks << " ranks: a batch starts inside a batch of 8";
          if (pass == 0) ++steps;
        }
        if (pass == 0) all.insert(all.end(), seen.begin(), seen.end());
        EXPECT_EQ(long(seen.size()), long(reader.part().count));  // the second pass starts over
      }
      EXPECT_EQ(steps, reader.steps());
      max_steps = std::max(max_steps, steps);
      EXPECT_EQ(reader.max_steps(), (long(rank_slice(103, 0, ranks, 8).count) + 7) / 8);
    }
    std::vector<long> expected(103);
    std::iota(expected.begin(), expected.end(), 0);
    EXPECT_EQ(all, expected) << ranks << " ranks";
  }
  EvalReader reader({.path = path, .batch = 100, .normalize = false});
  Batch batch;
  ASSERT_TRUE(reader.next(batch));
  reader.rewind();
  ASSERT_TRUE(reader.next(batch));
  EXPECT_EQ(sample_of(batch.images.data()), 0);
}

TEST(DatasetInfo, CheckInputShape) {
  TempDir dir;
  const std::string path = dir.file("data.h5");
  write_indexed_dataset(path, 5);
  const DatasetInfo info = read_info(path, "train");
  EXPECT_NO_THROW(check_input_shape(info, {2, 3, 4}, path));
  try {
    check_input_shape(info, {3, 32, 32}, path);
    FAIL() << "no error";
  } catch (const ShapeError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr(path));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("(2,3,4)"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("different from the model's input (3,32,32)"));
  }
}

}  // namespace
}  // namespace mpicnn::data
