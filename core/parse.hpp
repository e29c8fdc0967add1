#pragma once
// Reading a number from text that must be the number and nothing else: std::stoul and friends
// throw their own exceptions on bad text, skip leading blanks and accept "-1" for unsigned types,
// so callers name the bad value in their own one-line error instead.
#include <charconv>
#include <optional>
#include <string_view>

namespace mpicnn::core {

// The whole of `text` as a T, or nothing when it is empty, has other characters or is out of range.
template <class T>
std::optional<T> parse_whole(std::string_view text) {
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace mpicnn::core
