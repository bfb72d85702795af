// The per-level flags shared by hsgd_trace, schedule_explain and straggler_sim:
// `--outer [LEVEL=]nesterov:LR:MU` and `--wire [LEVEL=]bf16|fp16|int8`.
#pragma once

#include <strata/averaging/outer.hpp>
#include <strata/kernels/wire_codec.hpp>

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "cli.hpp"

namespace cli {

// "[LEVEL=]TEXT": the level index (0 = the smallest group), if given, and the text after it.
inline std::pair<std::optional<std::size_t>, std::string_view> split_level(std::string_view flag,
                                                                           std::string_view text) {
  const std::size_t eq = text.find('=');
  if (eq == std::string_view::npos) return {std::nullopt, text};
  return {parse_integer(std::string(flag) + " LEVEL", text.substr(0, eq), 0, 1024),
          text.substr(eq + 1)};
}

// "nesterov:LR:MU"; the library's rules on the values come back as usage errors.
inline strata::OuterOptimizer parse_nesterov(std::string_view flag, std::string_view text) {
  constexpr std::string_view kind = "nesterov:";
  const std::size_t colon = text.find(':', kind.size());
  if (!text.starts_with(kind) || colon == std::string_view::npos) {
    throw usage_error(std::string(flag) +
                      " must be [LEVEL=]nesterov:LR:MU (e.g. nesterov:0.7:0.9), got \"" +
                      std::string(text) + "\"");
  }
  const double lr = parse_real(std::string(flag) + " LR",
                               text.substr(kind.size(), colon - kind.size()), -1e6, 1e6);
  const double mu = parse_real(std::string(flag) + " MU", text.substr(colon + 1), -1e6, 1e6);
  try {
    return strata::OuterOptimizer::nesterov(lr, mu);
  } catch (const std::invalid_argument& e) {
    throw usage_error(std::string(flag) + ": " + e.what());
  }
}

// A wire format's name, as a usage error when unknown.
inline strata::WireFormat parse_wire_name(std::string_view flag, std::string_view text) {
  try {
    return strata::parse_wire(text);
  } catch (const std::invalid_argument& e) {
    throw usage_error(std::string(flag) + ": " + e.what());
  }
}

}  // namespace cli
