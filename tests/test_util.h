// Small helpers shared by the test suites.
#pragma once

#include <string>

#include "framework/error.h"

namespace normlab::testing {

// The message of the normlab::Error that f throws, or "" when it throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace normlab::testing
