// ParameterArena: alignment, zeroed gaps, capacity, moves, and the fused kernels over its tensors.
#include <doctest/doctest.h>

#include <strata/kernels/arena.hpp>
#include <strata/kernels/fused.hpp>

#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

static_assert(!std::is_copy_constructible_v<strata::ParameterArena<float>>);
static_assert(!std::is_copy_assignable_v<strata::ParameterArena<float>>);
static_assert(std::is_nothrow_move_constructible_v<strata::ParameterArena<float>>);
static_assert(std::is_nothrow_move_assignable_v<strata::ParameterArena<float>>);
static_assert(
    strata::tensor_list<decltype(std::declval<strata::ParameterArena<double>&>().tensors())>);

std::uintptr_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

const std::vector<std::size_t> sizes = {1, 3, 0, 17, 100, 0, 16, 64, 5, 1000, 2};

// Where each tensor must start: the end of the previous non-empty one, rounded up to 64 bytes.
template <class T>
std::vector<std::size_t> naive_starts(const std::vector<std::size_t>& ns) {
  const std::size_t line = 64 / sizeof(T);
  std::vector<std::size_t> starts;
  std::size_t end = 0;
  for (const std::size_t n : ns) {
    const std::size_t start = (end + line - 1) / line * line;
    starts.push_back(start);
    if (n != 0) end = start + n;
  }
  return starts;
}

// Marks which elements of the used prefix belong to some tensor.
template <class T>
std::vector<bool> owned(const std::vector<std::size_t>& ns, std::size_t used) {
  std::vector<bool> mine(used, false);
  const auto starts = naive_starts<T>(ns);
  for (std::size_t k = 0; k < ns.size(); ++k) {
    for (std::size_t i = 0; i < ns[k]; ++i) mine[starts[k] + i] = true;
  }
  return mine;
}

}  // namespace

TEST_CASE_TEMPLATE("every tensor is 64-byte aligned, zeroed, and laid out in order", T, float,
                   double, std::int32_t, std::int64_t, std::int8_t) {
  strata::ParameterArena<T> arena(4096);
  CHECK(address(arena.flat().data()) % 64 == 0);
  const auto starts = naive_starts<T>(sizes);
  std::vector<std::span<T>> got;
  for (const std::size_t n : sizes) got.push_back(arena.allocate(n));

  CHECK(arena.size() == sizes.size());
  CHECK(arena.capacity() == 4096);
  CHECK(arena.used() == starts.back() + sizes.back());
  CHECK(arena.flat().size() == arena.used());
  const T* base = arena.flat().data();
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    CAPTURE(k);
    CHECK(got[k].size() == sizes[k]);
    CHECK(address(got[k].data()) % 64 == 0);
    CHECK(got[k].data() == base + starts[k]);
    CHECK(arena.tensors()[k].data() == got[k].data());
    CHECK(arena.tensors()[k].size() == got[k].size());
  }
  for (const T x : arena.flat()) REQUIRE(x == T(0));

  // Writing every tensor touches no gap.
  for (auto& t : got) {
    for (T& x : t) x = T(1);
  }
  const auto mine = owned<T>(sizes, arena.used());
  for (std::size_t i = 0; i < arena.used(); ++i) {
    CAPTURE(i);
    REQUIRE(arena.flat()[i] == (mine[i] ? T(1) : T(0)));
  }
}

TEST_CASE("gaps stay zero when the flat buffers of several ranks are averaged in place") {
  constexpr int ranks = 3;
  std::vector<strata::ParameterArena<float>> arenas;
  for (int r = 0; r < ranks; ++r) {
    arenas.emplace_back(1000);
    for (const std::size_t n : {5, 30, 0, 7}) {
      for (float& x : arenas.back().allocate(n)) x = static_cast<float>(r + 1);
    }
  }
  // The all-reduce and the 1/g, written as a plain loop over the whole used prefix.
  const std::size_t used = arenas[0].used();
  std::vector<float> sum(used, 0.0f);
  for (auto& a : arenas) {
    REQUIRE(a.used() == used);
    for (std::size_t i = 0; i < used; ++i) sum[i] += a.flat()[i];
  }
  for (auto& a : arenas) {
    for (std::size_t i = 0; i < used; ++i) a.flat()[i] = sum[i] / ranks;
  }
  const auto mine = owned<float>({5, 30, 0, 7}, used);
  for (std::size_t i = 0; i < used; ++i) REQUIRE(arenas[1].flat()[i] == (mine[i] ? 2.0f : 0.0f));
}

TEST_CASE("a full arena refuses with an invalid_argument and is left as it was") {
  strata::ParameterArena<float> arena(40);  // 16 + gap + 16 = 32, then 8 left after the boundary
  (void)arena.allocate(10);
  (void)arena.allocate(16);
  CHECK(arena.used() == 32);
  try {
    (void)arena.allocate(9);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) ==
          "ParameterArena::allocate: requested 9 elements but only 8 of 40 remain "
          "after the 64-byte boundary");
  }
  CHECK(arena.size() == 2);
  CHECK(arena.used() == 32);
  const auto last = arena.allocate(8);  // exactly fits
  CHECK(last.data() == arena.flat().data() + 32);
  CHECK(arena.used() == 40);
  CHECK_THROWS_AS((void)arena.allocate(1), std::invalid_argument);
  CHECK(arena.allocate(0).empty());  // empty tensors always fit
  CHECK(arena.size() == 4);
  CHECK(arena.used() == 40);
}

