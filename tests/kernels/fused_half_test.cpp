// The host path of the fused kernels for CUDA's 16-bit floats: pack, unpack and scale of __half
// and __nv_bfloat16 against a plain serial loop that converts to float, multiplies and rounds
// once. Host code only (g++ with the CUDA include directories); no GPU needed.
#include <doctest/doctest.h>

#include <strata/cuda/half.hpp>
#include <strata/kernels/fused.hpp>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include <thrust/system/cpp/execution_policy.h>

namespace {

static_assert(std::is_same_v<strata::fused_factor_t<__half>, float>);
static_assert(std::is_same_v<strata::fused_factor_t<__nv_bfloat16>, float>);
static_assert(std::is_same_v<strata::fused_factor_t<float>, float>);
static_assert(strata::fusable<__half> && strata::fusable<__nv_bfloat16>);
static_assert(!strata::fusable<const __half> && !strata::fusable<volatile __nv_bfloat16>);
static_assert(strata::reduced_float<__half> && !strata::reduced_float<double>);
static_assert(strata::tensor_list<std::vector<std::span<__half>>>);
static_assert(!strata::tensor_list<std::vector<std::span<const __nv_bfloat16>>>);

// The reference conversions, written out per type rather than through strata's formula.
float to_float(__half x) { return __half2float(x); }
float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
T from_float(float x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}

template <class T>
T reference_scale(T x, float factor) {
  return from_float<T>(to_float(x) * factor);
}

template <class T>
T from_bits(std::uint16_t bits) {
  return std::bit_cast<T>(bits);
}

template <class T>
std::uint16_t bits_of(T x) {
  return std::bit_cast<std::uint16_t>(x);
}

// Significand bits, the implicit one included: 11 for binary16, 8 for bfloat16.
template <class T>
constexpr int precision = std::is_same_v<T, __half> ? 11 : 8;

// Random values in [-100, 100], with one in 32 a value a bit-exact copy must keep: signalling
// and quiet NaNs, infinity, negative zero, a subnormal.
template <class T>
T random_value(std::mt19937& gen) {
  switch (std::uniform_int_distribution<int>(0, 31)(gen)) {
    case 0: return from_bits<T>(std::is_same_v<T, __half> ? 0x7C01 : 0x7F81);  // signalling NaN
    case 1: return from_float<T>(std::numeric_limits<float>::quiet_NaN());
    case 2: return from_float<T>(-std::numeric_limits<float>::infinity());
    case 3: return from_float<T>(-0.0f);
    case 4: return from_bits<T>(0x0001);  // the smallest subnormal
    default: return from_float<T>(std::uniform_real_distribution<float>(-100, 100)(gen));
  }
}

template <class T>
struct Model {
  std::vector<std::vector<T>> storage;
  std::vector<std::span<T>> tensors;

  Model(const std::vector<std::size_t>& sizes, std::uint32_t seed) {
    std::mt19937 gen(seed);
    for (const std::size_t n : sizes) {
      std::vector<T> t(n);
      for (T& x : t) x = random_value<T>(gen);
      storage.push_back(std::move(t));
    }
    for (auto& t : storage) tensors.emplace_back(t);
  }
};

template <class T>
std::vector<T> concat(const std::vector<std::span<T>>& tensors) {
  std::vector<T> flat;
  for (const auto& t : tensors) flat.insert(flat.end(), t.begin(), t.end());
  return flat;
}

// Bitwise, but any NaN matches any NaN: the scaled reference and the kernels may quiet a
// signalling NaN differently, and a NaN's payload carries no value.
template <class T>
bool agree(std::span<const T> got, std::span<const T> want, bool nan_equal) {
  if (got.size() != want.size()) return false;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (bits_of(got[i]) == bits_of(want[i])) continue;
    if (nan_equal && std::isnan(to_float(got[i])) && std::isnan(to_float(want[i]))) continue;
    return false;
  }
  return true;
}

const std::vector<std::vector<std::size_t>> size_sets = {
    {}, {0}, {1}, {7}, {40000}, {0, 3, 0, 17, 1, 100, 0}, {16383, 16384, 16385, 1, 32769},
};

