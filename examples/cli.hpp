// Command-line plumbing shared by the example programs: bad input is one line on stderr and exit
// status 2; any other failure is one line and exit status 1; nothing crashes.
#pragma once

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>

namespace cli {

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A whole decimal integer in [lo, hi].
inline std::uint64_t parse_integer(std::string_view flag, std::string_view text,
                                   std::uint64_t lo = 0,
                                   std::uint64_t hi = std::numeric_limits<std::uint64_t>::max()) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || v < lo || v > hi) {
    throw usage_error(std::string(flag) + " needs an integer in " + std::to_string(lo) + ".." +
                      std::to_string(hi) + ", got \"" + std::string(text) + "\"");
  }
  return v;
}

// The same, as a size.
inline std::size_t parse_size(std::string_view flag, std::string_view text, std::size_t lo,
                              std::size_t hi) {
  return static_cast<std::size_t>(parse_integer(flag, text, lo, hi));
}

// A positive byte count of at most `hi`: digits with an optional binary suffix K, M or G (1M =
// 2^20 bytes).
inline std::size_t parse_bytes(std::string_view flag, std::string_view text,
                               std::size_t hi = std::numeric_limits<std::size_t>::max()) {
  std::size_t unit = 1;
  std::string_view digits = text;
  if (!text.empty()) {
    switch (text.back()) {
      case 'K':
      case 'k': unit = std::size_t{1} << 10; break;
      case 'M':
      case 'm': unit = std::size_t{1} << 20; break;
      case 'G':
      case 'g': unit = std::size_t{1} << 30; break;
      default: break;
    }
    if (unit != 1) digits.remove_suffix(1);
  }
  std::size_t v = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() || v == 0 ||
      v > hi / unit) {
    const std::string most =
        hi == std::numeric_limits<std::size_t>::max() ? "" : " of at most " + std::to_string(hi);
    throw usage_error(std::string(flag) + " needs a positive byte count" + most +
                      " such as 4096, 64K, 16M or 1G, got \"" + std::string(text) + "\"");
  }
  return v * unit;
}

// A finite number in [lo, hi], or (lo, hi] when `lo_open` (a learning rate of 0 trains nothing).
inline double parse_real(std::string_view flag, std::string_view text, double lo, double hi,
                         bool lo_open = false) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  const bool in_range = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && v <= hi;
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || !in_range) {
    char range[96];
    std::snprintf(range, sizeof range, "%s%g, %g]", lo_open ? "(" : "[", lo, hi);
    throw usage_error(std::string(flag) + " needs a number in " + range + ", got \"" +
                      std::string(text) + "\"");
  }
  return v;
}

// True when any argument is --help or -h: help wins over every other argument, valid or not.
inline bool asks_for_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--help" || a == "-h") return true;
  }
  return false;
}

// One line, whatever the message holds.
inline std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

// Runs `body`, which returns the exit status, and turns exceptions into one line on stderr:
// usage errors and invalid configuration (std::invalid_argument) exit 2, anything else 1.
template <class Body>
int run(const char* program, Body&& body) {
  try {
    return body();
  } catch (const usage_error& e) {
    std::fprintf(stderr, "%s: %s\n", program, one_line(e.what()).c_str());
    return 2;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s: %s\n", program, one_line(e.what()).c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, one_line(e.what()).c_str());
    return 1;
  }
}

}  // namespace cli
