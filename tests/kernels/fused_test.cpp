// The fused pack / unpack / scale kernels against plain serial loops, for every element type,
// every host policy and chunk sizes from 1 to unbounded; unpack with a factor per tensor, and the
// chunk table of a range of tensors.
#include <doctest/doctest.h>

#include <strata/kernels/fused.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
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

namespace {

// Factor patterns for `count` tensors: all 1, all one other factor, all distinct, runs of equal
// factors (the first and the last tensor in runs of their own), and a pattern that returns to an
// earlier factor after another.
template <class T>
std::vector<std::vector<T>> factor_patterns(std::size_t count) {
  const T one(1), other = test_factor<T>(), third = std::is_floating_point_v<T> ? T(0.25) : T(2);
  std::vector<std::vector<T>> p(5, std::vector<T>(count, one));
  for (std::size_t t = 0; t < count; ++t) {
    p[1][t] = other;
    p[2][t] = std::is_floating_point_v<T> ? T(1) / static_cast<T>(t + 2) : static_cast<T>(t + 2);
    p[3][t] = t == 0 ? other : t + 1 == count ? third : (t / 2) % 2 == 0 ? one : other;
    p[4][t] = t % 3 == 0 ? other : t % 3 == 1 ? one : other;
  }
  return p;
}

// unpack with a factor per tensor against plain loops: tensor t's element i is flat[offset + i]
// times factors[t], or its exact bits when that factor is 1.
template <class T, class Policy>
void check_unpack_factors(const Policy& policy) {
  for (std::size_t s = 0; s < size_sets.size(); ++s) {
    for (const std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{64},
                                    std::numeric_limits<std::size_t>::max()}) {
      const auto& sizes = size_sets[s];
      for (const auto& factors : factor_patterns<T>(sizes.size())) {
        CAPTURE(s);
        CAPTURE(chunk);
        Model<T> model(sizes, static_cast<std::uint32_t>(s + 5));
        const strata::FusedPlan<T> plan(model.tensors, chunk);
        const std::size_t total = plan.total_elements();
        const std::vector<T> flat = Model<T>({total}, static_cast<std::uint32_t>(s + 9)).storage[0];
        strata::unpack(policy, flat, plan, std::span<const T>(factors));
        std::size_t offset = 0, bad = 0;
        for (std::size_t t = 0; t < sizes.size(); ++t) {
          for (std::size_t i = 0; i < sizes[t]; ++i) {
            const T x = flat[offset + i];
            const T want = factors[t] == T(1) ? x : static_cast<T>(x * factors[t]);
            bad += std::memcmp(&model.storage[t][i], &want, sizeof(T)) != 0;
          }
          offset += sizes[t];
        }
        CHECK(bad == 0);
      }
    }
  }
}

}  // namespace

TEST_CASE_TEMPLATE("unpack with a factor per tensor agrees with plain loops", T, float, double,
                   std::int32_t, std::int64_t) {
  SUBCASE("thrust::seq") { check_unpack_factors<T>(thrust::seq); }
  SUBCASE("thrust::host") { check_unpack_factors<T>(thrust::host); }
  SUBCASE("thrust::cpp::par") { check_unpack_factors<T>(thrust::cpp::par); }
}

TEST_CASE("unpack with a factor per tensor: the sum kept, the mean taken, bits of factor 1 kept") {
  // The fused all-reduce of an embedding layer: dense gradients averaged over 4 ranks, the
  // replicas' gradients and counts kept as sums, including a signalling NaN.
  std::vector<double> dense_a(3), dense_b(2), replicas(3);
  std::vector<std::span<double>> tensors{dense_a, dense_b, replicas};
  const strata::FusedPlan plan(tensors, 2);
  const double snan = std::numeric_limits<double>::signaling_NaN();
  const std::vector<double> flat{4, 8, 12, 2, 6, snan, -0.0, 3};
  const std::vector<double> factors{0.25, 0.25, 1.0};
  strata::unpack(thrust::seq, flat, plan, std::span<const double>(factors));
  CHECK(dense_a == std::vector<double>{1, 2, 3});
  CHECK(dense_b == std::vector<double>{0.5, 1.5});
  CHECK(same_bits<double>(replicas, std::vector<double>(flat.begin() + 5, flat.end())));

  // No tensors, no factors: nothing to do.
  const std::vector<std::span<double>> none;
  const strata::FusedPlan<double> empty(none);
  strata::unpack(thrust::seq, std::span<const double>(), empty, std::span<const double>());
  CHECK(empty.total_elements() == 0);
}

