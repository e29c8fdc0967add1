// Converters against inputs written by other tools: Debian's Fashion-MNIST IDX files, .npz files
// written by numpy, PNGs written by a small Python encoder and JPEGs written by Pillow.
#include "datasets/convert.hpp"

#include <zlib.h>

#include <fstream>

#include "core/errors.hpp"
#include "datasets/h5.hpp"
#include "datasets/reader.hpp"
#include "test_util.hpp"

namespace mpicnn::data {
namespace {

using ::testing::HasSubstr;
using testing::run_python;
using testing::TempDir;

const std::string kFashion = "/usr/share/datasets/fashion-mnist";

// Sum of all bytes after `header` bytes of a gzipped file, read with zlib directly.
std::uint64_t gz_byte_sum(const std::string& path, std::size_t header, std::vector<std::uint64_t>* histogram = nullptr) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error("cannot open " + path);
  std::vector<unsigned char> buffer(1 << 16);
  std::uint64_t sum = 0, position = 0;
  int got;
  while ((got = gzread(file, buffer.data(), unsigned(buffer.size()))) > 0)
    for (int i = 0; i < got; ++i, ++position)
      if (position >= header) {
        sum += buffer[std::size_t(i)];
        if (histogram) ++(*histogram)[buffer[std::size_t(i)]];
      }
  gzclose(file);
  return sum;
}

TEST(ConvertIdx, FashionMnistFromDebian) {
  if (!std::filesystem::exists(kFashion + "/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  TempDir dir;
  const std::string path = dir.file("fashion.h5");
  ConvertOptions options;
  options.class_names = fashion_mnist_class_names();
  const ConvertSummary summary = convert_idx(kFashion, path, options);
  EXPECT_EQ(summary.split_counts.at("train"), 60000u);
  EXPECT_EQ(summary.split_counts.at("test"), 10000u);
  EXPECT_EQ(summary.num_classes, 10);
  EXPECT_EQ(summary.shape, (core::Shape{1, 28, 28}));

  // The source, read independently with zlib.
  std::vector<std::uint64_t> train_classes(256), test_classes(256);
  const std::uint64_t train_sum = gz_byte_sum(kFashion + "/train-images-idx3-ubyte.gz", 16);
  const std::uint64_t test_sum = gz_byte_sum(kFashion + "/t10k-images-idx3-ubyte.gz", 16);
  gz_byte_sum(kFashion + "/train-labels-idx1-ubyte.gz", 8, &train_classes);
  gz_byte_sum(kFashion + "/t10k-labels-idx1-ubyte.gz", 8, &test_classes);
  for (int c = 0; c < 10; ++c) {
    EXPECT_EQ(train_classes[std::size_t(c)], 6000u);
    EXPECT_EQ(test_classes[std::size_t(c)], 1000u);
  }

  // The output, read with h5py.
  const auto python = run_python(dir, R"(
import h5py, numpy as np
f = h5py.File(")" + path + R"(", "r")
for split in ("train", "test"):
    images, labels = f[split + "/images"], f[split + "/labels"]
    # Automatic storage for 784-byte samples: one per chunk, uncompressed (see compression_for).
    assert images.dtype == np.uint8 and images.chunks == (1, 1, 28, 28) and images.compression is None
    counts = np.bincount(labels[...], minlength=10)
    print(split, images.shape[0], int(images[...].sum(dtype=np.uint64)), " ".join(str(int(c)) for c in counts))
print("classes", "|".join(f.attrs["class_names"]))
)");
  ASSERT_EQ(python.status, 0) << python.output;
  const std::string train_line = "train 60000 " + std::to_string(train_sum) + " 6000 6000 6000 6000 6000 6000 6000 6000 6000 6000";
  const std::string test_line = "test 10000 " + std::to_string(test_sum) + " 1000 1000 1000 1000 1000 1000 1000 1000 1000 1000";
  EXPECT_THAT(python.output, HasSubstr(train_line));
  EXPECT_THAT(python.output, HasSubstr(test_line));
  EXPECT_THAT(python.output,
              HasSubstr("classes T-shirt/top|Trouser|Pullover|Dress|Coat|Sandal|Shirt|Sneaker|Bag|Ankle boot"));

  // Our reader sees the same pixels; the statistics are Fashion-MNIST's well-known ones.
  const DatasetInfo info = read_info(path, "train");
  EXPECT_NEAR(info.mean[0], 0.2860, 5e-4);
  EXPECT_NEAR(info.std[0], 0.3530, 5e-4);
  EvalReader reader({.path = path, .batch = 1000, .rank = 1, .ranks = 2, .normalize = false});
  EvalReader other({.path = path, .batch = 1000, .rank = 0, .ranks = 2, .normalize = false});
  double sum = 0;
  Batch batch;
  for (EvalReader* r : {&reader, &other})
    while (r->next(batch))
      for (std::size_t i = 0; i < std::size_t(batch.count) * 784; ++i) sum += std::round(batch.images[i] * 255);
  EXPECT_EQ(std::uint64_t(sum), test_sum);
}

void write_idx(const std::string& path, const std::vector<std::uint32_t>& dims, const std::vector<std::uint8_t>& data) {
  std::ofstream out(path, std::ios::binary);
  const unsigned char magic[4] = {0, 0, 8, std::uint8_t(dims.size())};
  out.write(reinterpret_cast<const char*>(magic), 4);
  for (std::uint32_t d : dims) {
    const unsigned char be[4] = {std::uint8_t(d >> 24), std::uint8_t(d >> 16), std::uint8_t(d >> 8), std::uint8_t(d)};
    out.write(reinterpret_cast<const char*>(be), 4);
  }
  out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
}

TEST(ConvertIdx, PlainFilesWithDotNamesAndErrors) {
  TempDir dir;
  std::vector<std::uint8_t> train(5 * 3 * 2), test(2 * 3 * 2);
  for (std::size_t i = 0; i < train.size(); ++i) train[i] = std::uint8_t(i * 3);
  for (std::size_t i = 0; i < test.size(); ++i) test[i] = std::uint8_t(200 + i);
  write_idx(dir.file("train-images.idx3-ubyte"), {5, 3, 2}, train);
  write_idx(dir.file("train-labels.idx1-ubyte"), {5}, {0, 1, 2, 3, 1});
  write_idx(dir.file("t10k-images.idx3-ubyte"), {2, 3, 2}, test);
  write_idx(dir.file("t10k-labels.idx1-ubyte"), {2}, {3, 0});
  const std::string path = dir.file("out.h5");
  const ConvertSummary summary = convert_idx(dir.path().string(), path);
  EXPECT_EQ(summary.num_classes, 4);
  h5::Handle file = h5::open_file(path);
  std::vector<hsize_t> dims;
  const auto images = h5::read_dataset<std::uint8_t>(file.get(), "train/images", &dims);
  EXPECT_EQ(dims, (std::vector<hsize_t>{5, 1, 3, 2}));
  EXPECT_EQ(images, train);
  EXPECT_EQ(h5::read_dataset<std::int32_t>(file.get(), "test/labels"), (std::vector<std::int32_t>{3, 0}));
  EXPECT_EQ(h5::read_dataset<std::uint8_t>(file.get(), "test/images"), test);
  file.reset();

  ConvertOptions two_names;
  two_names.class_names = {"a", "b"};
  try {
    convert_idx(dir.path().string(), dir.file("names.h5"), two_names);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("label 3 found but only 2 class names given"));
  }
  write_idx(dir.file("t10k-labels.idx1-ubyte"), {3}, {3, 0, 1});
  try {
    convert_idx(dir.path().string(), dir.file("bad.h5"));
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("t10k-images.idx3-ubyte: holds 2 images but"));
    EXPECT_THAT(e.what(), HasSubstr("holds 3 labels"));
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("bad.h5")));
  std::filesystem::remove(dir.file("t10k-images.idx3-ubyte"));
  try {
    convert_idx(dir.path().string(), dir.file("bad.h5"));
    FAIL();
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr(dir.path().string() + ": no t10k-images-idx3-ubyte[.gz]"));
  }
}