TEST_CASE("a capacity short of the next boundary still refuses cleanly") {
  strata::ParameterArena<double> arena(10);  // 8 doubles per line
  (void)arena.allocate(3);
  CHECK_THROWS_AS((void)arena.allocate(3), std::invalid_argument);  // would start at 8
  CHECK(arena.used() == 3);
  CHECK(arena.allocate(2).data() == arena.flat().data() + 8);  // 8 + 2 fits exactly
  CHECK(arena.used() == 10);
  const auto empty = arena.allocate(0);  // at the next boundary, past the capacity
  CHECK(empty.empty());
  CHECK(address(empty.data()) % 64 == 0);
  CHECK_THROWS_AS((void)arena.allocate(2), std::invalid_argument);
}

TEST_CASE("capacity zero, and capacities too large to count") {
  strata::ParameterArena<float> none(0);
  CHECK(none.capacity() == 0);
  CHECK(none.flat().empty());
  CHECK(none.allocate(0).empty());
  CHECK_THROWS_AS((void)none.allocate(1), std::invalid_argument);
  CHECK_THROWS_AS(strata::ParameterArena<double>{std::numeric_limits<std::size_t>::max()},
                  std::invalid_argument);
  CHECK_THROWS_AS(strata::ParameterArena<std::int8_t>{std::numeric_limits<std::size_t>::max()},
                  std::invalid_argument);
}

TEST_CASE("moves hand over the buffer; spans handed out stay valid") {
  strata::ParameterArena<float> a(256);
  auto w = a.allocate(20);
  auto b = a.allocate(3);
  w[19] = 5.0f;
  b[0] = 7.0f;
  const float* base = a.flat().data();

  strata::ParameterArena<float> moved(std::move(a));
  CHECK(moved.flat().data() == base);
  CHECK(moved.size() == 2);
  CHECK(moved.used() == 35);
  CHECK(moved.tensors()[0].data() == w.data());
  CHECK(moved.flat()[19] == 5.0f);
  CHECK(moved.flat()[32] == 7.0f);
  CHECK(a.size() == 0);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  CHECK(a.capacity() == 0);
  CHECK(a.used() == 0);
  CHECK(a.flat().empty());
  CHECK_THROWS_AS((void)a.allocate(1), std::invalid_argument);

  strata::ParameterArena<float> other(64);
  (void)other.allocate(4);
  other = std::move(moved);
  CHECK(other.flat().data() == base);
  CHECK(other.capacity() == 256);
  CHECK(other.tensors()[1].data() == b.data());
  w[0] = 1.0f;  // still the same memory
  CHECK(other.flat()[0] == 1.0f);
  CHECK(moved.capacity() == 0);  // NOLINT(bugprone-use-after-move)

  auto& self = other;
  other = std::move(self);
  CHECK(other.capacity() == 256);
  CHECK(other.size() == 2);
}

TEST_CASE_TEMPLATE("pack and unpack round-trip through arena.tensors()", T, float, double,
                   std::int32_t, std::int64_t) {
  strata::ParameterArena<T> arena(1 << 16);
  const std::vector<std::size_t> ns = {17, 0, 1, 4096, 33, 20000};
  std::vector<T> expected;
  T v = 1;
  for (const std::size_t n : ns) {
    for (T& x : arena.allocate(n)) {
      x = v;
      expected.push_back(v);
      v = static_cast<T>(v + 1);
    }
  }
  const strata::FusedPlan plan(arena.tensors(), 1000);
  std::vector<T> flat(plan.total_elements());
  REQUIRE(flat.size() == expected.size());
  strata::pack(thrust::seq, plan, flat);
  CHECK(flat == expected);

  // The flat buffer comes back as the sum of 4 identical ranks; unpack divides by 4 (or, for
  // integers, multiplies by 2 to keep the test exact).
  const T factor = std::is_floating_point_v<T> ? static_cast<T>(0.25) : T(2);
  for (T& x : flat) x = static_cast<T>(std::is_floating_point_v<T> ? x * 4 : x);
  strata::unpack(thrust::host, flat, arena.tensors(), factor);
  std::size_t j = 0;
  for (const auto& t : arena.tensors()) {
    for (const T x : t) {
      REQUIRE(x == static_cast<T>(flat[j] * factor));
      ++j;
    }
  }
  CHECK(j == expected.size());
  const auto mine = owned<T>(ns, arena.used());
  for (std::size_t i = 0; i < arena.used(); ++i) {
    if (!mine[i]) REQUIRE(arena.flat()[i] == T(0));
  }
}
