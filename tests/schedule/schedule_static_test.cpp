// The schedule answered at compile time: if this file compiles, these facts hold.
#include <doctest/doctest.h>

#include <strata/schedule/schedule.hpp>

namespace {

using strata::Level;
using Card = strata::Hierarchy<Level<2, 8>, Level<4, 32>, Level<8, 64>>;

// Hierarchical SGD (periods count from step 0): 0 -> level 2, 2 -> 0, 4 -> 1, 6 -> 0, 8 -> 2.
constexpr strata::Schedule<Card> card{};
static_assert(card.level_at(0) == 2);
static_assert(!card.level_at(1));
static_assert(card.level_at(2) == 0);
static_assert(!card.level_at(3));
static_assert(card.level_at(4) == 1);
static_assert(card.level_at(6) == 0);
static_assert(card.level_at(8) == 2);
static_assert(card.level_at(12) == 1);
static_assert(card.level_at(1'000'000) == 2);

// One hyper-period of the steady state.
static_assert(strata::Schedule<Card>::pattern() ==
              std::array<std::optional<std::size_t>, 8>{2, std::nullopt, 0, std::nullopt, 1,
                                                        std::nullopt, 0, std::nullopt});

// Warm-up masks steps; the phase still counts from 0.
constexpr strata::Schedule<Card> warm{5};
static_assert(!warm.level_at(0) && !warm.level_at(4));
static_assert(!warm.level_at(5));
static_assert(warm.level_at(6) == 0);
static_assert(warm.level_at(8) == 2);

// Local SGD phase: periods count from the end of warm-up.
constexpr strata::Schedule<Card, strata::WarmupRelativePhase> rel{5};
static_assert(!rel.level_at(4));
static_assert(rel.level_at(5) == 2);
static_assert(!rel.level_at(6));
static_assert(rel.level_at(7) == 0);
static_assert(rel.level_at(9) == 1);
static_assert(rel.level_at(13) == 2);

// Counts per level over n steps.
static_assert(card.sync_counts(0) == std::array<std::size_t, 3>{0, 0, 0});
static_assert(card.sync_counts(1) == std::array<std::size_t, 3>{0, 0, 1});
static_assert(card.sync_counts(16) == std::array<std::size_t, 3>{4, 2, 2});
static_assert(card.sync_counts(17) == std::array<std::size_t, 3>{4, 2, 3});
static_assert(card.sync_counts(1000) == std::array<std::size_t, 3>{250, 125, 125});
static_assert(warm.sync_counts(16) == std::array<std::size_t, 3>{3, 1, 1});
static_assert(warm.sync_counts(5) == std::array<std::size_t, 3>{0, 0, 0});
static_assert(rel.sync_counts(16) == std::array<std::size_t, 3>{3, 1, 2});

// Bytes on the wire: ring all-reduce sends 2(g-1)/g of the buffer per rank per sync.
constexpr std::size_t mib = 1 << 20;
static_assert(strata::Schedule<Card>::bytes_per_sync(0, mib) == 2.0 * 7 / 8 * mib);
static_assert(strata::Schedule<Card>::bytes_per_sync(2, mib) == 2.0 * 63 / 64 * mib);
static_assert(card.bytes_per_rank(16, mib) == std::array<double, 3>{4 * 2.0 * 7 / 8 * mib,
                                                                    2 * 2.0 * 31 / 32 * mib,
                                                                    2 * 2.0 * 63 / 64 * mib});
static_assert(strata::Schedule<Card>::bytes_per_sync<strata::RecursiveDoublingAllReduce>(1, mib) ==
              5.0 * mib);

// Coprime periods: the hyper-period is their product.
using Coprime = strata::Hierarchy<Level<3, 2>, Level<5, 4>>;
static_assert(strata::Schedule<Coprime>{}.level_at(15) == 1);
static_assert(strata::Schedule<Coprime>{}.level_at(9) == 0);
static_assert(strata::Schedule<Coprime>{}.sync_counts(30) == std::array<std::size_t, 2>{8, 6});

// Wire models.
static_assert(strata::RingAllReduce::bytes_per_rank(64.0, 1) == 0.0);
static_assert(strata::RingAllReduce::steps(1) == 0);
static_assert(strata::RecursiveDoublingAllReduce::bytes_per_rank(10.0, 16) == 40.0);
static_assert(strata::RecursiveDoublingAllReduce::bytes_per_rank(10.0, 12) == 40.0);
static_assert(strata::RecursiveDoublingAllReduce::steps(16) == 4);
static_assert(strata::RecursiveDoublingAllReduce::steps(12) == 5);

}  // namespace

TEST_CASE("compile-time schedule facts") {
  // The facts are the static_asserts above; this case makes the file count as a test.
  CHECK(card.sync_counts(16)[0] == 4);
}