const std::vector<std::size_t> chunk_sizes = {1, 3, 64, strata::default_chunk_elements,
                                              std::numeric_limits<std::size_t>::max()};

template <class T, class Policy>
void check_round_trip(const Policy& policy) {
  const float factor = 1.0f / 3;
  for (std::size_t s = 0; s < size_sets.size(); ++s) {
    for (const std::size_t chunk : chunk_sizes) {
      CAPTURE(s);
      CAPTURE(chunk);
      Model<T> model(size_sets[s], static_cast<std::uint32_t>(s * 31 + chunk % 1000));
      const std::vector<T> original = concat(model.tensors);
      std::vector<T> scaled(original.size());
      for (std::size_t i = 0; i < original.size(); ++i) {
        scaled[i] = reference_scale(original[i], factor);
      }
      const strata::FusedPlan<T> plan(model.tensors, chunk);

      // Pack: a bit copy, then scaled.
      std::vector<T> flat(plan.total_elements(), from_float<T>(7));
      strata::pack(policy, plan, flat);
      CHECK(agree<T>(flat, original, false));
      strata::pack(policy, plan, flat, factor);
      CHECK(agree<T>(flat, scaled, true));

      // Unpack: scaled, then a bit copy that restores the tensors.
      const std::vector<T> source = original;
      strata::unpack(policy, source, model.tensors, factor, chunk);
      CHECK(agree<T>(concat(model.tensors), scaled, true));
      strata::unpack(policy, source, plan);
      CHECK(agree<T>(concat(model.tensors), original, false));

      // Scale in place; by exactly 1 it leaves every bit alone.
      std::vector<T> data = original;
      strata::scale(policy, data, factor, chunk);
      CHECK(agree<T>(data, scaled, true));
      data = original;
      strata::scale(policy, data, 1.0f, chunk);
      CHECK(agree<T>(data, original, false));
    }
  }
}

}  // namespace

TEST_CASE_TEMPLATE("16-bit floats: pack, unpack and scale agree with a serial float loop", T,
                   __half, __nv_bfloat16) {
  SUBCASE("thrust::seq") { check_round_trip<T>(thrust::seq); }
  SUBCASE("thrust::host") { check_round_trip<T>(thrust::host); }
  SUBCASE("thrust::cpp::par") { check_round_trip<T>(thrust::cpp::par); }
}

TEST_CASE_TEMPLATE("16-bit floats are scaled by a float factor, not by one rounded to 16 bits", T,
                   __half, __nv_bfloat16) {
  // x = 2^p - 1 and f = 1 + 2^-p, p the precision: x * f = 2^p - 2^-p rounds to 2^p, while f
  // rounded to T is a tie that goes to 1, and x * 1 = x.
  const int p = precision<T>;
  const float x = std::ldexp(1.0f, p) - 1;
  const float f = 1 + std::ldexp(1.0f, -p);
  REQUIRE(to_float(from_float<T>(f)) == 1.0f);
  REQUIRE(to_float(from_float<T>(x)) == x);

  std::vector<T> a{from_float<T>(x)};
  std::vector<std::span<T>> tensors{a};
  std::vector<T> flat(1);
  strata::pack(thrust::host, tensors, flat, f);
  CHECK(to_float(flat[0]) == std::ldexp(1.0f, p));
  strata::unpack(thrust::host, flat, tensors, 0.5f);
  CHECK(to_float(a[0]) == std::ldexp(1.0f, p - 1));
  strata::scale(thrust::host, a, 3.0f);
  CHECK(to_float(a[0]) == 3 * std::ldexp(1.0f, p - 1));
}

TEST_CASE("16-bit floats: size mismatches throw before anything is written") {
  std::vector<__half> a(3, __float2half_rn(1.0f));
  std::vector<std::span<__half>> tensors{a};
  std::vector<__half> flat(4, __float2half_rn(-1.0f));
  CHECK_THROWS_AS(strata::pack(thrust::host, tensors, flat, 0.5f), std::invalid_argument);
  CHECK_THROWS_AS(strata::unpack(thrust::host, flat, tensors), std::invalid_argument);
  for (const __half x : flat) CHECK(__half2float(x) == -1.0f);
  for (const __half x : a) CHECK(__half2float(x) == 1.0f);
}
