#pragma once
// Reading the text fixtures the PyTorch scripts in tests/core/pytorch/ write: one line per array,
// its name and then its values.
#include <gtest/gtest.h>

#include <istream>
#include <sstream>
#include <string>
#include <vector>

namespace mpicnn::core {

// The values of the next line, which must be named `name`.
inline std::vector<double> values_after(std::istream& in, const std::string& name) {
  std::string text, word;
  std::getline(in, text);
  std::istringstream line(text);
  line >> word;
  EXPECT_EQ(word, name);
  std::vector<double> values;
  for (double v; line >> v;) values.push_back(v);
  return values;
}

// max |ours / normalizer - reference| and max |reference|: gradients compared relative to the
// case's largest entry.
inline std::pair<double, double> worst_and_largest(const std::vector<float>& ours, double normalizer,
                                                   const std::vector<double>& reference) {
  double worst = 0, largest = 0;
  for (std::size_t i = 0; i < ours.size(); ++i) {
    worst = std::max(worst, std::abs(ours[i] / normalizer - reference[i]));
    largest = std::max(largest, std::abs(reference[i]));
  }
  return {worst, largest};
}

}  // namespace mpicnn::core
