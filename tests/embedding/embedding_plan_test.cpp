// Embedding plans: the text ShardingPlan::parse reads and the one-line messages it rejects with,
// the compile-time EmbeddingPlan against ShardingPlan::make, the row blocks and owners of row-wise
// tables, the shards of each rank, and the balancer's placements and report. Expected values are
// written out by hand or recomputed here with plain loops.
#include <doctest/doctest.h>

#include <strata/embedding/balancer.hpp>
#include <strata/embedding/plan.hpp>
#include <strata/embedding/sharding.hpp>

#include <algorithm>
#include <cstddef>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "embedding_plans.hpp"

namespace {

using strata::Placement;
using strata::PlacementSpec;
using strata::ShardingPlan;
using strata::TableSpec;

// The message of the std::invalid_argument that `f` throws ("no error" when none).
template <class F>
std::string rejection(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not an invalid_argument: ") + e.what();
  }
  return "no error";
}

std::string parse_error(const char* text, std::size_t world, std::size_t ranks_per_node = 0) {
  return rejection([&] { (void)ShardingPlan::parse(text, world, ranks_per_node); });
}

bool same_shard(const strata::Shard& a, const strata::Shard& b) {
  return a.table == b.table && a.rank == b.rank && a.row_begin == b.row_begin &&
         a.row_end == b.row_end && a.col_begin == b.col_begin && a.col_end == b.col_end;
}

// Plans are equal when they place every table alike, list the same shards and report the same
// balance (the report's figures are computed the same way, so compared exactly).
void check_same_plan(const ShardingPlan& a, const ShardingPlan& b) {
  CHECK(a.world_size() == b.world_size());
  CHECK(a.ranks_per_node() == b.ranks_per_node());
  CHECK(a.describe() == b.describe());
  REQUIRE(a.num_tables() == b.num_tables());
  for (std::size_t j = 0; j < a.num_tables(); ++j) CHECK(a.table(j) == b.table(j));
  REQUIRE(a.shards().size() == b.shards().size());
  for (std::size_t i = 0; i < a.shards().size(); ++i)
    CHECK(same_shard(a.shards()[i], b.shards()[i]));
  CHECK(a.balance().memory_bytes == b.balance().memory_bytes);
  CHECK(a.balance().traffic == b.balance().traffic);
  CHECK(a.balance().load == b.balance().load);
}

double max_over_mean(const std::vector<double>& v) {
  double sum = 0, max = 0;
  for (double x : v) {
    sum += x;
    max = std::max(max, x);
  }
  const double mean = sum / static_cast<double>(v.size());
  return mean > 0 ? max / mean : 1.0;
}

}  // namespace

TEST_CASE("ShardingPlan::parse: a plan of every placement, resolved as written") {
  const auto plan = ShardingPlan::parse(
      "0: 100x8 table@1; 1: 50x8 column:2@2\n2: 10x4 row;3: 7x4 table-row@1 ;\n\n 4: 5x4 dp", 4, 2);
  CHECK(plan.world_size() == 4);
  CHECK(plan.ranks_per_node() == 2);
  REQUIRE(plan.num_tables() == 5);
  CHECK(plan.describe() ==
        "0: 100x8 table@1; 1: 50x8 column:2@2; 2: 10x4 row; 3: 7x4 table-row@1; 4: 5x4 dp");
  CHECK(plan.table(1) == TableSpec{50, 8, PlacementSpec{Placement::column_wise, 2, 2}});
  CHECK(plan.replicated(4));
  CHECK_FALSE(plan.replicated(3));
  CHECK(plan.column_blocks(1) == 2);
  CHECK(plan.column_blocks(2) == 1);

  // Hand-listed: table 2's 10 rows over 4 ranks are 3, 3, 2, 2; table 3's 7 over node 1's two
  // ranks are 4, 3.
  const std::vector<strata::Shard> want{
      {0, 1, 0, 100, 0, 8}, {1, 2, 0, 50, 0, 4}, {1, 3, 0, 50, 4, 8},
      {2, 0, 0, 3, 0, 4},   {2, 1, 3, 6, 0, 4},  {2, 2, 6, 8, 0, 4},
      {2, 3, 8, 10, 0, 4},  {3, 2, 0, 4, 0, 4},  {3, 3, 4, 7, 0, 4},
  };
  REQUIRE(plan.shards().size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    CAPTURE(i);
    CHECK(same_shard(plan.shards()[i], want[i]));
  }
  CHECK(plan.shards_of(4).empty());
  CHECK(plan.shards_of(2).size() == 4);
  CHECK(plan.first_shard(3) == 7);
  const std::vector<std::vector<std::size_t>> on{{3}, {0, 4}, {1, 5, 7}, {2, 6, 8}};
  for (std::size_t r = 0; r < 4; ++r) {
    CAPTURE(r);
    const auto got = plan.shards_on(r);
    CHECK(std::vector<std::size_t>(got.begin(), got.end()) == on[r]);
  }
  CHECK(plan.owner(0, 99).rank == 1);
  CHECK(plan.owner(1, 10, 0).rank == 2);
  CHECK(plan.owner(1, 10, 1).rank == 3);
  CHECK(plan.owner(2, 2).rank == 0);
  CHECK(plan.owner(2, 3).rank == 1);
  CHECK(plan.owner(2, 5).rank == 1);
  CHECK(plan.owner(2, 6).rank == 2);
  CHECK(plan.owner(2, 9).rank == 3);
  CHECK(plan.owner(3, 3).rank == 2);
  CHECK(plan.owner(3, 4).rank == 3);
  CHECK(plan.owner_index(3, 6) == 8);
  CHECK_THROWS_AS((void)plan.owner(4, 0), std::logic_error);

  // What describe() writes, parse reads back to the same plan.
  check_same_plan(ShardingPlan::parse(plan.describe(), 4, 2), plan);
}

