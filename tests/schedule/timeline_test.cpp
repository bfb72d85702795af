#include <doctest/doctest.h>

#include <strata/schedule/timeline.hpp>

using Card = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>, strata::Level<8, 64>>;

TEST_CASE("the timeline of the design-card hierarchy") {
  const std::string expected =
      "phase: absolute, warm-up: 0 steps, hyper-period: 8; '#' averages, '-' warm-up, '.' "
      "nothing\n"
      "step                0         10\n"
      "level 2  g=64  P=8  #.......#.......\n"
      "level 1  g=32  P=4  ....#.......#...\n"
      "level 0  g=8   P=2  ..#...#...#...#.\n"
      "\n"
      "syncs over 16 steps:\n"
      "  level 2  group size 64     period 8     syncs 2        (12.5% of steps)\n"
      "  level 1  group size 32     period 4     syncs 2        (12.5% of steps)\n"
      "  level 0  group size 8      period 2     syncs 4        (25.0% of steps)\n"
      "  no sync  8 steps\n";
  CHECK(strata::format_timeline(strata::Schedule<Card>{}, 16) == expected);
}

TEST_CASE("the timeline marks warm-up, wraps long runs and reports bytes") {
  const strata::RuntimeSchedule<> s(strata::RuntimeHierarchy::parse("2:8,4:32,8:64"), 3);
  const std::string t = strata::format_timeline(s, 30, 1'000'000, 20);
  CHECK(t.find("level 0  g=8   P=2  ---...#...#...#...#.\n") != std::string::npos);
  CHECK(t.find("step                20\n") != std::string::npos);  // the second block
  CHECK(t.find("level 0  g=8   P=2  ..#...#...\n") != std::string::npos);
  // 6 syncs of level 0 over steps 3..29 (6, 10, ..., 26), each 2*7/8 MB.
  CHECK(t.find("syncs 6        (20.0% of steps)  10.500 MB sent per rank (ring)") !=
        std::string::npos);
}

TEST_CASE("JSON has one entry per step, null where nothing runs") {
  const strata::RuntimeSchedule<strata::WarmupRelativePhase> s(
      strata::RuntimeHierarchy::parse("2:8,4:32"), 1);
  CHECK(strata::format_json(s, 4) ==
        "{\"steps\":[{\"step\":0,\"level\":null,\"group_size\":null},"
        "{\"step\":1,\"level\":1,\"group_size\":32},"
        "{\"step\":2,\"level\":null,\"group_size\":null},"
        "{\"step\":3,\"level\":0,\"group_size\":8}]}");
  CHECK(strata::format_json(s, 0) == "{\"steps\":[]}");
}
