#include <doctest/doctest.h>

#include <strata/comm/groups.hpp>
#include <strata/comm/level_comms.hpp>
#include <strata/comm/local.hpp>

#include <atomic>
#include <stdexcept>
#include <vector>

TEST_CASE("level communicators group contiguous blocks and reuse the world for the last level") {
  for (int n : {1, 4, 12, 16}) {
    CAPTURE(n);
    std::vector<strata::LevelSpec> levels;
    if (n % 2 == 0 && n > 2) levels.push_back({1, 2});
    if (n % 4 == 0 && n > 4) levels.push_back({3, 4});
    levels.push_back({5, static_cast<std::size_t>(n)});
    strata::LocalWorld(n).run([&](strata::LocalComm& world) {
      strata::LevelComms comms(world, levels);
      REQUIRE(comms.num_levels() == levels.size());
      CHECK(&comms.level(levels.size() - 1) == &world);
      for (std::size_t i = 0; i < levels.size(); ++i) {
        const auto g = static_cast<int>(levels[i].group_size);
        auto& c = comms.level(i);
        CHECK(c.size() == g);
        CHECK(c.rank() == world.rank() % g);
        // The members are exactly the block [g*floor(r/g), g*floor(r/g)+g).
        std::vector<std::int64_t> ranks(static_cast<std::size_t>(g));
        std::vector<std::int64_t> mine{world.rank()};
        c.all_gather(std::span<const std::int64_t>(mine), std::span<std::int64_t>(ranks));
        for (int k = 0; k < g; ++k)
          CHECK(ranks[static_cast<std::size_t>(k)] == world.rank() / g * g + k);
      }
    });
  }
}

TEST_CASE("level communicators refuse a hierarchy that does not span the world") {
  strata::LocalWorld(4).run([](strata::LocalComm& world) {
    const strata::LevelSpec levels[] = {{1, 2}, {2, 8}};
    CHECK_THROWS_WITH_AS(strata::LevelComms(world, levels),
                         "Hierarchy: level 1 group size 8 is not the world size 4; the largest "
                         "group must span the whole world",
                         std::invalid_argument);
  });
}

TEST_CASE("strided and per-node communicators") {
  strata::LocalWorld(12).run([](strata::LocalComm& world) {
    auto node = strata::split_node(world, 4);
    auto across = strata::split_strided(world, 4);
    CHECK(node.size() == 4);
    CHECK(across.size() == 3);
    std::vector<std::int64_t> peers(3);
    std::vector<std::int64_t> mine{world.rank()};
    across.all_gather(std::span<const std::int64_t>(mine), std::span<std::int64_t>(peers));
    const int local = world.rank() % 4;
    CHECK(peers == std::vector<std::int64_t>{local, local + 4, local + 8});
    CHECK_THROWS_AS(strata::split_node(world, 5), std::invalid_argument);
  });
}

TEST_CASE("group layouts and the partition check") {
  CHECK(strata::contiguous_groups(8, 4) ==
        std::vector<std::vector<int>>{{0, 1, 2, 3}, {4, 5, 6, 7}});
  CHECK(strata::strided_groups(8, 4) ==
        std::vector<std::vector<int>>{{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  for (int n = 1; n <= 16; ++n) {
    for (int g = 1; g <= n; ++g) {
      if (n % g != 0) continue;
      CHECK_NOTHROW(strata::check_partition(strata::contiguous_groups(n, g), n));
      CHECK_NOTHROW(strata::check_partition(strata::strided_groups(n, g), n));
    }
  }
  CHECK_THROWS_WITH_AS(strata::check_partition({{0, 1}, {1, 2}}, 3),
                       "check_partition: rank 1 is in group 0 and in group 1",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(strata::check_partition({{0, 2}}, 3),
                       "check_partition: rank 1 is in no group", std::invalid_argument);
  CHECK_THROWS_WITH_AS(strata::check_partition({{0, 3}}, 3),
                       "check_partition: group 0 holds rank 3, outside a world of 3",
                       std::invalid_argument);
  CHECK_THROWS_AS(strata::contiguous_groups(10, 4), std::invalid_argument);
}
