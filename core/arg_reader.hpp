#pragma once
// Reads a layer's arguments against its signature, e.g. {"filters", "kernel", "stride=1", "pad=0"}:
// defaults, validation and error messages for every layer from the one list (core-internal).
#include <algorithm>
#include <array>
#include <charconv>
#include <optional>
#include <string>
#include <vector>

#include "errors.hpp"
#include "layers.hpp"
#include "parse.hpp"

namespace mpicnn::core {

class ArgReader {
 public:
  ArgReader(const LayerArgs& args, std::vector<std::string> signature, const std::string& path)
      : args_(args), signature_(std::move(signature)), path_(path) {
    if (args.positional.size() > signature_.size()) fail("takes at most " + std::to_string(signature_.size()) + " arguments");
    for (const auto& [key, value] : args.named)
      if (index_of(key) < 0) fail("has no argument '" + key + "'");
  }

  int integer(const std::string& name, int min_value) const {
    const std::string text = raw(name);
    const std::optional<int> parsed = parse_whole<int>(text);
    if (!parsed) fail("argument '" + name + "' must be an integer, got '" + text + "'");
    const int value = *parsed;
    if (value < min_value) fail("argument '" + name + "' must be >= " + std::to_string(min_value) + ", got " + text);
    return value;
  }
  float real(const std::string& name) const {
    const std::string text = raw(name);
    try {
      std::size_t used = 0;
      const float value = std::stof(text, &used);
      if (used == text.size()) return value;
    } catch (const std::exception&) {
    }
    fail("argument '" + name + "' must be a number, got '" + text + "'");
  }
  // One size per spatial axis of a volume: "3" for all three, or "1x3x3" as depth x height x width.
  std::array<int, 3> extent(const std::string& name, int min_value) const {
    const std::string text = raw(name);
    std::array<int, 3> sizes{};
    std::size_t begin = 0;
    int parts = 0;
    for (; parts < 3 && begin <= text.size(); ++parts) {
      const std::size_t x = std::min(text.find('x', begin), text.size());
      const std::optional<int> parsed = parse_whole<int>(text.substr(begin, x - begin));
      if (!parsed) break;
      sizes[parts] = *parsed;
      begin = x + 1;
    }
    const bool whole = begin == text.size() + 1;
    if (!whole || (parts != 1 && parts != 3))
      fail("argument '" + name + "' must be an integer or DxHxW (e.g. 1x3x3), got '" + text + "'");
    if (parts == 1) sizes = {sizes[0], sizes[0], sizes[0]};
    for (int v : sizes)
      if (v < min_value) fail("argument '" + name + "' must be >= " + std::to_string(min_value) + " on every axis, got " + text);
    return sizes;
  }
  bool boolean(const std::string& name) const {
    const std::string text = raw(name);
    if (text == "true" || text == "1") return true;
    if (text == "false" || text == "0") return false;
    fail("argument '" + name + "' must be true or false, got '" + text + "'");
  }
  std::string choice(const std::string& name, const std::vector<std::string>& known) const {
    const std::string text = raw(name);
    std::string list;
    for (const auto& k : known) {
      if (k == text) return text;
      list += (list.empty() ? "" : ", ") + k;
    }
    fail("argument '" + name + "' must be one of " + list + ", got '" + text + "'");
  }
  bool given(const std::string& name) const {
    const int i = index_of(name);
    return args_.named.count(name) || i < int(args_.positional.size());
  }
  const std::string& path() const { return path_; }
  [[noreturn]] void fail(const std::string& what) const {
    throw ConfigError("layer " + path_ + " '" + args_.kind + "' " + what + " (expected " + args_.kind + "(" +
                      signature_text() + "))");
  }

 private:
  int index_of(const std::string& name) const {
    for (std::size_t i = 0; i < signature_.size(); ++i)
      if (signature_[i].substr(0, signature_[i].find('=')) == name) return int(i);
    return -1;
  }
  std::string raw(const std::string& name) const {
    const int i = index_of(name);
    if (auto it = args_.named.find(name); it != args_.named.end()) {
      if (i < int(args_.positional.size())) fail("argument '" + name + "' given twice");
      return it->second;
    }
    if (i < int(args_.positional.size())) return args_.positional[i];
    const std::string& entry = signature_[i];
    if (entry.find('=') == std::string::npos) fail("is missing argument '" + name + "'");
    return entry.substr(entry.find('=') + 1);
  }
  std::string signature_text() const {
    std::string text;
    for (const auto& s : signature_) text += (text.empty() ? "" : ", ") + s;
    return text;
  }
  const LayerArgs& args_;
  std::vector<std::string> signature_;
  std::string path_;
};

// Shortest text that reads back as the same float: a spec must rebuild its exact model.
inline std::string float_text(float value) {
  char text[32];
  const auto end = std::to_chars(text, text + sizeof text, value).ptr;
  return std::string(text, end);
}

// Factories of the layers defined outside layers.cpp.
std::unique_ptr<Layer> make_batchnorm(const LayerArgs&, const Shape&, const std::string& path);
std::unique_ptr<Layer> make_residual(const LayerArgs&, const Shape&, const std::string& path);
std::unique_ptr<Layer> make_repeat(const LayerArgs&, const Shape&, const std::string& path);
std::unique_ptr<Layer> make_l2norm(const LayerArgs&, const Shape&, const std::string& path);
std::unique_ptr<Layer> make_cosine(const LayerArgs&, const Shape&, const std::string& path);
std::unique_ptr<Layer> make_conv3d(const LayerArgs&, const Shape&, const std::string& path);
std::unique_ptr<Layer> make_maxpool3d(const LayerArgs&, const Shape&, const std::string& path);
std::unique_ptr<Layer> make_avgpool3d(const LayerArgs&, const Shape&, const std::string& path);

}  // namespace mpicnn::core