// numpy writes the .npz (stored with np.savez, deflated with np.savez_compressed).
std::string write_npz_script(const std::string& path, bool compressed, bool rgb_multilabel) {
  return R"(
import numpy as np
def images(n, split):
    i = np.arange(n).reshape(n, 1, 1, 1); y = np.arange(7).reshape(1, 7, 1, 1)
    x = np.arange(5).reshape(1, 1, 5, 1); c = np.arange(3).reshape(1, 1, 1, 3)
    a = ((i * 7 + y * 3 + x * 5 + c * 11 + split) % 256).astype(np.uint8)
    return a if )" + std::string(rgb_multilabel ? "True" : "False") + R"( else a[..., 0]
def labels(n, split):
    if )" + std::string(rgb_multilabel ? "True" : "False") + R"(:
        return ((np.arange(n).reshape(n, 1) + np.arange(4).reshape(1, 4) + split) % 2).astype(np.uint8)
    return ((np.arange(n) + split) % 6).astype(np.int64).reshape(n, 1)
arrays = {}
for split, (name, n) in enumerate((("train", 300), ("val", 20), ("test", 31))):
    arrays[name + "_images"] = images(n, split)
    arrays[name + "_labels"] = labels(n, split)
np.)" + (compressed ? "savez_compressed" : "savez") + R"((")" + path + R"(", **arrays)
)";
}

