#pragma once
// The task's options in checkpoints and bundles: attributes of /model beside `loss`, one per option
// its kind takes, with the kind's defaults filled in (core::Task::options()): loss_scale (arcface,
// cosface), loss_margin (arcface, cosface, triplet), loss_mining (triplet), loss_class_weights and
// loss_label_smoothing (cross_entropy), loss_pos_weight and loss_focal_alpha (bce), loss_focal_gamma
// (cross_entropy, bce). An option at its "off" value (no weights, no smoothing, no focal term) is
// not written, so files written before these attributes read as the kind's defaults, as they were
// trained.
#include <hdf5.h>

#include <memory>
#include <string>

#include "core/task.hpp"
#include "io/checkpoint.hpp"

namespace mpicnn::io {

void write_loss_options(hid_t model_group, const core::TaskOptions& options);
// IoError naming `path` for a negative or non-finite value.
core::TaskOptions read_loss_options(hid_t model_group, const std::string& path);

// The task a file's /model attributes describe; IoError naming `path` when they describe none.
std::unique_ptr<core::Task> task_of(const ModelMeta& model, const std::string& path);

// The loss with the options its task uses, for `inspect`: "arcface (scale 30, margin 0.3)".
std::string loss_description(const ModelMeta& model);

}  // namespace mpicnn::io
