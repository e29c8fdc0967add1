// Medical-image augmentation (datasets/augment.hpp): the affine resampling against torchvision and
// PyTorch's grid_sample in float64, flips per axis, intensity scale and shift, determinism over rank
// counts and resumes, and the one-line errors for bad values.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "core/errors.hpp"
#include "core/rng.hpp"
#include "datasets/augment.hpp"
#include "datasets/h5.hpp"
#include "datasets/reader.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using testing::run_python;
using testing::TempDir;

// Written by torch at test time: per case the input (C,D,H,W) or (C,H,W), the transform as attributes
// (angles d,h,w in degrees, scale, translate w,h,d in voxels) and torch's output, all float64.
//  image_torchvision: torchvision.transforms.functional.affine (bilinear, fill None = zeros), whose
//    own inverse-matrix code fixes the convention independently of ours;
//  image_grid_sample: a fractional translation through affine_grid + grid_sample (align_corners=False);
//  volume_slices: a volume turned about d only, against torchvision's affine of every slice;
//  volume_grid_sample: all three angles, zoom and translation, through 5-D affine_grid + grid_sample.
// For grid_sample the script builds theta from the convention written out in numpy (R_d R_h R_w).
const char* kReferenceScript = R"(
import sys, h5py, numpy as np, torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode
torch.set_default_dtype(torch.float64)
rng = np.random.default_rng(5)
def turn(a, i, j):
    r = np.eye(3); c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r
def theta(sizes_whd, angles_dhw, scale, translate_whd):
    r = turn(angles_dhw[0], 0, 1) @ turn(angles_dhw[1], 2, 0) @ turn(angles_dhw[2], 1, 2)
    n = np.array(sizes_whd, float); c = (n - 1) / 2; t = np.array(translate_whd, float)
    a = r.T / scale; b = c - a @ (c + t)          # source = a p + b, voxel indices
    d = np.diag(n / 2)                             # p = d u + c for normalised u (align_corners=False)
    m = np.linalg.inv(d) @ a @ d
    return np.concatenate([m, (np.linalg.inv(d) @ (a @ c + b - c))[:, None]], 1)
out = h5py.File(OUTPUT, "w")
def save(name, x, y, angles, scale, translate):
    g = out.create_group(name); g["input"] = x; g["output"] = y
    g.attrs["angles"] = np.array(angles, float); g.attrs["scale"] = float(scale)
    g.attrs["translate"] = np.array(translate, float)
x = rng.random((3, 9, 12))
y = TF.affine(torch.tensor(x), angle=23.5, translate=[2, -1], scale=1.15, shear=[0.0, 0.0],
              interpolation=InterpolationMode.BILINEAR).numpy()
