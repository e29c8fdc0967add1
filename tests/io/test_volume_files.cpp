// Checkpoints and bundles of a model on volumes: the input shape (C,D,H,W) is written as 4 sizes and
// read back, the weights load bitwise, images keep their 3 sizes (C,H,W) (files written before
// volumes read as before), and a bad input_shape is refused with the file named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "core/errors.hpp"
#include "core/model.hpp"
#include "core/optimizer.hpp"
#include "core/rng.hpp"
#include "datasets/h5.hpp"
#include "io/bundle.hpp"
#include "io/checkpoint.hpp"

namespace mpicnn::io {
namespace {

namespace fs = std::filesystem;
namespace h5 = mpicnn::data::h5;
using ::testing::HasSubstr;

const char* kVolumeSpec = "conv3d(4,3,pad=1,bias=false) bn relu maxpool3d(2) globalavgpool flatten dense(3)";
const core::Shape kVolume{1, 10, 12, 8};  // (C,D,H,W) = (1,8,10,12)

class VolumeFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mpicnn_volume_files_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A checkpoint of `spec` on `input` with random weights; returns its path.
  std::string save(const std::string& spec, const core::Shape& input, const std::string& name, core::Model& model) {
    core::Rng rng(7);
    for (const core::ParamInfo& p : model.params().infos())
      for (std::size_t i = 0; i < p.size; ++i) model.params().values()[p.offset + i] = float(rng.uniform(-1.0, 1.0));
    ModelMeta meta{spec, input, "cross_entropy", std::vector<double>(std::size_t(input.c), 0.5),
                   std::vector<double>(std::size_t(input.c), 0.25), {}, {}};
    core::OptimizerConfig config;
    core::Optimizer optimizer(config, model.params());
    const std::string path = (dir_ / name).string();
    save_checkpoint(path, meta, model, optimizer, TrainerState{}, "", 1, {});
    return path;
  }
  static std::vector<std::int64_t> stored_input_shape(const std::string& path) {
    h5::Handle file = h5::open_file(path);
    h5::Handle model = h5::open_group(file.get(), "model");
    return h5::read_array_attribute<std::int64_t>(model.get(), "input_shape");
  }

  // Every parameter tensor bitwise equal (the arena's alignment padding is no tensor's).
  static void expect_same_weights(const core::Model& a, const core::Model& b) {
    for (std::size_t i = 0; i < a.params().infos().size(); ++i) {
      const core::ParamInfo& p = a.params().info(int(i));
      EXPECT_EQ(0, std::memcmp(a.params().value(int(i)), b.params().value(int(i)), p.size * sizeof(float))) << p.name;
    }
  }

  fs::path dir_;
};

TEST_F(VolumeFiles, CheckpointAndBundleKeepTheVolumeShapeAndWeights) {
  core::Model model(kVolumeSpec, kVolume, 2);
  const std::string checkpoint = save(kVolumeSpec, kVolume, "volume.h5", model);
  EXPECT_EQ(stored_input_shape(checkpoint), (std::vector<std::int64_t>{1, 8, 10, 12}));
  const CheckpointHeader header = read_checkpoint_header(checkpoint);
  EXPECT_EQ(header.model.input, kVolume);
  EXPECT_EQ(header.model.input.str(), "(1,8,10,12)");
  core::Model loaded(header.model.spec, header.model.input, 2);
  load_checkpoint(checkpoint, loaded, nullptr);
  expect_same_weights(loaded, model);
  EXPECT_THAT(loaded.summary(), HasSubstr("(1,8,10,12)"));

  const std::string bundle = (dir_ / "volume_bundle.h5").string();
  export_bundle(checkpoint, bundle);
  EXPECT_EQ(stored_input_shape(bundle), (std::vector<std::int64_t>{1, 8, 10, 12}));
  const BundleHeader b = read_bundle_header(bundle);
  EXPECT_EQ(b.model.input, kVolume);
  core::Model from_bundle(b.model.spec, b.model.input, 2);
  load_bundle(bundle, from_bundle);
  expect_same_weights(from_bundle, model);
}

TEST_F(VolumeFiles, ImagesKeepThreeSizes) {
  const std::string spec = "conv(2,3) flatten dense(2)";
  core::Model model(spec, {3, 6, 5}, 1);
  const std::string checkpoint = save(spec, {3, 6, 5}, "image.h5", model);
  EXPECT_EQ(stored_input_shape(checkpoint), (std::vector<std::int64_t>{3, 6, 5}));
  EXPECT_EQ(read_checkpoint_header(checkpoint).model.input, (core::Shape{3, 6, 5}));
}

TEST_F(VolumeFiles, BadInputShapesAreRefused) {
  core::Model model(kVolumeSpec, kVolume, 1);
  const std::string checkpoint = save(kVolumeSpec, kVolume, "bad.h5", model);
  const std::string bundle = (dir_ / "bad_bundle.h5").string();
  export_bundle(checkpoint, bundle);
  for (const std::vector<std::int64_t>& sizes :
       {std::vector<std::int64_t>{1, 8, 10, 12, 2}, {1, 10}, {1, 0, 10, 12}, {1, 8, 10, 70000}}) {
    for (const std::string& path : {checkpoint, bundle}) {
      {
        h5::Handle file = h5::open_file(path, true);
        h5::Handle group = h5::open_group(file.get(), "model");
        h5::write_attribute(group.get(), "input_shape", std::span<const std::int64_t>(sizes));
      }
      try {
        if (path == checkpoint) read_checkpoint_header(path);
        else read_bundle_header(path);
        ADD_FAILURE() << path << ": no error for input_shape of " << sizes.size() << " sizes";
      } catch (const IoError& e) {
        EXPECT_THAT(e.what(), HasSubstr(path));
        EXPECT_THAT(e.what(), HasSubstr("/model input_shape must be 3 sizes (C,H,W) or 4 (C,D,H,W), each in [1, 65536]"));
      }
    }
  }
}

}  // namespace
}  // namespace mpicnn::io