TEST(ConvertNpz, MedMnistLayoutStoredAndDeflated) {
  for (bool compressed : {false, true}) {
    TempDir dir;
    const std::string npz = dir.file("data.npz"), path = dir.file("out.h5");
    const auto python = run_python(dir, write_npz_script(npz, compressed, false));
    ASSERT_EQ(python.status, 0) << python.output;
    const ConvertSummary summary = convert_npz(npz, path);
    EXPECT_EQ(summary.num_classes, 6);
    EXPECT_EQ(summary.shape, (core::Shape{1, 7, 5}));
    EXPECT_EQ(summary.split_counts, (std::map<std::string, std::size_t>{{"train", 300}, {"val", 20}, {"test", 31}}));
    h5::Handle file = h5::open_file(path);
    const char* names[] = {"train", "val", "test"};
    const int counts[] = {300, 20, 31};
    for (int split = 0; split < 3; ++split) {
      std::vector<hsize_t> dims;
      const auto images = h5::read_dataset<std::uint8_t>(file.get(), std::string(names[split]) + "/images", &dims);
      EXPECT_EQ(dims, (std::vector<hsize_t>{hsize_t(counts[split]), 1, 7, 5}));
      for (int i = 0; i < counts[split]; ++i)
        for (int y = 0; y < 7; ++y)
          for (int x = 0; x < 5; ++x)
            ASSERT_EQ(images[std::size_t((i * 7 + y) * 5 + x)], (i * 7 + y * 3 + x * 5 + split) % 256);
      const auto labels = h5::read_dataset<std::int32_t>(file.get(), std::string(names[split]) + "/labels");
      for (int i = 0; i < counts[split]; ++i) ASSERT_EQ(labels[std::size_t(i)], (i + split) % 6);
    }
  }
}

TEST(ConvertNpz, RgbMultiLabelBecomesTargets) {
  TempDir dir;
  const std::string npz = dir.file("data.npz"), path = dir.file("out.h5");
  const auto python = run_python(dir, write_npz_script(npz, true, true));
  ASSERT_EQ(python.status, 0) << python.output;
  ConvertOptions options;  // (N,7,5,3) and labels (N,4) are ambiguous: say what they are
  options.layout = "channels_last";
  options.task = "multi-label";
  const ConvertSummary summary = convert_npz(npz, path, options);
  EXPECT_EQ(summary.num_classes, 4);
  EXPECT_EQ(summary.shape, (core::Shape{3, 7, 5}));
  const DatasetInfo info = read_info(path, "test");
  EXPECT_EQ(info.target_size, 4);
  h5::Handle file = h5::open_file(path);
  const auto images = h5::read_dataset<std::uint8_t>(file.get(), "test/images");
  const auto targets = h5::read_dataset<float>(file.get(), "test/targets");
  for (int i = 0; i < 31; ++i) {
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 7; ++y)
        for (int x = 0; x < 5; ++x)  // HWC in the .npy, CHW in the dataset
          ASSERT_EQ(images[std::size_t(((i * 3 + c) * 7 + y) * 5 + x)], (i * 7 + y * 3 + x * 5 + c * 11 + 2) % 256);
    for (int k = 0; k < 4; ++k) ASSERT_EQ(targets[std::size_t(i * 4 + k)], float((i + k + 2) % 2));
  }
}

