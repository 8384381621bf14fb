// Names of enum values: one table per enum gives both directions, to_string and parsing, and
// parse errors that list every valid name.
//
//   constexpr EnumNames<Color, 2> kColorNames{{{Color::red, "red"}, {Color::blue, "blue"}}};
//   const char* to_string(Color c) { return enum_name(kColorNames, c); }
//   Color parse_color(const std::string& s) { return parse_enum(kColorNames, s, "color"); }
//   // parse_color("green") throws "unknown color 'green' (valid: red, blue)"
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "framework/error.h"

namespace normlab {

template <class E, size_t N>
using EnumNames = std::array<std::pair<E, const char*>, N>;

template <class E, size_t N>
const char* enum_name(const EnumNames<E, N>& names, E value) {
  for (const auto& [e, name] : names)
    if (e == value) return name;
  NL_FAIL("invalid enum value ", static_cast<long long>(value));
}

// The value named `name`; throws normlab::Error naming `what`, the bad name and the valid ones.
template <class E, size_t N>
E parse_enum(const EnumNames<E, N>& names, std::string_view name, const char* what) {
  std::string valid;
  for (const auto& [e, n] : names) {
    if (name == n) return e;
    valid += (valid.empty() ? "" : ", ") + std::string(n);
  }
  NL_FAIL("unknown ", what, " '", name, "' (valid: ", valid, ")");
}

}  // namespace normlab
