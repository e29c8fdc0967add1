// libFuzzer target: the box loader (data::read_boxes) on a well-formed dataset file whose box
// arrays come from the input: presence, shapes, element types and values of boxes, box_classes,
// box_offsets, box_iscrowd and image_ids (HDF5's own parser is fuzz_dataset's business). A file
// that passes must give in-bounds views for every sample (ASan checks SplitBoxes::of).
#include <hdf5.h>

#include <cstring>
#include <vector>

#include "datasets/boxes.hpp"
#include "datasets/h5.hpp"
#include "datasets/writer.hpp"
#include "fuzz_util.hpp"

namespace {

namespace h5 = mpicnn::data::h5;

class Bytes {
 public:
  Bytes(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }
  int below(int n) { return byte() % n; }
  template <class T>
  T value() {
    T v;
    std::uint8_t raw[sizeof(T)];
    for (auto& b : raw) b = byte();
    std::memcpy(&v, raw, sizeof v);
    return v;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_, at_ = 0;
};

// A small number: mostly near the sensible value, sometimes raw.
double small(Bytes& in, int limit) {
  switch (in.below(4)) {
    case 0: return double(in.value<float>());
    case 1: return in.below(limit + 1) + in.below(4) * 0.25;
    default: return in.below(limit + 1);
  }
}

// One dataset `name` of shape `dims` (or one row more or less, or another column count) in an
// element type chosen by the input; absent now and then.
void write_array(hid_t file, const std::string& name, Bytes& in, std::vector<hsize_t> dims, int limit) {
  if (in.below(8) == 0) return;  // absent
  if (in.below(6) == 0) dims[0] = hsize_t(std::max<long>(0, long(dims[0]) + in.below(3) - 1));
  if (dims.size() == 2 && in.below(8) == 0) dims[1] = hsize_t(in.below(6));
  std::size_t total = 1;
  for (hsize_t d : dims) total *= std::size_t(d);
  std::vector<double> values(total);
  for (double& v : values) v = small(in, limit);
  switch (in.below(4)) {
    case 0: h5::write_dataset<float>(file, name, std::vector<float>(values.begin(), values.end()), dims); break;
    case 1: h5::write_dataset<double>(file, name, values, dims); break;
    case 2: h5::write_dataset<std::int64_t>(file, name, std::vector<std::int64_t>(values.begin(), values.end()), dims); break;
    default: h5::write_dataset<std::int32_t>(file, name, std::vector<std::int32_t>(values.begin(), values.end()), dims); break;
  }
}

void write_case(const std::string& path, Bytes& in, std::size_t samples, const mpicnn::core::Shape& shape, int classes) {
  mpicnn::data::DatasetWriter writer(path, {classes, {}}, {0, 1});
  writer.begin_split("train", shape, samples, true);
  writer.append(std::vector<std::uint8_t>(samples * shape.size(), 0), std::vector<std::int32_t>(samples, 0));
  const std::size_t boxes = std::size_t(in.below(9));
  write_array(writer.file(), "train/boxes", in, {boxes, 4}, std::max(shape.h, shape.w));
  write_array(writer.file(), "train/box_classes", in, {boxes}, classes);
  if (in.below(2)) {  // monotone offsets ending at the box count, the usual case
    std::vector<std::int64_t> offsets(samples + 1, 0);
    for (std::size_t n = 1; n <= samples; ++n) offsets[n] = std::min<std::int64_t>(std::int64_t(boxes), offsets[n - 1] + in.below(4));
    offsets[samples] = std::int64_t(boxes) + (in.below(8) == 0 ? 1 : 0);
    h5::write_dataset<std::int64_t>(writer.file(), "train/box_offsets", offsets, {samples + 1});
  } else {
    write_array(writer.file(), "train/box_offsets", in, {samples + 1}, int(boxes));
  }
  write_array(writer.file(), "train/box_iscrowd", in, {boxes}, 1);
  write_array(writer.file(), "train/image_ids", in, {samples}, 1000);
  writer.finish();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = fuzz::temp_path("-boxes.h5");
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  Bytes in(data, size);
  const std::size_t samples = 1 + std::size_t(in.below(4));
  const mpicnn::core::Shape shape{1, 1 + in.below(12), 1 + in.below(12)};
  const int classes = 1 + in.below(4);
  write_case(path, in, samples, shape, classes);
  fuzz::expect_clean_rejection([&] {
    const mpicnn::data::SplitBoxes boxes = mpicnn::data::read_boxes(path, "train");
    std::size_t seen = 0;
    for (std::size_t n = 0; n < boxes.samples(); ++n) {
      const mpicnn::data::SampleBoxes b = boxes.of(n);
      for (std::size_t m = 0; m < b.boxes.size(); ++m) seen += b.classes[m] < classes && b.crowd[m] <= 1;
    }
    if (seen != boxes.boxes.size()) {
      std::fprintf(stderr, "FINDING: a box past its checks (class or iscrowd out of range)\n");
      std::abort();
    }
  });
  const ssize_t open = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  if (open != 0) {
    std::fprintf(stderr, "FINDING: %zd HDF5 objects left open after read_boxes\n", open);
    std::abort();
  }
  return 0;
}
