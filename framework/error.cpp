#include "framework/error.h"

#include <cstdlib>
#include <cstring>

namespace normlab::detail {

namespace {

// Source locations in messages: always in a debug build, else only with NORMLAB_DEBUG set
// (to anything but "" or "0"). Users see the message alone.
bool show_locations() {
#ifndef NDEBUG
  return true;
#else
  static const bool show = [] {
    const char* env = std::getenv("NORMLAB_DEBUG");
    return env && *env && std::strcmp(env, "0") != 0;
  }();
  return show;
#endif
}

}  // namespace

void fail_located(const char* file, int line, const std::string& message) {
  const char* base = std::strrchr(file, '/');
  throw Error(concat(message, " (", base ? base + 1 : file, ":", line, ")"));
}

void fail(const char* file, int line, const std::string& message) {
  if (show_locations()) fail_located(file, line, message);
  throw Error(message);
}

}  // namespace normlab::detail
