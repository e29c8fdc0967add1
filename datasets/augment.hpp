#pragma once
// Seeded augmentation of training samples, as MONAI's and torchvision's random transforms: flips per
// axis, a random crop after black padding, a random affine (rotation, isotropic zoom, translation)
// resampled bilinearly (trilinearly for volumes) with black padding, and an intensity scale and shift.
//
// Every random choice of a sample comes from core::Rng seeded by core::derive_seed(epoch seed, sample
// index), so a sample's output depends on (seed, epoch, sample index) alone: not on the rank count, the
// batch it lands in, prefetching or a resume. Draws happen in a fixed order and only for enabled
// options (draw_augmentation), so enabling a later option leaves the earlier draws as they were.
//
// Coordinates: x along W, y along H (downwards), z along D, in voxel indices; the centre of an axis of
// n voxels is (n - 1) / 2, as torchvision's affine on tensors and grid_sample(align_corners=False).
#include <array>
#include <cstdint>
#include <string>

#include "core/tensor.hpp"

namespace mpicnn::data {

// Spatial axes by their config letters: w (width), h (height), d (depth, volumes only).
struct Axes {
  bool w = false, h = false, d = false;
  bool any() const { return w || h || d; }
};

struct Augmentation {
  Axes flip{};                      // mirror along each of these axes, each with flip_probability
  double flip_probability = 0.5;
  int crop_pad = 0;                 // pad every spatial side (H, W; also D of volumes) with black, crop back at random
  double rotate_degrees = 0;        // each angle uniform in [-rotate_degrees, rotate_degrees]
  Axes rotate_axes{true, true, true};  // volumes: about these axes; images rotate in their plane (about d)
  double scale_min = 1, scale_max = 1;  // one zoom factor for every axis, uniform in [min, max]
  std::array<double, 3> translate{};    // w, h, d: shift uniform in [-f n, f n] voxels for an axis of n (images: d unused)
  double intensity_scale_min = 1, intensity_scale_max = 1;  // y * factor, factor uniform in [min, max]
  double intensity_shift = 0;       // y + offset, offset uniform in [-shift, shift] (units of y: the data's std when normalised)
  // The chance that a sample gets its affine transform, its intensity change (MONAI's prob); 1: always.
  double affine_probability = 1, intensity_probability = 1;

  bool affine() const {
    return rotate_degrees > 0 || scale_min != 1 || scale_max != 1 || translate[0] > 0 || translate[1] > 0 ||
           translate[2] > 0;
  }
  bool intensity() const { return intensity_scale_min != 1 || intensity_scale_max != 1 || intensity_shift > 0; }
  bool any() const { return flip.any() || crop_pad > 0 || affine() || intensity(); }
};

// Throws ConfigError naming `path` and the data.* key when a value is out of range or the samples
// (`shape`) cannot take it (a depth flip of 2D images, say).
void check_augmentation(const Augmentation& a, const core::Shape& shape, const std::string& path);

// Where output voxel p = (x, y, z) takes its value: source q = matrix p + offset.
struct AffineMap {
  std::array<std::array<double, 3>, 3> matrix{};
  std::array<double, 3> offset{};
};

// The inverse of the forward transform p_out = centre + scale R (p_in - centre) + translate, with
// R = R_d(angles[0]) R_h(angles[1]) R_w(angles[2]) (degrees; R_d turns x towards y, a clockwise turn
// on screen, as torchvision's affine(angle)), translate along (w, h, d) in voxels.
AffineMap affine_map(const core::Shape& shape, const std::array<double, 3>& angles_dhw, double scale,
                     const std::array<double, 3>& translate_whd);
// The forward transform itself, p_out = matrix p_in + offset (voxel indices): where a source point
// lands, for geometry that moves with the pixels (boxes, datasets/boxes.hpp).
AffineMap affine_forward(const core::Shape& shape, const std::array<double, 3>& angles_dhw, double scale,
                         const std::array<double, 3>& translate_whd);

// out (C,D,H,W) = in (C,D,H,W) sampled at map(p) for every output voxel p, linear along each axis
// (bilinear for images, d = 1; trilinear for volumes); a neighbour outside `in` reads as pad[c], as
// grid_sample's padding_mode = zeros does with pad 0. out and in must not overlap.
template <class T>
void resample_affine(T* out, const T* in, const core::Shape& shape, const AffineMap& map, const T* pad);

// One sample's random choices.
struct SampleDraw {
  std::array<int, 3> crop_offset{};    // w, h, d: source offset of the crop window
  std::array<bool, 3> flip{};          // w, h, d
  bool affine = false;
  AffineMap map{};      // output voxel -> source (the pixels' resampling)
  AffineMap forward{};  // source -> output: the inverse of map, from the same draw
  double intensity_scale = 1, intensity_shift = 0;
};

// The draws, in this order and each only when its option is on: crop offsets (h, w, then d of
// volumes), flips (w, h, d), whether to apply the affine (when affine_probability < 1), rotation
// angles (d, h, w: those in rotate_axes; images: d), zoom, translations (w, h, d), whether to apply
// the intensity change (when intensity_probability < 1), intensity factor, intensity offset. The
// parameters are drawn whether or not they are applied, so the stream does not depend on it.
SampleDraw draw_augmentation(const Augmentation& a, const core::Shape& shape, std::uint64_t sample_seed);

}  // namespace mpicnn::data
