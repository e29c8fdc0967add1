#include "apps/batch_boxes.hpp"

namespace mpicnn::app {

std::span<const core::ImageBoxes> BatchBoxes::train_rows(const data::Batch& batch, const data::ReaderOptions& options,
                                                         const core::Shape& image) {
  moved_.clear(), rows_.clear();
  for (std::uint32_t sample : batch.samples)
    moved_.push_back(data::augmented_boxes(split_.of(sample), options, batch.epoch, sample, image));
  for (const data::BoxList& list : moved_) rows_.push_back({list.boxes, list.classes, list.crowd});
  return rows_;
}

std::span<const core::ImageBoxes> BatchBoxes::stored_rows(std::size_t first, int count) {
  rows_.clear();
  for (int n = 0; n < count; ++n) rows_.push_back(split_.of(first + std::size_t(n)));
  return rows_;
}

}  // namespace mpicnn::app
