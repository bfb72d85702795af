#pragma once
//! \file
//! `RuntimeHierarchy`: a hierarchy read from configuration, with the compile-time rules.

#include <charconv>
#include <cstddef>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "strata/detail/hierarchy_rules.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/hierarchy/level.hpp"

namespace strata {

//! A hierarchy known only at run time, e.g. from a command line or a config file. It enforces
//! the rules of `Hierarchy` with the same wording, as `std::invalid_argument`.
//!
//! \code
//! auto h = strata::RuntimeHierarchy::parse("2:8,4:32,8:64");
//! assert(h.num_levels() == 3 && h.world_size() == 64 && h.level(1).period == 4);
//! assert(h.to_string() == "2:8,4:32,8:64");
//! h.check_world_size(64);  // throws std::invalid_argument for any other world size
//! \endcode
class RuntimeHierarchy {
 public:
  //! Takes levels from the smallest group to the largest; throws `std::invalid_argument` naming
  //! the first level that breaks a rule.
  explicit RuntimeHierarchy(std::vector<LevelSpec> levels) : levels_(std::move(levels)) {
    const detail::RuleCheck r = detail::check_levels(levels_);
    if (!r.ok()) throw std::invalid_argument(std::string(r.message.view()));
    hyper_period_ = 1;
    for (const LevelSpec& l : levels_) {
      if (!detail::checked_lcm(hyper_period_, l.period, hyper_period_)) {
        throw std::invalid_argument(
            "Hierarchy: the least common multiple of the periods overflows std::size_t");
      }
    }
  }

  //! The run-time copy of a compile-time hierarchy.
  template <hierarchy_type H>
  [[nodiscard]] static RuntimeHierarchy from() {
    return RuntimeHierarchy(std::vector<LevelSpec>(H::levels.begin(), H::levels.end()));
  }

  //! Reads `"P:G,P:G,..."`: period:group_size pairs separated by commas, smallest group first, no
  //! spaces. Bad text throws `std::invalid_argument` naming the item (1-based) and its text.
  [[nodiscard]] static RuntimeHierarchy parse(std::string_view text) {
    if (text.empty()) {
      throw std::invalid_argument(
          "RuntimeHierarchy: empty text; expected period:group_size pairs such as \"2:8,4:32\"");
    }
    if (const std::size_t sp = text.find_first_of(" \t\r\n\v\f"); sp != std::string_view::npos) {
      throw std::invalid_argument("RuntimeHierarchy: whitespace at offset " + std::to_string(sp) +
                                  " in \"" + std::string(text) +
                                  "\"; write pairs like \"2:8,4:32\" without spaces");
    }
    std::vector<LevelSpec> levels;
    std::vector<std::string_view> pieces;
    std::size_t item = 0;
    std::size_t begin = 0;
    while (true) {
      ++item;
      const std::size_t comma = text.find(',', begin);
      const std::string_view piece = text.substr(
          begin, comma == std::string_view::npos ? std::string_view::npos : comma - begin);
      levels.push_back(parse_item(text, piece, item));
      pieces.push_back(piece);
      if (comma == std::string_view::npos) break;
      begin = comma + 1;
      if (begin == text.size()) {
        throw std::invalid_argument("RuntimeHierarchy: trailing comma after item " +
                                    std::to_string(item) + " in \"" + std::string(text) + "\"");
      }
    }
    // The rules keep their wording; the item that breaks one is added, as for syntax errors.
    if (const detail::RuleCheck r = detail::check_levels(levels); !r.ok()) {
      throw std::invalid_argument(
          std::string(r.message.view()) + " (item " + std::to_string(r.level + 1) + " \"" +
          std::string(pieces[r.level]) + "\" of \"" + std::string(text) + "\")");
    }
    return RuntimeHierarchy(std::move(levels));
  }

  [[nodiscard]] std::size_t num_levels() const noexcept { return levels_.size(); }
  [[nodiscard]] const LevelSpec& level(std::size_t i) const { return levels_.at(i); }
  [[nodiscard]] std::span<const LevelSpec> levels() const noexcept { return levels_; }
  //! The last group spans every rank.
  [[nodiscard]] std::size_t world_size() const noexcept { return levels_.back().group_size; }
  //! The least common multiple of the periods.
  [[nodiscard]] std::size_t hyper_period() const noexcept { return hyper_period_; }

  //! Throws `std::invalid_argument` unless the last group spans exactly `world_size` ranks.
  void check_world_size(std::size_t world_size) const {
    const detail::RuleCheck r = detail::check_world_size(levels_, world_size);
    if (!r.ok()) throw std::invalid_argument(std::string(r.message.view()));
  }

  [[nodiscard]] std::string to_string() const { return detail::format_levels(levels_); }

  friend bool operator==(const RuntimeHierarchy& a, const RuntimeHierarchy& b) {
    return a.levels_ == b.levels_;
  }

 private:
  static std::string item_error(std::string_view text, std::string_view piece, std::size_t item) {
    return "RuntimeHierarchy: item " + std::to_string(item) + " \"" + std::string(piece) +
           "\" of \"" + std::string(text) + "\": ";
  }

  static std::size_t parse_number(std::string_view text, std::string_view piece, std::size_t item,
                                  std::string_view field, std::string_view digits) {
    const auto fail = [&](const std::string& why) {
      return std::invalid_argument(item_error(text, piece, item) + std::string(field) + " " + why);
    };
    if (digits.empty()) throw fail("is missing");
    if (digits.front() == '-') throw fail("\"" + std::string(digits) + "\" is negative");
    if (digits.front() == '+') throw fail("\"" + std::string(digits) + "\" has a sign");
    std::size_t value = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec == std::errc::result_out_of_range) {
      throw fail("\"" + std::string(digits) + "\" does not fit in std::size_t (max " +
                 std::to_string(std::numeric_limits<std::size_t>::max()) + ")");
    }
    if (ec != std::errc{} || end != digits.data() + digits.size()) {
      throw fail("\"" + std::string(digits) + "\" is not a non-negative integer");
    }
    return value;
  }

  static LevelSpec parse_item(std::string_view text, std::string_view piece, std::size_t item) {
    if (piece.empty()) {
      throw std::invalid_argument(item_error(text, piece, item) +
                                  "empty item; expected period:group_size");
    }
    const std::size_t colon = piece.find(':');
    if (colon == std::string_view::npos) {
      throw std::invalid_argument(item_error(text, piece, item) +
                                  "missing ':' between period and group size");
    }
    if (piece.find(':', colon + 1) != std::string_view::npos) {
      throw std::invalid_argument(item_error(text, piece, item) +
                                  "more than one ':'; expected period:group_size");
    }
    return LevelSpec{parse_number(text, piece, item, "period", piece.substr(0, colon)),
                     parse_number(text, piece, item, "group size", piece.substr(colon + 1))};
  }

  std::vector<LevelSpec> levels_;
  std::size_t hyper_period_ = 1;
};

}  // namespace strata
