// unique_ids and segmented_sum against independent serial references (a std::map from id to its
// positions), for 32- and 64-bit ids and indices, every host policy, and batches from empty to
// tens of thousands of ids with many repeats, none, or one id only.
#include <doctest/doctest.h>

#include <strata/kernels/dedup.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <thrust/device_vector.h>
#include <thrust/system/cpp/execution_policy.h>

namespace {

static_assert(strata::dedup_integer<std::int32_t> && strata::dedup_integer<std::int64_t>);
static_assert(strata::dedup_integer<std::uint32_t> && strata::dedup_integer<std::uint64_t>);
static_assert(strata::dedup_integer<long long> && strata::dedup_integer<unsigned long long>);
static_assert(!strata::dedup_integer<bool> && !strata::dedup_integer<char>);
static_assert(!strata::dedup_integer<std::int8_t> && !strata::dedup_integer<std::uint16_t>);
static_assert(!strata::dedup_integer<wchar_t> && !strata::dedup_integer<char32_t>);
static_assert(!strata::dedup_integer<float> && !strata::dedup_integer<volatile int>);

template <class I, class X>
struct Types {
  using Id = I;
  using Index = X;
};

// What unique_ids must produce, computed without sorting arrays: a map from each id to its
// positions, which are appended in input order.
template <class Id, class Index>
struct Reference {
  std::vector<Id> unique;
  std::vector<Index> inverse;
  std::vector<Index> counts;
  std::vector<std::vector<std::size_t>> positions;  // per unique id, ascending

