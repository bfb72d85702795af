// The fused pack / unpack / scale kernels against plain serial loops, for every element type,
// every host policy and chunk sizes from 1 to unbounded.
#include <doctest/doctest.h>

#include <strata/kernels/fused.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <thrust/system/cpp/execution_policy.h>

namespace {

static_assert(strata::tensor_list<std::vector<std::span<float>>>);
static_assert(strata::tensor_list<std::span<const std::span<std::int64_t>>>);
static_assert(!strata::tensor_list<std::vector<std::span<const float>>>);
static_assert(!strata::tensor_list<std::vector<std::span<bool>>>);
static_assert(!strata::tensor_list<std::vector<float>>);
static_assert(std::is_same_v<strata::tensor_element_t<std::vector<std::span<double>>>, double>);
static_assert(strata::thrust_policy<decltype(thrust::cpp::par)>);
static_assert(strata::detail::host_policy<decltype(thrust::seq)>);
static_assert(strata::detail::host_policy<decltype(thrust::host)>);
static_assert(strata::detail::host_policy<decltype(thrust::cpp::par)>);

// Tensors that own their storage, with values that differ in every element and every type.
template <class T>
struct Model {
  std::vector<std::vector<T>> storage;
  std::vector<std::span<T>> tensors;

  Model(const std::vector<std::size_t>& sizes, std::uint32_t seed) {
    std::mt19937 gen(seed);
    for (const std::size_t n : sizes) {
      std::vector<T> t(n);
      for (T& x : t) {
        if constexpr (std::is_floating_point_v<T>) {
          x = std::uniform_real_distribution<T>(-100, 100)(gen);
        } else {
          x = static_cast<T>(std::uniform_int_distribution<std::int64_t>(-1000, 1000)(gen));
        }
      }
      storage.push_back(std::move(t));
    }
    for (auto& t : storage) tensors.emplace_back(t);
  }
};

// The references: the tensors concatenated, as they are, or each element times `factor`. Two
// functions, not one with a branch on factor == 1: compilers may fold `f == 1 ? x : x * f` into
// `x * f`, which quiets signalling NaNs and would spoil the bit-exact reference.
template <class T>
std::vector<T> naive_concat(const std::vector<std::span<T>>& tensors) {
  std::vector<T> flat;
  for (const auto& t : tensors) flat.insert(flat.end(), t.begin(), t.end());
  return flat;
}

template <class T>
std::vector<T> naive_scaled(const std::vector<std::span<T>>& tensors, T factor) {
  std::vector<T> flat;
  for (const auto& t : tensors) {
    for (const T x : t) flat.push_back(static_cast<T>(x * factor));
  }
  return flat;
}

template <class T>
bool same_bits(std::span<const T> a, std::span<const T> b) {
  // memcmp may not be given the null data() of an empty vector, even for zero bytes.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
T test_factor() {
  if constexpr (std::is_floating_point_v<T>) return T(1) / T(3);  // inexact, so rounding shows
  else return T(-3);
}

const std::vector<std::vector<std::size_t>> size_sets = {
    {},
    {0},
    {0, 0, 0},
    {1},
    {7},
    {40000},
    {0, 3, 0, 17, 1, 100, 0},
    {16383, 16384, 16385, 1, 32769},
    {5, 0, 33, 2, 64, 65, 1000},
};

// From one element per chunk to chunks that never split a tensor.
const std::vector<std::size_t> chunk_sizes = {
    1, 3, 7, 64, 16384, 40000, std::numeric_limits<std::size_t>::max()};

template <class T, class Policy>
void check_round_trip(const Policy& policy) {
  for (std::size_t s = 0; s < size_sets.size(); ++s) {
    for (const std::size_t chunk : chunk_sizes) {
      CAPTURE(s);
      CAPTURE(chunk);
      Model<T> model(size_sets[s], static_cast<std::uint32_t>(s * 31 + chunk % 1000));
      const std::vector<std::vector<T>> original = model.storage;
      const std::size_t total = strata::total_elements(model.tensors);
      const strata::FusedPlan<T> plan(model.tensors, chunk);
      REQUIRE(plan.total_elements() == total);

      // Plain copy in both directions.
      std::vector<T> flat(total, T(7));
      strata::pack(policy, plan, flat);
      const auto expected = naive_concat(model.tensors);
      CHECK(same_bits<T>(flat, expected));

      for (auto& t : model.storage) std::fill(t.begin(), t.end(), T(0));
      strata::unpack(policy, flat, plan);
      CHECK(model.storage == original);

      // Scaled in both directions: exactly x * factor, element by element.
      const T factor = test_factor<T>();
      strata::pack(policy, model.tensors, flat, factor, chunk);
      CHECK(same_bits<T>(flat, naive_scaled(model.tensors, factor)));

      const std::vector<T> source = expected;
      strata::unpack(policy, source, model.tensors, factor, chunk);
      for (std::size_t k = 0; k < original.size(); ++k) {
        for (std::size_t i = 0; i < original[k].size(); ++i) {
          const T want = static_cast<T>(original[k][i] * factor);
          REQUIRE(std::memcmp(&model.storage[k][i], &want, sizeof(T)) == 0);
        }
      }

      // Scale in place.
      std::vector<T> data = expected;
      strata::scale(policy, data, factor, chunk);
      CHECK(same_bits<T>(data, naive_concat(model.tensors)));
    }
  }
}

}  // namespace

TEST_CASE_TEMPLATE("pack, unpack and scale agree with plain loops", T, float, double, std::int32_t,
                   std::int64_t) {
  SUBCASE("thrust::seq") { check_round_trip<T>(thrust::seq); }
  SUBCASE("thrust::host") { check_round_trip<T>(thrust::host); }
  SUBCASE("thrust::cpp::par") { check_round_trip<T>(thrust::cpp::par); }
  SUBCASE("thrust::device (the cpp system here)") { check_round_trip<T>(thrust::device); }
}

TEST_CASE_TEMPLATE("the plan cuts tensors into in-bounds chunks that tile the flat buffer", T,
                   float, std::int64_t) {
  for (const auto& sizes : size_sets) {
    for (const std::size_t chunk : chunk_sizes) {
      Model<T> model(sizes, 1);
      const strata::FusedPlan plan(model.tensors, chunk);
      static_assert(std::is_same_v<decltype(plan), const strata::FusedPlan<T>>);
      CHECK(plan.tensor_count() == sizes.size());
      CHECK(plan.chunk_elements() == chunk);

      std::size_t expected_chunks = 0;
      for (const std::size_t n : sizes) expected_chunks += (n + chunk - 1) / chunk;
      if (chunk == std::numeric_limits<std::size_t>::max()) {
        expected_chunks = 0;
        for (const std::size_t n : sizes) expected_chunks += n != 0 ? 1 : 0;
      }
      CHECK(plan.chunks().size() == expected_chunks);

      // Walk the chunks and the tensors side by side.
      std::size_t next = 0;
      std::size_t k = 0;
      std::size_t within = 0;
      for (const auto& c : plan.chunks()) {
        while (k < model.tensors.size() && within == model.tensors[k].size()) {
          ++k;
          within = 0;
        }
        REQUIRE(k < model.tensors.size());
        REQUIRE(c.length >= 1);
        REQUIRE(c.length <= chunk);
        REQUIRE(c.offset == next);
        REQUIRE(c.data == model.tensors[k].data() + within);
        REQUIRE(within + c.length <= model.tensors[k].size());
        next += c.length;
        within += c.length;
      }
      CHECK(next == plan.total_elements());
      const auto table = plan.table();
      CHECK(table.chunks == plan.chunks().data());
      CHECK(table.chunk_count == plan.chunks().size());
      CHECK(table.total_elements == plan.total_elements());
    }
  }
}

TEST_CASE("a plan is reused across steps as the values change") {
  Model<float> model({3, 0, 20000, 5}, 2);
  const strata::FusedPlan plan(model.tensors, 1000);
  std::vector<float> flat(plan.total_elements());
  for (int step = 0; step < 5; ++step) {
    for (auto& t : model.storage) {
      for (float& x : t) x += static_cast<float>(step);
    }
    strata::pack(thrust::seq, plan, flat);
    CHECK(same_bits<float>(flat, naive_concat(model.tensors)));
    // As an averager would: the flat buffer holds a sum over 4 ranks, unpacked with 1/4.
    for (float& x : flat) x *= 4;
    strata::unpack(thrust::cpp::par, flat, plan, 0.25f);
    std::vector<float> want(flat.size());
    for (std::size_t i = 0; i < flat.size(); ++i) want[i] = flat[i] * 0.25f;
    CHECK(same_bits<float>(naive_concat(model.tensors), want));
  }
}

TEST_CASE("a chunk table can be passed on its own") {
  Model<double> model({10, 0, 7}, 3);
  const strata::FusedPlan plan(model.tensors, 4);
  std::vector<double> flat(17);
  strata::pack(thrust::seq, plan.table(), flat, 2.0);
  CHECK(same_bits<double>(flat, naive_scaled(model.tensors, 2.0)));
  strata::unpack(thrust::seq, flat, plan.table());
  CHECK(same_bits<double>(flat, naive_concat(model.tensors)));
}

TEST_CASE("a tensor list may be a span of spans") {
  Model<std::int32_t> model({4, 9}, 4);
  const std::span<const std::span<std::int32_t>> list(model.tensors);
  CHECK(strata::total_elements(list) == 13);
  std::vector<std::int32_t> flat(13);
  strata::pack(thrust::seq, list, flat);
  CHECK(flat == naive_concat(model.tensors));
  const strata::FusedPlan plan(list);
  CHECK(plan.chunk_elements() == strata::default_chunk_elements);
  strata::unpack(thrust::seq, flat, plan, 2);
  CHECK(model.storage[1][8] == 2 * flat[12]);
}

TEST_CASE("scale 1 copies bits, even of signalling NaNs, negative zeros and subnormals") {
  std::vector<float> a{std::numeric_limits<float>::signaling_NaN(), -0.0f,
                       std::numeric_limits<float>::denorm_min(),
                       std::numeric_limits<float>::infinity()};
  std::vector<float> b{-std::numeric_limits<float>::quiet_NaN(), 1e-40f};
  std::vector<std::span<float>> tensors{a, b};
  const std::vector<float> original = naive_concat(tensors);

  std::vector<float> flat(6);
  strata::pack(thrust::seq, tensors, flat);
  CHECK(same_bits<float>(flat, original));
  std::fill(a.begin(), a.end(), 0.0f);
  std::fill(b.begin(), b.end(), 0.0f);
  strata::unpack(thrust::seq, flat, tensors, 1.0f, 1);
  CHECK(same_bits<float>(naive_concat(tensors), original));
  strata::scale(thrust::seq, flat, 1.0f);
  CHECK(same_bits<float>(flat, original));
}

TEST_CASE("scale accepts spans and vectors and leaves other elements alone") {
  std::vector<std::int64_t> v(100);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::int64_t>(i);
  strata::scale(thrust::seq, std::span<std::int64_t>(v).subspan(10, 33), std::int64_t{5}, 4);
  for (std::size_t i = 0; i < v.size(); ++i) {
    const auto x = static_cast<std::int64_t>(i);
    REQUIRE(v[i] == (i >= 10 && i < 43 ? 5 * x : x));
  }
  std::vector<double> empty;
  strata::scale(thrust::seq, empty, 3.0);
  CHECK(empty.empty());
}

TEST_CASE("size mismatches throw before anything is written") {
  std::vector<float> a{1, 2, 3}, b{4};
  std::vector<std::span<float>> tensors{a, b};
  const strata::FusedPlan plan(tensors);

  for (const std::size_t n : {std::size_t{0}, std::size_t{3}, std::size_t{5}}) {
    std::vector<float> flat(n, -1.0f);
    CHECK_THROWS_AS(strata::pack(thrust::seq, tensors, flat), std::invalid_argument);
    CHECK_THROWS_AS(strata::pack(thrust::seq, plan, flat), std::invalid_argument);
    CHECK_THROWS_AS(strata::pack(thrust::seq, plan.table(), flat, 2.0f), std::invalid_argument);
    CHECK(flat == std::vector<float>(n, -1.0f));
    CHECK_THROWS_AS(strata::unpack(thrust::seq, flat, tensors), std::invalid_argument);
    CHECK_THROWS_AS(strata::unpack(thrust::seq, flat, plan, 0.5f), std::invalid_argument);
    CHECK_THROWS_AS(strata::unpack(thrust::seq, flat, plan.table()), std::invalid_argument);
    CHECK((a == std::vector<float>{1, 2, 3} && b == std::vector<float>{4}));
  }

  std::vector<float> flat(5);
  try {
    strata::pack(thrust::seq, plan, flat);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) == "pack: the flat buffer holds 5 elements but the tensors hold 4");
  }
  try {
    strata::unpack(thrust::seq, std::span<const float>(flat).first(2), tensors);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) ==
          "unpack: the flat buffer holds 2 elements but the tensors hold 4");
  }
}

TEST_CASE("a chunk of zero elements is refused") {
  std::vector<float> a{1, 2};
  std::vector<std::span<float>> tensors{a};
  std::vector<float> flat(2);
  CHECK_THROWS_AS(strata::FusedPlan(tensors, 0), std::invalid_argument);
  CHECK_THROWS_AS(strata::pack(thrust::seq, tensors, flat, 1.0f, 0), std::invalid_argument);
  CHECK_THROWS_AS(strata::unpack(thrust::seq, flat, tensors, 1.0f, 0), std::invalid_argument);
  CHECK_THROWS_AS(strata::scale(thrust::seq, flat, 2.0f, 0), std::invalid_argument);
}
