#include <doctest/doctest.h>

#include <boost/mp11/algorithm.hpp>
#include <strata/hierarchy/hierarchy.hpp>
#include <strata/hierarchy/runtime_hierarchy.hpp>

namespace {

using strata::Hierarchy;
using strata::Level;
using Card = Hierarchy<Level<2, 8>, Level<4, 32>, Level<8, 64>>;

// Compile-time facts of the design-card hierarchy.
static_assert(Card::num_levels == 3);
static_assert(Card::world_size == 64);
static_assert(Card::hyper_period == 8);
static_assert(Card::level<0>::period == 2 && Card::level<0>::group_size == 8);
static_assert(Card::levels[1] == strata::LevelSpec{4, 32});
static_assert(strata::hierarchy_type<Card>);
static_assert(!strata::hierarchy_type<int>);
static_assert(strata::level_type<Level<1, 1>>);
static_assert(boost::mp11::mp_size<Card::level_list>::value == 3);

// A single level is a valid hierarchy (plain local SGD over the whole world).
using Flat = Hierarchy<Level<4, 16>>;
static_assert(Flat::world_size == 16 && Flat::hyper_period == 4);

// Periods need not divide each other; the hyper-period is their least common multiple.
using Coprime = Hierarchy<Level<3, 2>, Level<4, 4>, Level<10, 8>>;
static_assert(Coprime::hyper_period == 60);

// Sized to a world given as a type.
static_assert(strata::HierarchyForWorld<Card, 64>::world_size == 64);

// Group membership: contiguous blocks.
static_assert(Card::levels[0].group_index(17) == 2 && Card::levels[0].group_begin(17) == 16);
static_assert(Card::levels[1].rank_in_group(40) == 8);

// The rule checker itself, on values (the compile-fail tests cover the static_assert path).
constexpr strata::LevelSpec bad_nest[] = {{1, 4}, {2, 8}, {4, 30}};
static_assert(strata::detail::check_levels(bad_nest).message.view() ==
              "Hierarchy: level 2 group size 30 is not a multiple of level 1 group size 8");
static_assert(strata::detail::check_levels(bad_nest).level == 2);

}  // namespace

TEST_CASE("Hierarchy prints the text RuntimeHierarchy reads") {
  CHECK(Card::to_string() == "2:8,4:32,8:64");
  CHECK(strata::RuntimeHierarchy::parse(Card::to_string()) ==
        strata::RuntimeHierarchy::from<Card>());
}

TEST_CASE("Hierarchy levels can be visited with mp_for_each") {
  std::size_t total = 0;
  boost::mp11::mp_for_each<Card::level_list>(
      [&](auto level) { total += decltype(level)::period * decltype(level)::group_size; });
  CHECK(total == 2 * 8 + 4 * 32 + 8 * 64);
}

TEST_CASE("compile-time and run-time rule checks agree word for word") {
  // Every rule, as the checker reports it; the compile-fail tests check the same words reach the
  // compiler's diagnostic.
  struct Case {
    std::vector<strata::LevelSpec> levels;
    const char* message;
  };
  const Case cases[] = {
      {{}, "Hierarchy: needs at least one level"},
      {{{2, 8}, {0, 16}}, "Hierarchy: level 1 period is 0; periods must be positive"},
      {{{2, 0}}, "Hierarchy: level 0 group size is 0; group sizes must be positive"},
      {{{4, 8}, {2, 16}},
       "Hierarchy: level 1 period 2 is not greater than level 0 period 4; periods must strictly "
       "increase"},
      {{{2, 8}, {4, 8}},
       "Hierarchy: level 1 group size 8 is not greater than level 0 group size 8; group sizes "
       "must strictly increase"},
      {{{1, 4}, {2, 8}, {4, 30}},
       "Hierarchy: level 2 group size 30 is not a multiple of level 1 group size 8"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.message);
    CHECK(strata::detail::check_levels(c.levels).message.view() == c.message);
    CHECK_THROWS_WITH_AS(strata::RuntimeHierarchy{c.levels}, c.message, std::invalid_argument);
  }
}

TEST_CASE("the world size check names the last level") {
  const auto h = strata::RuntimeHierarchy::from<Card>();
  CHECK_NOTHROW(h.check_world_size(64));
  CHECK_THROWS_WITH_AS(h.check_world_size(32),
                       "Hierarchy: level 2 group size 64 is not the world size 32; the largest "
                       "group must span the whole world",
                       std::invalid_argument);
}
