#pragma once
//! \file
//! Numbers in the simulator's error messages, written the way a user would type them.

#include <cstdio>
#include <string>

namespace strata::detail {

// "1.5", "0.055", "1e+09": %g, unlike std::to_string, does not pad with zeros.
[[nodiscard]] inline std::string sim_number(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

}  // namespace strata::detail