save("image_torchvision", x, y, [23.5, 0, 0], 1.15, [2, -1, 0])
x = rng.random((2, 10, 7))
th = theta([7, 10, 1], [-37, 0, 0], 0.87, [1.3, -2.6, 0])
th2 = np.array([[th[0, 0], th[0, 1], th[0, 3]], [th[1, 0], th[1, 1], th[1, 3]]])
grid = F.affine_grid(torch.tensor(th2)[None], (1, 2, 10, 7), align_corners=False)
y = F.grid_sample(torch.tensor(x)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy()
save("image_grid_sample", x, y, [-37, 0, 0], 0.87, [1.3, -2.6, 0])
x = rng.random((2, 5, 8, 6))
y = TF.affine(torch.tensor(x).reshape(10, 1, 8, 6), angle=-61.0, translate=[1, 2], scale=1.0, shear=[0.0, 0.0],
              interpolation=InterpolationMode.BILINEAR).reshape(2, 5, 8, 6).numpy()
save("volume_slices", x, y, [-61, 0, 0], 1.0, [1, 2, 0])
x = rng.random((2, 7, 8, 9))
th = theta([9, 8, 7], [20, -15, 30], 1.1, [0.7, -1.2, 0.4])
grid = F.affine_grid(torch.tensor(th)[None], (1, 2, 7, 8, 9), align_corners=False)
y = F.grid_sample(torch.tensor(x)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy()
save("volume_grid_sample", x, y, [20, -15, 30], 1.1, [0.7, -1.2, 0.4])
)";

// A float64 sum of at most 8 products per voxel, against torch's in another order from a grid
// computed another way (normalised coordinates): rounding differences of a few 1e-16 on values in
// [0, 1]. 1e-12 is far below any convention error (a half-voxel or a wrong sign moves values by ~0.1).
constexpr double kTolerance = 1e-12;

TEST(Affine, MatchesTorchvisionAndGridSampleInFloat64) {
  TempDir dir;
  const std::string path = dir.file("affine_reference.h5");
  const auto python = run_python(dir, "OUTPUT = '" + path + "'\n" + kReferenceScript);
  ASSERT_EQ(python.status, 0) << python.output;
  const h5::Handle file = h5::open_file(path);
  for (const std::string name : {"image_torchvision", "image_grid_sample", "volume_slices", "volume_grid_sample"}) {
    const h5::Handle group = h5::open_group(file.get(), name);
    std::vector<hsize_t> dims;
    const std::vector<double> input = h5::read_dataset<double>(group.get(), "input", &dims);
    const std::vector<double> torch = h5::read_dataset<double>(group.get(), "output");
    const core::Shape shape = dims.size() == 3 ? core::Shape{int(dims[0]), int(dims[1]), int(dims[2])}
                                               : core::Shape{int(dims[0]), int(dims[2]), int(dims[3]), int(dims[1])};
    const std::vector<double> angles = h5::read_array_attribute<double>(group.get(), "angles");
    const std::vector<double> translate = h5::read_array_attribute<double>(group.get(), "translate");
    const AffineMap map = affine_map(shape, {angles[0], angles[1], angles[2]}, h5::read_attribute<double>(group.get(), "scale"),
                                     {translate[0], translate[1], translate[2]});
    std::vector<double> ours(input.size()), pad(std::size_t(shape.c), 0.0);
    resample_affine(ours.data(), input.data(), shape, map, pad.data());
    double error = 0, padded = 0;
    for (std::size_t i = 0; i < ours.size(); ++i) {
      error = std::max(error, std::abs(ours[i] - torch[i]));
      padded += torch[i] == 0;
    }
    std::printf("[ figure ] %-20s %s: max |ours - torch| = %.3g (%g of %zu outputs padded)\n", name.c_str(),
                shape.str().c_str(), error, padded, ours.size());
    EXPECT_LE(error, kTolerance) << name;
    EXPECT_GT(padded, 0) << name << ": the case should reach outside the input";
  }
}

// A uint8 volume whose voxel (c,z,y,x) is recognisable: 40 z + 8 y + x + 3 c + 1 (< 256 for 5x4x6).
const core::Shape kVolume{2, 4, 6, 5};  // C=2, H=4, W=6, D=5

void write_volumes(const std::string& path, std::size_t count, const core::Shape& shape) {
  DatasetWriter writer(path, {3, {"a", "b", "c"}});
  writer.begin_split("train", shape, count, true);
  std::vector<std::uint8_t> images;
  std::vector<std::int32_t> labels;
  for (std::size_t i = 0; i < count; ++i) {
    labels.push_back(std::int32_t(i % 3));
    for (int c = 0; c < shape.c; ++c)
      for (int z = 0; z < shape.d; ++z)
        for (int y = 0; y < shape.h; ++y)
          for (int x = 0; x < shape.w; ++x) images.push_back(std::uint8_t(40 * z + 8 * y + x + 3 * c + 1 + i % 2));
  }
  writer.append(images, labels);
  writer.finish();
}

// The whole first epoch's rows, in the epoch's order of positions.
std::vector<std::vector<float>> epoch_rows(const ReaderOptions& o, int epoch = 0) {
  TrainReader reader(o);
  reader.seek(epoch, 0);
  std::vector<std::vector<float>> rows;
  Batch batch;
  const std::size_t sample = reader.info().shape.size();
  while (reader.next(batch))
    for (int i = 0; i < batch.count; ++i)
      rows.emplace_back(batch.images.data() + i * sample, batch.images.data() + (i + 1) * sample);
  return rows;
}

// Flips along D and H of volumes (W too): every output is its volume mirrored along some of the
// axes, each axis mirrored in some samples and not in others; flip_probability 1 mirrors every one.
TEST(Augment, FlipsPerAxis) {
  TempDir dir;
  const std::string path = dir.file("v.h5");
  write_volumes(path, 40, kVolume);
  const std::vector<std::vector<float>> rows =
      epoch_rows({.path = path, .global_batch = 40, .shuffle = false, .normalize = false,
                  .augment = {.flip = {.w = true, .h = true, .d = true}}});
  int flips[3] = {};
  for (std::size_t i = 0; i < rows.size(); ++i) {
    bool found = false;
    for (int mask = 0; mask < 8 && !found; ++mask) {
      bool same = true;
      for (std::size_t p = 0; p < kVolume.size() && same; ++p) {
        const int x = int(p % 6), y = int(p / 6 % 4), z = int(p / 24 % 5), c = int(p / 120);
        const int sx = mask & 1 ? 5 - x : x, sy = mask & 2 ? 3 - y : y, sz = mask & 4 ? 4 - z : z;
        same = rows[i][p] == float(40 * sz + 8 * sy + sx + 3 * c + 1 + int(i % 2)) / 255.0f;
      }
      if (same) {
        found = true;
        for (int a = 0; a < 3; ++a) flips[a] += (mask >> a) & 1;
      }
    }
    EXPECT_TRUE(found) << "sample " << i;
  }
  for (int a = 0; a < 3; ++a) {
    EXPECT_GT(flips[a], 8) << "axis " << a;
    EXPECT_LT(flips[a], 32) << "axis " << a;
  }
  const auto always = epoch_rows({.path = path, .global_batch = 40, .shuffle = false, .normalize = false,
                                  .augment = {.flip = {.d = true}, .flip_probability = 1}});
  for (std::size_t i = 0; i < always.size(); ++i)
    EXPECT_EQ(always[i][0], float(40 * 4 + 1 + int(i % 2)) / 255.0f);  // voxel (0,0,0,0) reads z = 4
}

// Intensity: y' = y * factor + offset with one factor and offset per sample (MONAI's
// RandScaleIntensity / RandShiftIntensity, channel_wise off), on the normalised values.
TEST(Augment, IntensityScaleAndShiftPerSample) {
  TempDir dir;
  const std::string path = dir.file("v.h5");
  write_volumes(path, 30, kVolume);
  const ReaderOptions plain{.path = path, .global_batch = 30, .shuffle = false};
  ReaderOptions augmented = plain;
  augmented.augment.intensity_scale_min = 0.8, augmented.augment.intensity_scale_max = 1.2;
  augmented.augment.intensity_shift = 0.5;
  const auto before = epoch_rows(plain), after = epoch_rows(augmented);
  std::set<float> factors;
  for (std::size_t i = 0; i < before.size(); ++i) {
    // Two voxels of different values fix the factor and offset; every voxel must then follow them.
    const double factor = (after[i][1] - after[i][0]) / (before[i][1] - before[i][0]);
    const double offset = after[i][0] - factor * before[i][0];
    EXPECT_GE(factor, 0.8 - 1e-5);
    EXPECT_LE(factor, 1.2 + 1e-5);
    EXPECT_LE(std::abs(offset), 0.5 + 1e-5);
    for (std::size_t p = 0; p < kVolume.size(); ++p)
      ASSERT_NEAR(after[i][p], factor * before[i][p] + offset, 1e-4) << "sample " << i << " voxel " << p;
    factors.insert(float(factor));
  }
  EXPECT_GT(factors.size(), 20u);
}

// affine_probability and intensity_probability (MONAI's prob): some samples keep their plain
// values, the others change; 0 leaves every sample as it was.
TEST(Augment, ProbabilitiesChooseTheSamplesThatChange) {
  TempDir dir;
  const std::string path = dir.file("v.h5");
  write_volumes(path, 40, kVolume);
  const ReaderOptions plain{.path = path, .global_batch = 40, .shuffle = false};
  const auto before = epoch_rows(plain);
  for (const bool affine : {true, false})
    for (const double probability : {0.5, 0.0}) {
      ReaderOptions o = plain;
      if (affine) o.augment.rotate_degrees = 30, o.augment.affine_probability = probability;
      else o.augment.intensity_shift = 0.3, o.augment.intensity_probability = probability;
      const auto after = epoch_rows(o);
      int unchanged = 0;
      for (std::size_t i = 0; i < before.size(); ++i) unchanged += after[i] == before[i];
      std::printf("[ figure ] %s_probability %.1f: %d of 40 samples unchanged\n", affine ? "affine" : "intensity",
                  probability, unchanged);
      if (probability == 0) EXPECT_EQ(unchanged, 40);
      else EXPECT_TRUE(unchanged > 8 && unchanged < 32) << unchanged;
    }
}

// Every option at once, on images and on volumes: the rows of each position are bitwise the same on
// 1, 2 and 3 ranks (with and without prefetch and cache), after a seek into the middle of an epoch
// (a resume), and different in another epoch.
TEST(Augment, DeterministicOverRankCountsAndResume) {
  TempDir dir;
  const Augmentation all{.flip = {.w = true, .h = true, .d = true}, .flip_probability = 0.4, .crop_pad = 1,
                         .rotate_degrees = 25, .scale_min = 0.9, .scale_max = 1.1, .translate = {0.1, 0.1, 0.1},
                         .intensity_scale_min = 0.9, .intensity_scale_max = 1.1, .intensity_shift = 0.1};
  for (const core::Shape shape : {core::Shape{2, 7, 9}, kVolume}) {
    const std::string path = dir.file("data" + std::to_string(shape.d) + ".h5");
    Augmentation options = all;
    if (!shape.is_volume()) options.flip.d = false;
    write_volumes(path, 23, shape);
    const ReaderOptions base{.path = path, .global_batch = 6, .seed = 9, .augment = options};
    const auto reference = epoch_rows(base, 1);
    ASSERT_EQ(reference.size(), 23u);
    for (int ranks : {2, 3}) {
      std::map<long, std::vector<float>> merged;
      for (int r = 0; r < ranks; ++r) {
        ReaderOptions o = base;
        o.rank = r, o.ranks = ranks, o.prefetch = r != 1, o.cache_bytes = r == 0 ? 1u << 20 : 0;
        TrainReader reader(o);
        reader.seek(1, 0);
        Batch batch;
        while (reader.next(batch))
          for (int i = 0; i < batch.count; ++i)
            merged[batch.step * 6 + batch.first + i].assign(batch.images.data() + i * shape.size(),
                                                            batch.images.data() + (i + 1) * shape.size());
      }
      ASSERT_EQ(merged.size(), 23u);
      for (long p = 0; p < 23; ++p) EXPECT_EQ(merged[p], reference[std::size_t(p)]) << shape.str() << " " << ranks << " ranks";
    }
    TrainReader resumed(base);
    resumed.seek(1, 2);  // step 2 of epoch 1
    Batch batch;
    ASSERT_TRUE(resumed.next(batch));
    for (int i = 0; i < batch.count; ++i)
      EXPECT_EQ(std::vector<float>(batch.images.data() + i * shape.size(), batch.images.data() + (i + 1) * shape.size()),
                reference[std::size_t(12 + i)]);
    // The augmentation really happens: no row equals the plain sample, and epochs differ.
    ReaderOptions plain = base;
    plain.augment = {};
    const auto unaugmented = epoch_rows(plain, 1);
    for (std::size_t p = 0; p < 23; ++p) EXPECT_NE(unaugmented[p], reference[p]) << p;
    EXPECT_NE(epoch_rows(base, 2), reference);
  }
}

// The reader's affine and intensity steps are the kernel's: each augmented row equals resample_affine
// of the normalised sample under the sample's own draw, black (a stored 0, normalised) as padding,
// then y * factor + offset; bitwise, on volumes with their file's normalisation.
TEST(Augment, ReaderAppliesTheSamplesDrawThroughTheKernel) {
  TempDir dir;
  const std::string path = dir.file("v.h5");
  write_volumes(path, 12, kVolume);
  const Augmentation options{.rotate_degrees = 30, .scale_min = 0.8, .scale_max = 1.2, .translate = {0.2, 0.1, 0.1},
                             .intensity_scale_min = 0.9, .intensity_scale_max = 1.1, .intensity_shift = 0.2};
  const std::uint64_t seed = 7;
  const ReaderOptions base{.path = path, .global_batch = 12, .seed = seed, .shuffle = false};
  ReaderOptions augmented = base;
  augmented.augment = options;
  const auto plain = epoch_rows(base), rows = epoch_rows(augmented);
  const DatasetInfo info = read_info(path, "train");
  std::vector<float> black, expected(kVolume.size());
  for (int c = 0; c < kVolume.c; ++c) black.push_back(float((0.0 - info.mean[std::size_t(c)]) / info.std[std::size_t(c)]));
  int padded = 0;
  for (std::uint32_t i = 0; i < 12; ++i) {
    const SampleDraw draw = draw_augmentation(options, kVolume, core::derive_seed(core::derive_seed(seed, (1ull << 40) + 0), i));
    ASSERT_TRUE(draw.affine);
    resample_affine(expected.data(), plain[i].data(), kVolume, draw.map, black.data());
    for (std::size_t p = 0; p < expected.size(); ++p) {
      padded += expected[p] == black[p / (kVolume.size() / std::size_t(kVolume.c))];  // wholly outside
      expected[p] = float(expected[p] * draw.intensity_scale + draw.intensity_shift);
    }
    EXPECT_EQ(rows[i], expected) << "sample " << i;
  }
  EXPECT_GT(padded, 0);
}

// Boxes move with draw.forward (datasets/boxes.hpp): it must undo draw.map, the pixels' own map, for
// the very draw the reader uses. forward(map(p)) = p to rounding (1e-12 on coordinates below 10;
// a wrong sign, order or centre is off by a voxel or more).
TEST(Augment, ForwardMapUndoesThePixelMap) {
  const Augmentation options{.rotate_degrees = 180, .scale_min = 0.5, .scale_max = 1.5, .translate = {0.3, 0.2, 0.1},
                             .affine_probability = 0.5};
  double error = 0;
  int applied = 0;
  for (const core::Shape& shape : {kVolume, core::Shape{1, 6, 7}})
    for (std::uint64_t seed = 0; seed < 200; ++seed) {
      const SampleDraw draw = draw_augmentation(options, shape, seed);
      applied += draw.affine;
      for (const std::array<double, 3>& p : {std::array<double, 3>{0, 0, 0}, {5, 3, 0}, {1.5, 2.25, 4}}) {
        std::array<double, 3> q{}, back{};
        for (int i = 0; i < 3; ++i) q[i] = draw.map.offset[i] + draw.map.matrix[i][0] * p[0] + draw.map.matrix[i][1] * p[1] + draw.map.matrix[i][2] * p[2];
        for (int i = 0; i < 3; ++i)
          back[i] = draw.forward.offset[i] + draw.forward.matrix[i][0] * q[0] + draw.forward.matrix[i][1] * q[1] + draw.forward.matrix[i][2] * q[2];
        for (int i = 0; i < 3; ++i) error = std::max(error, std::abs(back[i] - p[i]));
      }
    }
  std::printf("[ figure ] 400 draws (%d applied): max |forward(map(p)) - p| = %.3g\n", applied, error);
  EXPECT_LE(error, 1e-12);
  EXPECT_GT(applied, 100);
  EXPECT_LT(applied, 300);  // the maps of draws not applied are checked too
}

// The documented stream: sample i of epoch e draws from Rng(derive_seed(derive_seed(seed, 2^40 + e), i)),
// crop offsets (h, w) then the W flip as a fair below(2), as before the new options existed, so a run
// started with random_flip and random_crop_pad resumes with the same augmentation.
TEST(Augment, CropAndWidthFlipKeepTheirEarlierDraws) {
  TempDir dir;
  const std::string path = dir.file("images.h5");
  const core::Shape shape{1, 6, 7};
  write_volumes(path, 20, shape);
  const std::uint64_t seed = 4;
  const int epoch = 1;
  const auto rows = epoch_rows({.path = path, .global_batch = 20, .seed = seed, .normalize = false,
                                .augment = {.flip = {.w = true}, .crop_pad = 2}}, epoch);
  const auto order = epoch_order(20, seed, epoch, true);
  for (std::size_t p = 0; p < 20; ++p) {
    const std::uint32_t index = order[p];
    core::Rng rng(core::derive_seed(core::derive_seed(seed, (1ull << 40) + epoch), index));
    const int dy = int(rng.below(5)) - 2, dx = int(rng.below(5)) - 2;
    const bool flip = rng.below(2) == 1;
    for (int y = 0; y < 6; ++y)
      for (int x = 0; x < 7; ++x) {
        const int sy = y + dy, sx = (flip ? 6 - x : x) + dx;
        const bool inside = sy >= 0 && sy < 6 && sx >= 0 && sx < 7;
        ASSERT_EQ(rows[p][std::size_t(y * 7 + x)], inside ? float(8 * sy + sx + 1 + int(index % 2)) / 255.0f : 0.0f)
            << "sample " << index << " at (" << y << "," << x << ")";
      }
  }
}

// Bad values: one-line ConfigErrors naming the file, the data.* key, the value and what is expected.
TEST(Augment, BadValuesAreOneLineConfigErrors) {
  TempDir dir;
  const std::string images = dir.file("images.h5"), volumes = dir.file("volumes.h5");
  write_volumes(images, 4, {1, 5, 5});
  write_volumes(volumes, 4, kVolume);
  auto fails = [](const std::string& path, const Augmentation& a, const std::string& expected) {
    try {
      TrainReader reader({.path = path, .global_batch = 2, .augment = a});
      FAIL() << expected;
    } catch (const ConfigError& e) {
      EXPECT_EQ(std::string(e.what()), path + ": " + expected);
    }
  };
  fails(images, {.flip = {.d = true}}, "'data.flip_axes' names d, but the samples are images (1,5,5) (C,H,W), expected w or h: d flips volumes only");
  fails(images, {.flip_probability = 1.5}, "'data.flip_probability' = 1.5, expected a probability in [0, 1]");
  fails(images, {.affine_probability = -0.5}, "'data.affine_probability' = -0.5, expected a probability in [0, 1]");
  fails(volumes, {.intensity_probability = 2}, "'data.intensity_probability' = 2, expected a probability in [0, 1]");
  fails(images, {.crop_pad = -1}, "'data.random_crop_pad' = -1, expected >= 0 pixels");
  fails(images, {.rotate_degrees = 200}, "'data.rotate_degrees' = 200, expected degrees in [0, 180]");
  fails(images, {.rotate_degrees = 10, .rotate_axes = {.h = true}},
        "'data.rotate_axes' leaves out d, but the samples are images (1,5,5) (C,H,W), which turn in their plane (about "
        "d): expected d among them");
  fails(volumes, {.rotate_degrees = 10, .rotate_axes = {}}, "'data.rotate_axes' = (none), expected one or more of d, h, w to rotate volumes about");
  fails(images, {.scale_min = 1.1, .scale_max = 0.9}, "'data.scale_range' = 1.1,0.9, expected min,max with 0 < min <= max");
  fails(images, {.scale_min = 0, .scale_max = 1}, "'data.scale_range' = 0,1, expected min,max with 0 < min <= max");
  fails(images, {.translate = {0.1, 1.5, 0}}, "'data.translate' = 1.5 (h), expected a fraction of the size in [0, 1]");
  fails(images, {.intensity_scale_min = -1, .intensity_scale_max = 1},
        "'data.intensity_scale' = -1,1, expected min,max with 0 < min <= max");
  fails(images, {.intensity_shift = NAN}, "'data.intensity_shift' = nan, expected a finite offset >= 0");
}

}  // namespace
}  // namespace mpicnn::data