TEST_CASE("unpack with a factor per tensor refuses another number of factors or a wrong flat") {
  std::vector<float> a{1, 2, 3}, b{4}, c{};
  std::vector<std::span<float>> tensors{a, b, c};
  const strata::FusedPlan plan(tensors);
  const std::vector<float> flat{5, 6, 7, 8};
  const auto message = [&](std::span<const float> f, std::span<const float> factors) {
    try {
      strata::unpack(thrust::seq, f, plan, factors);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::vector<float> two{1, 2}, four{1, 2, 3, 4}, three{0.5f, 2, 1};
  CHECK(message(flat, two) == "unpack: 2 factors for 3 tensors");
  CHECK(message(flat, four) == "unpack: 4 factors for 3 tensors");
  CHECK(message(std::span<const float>(flat).first(3), three) ==
        "unpack: the flat buffer holds 3 elements but the tensors hold 4");
  CHECK((a == std::vector<float>{1, 2, 3} && b == std::vector<float>{4}));
  CHECK(message(flat, three) == "no error");
  CHECK((a == std::vector<float>{2.5f, 3, 3.5f} && b == std::vector<float>{16}));
}

TEST_CASE("FusedPlan::table(first, last): the chunks of some tensors, at their flat places") {
  for (const auto& sizes : size_sets) {
    for (const std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{64},
                                    std::numeric_limits<std::size_t>::max()}) {
      Model<std::int32_t> model(sizes, 7);
      const strata::FusedPlan plan(model.tensors, chunk);
      const std::size_t count = sizes.size();
      // The tensor of every chunk, from the offsets: tensor t covers [begin[t], begin[t + 1]).
      std::vector<std::size_t> begin{0};
      for (const std::size_t n : sizes) begin.push_back(begin.back() + n);
      std::vector<std::size_t> tensor_of;
      for (const auto& c : plan.chunks()) {
        std::size_t t = 0;
        while (!(c.offset >= begin[t] && c.offset < begin[t + 1])) ++t;
        tensor_of.push_back(t);
      }
      std::size_t bad = 0;
      for (std::size_t first = 0; first <= count; ++first) {
        for (std::size_t last = first; last <= count; ++last) {
          const auto table = plan.table(first, last);
          std::size_t from = 0;
          while (from < tensor_of.size() && tensor_of[from] < first) ++from;
          std::size_t n = 0;
          while (from + n < tensor_of.size() && tensor_of[from + n] < last) ++n;
          bad += table.chunk_count != n;
          bad += n != 0 && table.chunks != plan.chunks().data() + from;
          bad += table.total_elements != plan.total_elements();
        }
      }
      CAPTURE(chunk);
      CHECK(bad == 0);
      const auto whole = plan.table(0, count);
      CHECK(whole.chunks == plan.table().chunks);
      CHECK(whole.chunk_count == plan.table().chunk_count);
      CHECK(plan.table(count, count).chunk_count == 0);
    }
  }
  // Out of order or past the end.
  std::vector<float> a(3), b(1), c(0), d(5);
  std::vector<std::span<float>> tensors{a, b, c, d};
  const strata::FusedPlan plan(tensors);
  CHECK_THROWS_WITH_AS((void)plan.table(3, 2), "FusedPlan::table: tensors [3, 2) of 4",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)plan.table(0, 5), "FusedPlan::table: tensors [0, 5) of 4",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS((void)plan.table(5, 5), "FusedPlan::table: tensors [5, 5) of 4",
                       std::invalid_argument);
}

TEST_CASE("FusedPlan::table(first, last): pack and unpack only those tensors") {
  Model<double> model({4, 0, 3, 6, 2}, 11);
  const strata::FusedPlan plan(model.tensors, 2);
  const std::vector<std::vector<double>> original = model.storage;
  // Tensors 2 and 3 are flat[4, 13).
  std::vector<double> flat(plan.total_elements(), -1.0);
  strata::pack(thrust::seq, plan.table(2, 4), flat, 2.0);
  for (std::size_t i = 0; i < flat.size(); ++i) {
    CAPTURE(i);
    const double want =
        i < 4 || i >= 13 ? -1.0 : 2.0 * (i < 7 ? original[2][i - 4] : original[3][i - 7]);
    CHECK(flat[i] == want);
  }
  // Unpack tensor 0 alone, times 3: the others keep their values.
  std::iota(flat.begin(), flat.end(), 1.0);
  strata::unpack(thrust::seq, flat, plan.table(0, 1), 3.0);
  CHECK(model.storage[0] == std::vector<double>{3, 6, 9, 12});
  for (std::size_t t = 1; t < original.size(); ++t) CHECK(model.storage[t] == original[t]);
  // An empty range writes nothing.
  strata::unpack(thrust::seq, flat, plan.table(1, 1), 5.0);
  CHECK(model.storage[0] == std::vector<double>{3, 6, 9, 12});
}