TEST(ConvertNpz, Errors) {
  TempDir dir;
  const std::string npz = dir.file("data.npz");
  auto python = run_python(dir, write_npz_script(npz, false, false));
  ASSERT_EQ(python.status, 0) << python.output;
  {  // damage one byte of the stored train images: the CRC check catches it
    std::fstream f(npz, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(1000);
    char byte = 0;
    f.read(&byte, 1);
    f.seekp(1000);
    byte = char(byte ^ 0x40);
    f.write(&byte, 1);
  }
  try {
    convert_npz(npz, dir.file("out.h5"));
    FAIL();
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr(npz + ": member 'train_images.npy': CRC-32 mismatch"));
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("out.h5")));
  python = run_python(dir, "import numpy as np\nnp.savez('" + npz + "', train_images=np.zeros((3, 4, 4), np.uint8))\n");
  ASSERT_EQ(python.status, 0) << python.output;
  try {
    convert_npz(npz, dir.file("out.h5"));
    FAIL();
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr(npz + ": no member 'train_labels.npy'"));
    EXPECT_THAT(e.what(), HasSubstr("found train_images.npy)"));
  }
  python = run_python(dir, "import numpy as np\nnp.savez('" + npz +
                               "', train_images=np.zeros((3, 4, 4), np.float32), train_labels=np.zeros(3, np.int64))\n");
  ASSERT_EQ(python.status, 0) << python.output;
  try {
    convert_npz(npz, dir.file("out.h5"));
    FAIL();
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr("member 'train_images.npy': images of dtype '<f4', expected uint8"));
  }
  // Damaged .npy headers end in an IoError naming the member, not in std::stoul's exceptions.
  for (const auto& [header, expected] : std::vector<std::pair<std::string, std::string>>{
           {"{'descr': '<ux', 'fortran_order': False, 'shape': (3, 4, 4), }", ".npy dtype '<ux' has no item size"},
           {"{'descr': '|u1', 'fortran_order': False, 'shape': (99999999999999999999999, 4, 4), }",
            "bad .npy shape (a dimension beyond 64 bits)"}}) {
    python = run_python(dir, "import io, struct, zipfile, numpy as np\n"
                             "h = \"" + header + "\".encode()\n"
                             "h += b' ' * ((64 - (11 + len(h)) % 64) % 64) + b'\\n'\n"
                             "labels = io.BytesIO()\n"
                             "np.save(labels, np.zeros(3, np.uint8))\n"
                             "with zipfile.ZipFile('" + npz + "', 'w') as z:\n"
                             "    z.writestr('train_images.npy', b'\\x93NUMPY\\x01\\x00' + struct.pack('<H', len(h)) + h)\n"
                             "    z.writestr('train_labels.npy', labels.getvalue())\n");
    ASSERT_EQ(python.status, 0) << python.output;
    try {
      convert_npz(npz, dir.file("out.h5"));
      FAIL() << header;
    } catch (const IoError& e) {
      EXPECT_THAT(e.what(), HasSubstr(npz + ": member 'train_images.npy': " + expected));
    }
  }
  std::ofstream(dir.file("text.npz")) << "not a zip file at all";
  try {
    convert_npz(dir.file("text.npz"), dir.file("out.h5"));
    FAIL();
  } catch (const IoError& e) {
    EXPECT_THAT(e.what(), HasSubstr("text.npz: not a zip (.npz) file"));
  }
}

// PNG files written by a minimal encoder (zlib + struct), so no image library is needed.
const char* kPngWriter = R"(
import os, struct, zlib, numpy as np
def png(path, a):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = a.shape[:2]
    colour = {2: 0, 3: 2}[a.ndim]
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
)";