  explicit Reference(const std::vector<Id>& ids) : inverse(ids.size()) {
    std::map<Id, std::vector<std::size_t>> where;
    for (std::size_t i = 0; i < ids.size(); ++i) where[ids[i]].push_back(i);
    for (const auto& [id, at] : where) {
      for (const std::size_t i : at) inverse[i] = static_cast<Index>(unique.size());
      unique.push_back(id);
      counts.push_back(static_cast<Index>(at.size()));
      positions.push_back(at);
    }
  }
};

// The sum of each group's rows, added one by one in the order given, the first row copied.
template <class T>
std::vector<T> serial_sums(const std::vector<std::vector<std::size_t>>& groups,
                           const std::vector<T>& rows, std::size_t width) {
  std::vector<T> sums(groups.size() * width, T(0));
  for (std::size_t u = 0; u < groups.size(); ++u) {
    for (std::size_t c = 0; c < width; ++c) {
      if (groups[u].empty()) continue;
      T acc = rows[groups[u][0] * width + c];
      for (std::size_t k = 1; k < groups[u].size(); ++k) {
        acc = static_cast<T>(acc + rows[groups[u][k] * width + c]);
      }
      sums[u * width + c] = acc;
    }
  }
  return sums;
}

template <class T>
bool same_bits(std::span<const T> a, std::span<const T> b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

enum class Pattern { repeats, unique, equal, heavy, extremes };

const char* name(Pattern p) {
  switch (p) {
    case Pattern::repeats: return "many repeats";
    case Pattern::unique: return "all unique";
    case Pattern::equal: return "all equal";
    case Pattern::heavy: return "one heavy hitter";
    case Pattern::extremes: return "extreme values";
  }
  return "?";
}

template <class Id>
std::vector<Id> make_ids(Pattern pattern, std::size_t n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  using L = std::numeric_limits<Id>;
  // Signed ids straddle zero, so that negative ids sort first.
  const Id low = std::is_signed_v<Id> ? Id(-500) : Id(0);
  std::vector<Id> ids(n);
  switch (pattern) {
    case Pattern::repeats: {
      const auto range = static_cast<Id>(std::max<std::size_t>(1, n / 20));
      std::uniform_int_distribution<Id> d(low, static_cast<Id>(low + range));
      for (Id& id : ids) id = d(gen);
      break;
    }
    case Pattern::unique: {
      for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<Id>(low + static_cast<Id>(3 * i));
      std::shuffle(ids.begin(), ids.end(), gen);
      break;
    }
    case Pattern::equal: std::fill(ids.begin(), ids.end(), static_cast<Id>(L::max() - 1)); break;
    case Pattern::heavy: {
      std::uniform_int_distribution<Id> d(L::min(), L::max());
      std::bernoulli_distribution often(0.9);
      const Id hitter = d(gen);
      for (Id& id : ids) id = often(gen) ? hitter : d(gen);
      break;
    }
    case Pattern::extremes: {
      const Id pool[] = {L::min(),
                         L::max(),
                         Id(0),
                         Id(1),
                         static_cast<Id>(L::max() - 1),
                         static_cast<Id>(L::min() + 1)};
      std::uniform_int_distribution<std::size_t> d(0, std::size(pool) - 1);
      for (Id& id : ids) id = pool[d(gen)];
      break;
    }
  }
  return ids;
}

template <class T>
std::vector<T> make_rows(std::size_t count, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<T> rows(count);
  if constexpr (std::is_floating_point_v<T>) {
    // Magnitudes that span many binades, so that a different order of additions shows in the bits.
    std::uniform_real_distribution<T> mantissa(-1, 1);
    std::uniform_int_distribution<int> exponent(-20, 20);
    for (T& x : rows) x = std::ldexp(mantissa(gen), exponent(gen));
  } else {
    std::uniform_int_distribution<std::int64_t> d(-1000, 1000);
    for (T& x : rows) x = static_cast<T>(d(gen));
  }
  return rows;
}

const std::vector<std::size_t> batch_sizes = {0, 1, 2, 3, 17, 256, 1000, 20000};
const Pattern patterns[] = {Pattern::repeats, Pattern::unique, Pattern::equal, Pattern::heavy,
                            Pattern::extremes};

// One batch through unique_ids and both segmented_sum forms, checked against the references.
template <class Id, class Index, class Policy, template <class...> class Vector>
void check_batch(const Policy& policy, strata::DedupWorkspace<Id, Index, Vector>& workspace,
                 const std::vector<Id>& ids, std::size_t width, std::uint64_t seed) {
  const std::size_t n = ids.size();
  const Reference<Id, Index> ref(ids);
  const std::size_t m_ref = ref.unique.size();

  // Sentinels past m must survive: unique_ids writes only the first m entries.
  const Id id_sentinel = 42;
  const Index index_sentinel = 7;
  std::vector<Id> unique(n + 2, id_sentinel);
  std::vector<Index> inverse(n, index_sentinel);
  std::vector<Index> counts(n + 2, index_sentinel);
  const std::size_t m = strata::unique_ids(policy, ids, unique, inverse, counts, workspace);
  REQUIRE(m == m_ref);
  CHECK(workspace.batch_size() == n);
  CHECK(workspace.unique_count() == m);
  CHECK(std::equal(ref.unique.begin(), ref.unique.end(), unique.begin()));
  CHECK(std::equal(ref.counts.begin(), ref.counts.end(), counts.begin()));
  CHECK(inverse == ref.inverse);
  for (std::size_t k = m; k < unique.size(); ++k) {
    REQUIRE(unique[k] == id_sentinel);
    REQUIRE(counts[k] == index_sentinel);
  }
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_signed_v<Index>) REQUIRE(inverse[i] >= 0);
    REQUIRE(static_cast<std::size_t>(inverse[i]) < m);
    REQUIRE(unique[static_cast<std::size_t>(inverse[i])] == ids[i]);
  }
  CHECK(std::accumulate(counts.begin(), counts.begin() + static_cast<std::ptrdiff_t>(m),
                        std::size_t{0}) == n);
  for (std::size_t u = 1; u < m; ++u) REQUIRE(unique[u - 1] < unique[u]);

  // Gradients by the workspace's grouping: bitwise a serial loop in input order.
  const std::vector<float> rows = make_rows<float>(n * width, seed);
  std::vector<float> sums(m * width + 3, -1.0f);
  strata::segmented_sum(policy, workspace, rows, width, std::span(sums));
  const std::vector<float> expected = serial_sums(ref.positions, rows, width);
  CHECK(same_bits<float>(std::span<const float>(sums).first(m * width), expected));
  for (std::size_t k = m * width; k < sums.size(); ++k) REQUIRE(sums[k] == -1.0f);