TEST_CASE("ShardingPlan::parse: rejects with one line that names the entry or table and the rule") {
  struct Case {
    const char* name;
    const char* text;
    std::size_t world, node;
    std::string message;
  };
  const std::vector<Case> cases{
      {"placed twice", "0: 10x4 table; 1: 3x2 dp; 0: 5x4 row", 4, 0,
       "ShardingPlan: entry 2 (\"0: 5x4 row\"): table 0 is placed twice (first by entry 0)"},
      {"placed nowhere", "0: 10x4 table; 3: 5x4 row", 4, 0,
       "ShardingPlan: table 1 is placed nowhere (entries name tables 0..3)"},
      {"no colon", "0 10x4 table", 4, 0,
       "ShardingPlan: entry 0 (\"0 10x4 table\"): expected INDEX: ROWSxWIDTH PLACEMENT"},
      {"no placement", "0: 10x4", 4, 0,
       "ShardingPlan: entry 0 (\"0: 10x4\"): expected ROWSxWIDTH and a placement"},
      {"shape without x", "0: 10by4 table", 4, 0,
       "ShardingPlan: entry 0 (\"0: 10by4 table\"): the shape must read ROWSxWIDTH"},
      {"shape without width", "0: 10x table", 4, 0,
       "ShardingPlan: entry 0 (\"0: 10x table\"): the width needs 1 to 15 digits"},
      {"shape with letters", "0: 1ax4 table", 4, 0,
       "ShardingPlan: entry 0 (\"0: 1ax4 table\"): the row count is not a whole number"},
      {"index not a number", "one: 10x4 table", 4, 0,
       "ShardingPlan: entry 0 (\"one: 10x4 table\"): the table index is not a whole number"},
      {"bad placement word", "0: 10x4 table; 1: 10x4 diagonal", 4, 0,
       "ShardingPlan: entry 1 (\"1: 10x4 diagonal\"): placement \"diagonal\": expected table, "
       "column:S, row, table-row or dp, optionally with @N"},
      {"row pinned", "0: 10x4 row@1", 4, 0,
       "ShardingPlan: entry 0 (\"0: 10x4 row@1\"): placement \"row@1\": row and dp tables span "
       "every rank and take no @N"},
      {"column without count", "0: 10x4 column:", 4, 0,
       "ShardingPlan: entry 0 (\"0: 10x4 column:\"): placement \"column:\": the shard count needs "
       "1 to 9 digits"},
      {"place not a number", "0: 10x4 table@x", 4, 0,
       "ShardingPlan: entry 0 (\"0: 10x4 table@x\"): placement \"table@x\": the place after @ is "
       "not a whole number"},
      {"no tables", " ;\n; ", 4, 0, "EmbeddingPlan: needs at least one table"},
      {"empty table", "0: 10x4 row; 1: 0x4 table", 4, 0,
       "EmbeddingPlan: table 1 (0x4, table): rows and width must be positive"},
      {"zero shards", "0: 10x4 column:0", 4, 0,
       "EmbeddingPlan: table 0 (10x4, column:0): needs at least one column shard"},
      {"width not divisible", "0: 10x4 row; 1: 10x6 column:4", 4, 0,
       "EmbeddingPlan: table 1 (10x6, column:4): width 6 does not divide into 4 column shards"},
      {"too many shards", "0: 10x8 column:8", 4, 0,
       "EmbeddingPlan: table 0 (10x8, column:8): 8 column shards need 8 distinct ranks, the "
       "world has 4"},
      {"pinned rank outside", "0: 10x4 table@4", 4, 0,
       "EmbeddingPlan: table 0 (10x4, table@4): rank 4 is outside the world of 4 ranks"},
      {"pinned columns outside", "0: 10x4 column:2@3", 4, 0,
       "EmbeddingPlan: table 0 (10x4, column:2@3): rank 4 is outside the world of 4 ranks"},
      {"node outside", "0: 10x4 table-row@2", 4, 2,
       "EmbeddingPlan: table 0 (10x4, table-row@2): node 2 is outside the 2 nodes of 2 ranks"},
      {"world not dividing into nodes", "0: 10x4 row", 6, 4,
       "EmbeddingPlan: a world of 6 ranks does not divide into nodes of 4 ranks"},
      {"empty world", "0: 10x4 row", 0, 0,
       "EmbeddingPlan: a world of 0 ranks does not divide into nodes of 0 ranks"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const std::string got = parse_error(c.text, c.world, c.node);
    CHECK(got == c.message);
    CHECK(got.find('\n') == std::string::npos);
  }
}

TEST_CASE("ShardingPlan::parse: a table index too large to hold is rejected, not allocated") {
  // Fifteen digits pass the number check; the plan must refuse the entry (or find the tables
  // before it placed nowhere) with its one-line std::invalid_argument, not try to make room for
  // that many tables first.
  for (const std::string text :
       {"123456789012345: 10x4 table", "0: 10x4 row; 999999999999999: 1x1 dp"}) {
    CAPTURE(text);
    const std::string got = parse_error(text.c_str(), 4);
    CAPTURE(got);
    CHECK(got.starts_with("ShardingPlan: "));
    CHECK(got.find('\n') == std::string::npos);
  }
}

TEST_CASE("ShardingPlan::make: the same rules as parse, and LoadModel's own") {
  const auto make_error = [](std::vector<TableSpec> t, std::size_t world, std::size_t node,
                             strata::LoadModel m = {}) {
    return rejection([&] { (void)ShardingPlan::make(t, world, node, m); });
  };
  CHECK(make_error({{10, 6, strata::ColumnWise<4>::spec}}, 4, 0) ==
        parse_error("0: 10x6 column:4", 4));
  CHECK(make_error({{10, 4, strata::Pinned<strata::TableRowWise, 2>::spec}}, 4, 2) ==
        parse_error("0: 10x4 table-row@2", 4, 2));
  CHECK(make_error({}, 4, 0) == "EmbeddingPlan: needs at least one table");
  const std::vector<TableSpec> two{{10, 4, strata::RowWise::spec}, {5, 4, strata::TableWise::spec}};
  CHECK(make_error(two, 4, 0, {.lookups = {1}}) == "LoadModel: 1 lookup figures for 2 tables");
  CHECK(make_error(two, 4, 0, {.lookups = {1, -1}}) ==
        "LoadModel: table 1 expects a negative or undefined number of lookups");
  CHECK(make_error(two, 4, 0, {.memory_weight = 1.5}) ==
        "LoadModel: memory_weight must lie in [0, 1]");
  CHECK(make_error(two, 4, 0, {.element_bytes = 0}) == "LoadModel: element_bytes is 0");
  // No ranks per node: the whole world is one node.
  CHECK(ShardingPlan::make(two, 4).ranks_per_node() == 4);
}

TEST_CASE("EmbeddingPlan::sharding equals ShardingPlan::make of the same tables") {
  using strata::Table;
  using Plan = strata::EmbeddingPlan<
      strata::Cluster<8, 4>, Table<1000, 16, strata::TableWise>,
      Table<500, 16, strata::ColumnWise<4>>, Table<64, 8, strata::RowWise>,
      Table<3, 8, strata::RowWise>, Table<100, 8, strata::TableRowWise>,
      Table<10, 8, strata::DataParallel>, Table<77, 6, strata::Pinned<strata::ColumnWise<3>, 5>>,
      Table<20, 2, strata::Pinned<strata::TableWise, 7>>,
      Table<40, 4, strata::Pinned<strata::TableRowWise, 1>>, Table<300, 4, strata::TableWise>>;
  static_assert(Plan::num_tables == 10 && Plan::world_size == 8 && Plan::ranks_per_node == 4);
  static_assert(Plan::tables[6] == TableSpec{77, 6, {Placement::column_wise, 3, 5}});
  static_assert(Plan::tables[3].placement == strata::RowWise::spec);

  const std::vector<TableSpec> specs(Plan::tables.begin(), Plan::tables.end());
  check_same_plan(Plan::sharding(), ShardingPlan::make(specs, 8, 4));
  const strata::LoadModel model{
      .lookups = {1, 9, 3, 3, 5, 100, 2, 2, 4, 8}, .element_bytes = 8, .memory_weight = 0.25};
  check_same_plan(Plan::sharding(model), ShardingPlan::make(specs, 8, 4, model));
  // And the text of the same tables.
  check_same_plan(Plan::sharding(),
                  ShardingPlan::parse("0: 1000x16 table; 1: 500x16 column:4; 2: 64x8 row; 3: 3x8 "
                                      "row; 4: 100x8 table-row; 5: 10x8 dp; 6: 77x6 column:3@5; "
                                      "7: 20x2 table@7; 8: 40x4 table-row@1; 9: 300x4 table",
                                      8, 4));
  // A world of one node: the default.
  using Flat = strata::EmbeddingPlan<strata::Cluster<3>, Table<5, 2, strata::TableRowWise>>;
  check_same_plan(Flat::sharding(), ShardingPlan::make({{5, 2, strata::TableRowWise::spec}}, 3));
}

TEST_CASE("row blocks: every row of a row-wise or table-row-wise table has exactly one owner") {
  for (std::size_t n = 1; n <= 16; ++n) {
    for (std::size_t rows = 1; rows <= 40; ++rows) {
      CAPTURE(n);
      CAPTURE(rows);
      // Block sizes: rows / n each, the first rows % n one more.
      std::size_t begin = 0;
      for (std::size_t q = 0; q <= n; ++q) {
        REQUIRE(strata::row_block_begin(rows, n, q) == begin);
        if (q < n) begin += rows / n + (q < rows % n ? 1 : 0);
      }
      const auto plan = ShardingPlan::make({{rows, 3, strata::RowWise::spec}}, n);
      const auto shards = plan.shards_of(0);
      REQUIRE(shards.size() == n);
      for (std::size_t q = 0; q < n; ++q) {
        CHECK(shards[q].rank == q);
        CHECK(shards[q].row_begin == strata::row_block_begin(rows, n, q));
        CHECK(shards[q].row_end == strata::row_block_begin(rows, n, q + 1));
        CHECK(shards[q].col_begin == 0);
        CHECK(shards[q].col_end == 3);
      }
      std::size_t bad = 0;
      for (std::size_t i = 0; i < rows; ++i) {
        std::size_t holders = 0, holder = 0;
        for (std::size_t q = 0; q < n; ++q) {
          if (shards[q].holds(i)) ++holders, holder = q;
        }
        bad += holders != 1;
        bad += plan.owner(0, i).rank != holder;
        bad += plan.owner_index(0, i) != plan.first_shard(0) + holder;
        bad += !plan.owner(0, i).holds(i);
      }
      CHECK(bad == 0);
    }
  }
  // Table-row-wise: the blocks of the ranks of one node, for every node and node size.
  for (std::size_t n = 1; n <= 16; ++n) {
    for (std::size_t g = 1; g <= n; ++g) {
      if (n % g != 0) continue;
      for (std::size_t node = 0; node < n / g; ++node) {
        for (std::size_t rows : {std::size_t{1}, g - 1 + (g == 1), g, g + 1, 3 * g + 2}) {
          CAPTURE(n);
          CAPTURE(g);
          CAPTURE(node);
          CAPTURE(rows);
          const auto plan = ShardingPlan::make(
              {{7, 2, strata::RowWise::spec}, {rows, 2, {Placement::table_row_wise, 1, node}}}, n,
              g);
          const auto shards = plan.shards_of(1);
          REQUIRE(shards.size() == g);
          std::size_t bad = 0;
          for (std::size_t q = 0; q < g; ++q) {
            bad += shards[q].rank != node * g + q;
            bad += shards[q].row_begin != strata::row_block_begin(rows, g, q);
            bad += shards[q].row_end != strata::row_block_begin(rows, g, q + 1);
          }
          for (std::size_t i = 0; i < rows; ++i) {
            std::size_t holders = 0;
            for (const auto& s : shards) holders += s.holds(i);
            bad += holders != 1;
            bad += !plan.owner(1, i).holds(i);
            bad += plan.owner(1, i).table != 1;
          }
          CHECK(bad == 0);
        }
      }
    }
  }
}

TEST_CASE("shards_on: each rank's shards, in the order of shards(), every shard once") {
  std::mt19937_64 rng(11);
  for (std::size_t n = 1; n <= 16; ++n) {
    for (std::size_t g = 1; g <= n; ++g) {
      if (n % g != 0) continue;
      CAPTURE(n);
      CAPTURE(g);
      const auto tables = embedding_model::random_tables(rng, n, g);
      const auto plan = ShardingPlan::make(tables, n, g);
      // The shards as the placements put them, recomputed.
      std::vector<strata::Shard> want;
      for (std::size_t j = 0; j < plan.num_tables(); ++j) {
        for (const auto& b : embedding_model::blocks_of(plan.table(j), n, g))
          want.push_back({j, b.rank, b.row_begin, b.row_end, b.col_begin, b.col_end});
      }
      REQUIRE(plan.shards().size() == want.size());
      std::size_t bad = 0;
      for (std::size_t i = 0; i < want.size(); ++i) bad += !same_shard(plan.shards()[i], want[i]);
      std::vector<int> seen(want.size(), 0);
      for (std::size_t r = 0; r < n; ++r) {
        std::vector<std::size_t> mine;
        for (std::size_t i = 0; i < want.size(); ++i)
          if (want[i].rank == r) mine.push_back(i);
        const auto got = plan.shards_on(r);
        bad += std::vector<std::size_t>(got.begin(), got.end()) != mine;
        for (std::size_t i : got) ++seen[i];
      }
      bad += static_cast<std::size_t>(std::count(seen.begin(), seen.end(), 1)) != seen.size();
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("balancer: deterministic, pinned placements kept, column shards on distinct ranks") {
  std::mt19937_64 rng(5);
  for (std::size_t n = 1; n <= 16; ++n) {
    for (std::size_t g = 1; g <= n; ++g) {
      if (n % g != 0) continue;
      CAPTURE(n);
      CAPTURE(g);
      const auto tables = embedding_model::random_tables(rng, n, g);
      strata::LoadModel model;
      for (std::size_t j = 0; j < tables.size(); ++j)
        model.lookups.push_back(static_cast<double>(rng() % 100));
      model.memory_weight = static_cast<double>(rng() % 5) / 4;
      const auto a = ShardingPlan::make(tables, n, g, model);
      const auto b = ShardingPlan::make(tables, n, g, model);
      check_same_plan(a, b);
      for (std::size_t j = 0; j < tables.size(); ++j) {
        const auto& want = tables[j].placement;
        const auto& got = a.table(j).placement;
        CHECK(got.kind == want.kind);
        CHECK(got.shards == want.shards);
        CHECK(a.table(j).rows == tables[j].rows);
        CHECK(a.table(j).width == tables[j].width);
        if (want.where != strata::auto_place) CHECK(got.where == want.where);
        if (want.kind == Placement::row_wise || want.kind == Placement::data_parallel) {
          CHECK(got.where == strata::auto_place);
        } else {
          // Resolved: a rank (or node) where every shard fits.
          CHECK(got.where != strata::auto_place);
          if (want.kind == Placement::table_row_wise) CHECK(got.where < n / g);
          else CHECK(got.where + got.shards <= n);
        }
        if (want.kind == Placement::column_wise) {
          std::set<std::size_t> ranks;
          for (const auto& s : a.shards_of(j)) ranks.insert(s.rank);
          CHECK(ranks.size() == want.shards);
        }
      }
    }
  }
}

TEST_CASE("balancer: the report's figures and max/mean, recomputed from the shards") {
  std::mt19937_64 rng(17);
  for (std::size_t n : {1, 2, 3, 4, 6, 8, 12, 16}) {
    for (std::size_t g : {std::size_t{1}, n}) {
      CAPTURE(n);
      CAPTURE(g);
      const auto tables = embedding_model::random_tables(rng, n, g);
      strata::LoadModel model{.lookups = {}, .element_bytes = 2 + rng() % 7, .memory_weight = 0.3};
      for (std::size_t j = 0; j < tables.size(); ++j)
        model.lookups.push_back(static_cast<double>(1 + rng() % 50));
      const auto plan = ShardingPlan::make(tables, n, g, model);
      // Bytes and traffic of each rank: its blocks (a row block's traffic by its share of the
      // rows) and a replica of every data-parallel table (its traffic split over the world).
      std::vector<double> bytes(n, 0), traffic(n, 0);
      double total_bytes = 0, total_traffic = 0;
      for (std::size_t j = 0; j < plan.num_tables(); ++j) {
        const auto& t = plan.table(j);
        const double lookups = model.lookups[j];
        total_traffic += lookups * static_cast<double>(t.width);
        if (t.placement.kind == Placement::data_parallel) {
          for (std::size_t r = 0; r < n; ++r) {
            bytes[r] += static_cast<double>(t.rows * t.width * model.element_bytes);
            traffic[r] += lookups * static_cast<double>(t.width) / static_cast<double>(n);
          }
          total_bytes += static_cast<double>(n * t.rows * t.width * model.element_bytes);
          continue;
        }
        total_bytes += static_cast<double>(t.rows * t.width * model.element_bytes);
        for (const auto& b : embedding_model::blocks_of(t, n, g)) {
          const std::size_t rows = b.row_end - b.row_begin, cols = b.col_end - b.col_begin;
          bytes[b.rank] += static_cast<double>(rows * cols * model.element_bytes);
          traffic[b.rank] += lookups * static_cast<double>(cols) * static_cast<double>(rows) /
                             static_cast<double>(t.rows);
        }
      }
      const auto& rep = plan.balance();
      REQUIRE(rep.memory_bytes.size() == n);
      REQUIRE(rep.traffic.size() == n);
      REQUIRE(rep.load.size() == n);
      double load_sum = 0;
      for (std::size_t r = 0; r < n; ++r) {
        CAPTURE(r);
        CHECK(rep.memory_bytes[r] == doctest::Approx(bytes[r]).epsilon(1e-12));
        CHECK(rep.traffic[r] == doctest::Approx(traffic[r]).epsilon(1e-12));
        const double load = 0.3 * bytes[r] / total_bytes + 0.7 * traffic[r] / total_traffic;
        CHECK(rep.load[r] == doctest::Approx(load).epsilon(1e-12));
        load_sum += rep.load[r];
      }
      CHECK(load_sum == doctest::Approx(1.0).epsilon(1e-12));
      CHECK(rep.memory_max_over_mean() == doctest::Approx(max_over_mean(rep.memory_bytes)));
      CHECK(rep.traffic_max_over_mean() == doctest::Approx(max_over_mean(rep.traffic)));
      CHECK(rep.load_max_over_mean() == doctest::Approx(max_over_mean(rep.load)));
    }
  }
  // By hand.
  const strata::BalanceReport r{.memory_bytes = {4, 2, 0}, .traffic = {}, .load = {0, 0}};
  CHECK(r.memory_max_over_mean() == doctest::Approx(2.0));
  CHECK(r.traffic_max_over_mean() == 1.0);  // nothing to spread
  CHECK(r.load_max_over_mean() == 1.0);     // nothing spread
}

TEST_CASE("balancer: equal tables that divide evenly over the ranks spread evenly") {
  for (std::size_t n = 1; n <= 16; ++n) {
    CAPTURE(n);
    for (std::size_t per_rank : {1, 3}) {
      // Table-wise: per_rank tables on every rank.
      const std::vector<TableSpec> t(n * per_rank, TableSpec{64, 8, strata::TableWise::spec});
      const auto plan = ShardingPlan::make(t, n);
      std::vector<std::size_t> count(n, 0);
      for (const auto& s : plan.shards()) ++count[s.rank];
      CHECK(std::count(count.begin(), count.end(), per_rank) == static_cast<long>(n));
      CHECK(plan.balance().memory_max_over_mean() == 1.0);
      CHECK(plan.balance().traffic_max_over_mean() == 1.0);
      CHECK(plan.balance().load_max_over_mean() == doctest::Approx(1.0).epsilon(1e-12));
    }
    // Column-wise with S dividing the world: n / S tables fill the world once, per round.
    for (std::size_t s = 1; s <= n; ++s) {
      if (n % s != 0 || 8 % s != 0) continue;
      CAPTURE(s);
      const std::vector<TableSpec> t(
          2 * n / s, TableSpec{30, 8, {Placement::column_wise, s, strata::auto_place}});
      const auto plan = ShardingPlan::make(t, n);
      std::vector<std::size_t> count(n, 0);
      for (const auto& sh : plan.shards()) ++count[sh.rank];
      CHECK(std::count(count.begin(), count.end(), 2) == static_cast<long>(n));
      CHECK(plan.balance().memory_max_over_mean() == 1.0);
      CHECK(plan.balance().load_max_over_mean() == doctest::Approx(1.0).epsilon(1e-12));
    }
    // Table-row-wise: two tables per node.
    for (std::size_t g = 1; g <= n; ++g) {
      if (n % g != 0) continue;
      CAPTURE(g);
      const std::vector<TableSpec> t(2 * (n / g), TableSpec{10 * g, 4, strata::TableRowWise::spec});
      const auto plan = ShardingPlan::make(t, n, g);
      std::vector<std::size_t> per_node(n / g, 0);
      for (std::size_t j = 0; j < t.size(); ++j) ++per_node[plan.table(j).placement.where];
      CHECK(std::count(per_node.begin(), per_node.end(), 2) == static_cast<long>(n / g));
      CHECK(plan.balance().memory_max_over_mean() == 1.0);
      CHECK(plan.balance().load_max_over_mean() == doctest::Approx(1.0).epsilon(1e-12));
    }
  }
  // Unequal tables: the largest first, each on the least loaded rank (ties to the lowest).
  const auto plan =
      ShardingPlan::make({{10, 4, strata::TableWise::spec},
                          {40, 4, strata::TableWise::spec},
                          {20, 4, strata::TableWise::spec},
                          {30, 4, strata::TableWise::spec},
                          {25, 4, strata::TableWise::spec}},
                         3, 0, {.lookups = {}, .element_bytes = 4, .memory_weight = 1.0});
  // 40 -> 0, 30 -> 1, 25 -> 2, 20 -> 2 (25 < 30 < 40), 10 -> 1 (30 < 40 < 45).
  CHECK(plan.describe() ==
        "0: 10x4 table@1; 1: 40x4 table@0; 2: 20x4 table@2; 3: 30x4 table@1; 4: 25x4 table@2");
}

namespace {

// The same tables, placements and shards; the balance report may differ in its last bits when
// one plan pins what the other leaves to the balancer (loads are added up in another order).
void check_same_layout(const ShardingPlan& a, const ShardingPlan& b) {
  CHECK(a.describe() == b.describe());
  REQUIRE(a.num_tables() == b.num_tables());
  std::size_t bad = 0;
  for (std::size_t j = 0; j < a.num_tables(); ++j) bad += !(a.table(j) == b.table(j));
  REQUIRE(a.shards().size() == b.shards().size());
  for (std::size_t i = 0; i < a.shards().size(); ++i)
    bad += !same_shard(a.shards()[i], b.shards()[i]);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("hybrid placements: the types and the text") {
  using strata::Hybrid;
  static_assert(Hybrid<>::spec == PlacementSpec{Placement::row_wise, 1, strata::auto_place, true,
                                                strata::auto_place});
  static_assert(Hybrid<strata::ColumnWise<2>, 5>::spec ==
                PlacementSpec{Placement::column_wise, 2, strata::auto_place, true, 5});
  static_assert(Hybrid<strata::Pinned<strata::TableWise, 3>, 0>::spec ==
                PlacementSpec{Placement::table_wise, 1, 3, true, 0});
  static_assert(Hybrid<strata::TableRowWise>::spec.kind == Placement::table_row_wise);
  static_assert(strata::placement_policy<Hybrid<strata::RowWise, 7>>);
  static_assert(!strata::RowWise::spec.hybrid &&
                strata::RowWise::spec.frequent == strata::auto_place);

  struct Good {
    const char* text;
    PlacementSpec spec;
    const char* written;  // to_string of the spec
  };
  const std::vector<Good> good{
      {"hybrid",
       {Placement::row_wise, 1, strata::auto_place, true, strata::auto_place},
       "hybrid:row"},
      {"hybrid:row",
       {Placement::row_wise, 1, strata::auto_place, true, strata::auto_place},
       "hybrid:row"},
      {"hybrid/0", {Placement::row_wise, 1, strata::auto_place, true, 0}, "hybrid:row/0"},
      {"hybrid:table@2/10", {Placement::table_wise, 1, 2, true, 10}, "hybrid:table@2/10"},
      {"hybrid:column:2/3",
       {Placement::column_wise, 2, strata::auto_place, true, 3},
       "hybrid:column:2/3"},
      {"hybrid:column:4@1",
       {Placement::column_wise, 4, 1, true, strata::auto_place},
       "hybrid:column:4@1"},
      {"hybrid:table-row@1/123456789",
       {Placement::table_row_wise, 1, 1, true, 123456789},
       "hybrid:table-row@1/123456789"},
      {"hybrid:table",
       {Placement::table_wise, 1, strata::auto_place, true, strata::auto_place},
       "hybrid:table"},
  };
  for (const Good& g : good) {
    CAPTURE(g.text);
    CHECK(strata::parse_placement(g.text) == g.spec);
    CHECK(strata::to_string(g.spec) == g.written);
    CHECK(strata::parse_placement(strata::to_string(g.spec)) == g.spec);
  }
  CHECK(strata::to_string(Hybrid<strata::RowWise, 100>::spec) == "hybrid:row/100");

  const auto placement_error = [](const char* text) {
    return rejection([&] { (void)strata::parse_placement(text); });
  };
  CHECK(placement_error("hybrid:dp") ==
        "placement \"hybrid:dp\": the rest of a hybrid table is placed by table, column:S, row or "
        "table-row");
  CHECK(placement_error("hybrid:hybrid") ==
        "placement \"hybrid:hybrid\": the rest of a hybrid table is placed by table, column:S, row "
        "or table-row");
  CHECK(placement_error("hybrid/x") ==
        "placement \"hybrid/x\": the frequent rows after / is not a whole number");
  CHECK(placement_error("hybrid/") ==
        "placement \"hybrid/\": the frequent rows after / needs 1 to 9 digits");
  CHECK(placement_error("hybrid/1234567890") ==
        "placement \"hybrid/1234567890\": the frequent rows after / needs 1 to 9 digits");
  CHECK(placement_error("hybridrow") ==
        "placement \"hybridrow\": a hybrid placement reads hybrid, hybrid:P or either with /N");
  CHECK(placement_error("hybrid-row/2") ==
        "placement \"hybrid-row/2\": a hybrid placement reads hybrid, hybrid:P or either with /N");
  // The inner placement's own rules, in its own words.
  CHECK(placement_error("hybrid:row@1") ==
        "placement \"row@1\": row and dp tables span every rank and take no @N");
  CHECK(placement_error("hybrid:column:x") ==
        "placement \"column:x\": the shard count is not a whole number");
}

TEST_CASE("hybrid plans: the rules, the shards of the inner placement, describe() read back") {
  // The plan rules name the table and the placement as written.
  CHECK(parse_error("0: 10x4 row; 1: 10x4 hybrid/11", 4) ==
        "EmbeddingPlan: table 1 (10x4, hybrid:row/11): 11 frequent rows exceed the 10 rows "
        "of the table");
  CHECK(parse_error("0: 6x4 hybrid:column:2@1/7", 4) ==
        "EmbeddingPlan: table 0 (6x4, hybrid:column:2@1/7): 7 frequent rows exceed the 6 rows "
        "of the table");
  CHECK(parse_error("0: 6x6 hybrid:column:4", 4) ==
        "EmbeddingPlan: table 0 (6x6, hybrid:column:4): width 6 does not divide into 4 column "
        "shards");
  CHECK(parse_error("0: 6x4 hybrid:table@4", 4) ==
        "EmbeddingPlan: table 0 (6x4, hybrid:table@4): rank 4 is outside the world of 4 ranks");
  CHECK(rejection([] {
          (void)ShardingPlan::make(
              {{10, 4, PlacementSpec{Placement::data_parallel, 1, strata::auto_place, true, 2}}},
              4);
        }) ==
        "EmbeddingPlan: table 0 (10x4, hybrid:dp/2): the rest of a hybrid table cannot be "
        "data-parallel");
  CHECK(rejection([] {
          (void)ShardingPlan::make({{3, 2, strata::Hybrid<strata::RowWise, 4>::spec}}, 2);
        }) ==
        "EmbeddingPlan: table 0 (3x2, hybrid:row/4): 4 frequent rows exceed the 3 rows "
        "of the table");
  // As many frequent rows as rows is fine.
  CHECK(parse_error("0: 10x4 hybrid/10", 4) == "no error");

  // A hybrid table is sharded as its inner placement, the balancer included.
  for (std::size_t n : {1, 2, 3, 4, 8}) {
    for (std::size_t g : {std::size_t{1}, n}) {
      CAPTURE(n);
      CAPTURE(g);
      std::mt19937_64 rng(n * 3 + g);
      auto tables = embedding_model::random_tables(rng, n, g);
      auto hybrid = tables;
      for (auto& t : hybrid) {
        if (t.placement.kind == Placement::data_parallel) continue;
        t.placement.hybrid = true;
        if (rng() % 2 == 0) t.placement.frequent = rng() % (t.rows + 1);
      }
      const auto plain = ShardingPlan::make(tables, n, g);
      const auto hyb = ShardingPlan::make(hybrid, n, g);
      REQUIRE(plain.shards().size() == hyb.shards().size());
      std::size_t bad = 0;
      for (std::size_t i = 0; i < plain.shards().size(); ++i)
        bad += !same_shard(plain.shards()[i], hyb.shards()[i]);
      for (std::size_t j = 0; j < tables.size(); ++j) {
        bad += hyb.hybrid(j) != (tables[j].placement.kind != Placement::data_parallel);
        bad += plain.hybrid(j);
        bad += hyb.replicated(j) != plain.replicated(j);
        bad += hyb.table(j).placement.where != plain.table(j).placement.where;
        bad += hyb.table(j).placement.frequent != hybrid[j].placement.frequent;
      }
      CHECK(bad == 0);
      // describe() writes what parse reads back to the same tables and shards (the balance report
      // may differ in its last bits: pinned tables are added up in another order).
      check_same_layout(ShardingPlan::parse(hyb.describe(), n, g), hyb);
    }
  }
  const auto plan = ShardingPlan::parse(
      "0: 10x4 hybrid; 1: 20x4 hybrid:table/3; 2: 12x6 hybrid:column:3@1/2; 3: 9x2 "
      "hybrid:table-row/0; 4: 5x2 dp",
      4, 2);
  CHECK(plan.describe() ==
        "0: 10x4 hybrid:row; 1: 20x4 hybrid:table@0/3; 2: 12x6 hybrid:column:3@1/2; 3: 9x2 "
        "hybrid:table-row@1/0; 4: 5x2 dp");
  check_same_layout(ShardingPlan::parse(plan.describe(), 4, 2), plan);
  CHECK(plan.hybrid(2));
  CHECK_FALSE(plan.hybrid(4));
  CHECK_FALSE(plan.replicated(0));
  CHECK(plan.shards_of(0).size() == 4);
  CHECK(plan.shards_of(2).size() == 3);
  CHECK(plan.column_blocks(2) == 3);

  // The compile-time form resolves to the same plan.
  using strata::Table;
  using Plan = strata::EmbeddingPlan<
      strata::Cluster<4, 2>, Table<10, 4, strata::Hybrid<>>,
      Table<20, 4, strata::Hybrid<strata::TableWise, 3>>,
      Table<12, 6, strata::Hybrid<strata::Pinned<strata::ColumnWise<3>, 1>, 2>>,
      Table<9, 2, strata::Hybrid<strata::TableRowWise, 0>>, Table<5, 2, strata::DataParallel>>;
  static_assert(Plan::tables[2].placement == PlacementSpec{Placement::column_wise, 3, 1, true, 2});
  check_same_plan(Plan::sharding(), plan);
}
