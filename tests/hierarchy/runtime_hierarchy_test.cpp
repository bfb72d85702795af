#include <doctest/doctest.h>

#include <strata/hierarchy/runtime_hierarchy.hpp>

#include <string>

using strata::RuntimeHierarchy;

TEST_CASE("RuntimeHierarchy parses period:group_size pairs") {
  const auto h = RuntimeHierarchy::parse("2:8,4:32,8:64");
  REQUIRE(h.num_levels() == 3);
  CHECK(h.level(0) == strata::LevelSpec{2, 8});
  CHECK(h.level(1) == strata::LevelSpec{4, 32});
  CHECK(h.level(2) == strata::LevelSpec{8, 64});
  CHECK(h.world_size() == 64);
  CHECK(h.hyper_period() == 8);
  CHECK(h.to_string() == "2:8,4:32,8:64");
  CHECK(RuntimeHierarchy::parse("1:1").world_size() == 1);
  CHECK(RuntimeHierarchy::parse("3:2,4:4,10:8").hyper_period() == 60);
  CHECK_THROWS_AS((void)h.level(3), std::out_of_range);
}

TEST_CASE("RuntimeHierarchy accepts the largest std::size_t") {
  const std::string max = std::to_string(std::numeric_limits<std::size_t>::max());
  const auto h = RuntimeHierarchy::parse("1:" + max);
  CHECK(h.world_size() == std::numeric_limits<std::size_t>::max());
}

namespace {
void check_rejects(const std::string& text, const std::string& message) {
  CAPTURE(text);
  CHECK_THROWS_WITH_AS((void)RuntimeHierarchy::parse(text), message.c_str(), std::invalid_argument);
}
}  // namespace

TEST_CASE("RuntimeHierarchy points at the offending item of bad text") {
  check_rejects(
      "", "RuntimeHierarchy: empty text; expected period:group_size pairs such as \"2:8,4:32\"");
  check_rejects("2:8,432",
                "RuntimeHierarchy: item 2 \"432\" of \"2:8,432\": missing ':' between period and "
                "group size");
  check_rejects("2:8:16",
                "RuntimeHierarchy: item 1 \"2:8:16\" of \"2:8:16\": more than one ':'; expected "
                "period:group_size");
  check_rejects("2:8,four:32",
                "RuntimeHierarchy: item 2 \"four:32\" of \"2:8,four:32\": period \"four\" is not a "
                "non-negative integer");
  check_rejects("2:8,4:3x2",
                "RuntimeHierarchy: item 2 \"4:3x2\" of \"2:8,4:3x2\": group size \"3x2\" is not a "
                "non-negative integer");
  check_rejects("2:8,4:0x20",
                "RuntimeHierarchy: item 2 \"4:0x20\" of \"2:8,4:0x20\": group size \"0x20\" is not "
                "a non-negative integer");
  check_rejects("2:8,4:1e3",
                "RuntimeHierarchy: item 2 \"4:1e3\" of \"2:8,4:1e3\": group size \"1e3\" is not a "
                "non-negative integer");
  check_rejects("-2:8", "RuntimeHierarchy: item 1 \"-2:8\" of \"-2:8\": period \"-2\" is negative");
  check_rejects("2:-8",
                "RuntimeHierarchy: item 1 \"2:-8\" of \"2:-8\": group size \"-8\" is negative");
  check_rejects("+2:8", "RuntimeHierarchy: item 1 \"+2:8\" of \"+2:8\": period \"+2\" has a sign");
  check_rejects(":8", "RuntimeHierarchy: item 1 \":8\" of \":8\": period is missing");
  check_rejects("2:", "RuntimeHierarchy: item 1 \"2:\" of \"2:\": group size is missing");
  check_rejects("2:8,0:16",
                "Hierarchy: level 1 period is 0; periods must be positive (item 2 \"0:16\" of "
                "\"2:8,0:16\")");
  check_rejects("2:0",
                "Hierarchy: level 0 group size is 0; group sizes must be positive (item 1 \"2:0\" "
                "of \"2:0\")");
  check_rejects("2:8,4:99999999999999999999",
                "RuntimeHierarchy: item 2 \"4:99999999999999999999\" of "
                "\"2:8,4:99999999999999999999\": group size \"99999999999999999999\" does not fit "
                "in std::size_t (max 18446744073709551615)");
  check_rejects(
      "18446744073709551616:8",
      "RuntimeHierarchy: item 1 \"18446744073709551616:8\" of \"18446744073709551616:8\": "
      "period \"18446744073709551616\" does not fit in std::size_t (max "
      "18446744073709551615)");
  // A period given twice breaks the rule that periods strictly increase, in the rule's words.
  check_rejects("2:8,2:16",
                "Hierarchy: level 1 period 2 is not greater than level 0 period 2; periods must "
                "strictly increase (item 2 \"2:16\" of \"2:8,2:16\")");
  check_rejects("2:8,4:32,", "RuntimeHierarchy: trailing comma after item 2 in \"2:8,4:32,\"");
  check_rejects("2:8,,4:32",
                "RuntimeHierarchy: item 2 \"\" of \"2:8,,4:32\": empty item; expected "
                "period:group_size");
  check_rejects(
      ",2:8", "RuntimeHierarchy: item 1 \"\" of \",2:8\": empty item; expected period:group_size");
  check_rejects("2:8, 4:32",
                "RuntimeHierarchy: whitespace at offset 4 in \"2:8, 4:32\"; write pairs like "
                "\"2:8,4:32\" without spaces");
  check_rejects(
      " 2:8",
      "RuntimeHierarchy: whitespace at offset 0 in \" 2:8\"; write pairs like \"2:8,4:32\" "
      "without spaces");
  check_rejects("2:8\t",
                "RuntimeHierarchy: whitespace at offset 3 in \"2:8\t\"; write pairs like "
                "\"2:8,4:32\" without spaces");
}

TEST_CASE("RuntimeHierarchy applies the hierarchy rules with their wording") {
  check_rejects("4:8,2:16",
                "Hierarchy: level 1 period 2 is not greater than level 0 period 4; periods must "
                "strictly increase (item 2 \"2:16\" of \"4:8,2:16\")");
  check_rejects("2:16,4:8",
                "Hierarchy: level 1 group size 8 is not greater than level 0 group size 16; group "
                "sizes must strictly increase (item 2 \"4:8\" of \"2:16,4:8\")");
  check_rejects(
      "1:4,2:8,4:30",
      "Hierarchy: level 2 group size 30 is not a multiple of level 1 group size 8 (item 3 "
      "\"4:30\" of \"1:4,2:8,4:30\")");
}

TEST_CASE("RuntimeHierarchy rejects a hyper-period that overflows") {
  // Pairwise coprime periods whose product exceeds 2^64.
  CHECK_THROWS_WITH_AS((void)RuntimeHierarchy::parse("4294967291:2,4294967311:4,4294967357:8"),
                       "Hierarchy: the least common multiple of the periods overflows std::size_t",
                       std::invalid_argument);
}