  // The same from the inverse map, with two more groups that receive no rows.
  std::vector<double> drows = make_rows<double>(n * width, seed + 1);
  std::vector<double> dsums((m + 2) * width, -1.0);
  strata::segmented_sum(policy, inverse, drows, width, std::span(dsums), workspace);
  auto groups = ref.positions;
  groups.resize(m + 2);
  CHECK(same_bits<double>(dsums, serial_sums(groups, drows, width)));

  // The inverse form leaves the grouping of unique_ids in place.
  std::vector<float> again(m * width);
  strata::segmented_sum(policy, workspace, rows, width, std::span(again));
  CHECK(same_bits<float>(again, expected));
}

template <class Id, class Index, class Policy>
void check_all(const Policy& policy) {
  // One workspace for every batch: it grows and shrinks between sizes.
  strata::DedupWorkspace<Id, Index> workspace;
  std::uint64_t seed = 1;
  for (const Pattern pattern : patterns) {
    for (const std::size_t n : batch_sizes) {
      for (const std::size_t width : {std::size_t{1}, std::size_t{3}, std::size_t{16}}) {
        if (n * width > 100000) continue;
        CAPTURE(name(pattern));
        CAPTURE(n);
        CAPTURE(width);
        check_batch(policy, workspace, make_ids<Id>(pattern, n, seed), width, seed);
        ++seed;
      }
    }
  }
}

}  // namespace

TEST_CASE_TEMPLATE("unique_ids and segmented_sum agree with serial references", T,
                   Types<std::int32_t, std::int32_t>, Types<std::int64_t, std::int32_t>,
                   Types<std::int64_t, std::int64_t>, Types<std::uint32_t, std::int64_t>,
                   Types<std::uint64_t, std::uint32_t>) {
  using Id = typename T::Id;
  using Index = typename T::Index;
  SUBCASE("thrust::host") { check_all<Id, Index>(thrust::host); }
  SUBCASE("thrust::seq") { check_all<Id, Index>(thrust::seq); }
  SUBCASE("thrust::cpp::par") { check_all<Id, Index>(thrust::cpp::par); }
  SUBCASE("thrust::device (the cpp system here)") { check_all<Id, Index>(thrust::device); }
}

TEST_CASE("a workspace of thrust::device_vector works with thrust::device") {
  strata::DedupWorkspace<std::int64_t, std::int32_t, thrust::device_vector> workspace;
  for (const Pattern pattern : patterns) {
    const auto ids = make_ids<std::int64_t>(pattern, 5000, 99);
    CAPTURE(name(pattern));
    check_batch(thrust::device(workspace.allocator()), workspace, ids, 4, 5);
  }
}

TEST_CASE("negative ids sort before positive ones, 32-bit ids included") {
  // Thrust's sequential radix sort gets negative ints wrong; unique_ids must not inherit that.
  const std::vector<std::int32_t> ids{5, -1, std::numeric_limits<std::int32_t>::min(),
                                      0, -1, std::numeric_limits<std::int32_t>::max(),
                                      5};
  strata::DedupWorkspace<std::int32_t> workspace;
  std::vector<std::int32_t> unique(7), inverse(7), counts(7);
  REQUIRE(strata::unique_ids(thrust::host, ids, unique, inverse, counts, workspace) == 5);
  unique.resize(5);
  CHECK(unique == std::vector<std::int32_t>{std::numeric_limits<std::int32_t>::min(), -1, 0, 5,
                                            std::numeric_limits<std::int32_t>::max()});
  CHECK(inverse == std::vector<std::int32_t>{3, 1, 0, 2, 1, 4, 3});
  CHECK((counts[0] == 1 && counts[1] == 2 && counts[2] == 1 && counts[3] == 2 && counts[4] == 1));
}

TEST_CASE("ties keep input order: each group adds its rows in input order") {
  // 1e16 + -1e16 + 1 is 1 in this order, 0 in any order that adds the 1 first.
  const std::vector<std::int32_t> ids{3, 9, 3, 9, 3};
  const std::vector<double> rows{1e16, 5, -1e16, 6, 1};
  strata::DedupWorkspace<std::int32_t> workspace;
  std::vector<std::int32_t> unique(5), inverse(5), counts(5);
  REQUIRE(strata::unique_ids(thrust::host, ids, unique, inverse, counts, workspace) == 2);
  std::vector<double> sums(2);
  strata::segmented_sum(thrust::host, workspace, rows, 1, std::span(sums));
  CHECK(sums == std::vector<double>{1, 11});
  strata::segmented_sum(thrust::host, inverse, rows, 1, std::span(sums), workspace);
  CHECK(sums == std::vector<double>{1, 11});
}

