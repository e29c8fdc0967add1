#include "apps/batch_boxes.hpp"

#include "core/errors.hpp"

namespace mpicnn::app {

std::span<const core::ImageBoxes> BatchBoxes::train_rows(const data::Batch& batch, const data::ReaderOptions& options,
                                                         const core::Shape& image) {
  const std::vector<std::uint32_t> samples = data::train_step_samples(options, split_.samples(), batch.epoch, batch.step);
  if (samples.size() != std::size_t(batch.count))
    throw Error("boxes of step " + std::to_string(batch.step) + ": " + std::to_string(samples.size()) +
                " samples scheduled but the reader gave " + std::to_string(batch.count) + " (a reader bug, please report it)");
  moved_.clear(), rows_.clear();
  for (std::uint32_t sample : samples) moved_.push_back(data::augmented_boxes(split_.of(sample), options, batch.epoch, sample, image));
  for (const data::BoxList& list : moved_) rows_.push_back({list.boxes, list.classes, list.crowd});
  return rows_;
}

std::span<const core::ImageBoxes> BatchBoxes::stored_rows(std::size_t first, int count) {
  rows_.clear();
  for (int n = 0; n < count; ++n) rows_.push_back(split_.of(first + std::size_t(n)));
  return rows_;
}

}  // namespace mpicnn::app
