// Errors: every public entry point validates its input and throws normlab::Error with a
// message that names the bad value and what was expected, as one line a user can read. The
// source location (file:line) is appended only in a debug build or with NORMLAB_DEBUG=1.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace normlab {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void fail(const char* file, int line, const std::string& message);
// For failures of a runtime underneath (CUDA, cuDNN), not of the user's input: the source
// location is always part of the message.
[[noreturn]] void fail_located(const char* file, int line, const std::string& message);
}  // namespace detail

}  // namespace normlab

// NL_CHECK(cond, "message parts", value, ...): throws normlab::Error naming the bad value.
#define NL_CHECK(cond, ...)                                                      \
  do {                                                                           \
    if (!(cond)) [[unlikely]]                                                    \
      ::normlab::detail::fail(__FILE__, __LINE__, ::normlab::detail::concat(__VA_ARGS__)); \
  } while (0)

#define NL_FAIL(...) ::normlab::detail::fail(__FILE__, __LINE__, ::normlab::detail::concat(__VA_ARGS__))