TEST_CASE("a lone row is copied bit for bit; an empty group sums to +0") {
  const std::vector<std::int64_t> ids{8, 2};
  const float nan = -std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> rows{-0.0f, nan};
  strata::DedupWorkspace<std::int64_t> workspace;
  std::vector<std::int64_t> unique(2);
  std::vector<std::int32_t> inverse(2), counts(2);
  REQUIRE(strata::unique_ids(thrust::host, ids, unique, inverse, counts, workspace) == 2);
  std::vector<float> sums(2);
  strata::segmented_sum(thrust::host, workspace, rows, 1, std::span(sums));
  const std::vector<float> want{nan, -0.0f};  // ids 2 and 8
  CHECK(same_bits<float>(sums, want));

  const std::vector<std::int32_t> lonely{1};
  const std::vector<float> one{-0.0f};
  std::vector<float> three(3, 5.0f);
  strata::segmented_sum(thrust::host, lonely, one, 1, std::span(three), workspace);
  CHECK(std::signbit(three[1]));
  CHECK((three[0] == 0.0f && !std::signbit(three[0]) && three[2] == 0.0f));
}

TEST_CASE("integer rows and entries of an inverse map outside the groups") {
  // Entries outside [0, groups) are not summed by the host path.
  const std::vector<std::int32_t> inverse{0, -1, 1, 5, 0};
  const std::vector<std::int64_t> rows{1, 100, 2, 1000, 3};
  strata::DedupWorkspace<std::int32_t> workspace;
  std::vector<std::int64_t> sums(2);
  strata::segmented_sum(thrust::host, inverse, rows, 1, std::span(sums), workspace);
  CHECK(sums == std::vector<std::int64_t>{4, 2});
}

TEST_CASE("a warm workspace allocates nothing, Thrust's temporaries included") {
  strata::DedupWorkspace<std::int64_t> workspace(20000);
  const auto policy = thrust::host(workspace.allocator());
  const auto big = make_ids<std::int64_t>(Pattern::repeats, 20000, 3);
  const auto small = make_ids<std::int64_t>(Pattern::unique, 700, 4);
  std::vector<std::int64_t> unique(20000);
  std::vector<std::int32_t> inverse(20000), counts(20000);
  const std::vector<float> rows = make_rows<float>(20000 * 8, 5);
  std::vector<float> sums(20000 * 8);
  const auto step = [&](const std::vector<std::int64_t>& ids) {
    const std::size_t n = ids.size();
    const std::size_t m =
        strata::unique_ids(policy, ids, std::span(unique).first(n), std::span(inverse).first(n),
                           std::span(counts).first(n), workspace);
    strata::segmented_sum(policy, workspace, std::span(rows).first(n * 8), 8,
                          std::span(sums).first(m * 8));
    strata::segmented_sum(policy, std::span(inverse).first(n), std::span(rows).first(n * 8), 8,
                          std::span(sums).first(m * 8), workspace);
  };
  step(big);
  step(small);
  const std::size_t warm = workspace.allocator().allocations();
  const std::size_t bytes = workspace.allocator().cached_bytes();
  CHECK(warm > 0);
  for (int i = 0; i < 5; ++i) {
    step(big);
    step(small);
  }
  CHECK(workspace.allocator().allocations() == warm);
  CHECK(workspace.allocator().cached_bytes() == bytes);
}

TEST_CASE("the scratch allocator reuses the smallest free block that fits") {
  strata::ScratchAllocator<> scratch;
  char* a = scratch.allocate(100);
  char* b = scratch.allocate(300);
  CHECK(scratch.allocations() == 2);
  scratch.deallocate(a, 100);
  scratch.deallocate(b, 300);
  CHECK(scratch.allocate(50) == a);
  CHECK(scratch.allocate(50) == b);  // a is busy
  scratch.deallocate(a, 50);
  scratch.deallocate(b, 50);
  // Too big for any free block: the free blocks that are too small are released.
  char* c = scratch.allocate(1000);
  CHECK(scratch.allocations() == 3);
  CHECK(scratch.cached_bytes() == 1000);
  scratch.deallocate(c, 1000);
  CHECK(scratch.allocate(0) == c);
}

