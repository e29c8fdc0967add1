#include "datasets/augment.hpp"

#include <cmath>
#include <cstdio>
#include <utility>

#include "core/errors.hpp"
#include "core/rng.hpp"

namespace mpicnn::data {
namespace {

std::string number(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", x);
  return text;
}

[[noreturn]] void refuse(const std::string& path, const std::string& key, const std::string& value,
                         const std::string& expected) {
  throw ConfigError(path + ": 'data." + key + "' = " + value + ", expected " + expected);
}

void check_range(const std::string& path, const std::string& key, double low, double high) {
  if (!(std::isfinite(low) && std::isfinite(high) && low > 0 && low <= high))
    refuse(path, key, number(low) + "," + number(high), "min,max with 0 < min <= max");
}

// A fair coin keeps the draw of the versions before flip_probability existed (below(2)), so a run
// started with random_flip resumes with the same flips.
bool chance(core::Rng& rng, double probability) {
  return probability == 0.5 ? rng.below(2) == 1 : rng.uniform() < probability;
}

using Matrix = std::array<std::array<double, 3>, 3>;

Matrix multiply(const Matrix& a, const Matrix& b) {
  Matrix c{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 3; ++k) c[i][j] += a[i][k] * b[k][j];
  return c;
}

// A turn by `degrees` in the plane of axes (from, to), taking `from` towards `to`; axes 0 x, 1 y, 2 z.
Matrix turn(double degrees, int from, int to) {
  Matrix r{};
  for (int i = 0; i < 3; ++i) r[i][i] = 1;
  const double radians = degrees * M_PI / 180.0, c = std::cos(radians), s = std::sin(radians);
  r[from][from] = c, r[from][to] = -s, r[to][from] = s, r[to][to] = c;
  return r;
}

// R = R_d R_h R_w: R_d turns x towards y, R_h z towards x, R_w y towards z (right-handed about each axis).
Matrix rotation_dhw(const std::array<double, 3>& angles_dhw) {
  return multiply(multiply(turn(angles_dhw[0], 0, 1), turn(angles_dhw[1], 2, 0)), turn(angles_dhw[2], 1, 2));
}

// The centre of an axis of n voxels is (n - 1) / 2 (augment.hpp).
std::array<double, 3> centre_whd(const core::Shape& shape) {
  return {(shape.w - 1) / 2.0, (shape.h - 1) / 2.0, (shape.d - 1) / 2.0};
}

// The map p -> matrix p + offset that takes point `from` to point `to`.
AffineMap taking(const Matrix& matrix, const std::array<double, 3>& from, const std::array<double, 3>& to) {
  AffineMap map;
  map.matrix = matrix;
  for (int i = 0; i < 3; ++i) {
    map.offset[i] = to[i];
    for (int j = 0; j < 3; ++j) map.offset[i] -= matrix[i][j] * from[j];
  }
  return map;
}

// p_out = centre + scale R (p_in - centre) + translate, or its inverse
// p_in = centre + R^T (p_out - centre - translate) / scale (R is orthogonal).
AffineMap affine_transform(const core::Shape& shape, const std::array<double, 3>& angles_dhw, double scale,
                           const std::array<double, 3>& translate_whd, bool inverse) {
  const Matrix rotation = rotation_dhw(angles_dhw);
  const std::array<double, 3> centre = centre_whd(shape);
  std::array<double, 3> shifted_centre{};
  for (int i = 0; i < 3; ++i) shifted_centre[i] = centre[i] + translate_whd[i];
  Matrix matrix{};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) matrix[i][j] = inverse ? rotation[j][i] / scale : scale * rotation[i][j];
  return inverse ? taking(matrix, shifted_centre, centre) : taking(matrix, centre, shifted_centre);
}

}  // namespace

void check_augmentation(const Augmentation& a, const core::Shape& shape, const std::string& path) {
  const bool volume = shape.is_volume();
  const std::string images = "images " + shape.str() + " (C,H,W)";
  const std::pair<const char*, double> probabilities[] = {{"flip_probability", a.flip_probability},
                                                          {"affine_probability", a.affine_probability},
                                                          {"intensity_probability", a.intensity_probability}};
  for (const auto& [key, probability] : probabilities)
    if (!(probability >= 0 && probability <= 1)) refuse(path, key, number(probability), "a probability in [0, 1]");
  if (a.flip.d && !volume)
    throw ConfigError(path + ": 'data.flip_axes' names d, but the samples are " + images +
                      ", expected w or h: d flips volumes only");
  if (a.crop_pad < 0) refuse(path, "random_crop_pad", std::to_string(a.crop_pad), ">= 0 pixels");
  if (!(a.rotate_degrees >= 0 && a.rotate_degrees <= 180))
    refuse(path, "rotate_degrees", number(a.rotate_degrees), "degrees in [0, 180]");
  if (a.rotate_degrees > 0 && volume && !a.rotate_axes.any())
    refuse(path, "rotate_axes", "(none)", "one or more of d, h, w to rotate volumes about");
  if (a.rotate_degrees > 0 && !volume && !a.rotate_axes.d)
    throw ConfigError(path + ": 'data.rotate_axes' leaves out d, but the samples are " + images +
                      ", which turn in their plane (about d): expected d among them");
  check_range(path, "scale_range", a.scale_min, a.scale_max);
  const char* letters[3] = {"w", "h", "d"};
  for (int i = 0; i < 3; ++i)
    if (!(a.translate[i] >= 0 && a.translate[i] <= 1))
      refuse(path, "translate", number(a.translate[i]) + " (" + letters[i] + ")", "a fraction of the size in [0, 1]");
  check_range(path, "intensity_scale", a.intensity_scale_min, a.intensity_scale_max);
  if (!(a.intensity_shift >= 0 && std::isfinite(a.intensity_shift)))
    refuse(path, "intensity_shift", number(a.intensity_shift), "a finite offset >= 0");
}

