#pragma once
// The message of the error a spec raises when a model is built from it (a test failure if none).
#include <gtest/gtest.h>

#include <string>

#include "core/model.hpp"

namespace mpicnn::core {

template <class E>
std::string error_of(const std::string& spec, Shape input = {1, 28, 28}) {
  try {
    Model model(spec, input, 1);
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for '" << spec << "'";
  return "";
}

}  // namespace mpicnn::core