TEST_CASE("mismatched sizes throw before anything is written") {
  strata::DedupWorkspace<std::int32_t> workspace;
  const std::vector<std::int32_t> ids{1, 2, 1};
  std::vector<std::int32_t> ok(3, -9), small(2, -9), big(4, -9);

  CHECK_THROWS_AS(strata::unique_ids(thrust::host, ids, ok, small, ok, workspace),
                  std::invalid_argument);
  CHECK_THROWS_AS(strata::unique_ids(thrust::host, ids, ok, big, ok, workspace),
                  std::invalid_argument);
  CHECK_THROWS_AS(strata::unique_ids(thrust::host, ids, small, ok, ok, workspace),
                  std::invalid_argument);
  CHECK_THROWS_AS(strata::unique_ids(thrust::host, ids, ok, ok, small, workspace),
                  std::invalid_argument);
  CHECK((ok == std::vector<std::int32_t>(3, -9) && small == std::vector<std::int32_t>(2, -9) &&
         big == std::vector<std::int32_t>(4, -9)));
  try {
    (void)strata::unique_ids(thrust::host, ids, ok, small, ok, workspace);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) == "unique_ids: inverse holds 2 entries but there are 3 ids");
  }

  std::vector<std::int32_t> unique(3), inverse(3), counts(3);
  REQUIRE(strata::unique_ids(thrust::host, ids, unique, inverse, counts, workspace) == 2);
  const std::vector<float> rows(6, 1.0f);  // 3 rows of width 2
  std::vector<float> sums(4, -1.0f);
  CHECK_THROWS_AS(strata::segmented_sum(thrust::host, workspace, rows, 0, std::span(sums)),
                  std::invalid_argument);
  CHECK_THROWS_AS(strata::segmented_sum(thrust::host, workspace, rows, 3, std::span(sums)),
                  std::invalid_argument);
  CHECK_THROWS_AS(
      strata::segmented_sum(thrust::host, workspace, std::span(rows).first(4), 2, std::span(sums)),
      std::invalid_argument);
  CHECK_THROWS_AS(strata::segmented_sum(thrust::host, workspace, rows, 2, std::span(sums).first(3)),
                  std::invalid_argument);
  CHECK(sums == std::vector<float>(4, -1.0f));
  try {
    strata::segmented_sum(thrust::host, workspace, rows, 2, std::span(sums).first(2));
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) ==
          "segmented_sum: sums has room for 1 rows of width 2 but there are 2 unique ids");
  }

  CHECK_THROWS_AS(strata::segmented_sum(thrust::host, inverse, rows, 0, std::span(sums), workspace),
                  std::invalid_argument);
  const std::span<const std::int32_t> short_inverse = std::span(inverse).first(2);
  CHECK_THROWS_AS(
      strata::segmented_sum(thrust::host, short_inverse, rows, 2, std::span(sums), workspace),
      std::invalid_argument);
  CHECK_THROWS_AS(
      strata::segmented_sum(thrust::host, inverse, rows, 2, std::span(sums).first(3), workspace),
      std::invalid_argument);
  CHECK(sums == std::vector<float>(4, -1.0f));
  try {
    strata::segmented_sum(thrust::host, inverse, std::span(rows).first(5), 2, std::span(sums),
                          workspace);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) ==
          "segmented_sum: rows holds 5 elements but 3 inverse entries of width 2 need 3 "
          "* 2");
  }
}

TEST_CASE("a batch that does not fit the index type is refused") {
  strata::DedupWorkspace<std::int64_t, std::int32_t> workspace;
  const auto too_many = static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()) + 1;
  CHECK_THROWS_AS(workspace.reserve(too_many), std::invalid_argument);
  CHECK_THROWS_AS(strata::DedupWorkspace<std::int32_t>{too_many}, std::invalid_argument);
  CHECK(workspace.batch_size() == 0);
}