AffineMap affine_map(const core::Shape& shape, const std::array<double, 3>& angles_dhw, double scale,
                     const std::array<double, 3>& translate_whd) {
  return affine_transform(shape, angles_dhw, scale, translate_whd, true);
}

AffineMap affine_forward(const core::Shape& shape, const std::array<double, 3>& angles_dhw, double scale,
                         const std::array<double, 3>& translate_whd) {
  return affine_transform(shape, angles_dhw, scale, translate_whd, false);
}

template <class T>
void resample_affine(T* out, const T* in, const core::Shape& shape, const AffineMap& map, const T* pad) {
  const int width = shape.w, height = shape.h, depth = shape.d;
  const std::size_t plane = std::size_t(height) * width, volume = plane * depth;
  const auto& m = map.matrix;
  for (int z = 0; z < depth; ++z)
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x) {
        const double q[3] = {m[0][0] * x + m[0][1] * y + m[0][2] * z + map.offset[0],
                             m[1][0] * x + m[1][1] * y + m[1][2] * z + map.offset[1],
                             m[2][0] * x + m[2][1] * y + m[2][2] * z + map.offset[2]};
        const int size[3] = {width, height, depth};
        int first[3];
        double weight[3][2];
        for (int a = 0; a < 3; ++a) {
          const double floor = std::floor(q[a]);
          first[a] = int(std::max(-2.0, std::min(floor, double(size[a]))));  // far outside: all pad
          weight[a][1] = q[a] - floor;
          weight[a][0] = 1 - weight[a][1];
        }
        const std::size_t at = std::size_t(z) * plane + std::size_t(y) * width + std::size_t(x);
        for (int c = 0; c < shape.c; ++c) {
          const T* source = in + std::size_t(c) * volume;
          double sum = 0;
          // Neighbours of weight 0 are skipped: an image (d = 1) has z = 0 exactly and uses four.
          for (int k = 0; k < 2; ++k) {
            if (weight[2][k] == 0) continue;
            const int sz = first[2] + k;
            for (int j = 0; j < 2; ++j) {
              if (weight[1][j] == 0) continue;
              const int sy = first[1] + j;
              for (int i = 0; i < 2; ++i) {
                if (weight[0][i] == 0) continue;
                const int sx = first[0] + i;
                const bool inside = sx >= 0 && sx < width && sy >= 0 && sy < height && sz >= 0 && sz < depth;
                const double value = inside ? double(source[std::size_t(sz) * plane + std::size_t(sy) * width + sx])
                                            : double(pad[c]);
                sum += weight[2][k] * weight[1][j] * weight[0][i] * value;
              }
            }
          }
          out[std::size_t(c) * volume + at] = T(sum);
        }
      }
}

template void resample_affine<float>(float*, const float*, const core::Shape&, const AffineMap&, const float*);
template void resample_affine<double>(double*, const double*, const core::Shape&, const AffineMap&, const double*);

SampleDraw draw_augmentation(const Augmentation& a, const core::Shape& shape, std::uint64_t sample_seed) {
  SampleDraw draw;
  core::Rng rng(sample_seed);
  const bool volume = shape.is_volume();
  if (a.crop_pad > 0) {
    const std::uint64_t choices = 2 * std::uint64_t(a.crop_pad) + 1;
    draw.crop_offset[1] = int(rng.below(choices)) - a.crop_pad;
    draw.crop_offset[0] = int(rng.below(choices)) - a.crop_pad;
    if (volume) draw.crop_offset[2] = int(rng.below(choices)) - a.crop_pad;
  }
  if (a.flip.w) draw.flip[0] = chance(rng, a.flip_probability);
  if (a.flip.h) draw.flip[1] = chance(rng, a.flip_probability);
  if (a.flip.d && volume) draw.flip[2] = chance(rng, a.flip_probability);
  if (a.affine()) {
    const bool apply = a.affine_probability >= 1 || rng.uniform() < a.affine_probability;
    std::array<double, 3> angles{}, shift{};
    if (a.rotate_degrees > 0) {
      const bool about[3] = {a.rotate_axes.d || !volume, volume && a.rotate_axes.h, volume && a.rotate_axes.w};
      for (int i = 0; i < 3; ++i)
        if (about[i]) angles[i] = rng.uniform(-a.rotate_degrees, a.rotate_degrees);
    }
    double scale = 1;
    if (a.scale_min != 1 || a.scale_max != 1) scale = rng.uniform(a.scale_min, a.scale_max);
    const int size[3] = {shape.w, shape.h, shape.d};
    for (int i = 0; i < (volume ? 3 : 2); ++i)
      if (a.translate[i] > 0) shift[i] = rng.uniform(-a.translate[i], a.translate[i]) * size[i];
    draw.affine = apply;
    draw.map = affine_map(shape, angles, scale, shift);
    draw.forward = affine_forward(shape, angles, scale, shift);
  }
  if (a.intensity()) {
    const bool apply = a.intensity_probability >= 1 || rng.uniform() < a.intensity_probability;
    double factor = 1, offset = 0;
    if (a.intensity_scale_min != 1 || a.intensity_scale_max != 1)
      factor = rng.uniform(a.intensity_scale_min, a.intensity_scale_max);
    if (a.intensity_shift > 0) offset = rng.uniform(-a.intensity_shift, a.intensity_shift);
    if (apply) draw.intensity_scale = factor, draw.intensity_shift = offset;
  }
  return draw;
}

}  // namespace mpicnn::data
