#pragma once
// A portable random stream: std::mt19937_64 is fully specified by the standard, but std's
// distributions are not, so uniform and normal draws are written here. The same seed gives the
// same numbers on every compiler and platform, which exact reproducibility needs.
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>

namespace mpicnn::core {

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}
  std::uint64_t next() { return engine_(); }
  // Moves past `draws` numbers of the engine (uniform takes one, normal two).
  void skip(std::uint64_t draws) { engine_.discard(draws); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(engine_() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [0, n) without modulo bias.
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    std::uint64_t x;
    do x = engine_(); while (x >= limit);
    return x % n;
  }
  double normal() {  // Box-Muller, one value per call
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
  // The engine's full state as text, for checkpoints.
  std::string state() const { std::ostringstream s; s << engine_; return s.str(); }
  void set_state(const std::string& text) { std::istringstream s(text); s >> engine_; }

 private:
  std::mt19937_64 engine_;
};

// A seed for stream `stream` derived from a base seed (splitmix64), so that independent uses
// (weights, shuffling per epoch, augmentation) never share a sequence.
inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream) {
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (stream + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace mpicnn::core
