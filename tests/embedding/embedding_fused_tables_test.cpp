// FusedTables: blocks grouped by width in the order widths first appear, their row offsets, row
// access, the one gather per group, and the errors of both.
#include <doctest/doctest.h>

#include <strata/embedding/fused_tables.hpp>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using Blocks = std::vector<std::pair<std::size_t, std::size_t>>;  // rows x width

template <class F>
std::string rejection(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("FusedTables: blocks of one width share a buffer, at row offsets in block order") {
  const Blocks blocks{{4, 2}, {3, 8}, {5, 2}, {0, 8}, {2, 3}, {6, 8}, {1, 2}};
  strata::FusedTables<double> t(blocks);
  REQUIRE(t.num_blocks() == 7);
  REQUIRE(t.num_groups() == 3);
  CHECK(t.group_width(0) == 2);
  CHECK(t.group_width(1) == 8);
  CHECK(t.group_width(2) == 3);
  CHECK(t.group_rows(0) == 4 + 5 + 1);
  CHECK(t.group_rows(1) == 3 + 0 + 6);
  CHECK(t.group_rows(2) == 2);
  CHECK(t.group_data(0).size() == 10 * 2);
  CHECK(t.group_data(1).size() == 9 * 8);
  CHECK(t.group_data(2).size() == 2 * 3);
  // Group and first row of each block, by hand.
  const std::vector<std::pair<std::size_t, std::size_t>> want{{0, 0}, {1, 0}, {0, 4}, {1, 3},
                                                              {2, 0}, {1, 3}, {0, 9}};
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    CAPTURE(b);
    CHECK(t.block(b).group == want[b].first);
    CHECK(t.block(b).first_row == want[b].second);
    CHECK(t.block(b).rows == blocks[b].first);
    CHECK(t.block(b).width == blocks[b].second);
    for (std::size_t i = 0; i < blocks[b].first; ++i)
      CHECK(t.fused_row(b, i) == want[b].second + i);
  }
  CHECK_THROWS_AS((void)t.block(7), std::out_of_range);
  CHECK_THROWS_AS((void)t.group_width(3), std::out_of_range);

  // Zero-filled; a row is a view of the group's buffer.
  for (std::size_t g = 0; g < t.num_groups(); ++g) {
    for (double x : t.group_data(g)) CHECK(x == 0.0);
  }
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    for (std::size_t i = 0; i < blocks[b].first; ++i) {
      auto row = t.row(b, i);
      REQUIRE(row.size() == blocks[b].second);
      for (std::size_t d = 0; d < row.size(); ++d)
        row[d] = static_cast<double>(1000 * b + 10 * i + d);
    }
  }
  // Group 0 is blocks 0, 2, 6 one after the other.
  const auto g0 = t.group_data(0);
  CHECK(g0[0] == 0);
  CHECK(g0[7] == 31);                    // block 0 row 3 column 1
  CHECK(g0[4 * 2 + 2 * 2 + 1] == 2021);  // block 2 row 2 column 1
  CHECK(g0[9 * 2] == 6000);              // block 6 row 0
  const auto& ct = t;
  CHECK(ct.row(5, 2)[7] == 5027);
  CHECK(ct.group_data(1)[(3 + 2) * 8 + 7] == 5027);

  // Gather: rows of one group in any order, repeats included.
  const std::vector<std::size_t> rows{9, 0, 4, 4, 3};
  std::vector<double> out(rows.size() * 2, -1);
  t.gather(0, rows, out);
  CHECK(out == std::vector<double>{6000, 6001, 0, 1, 2000, 2001, 2000, 2001, 30, 31});
  std::vector<double> none;
  t.gather(1, std::vector<std::size_t>{}, none);
  const std::vector<std::size_t> r1{8, 0};
  std::vector<double> out1(16);
  t.gather(1, r1, out1);
  CHECK(out1[0] == 5050);
  CHECK(out1[15] == 1007);
}

TEST_CASE("FusedTables: errors name the block, the row or the sizes, and write nothing") {
  CHECK(rejection([] {
          strata::FusedTables<float> t(Blocks{{3, 2}, {4, 0}});
        }) == "FusedTables: block 1 has width 0");
  strata::FusedTables<float> t(Blocks{{3, 2}, {4, 2}, {1, 5}});
  std::vector<float> out(4, -1.0f);
  CHECK(rejection([&] {
          t.gather(0, std::vector<std::size_t>{1, 7}, out);
        }) == "FusedTables::gather: row 7 is outside group 0's 7 rows");
  CHECK(out == std::vector<float>(4, -1.0f));
  CHECK(rejection([&] {
          t.gather(0, std::vector<std::size_t>{1, 6, 2}, out);
        }) == "FusedTables::gather: 3 rows of width 2 need 6 elements, out has 4");
  CHECK(out == std::vector<float>(4, -1.0f));
  std::vector<float> five(5);
  CHECK(rejection([&] { t.gather(1, std::vector<std::size_t>{1}, five); }) ==
        "FusedTables::gather: row 1 is outside group 1's 1 rows");
  CHECK_THROWS_AS(t.gather(2, std::vector<std::size_t>{}, five), std::out_of_range);
  // No blocks at all.
  strata::FusedTables<std::int64_t> empty(Blocks{});
  CHECK(empty.num_blocks() == 0);
  CHECK(empty.num_groups() == 0);
  strata::FusedTables<double> defaulted;
  CHECK(defaulted.num_groups() == 0);
}

TEST_CASE("FusedTables: a buffer whose size does not fit in a size_t is refused") {
  // A block, or a group, whose rows x width does not fit in a size_t: refused, not a buffer of
  // the wrapped-around size that rows then point past.
  const std::size_t big = std::size_t{1} << 32;
  CHECK_THROWS_AS(strata::FusedTables<float>(Blocks{{big, big}}), std::invalid_argument);
  CHECK_THROWS_AS(strata::FusedTables<float>(Blocks{{big, 1u << 31}, {big, 1u << 31}}),
                  std::invalid_argument);
}