TEST(ConvertImageFolder, ClassesFromSortedFoldersAndExactPixels) {
  TempDir dir;
  const std::string root = dir.file("images");
  const auto python = run_python(dir, std::string(kPngWriter) + R"(
root = ")" + root + R"("
for label, name in enumerate(["bird", "cat", "dog"]):
    for i in range(10):
        a = ((np.arange(4 * 6 * 3).reshape(4, 6, 3) * 5 + label * 40 + i) % 256).astype(np.uint8)
        png(f"{root}/{name}/img{i:02d}.png", a)
os.makedirs(root + "/.hidden")
open(root + "/dog/notes.txt", "w").write("not an image")
)");
  ASSERT_EQ(python.status, 0) << python.output;
  ConvertOptions options;
  options.test_fraction = 0.2;
  options.seed = 9;
  const std::string path = dir.file("out.h5");
  const ConvertSummary summary = convert_image_folder(root, path, options);
  EXPECT_EQ(summary.shape, (core::Shape{3, 4, 6}));
  EXPECT_EQ(summary.split_counts.at("train"), 24u);
  EXPECT_EQ(summary.split_counts.at("test"), 6u);
  const DatasetInfo info = read_info(path, "train");
  EXPECT_EQ(info.class_names, (std::vector<std::string>{"bird", "cat", "dog"}));
  h5::Handle file = h5::open_file(path);
  std::vector<std::uint8_t> images;
  std::vector<std::int32_t> labels;
  for (const char* split : {"train", "test"}) {
    const auto i = h5::read_dataset<std::uint8_t>(file.get(), std::string(split) + "/images");
    const auto l = h5::read_dataset<std::int32_t>(file.get(), std::string(split) + "/labels");
    images.insert(images.end(), i.begin(), i.end());
    labels.insert(labels.end(), l.begin(), l.end());
  }
  // Every source image appears exactly once, pixel for pixel (HWC in the PNG, CHW here).
  std::set<std::pair<int, int>> seen;
  for (std::size_t s = 0; s < 30; ++s) {
    const std::uint8_t* chw = images.data() + s * 72;
    const int label = labels[s];
    const int i = (chw[0] - label * 40 + 256) % 256;  // pixel (0,0,0) = label*40 + i
    seen.insert({label, i});
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 24; ++p) ASSERT_EQ(chw[c * 24 + p], (((p * 3 + c) * 5) + label * 40 + i) % 256);
  }
  EXPECT_EQ(seen.size(), 30u);
  for (int c = 0; c < 3; ++c) EXPECT_EQ(std::count(labels.begin() + 24, labels.end(), c), 2);
}

TEST(ConvertImageFolder, DifferentSizesFailUnlessResized) {
  TempDir dir;
  const std::string root = dir.file("images");
  const auto python = run_python(dir, std::string(kPngWriter) + R"(
root = ")" + root + R"("
png(root + "/a/one.png", np.array([[0, 200], [0, 200]], np.uint8))
png(root + "/a/two.png", np.full((2, 2), 7, np.uint8))
png(root + "/b/big.png", np.full((3, 5), 9, np.uint8))
)");
  ASSERT_EQ(python.status, 0) << python.output;
  try {
    convert_image_folder(root, dir.file("out.h5"));
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_THAT(e.what(), HasSubstr(root + "/b/big.png: image is 3x5 (HxW), expected 2x2 like " + root + "/a/one.png"));
  }
  ConvertOptions options;
  options.height = 4;
  options.width = 4;
  const std::string path = dir.file("out.h5");
  convert_image_folder(root, path, options);
  h5::Handle file = h5::open_file(path);
  const auto images = h5::read_dataset<std::uint8_t>(file.get(), "train/images");
  ASSERT_EQ(images.size(), 3u * 16u);
  // Bilinear with aligned pixel centres: the row 0, 200 becomes 0, 50, 150, 200.
  for (int y = 0; y < 4; ++y) {
    EXPECT_EQ(images[std::size_t(y * 4 + 0)], 0);
    EXPECT_EQ(images[std::size_t(y * 4 + 1)], 50);
    EXPECT_EQ(images[std::size_t(y * 4 + 2)], 150);
    EXPECT_EQ(images[std::size_t(y * 4 + 3)], 200);
  }
  for (int p = 0; p < 16; ++p) EXPECT_EQ(images[std::size_t(32 + p)], 9);
}

TEST(ConvertImageFolder, JpegAndGreyDetection) {
  TempDir dir;
  const std::string root = dir.file("images");
  const auto python = run_python(dir, R"(
import os, sys, numpy as np
try:
    from PIL import Image
except ImportError:
    sys.exit(3)
root = ")" + root + R"("
for name in ("x", "y"):
    os.makedirs(f"{root}/{name}")
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i + (100 if name == "y" else 0), np.uint8)).save(f"{root}/{name}/{i}.jpg", quality=95)
)");
  if (python.status == 3) GTEST_SKIP() << "Pillow not available to write JPEGs";
  ASSERT_EQ(python.status, 0) << python.output;
  const std::string path = dir.file("out.h5");
  const ConvertSummary summary = convert_image_folder(root, path);
  EXPECT_EQ(summary.shape, (core::Shape{1, 8, 8}));
  h5::Handle file = h5::open_file(path);
  const auto images = h5::read_dataset<std::uint8_t>(file.get(), "train/images");
  for (int s = 0; s < 6; ++s)  // flat grey JPEGs decode to within a step or two of their value
    for (int p = 0; p < 64; ++p) EXPECT_NEAR(images[std::size_t(s * 64 + p)], 40 * (s % 3) + (s >= 3 ? 100 : 0), 2);
}

}  // namespace
}  // namespace mpicnn::data
