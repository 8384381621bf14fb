#include "framework/error.h"

#include <cstring>

namespace normlab::detail {

void fail(const char* file, int line, const std::string& message) {
  const char* base = std::strrchr(file, '/');
  throw Error(concat("normlab: ", message, " (", base ? base + 1 : file, ":", line, ")"));
}

}  // namespace normlab::detail
