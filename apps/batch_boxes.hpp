#pragma once
// The boxes of a batch's rows, for a task that needs them (detection): a TrainReader step's rows
// by the sample indices the reader gives (Batch::samples), moved as the augmentation moved their
// pixels; an EvalReader's rows as stored.
#include <span>
#include <string>
#include <vector>

#include "datasets/boxes.hpp"

namespace mpicnn::app {

class BatchBoxes {
 public:
  BatchBoxes(const std::string& path, const std::string& split) : split_(data::read_boxes(path, split)) {}

  // The rows of `batch`, read by a TrainReader with `options` from images of shape `image`.
  std::span<const core::ImageBoxes> train_rows(const data::Batch& batch, const data::ReaderOptions& options,
                                               const core::Shape& image);
  // Samples [first, first + count) of the split, as stored.
  std::span<const core::ImageBoxes> stored_rows(std::size_t first, int count);
  const data::SplitBoxes& split() const { return split_; }

 private:
  data::SplitBoxes split_;
  std::vector<data::BoxList> moved_;
  std::vector<core::ImageBoxes> rows_;
};

}  // namespace mpicnn::app
