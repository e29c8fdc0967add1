#pragma once
// Reading the line-based fixtures the Python reference scripts write at test time: each line is a
// name followed by its values.
#include <gtest/gtest.h>

#include <istream>
#include <sstream>
#include <string>
#include <vector>

namespace mpicnn::core::fixtures {

// The values of the next line, which must start with `name`.
template <class T>
std::vector<T> values_after(std::istream& in, const std::string& name) {
  std::string text, word;
  std::getline(in, text);
  std::istringstream line(text);
  line >> word;
  EXPECT_EQ(word, name);
  std::vector<T> values;
  for (T v; line >> v;) values.push_back(v);
  return values;
}

}  // namespace mpicnn::core::fixtures
