#pragma once
// Reading the line-based fixtures the Python reference scripts write at test time: each line is a
// name followed by its values.
#include <gtest/gtest.h>

#include <cstdlib>
#include <istream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace mpicnn::core::fixtures {

// The values of the next line, which must start with `name` (floating-point values may be nan,
// which operator>> does not read).
template <class T>
std::vector<T> values_after(std::istream& in, const std::string& name) {
  std::string text, word;
  std::getline(in, text);
  std::istringstream line(text);
  line >> word;
  EXPECT_EQ(word, name);
  std::vector<T> values;
  for (std::string value; line >> value;) {
    if constexpr (std::is_floating_point_v<T>) values.push_back(T(std::strtod(value.c_str(), nullptr)));
    else values.push_back(T(std::stoll(value)));
  }
  return values;
}

}  // namespace mpicnn::core::fixtures
