// The wire codecs against references built here: every half and bfloat16 bit pattern decoded by
// its textbook formula, rounding found by searching the sorted table of representable values
// (distances compared in double, where they are exact), and int8 quantised with an exact quotient.
#include <doctest/doctest.h>

#include <strata/kernels/wire_codec.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using strata::WireFormat;

// The value of a finite half (IEEE binary16) pattern: 1 sign, 5 exponent (bias 15), 10 fraction.
double half_value(std::uint16_t h) {
  const int e = (h >> 10) & 0x1f;
  const int m = h & 0x3ff;
  const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) != 0 ? -v : v;
}

// The value of a finite bfloat16 pattern: 1 sign, 8 exponent (bias 127), 7 fraction.
double bf16_value(std::uint16_t h) {
  const int e = (h >> 7) & 0xff;
  const int m = h & 0x7f;
  const double v = e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 134);
  return (h & 0x8000) != 0 ? -v : v;
}

// The non-negative representable values of a 16-bit format in increasing order, with their
// patterns, ending with infinity standing at the next power of two: round to nearest puts every
// value from the midpoint between the largest finite value and that power upwards on infinity,
// and the tie at the midpoint goes to infinity's even pattern, as IEEE 754 says.
struct Grid {
  std::vector<double> values;
  std::vector<std::uint16_t> bits;
};

Grid half_grid() {
  Grid g;
  for (std::uint16_t h = 0; h < 0x7c00; ++h) {
    g.values.push_back(half_value(h));
    g.bits.push_back(h);
  }
  g.values.push_back(65536.0);
  g.bits.push_back(0x7c00);
  return g;
}

Grid bf16_grid() {
  Grid g;
  for (std::uint16_t h = 0; h < 0x7f80; ++h) {
    g.values.push_back(bf16_value(h));
    g.bits.push_back(h);
  }
  g.values.push_back(std::ldexp(1.0, 128));
  g.bits.push_back(0x7f80);
  return g;
}

// The pattern nearest to finite x, ties to the even pattern.
std::uint16_t nearest(const Grid& g, float x) {
  const auto sign = static_cast<std::uint16_t>(std::signbit(x) ? 0x8000 : 0);
  const double ax = std::fabs(static_cast<double>(x));
  const auto it = std::lower_bound(g.values.begin(), g.values.end(), ax);
  if (it == g.values.end()) return static_cast<std::uint16_t>(sign | g.bits.back());
  const auto hi = static_cast<std::size_t>(it - g.values.begin());
  if (*it == ax || hi == 0) return static_cast<std::uint16_t>(sign | g.bits[hi]);
  const std::size_t lo = hi - 1;
  const double below = ax - g.values[lo];  // exact: both are floats of nearby magnitude
  const double above = g.values[hi] - ax;
  std::size_t pick = below < above ? lo : hi;
  if (below == above) pick = (g.bits[lo] & 1) == 0 ? lo : hi;
  return static_cast<std::uint16_t>(sign | g.bits[pick]);
}

float from_bits(std::uint32_t u) { return std::bit_cast<float>(u); }

bool is_half_nan(std::uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool is_bf16_nan(std::uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }

// Floats that test rounding: the midpoint of every pair of neighbours of the grid and the floats
// either side of it, both signs (every midpoint of two neighbouring halves or bfloat16 values has
// at most 12 significant bits, so it is a float).
std::vector<float> midpoints(const Grid& g) {
  std::vector<float> out;
  const float inf = std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i + 1 < g.values.size(); ++i) {
    const double mid = (g.values[i] + g.values[i + 1]) / 2;
    const auto f = static_cast<float>(mid);
    REQUIRE(static_cast<double>(f) == mid);
    for (const float v : {f, std::nextafter(f, inf), std::nextafter(f, -inf)}) {
      out.push_back(v);
      out.push_back(-v);
    }
  }
  return out;
}

// Random floats of every exponent: uniform bit patterns, NaNs left out.
std::vector<float> random_floats(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> out;
  while (out.size() < n) {
    const float x = from_bits(static_cast<std::uint32_t>(rng()));
    if (!std::isnan(x)) out.push_back(x);
  }
  return out;
}

std::uint16_t to_half(float x) { return strata::detail::float_to_fp16(x); }
std::uint16_t to_bf16(float x) { return strata::detail::float_to_bf16(x); }

// The reference int8 encoding of one block: the fp32 scale max|x|/127, and each value's exact
// quotient x/scale rounded half away from zero.
struct Int8Block {
  float scale = 0;
  std::vector<double> quotient;  // exact x / scale (0 for an all-zero block)
};

Int8Block int8_reference(const float* x, std::size_t n) {
  Int8Block b;
  float top = 0;
  for (std::size_t i = 0; i < n; ++i) top = std::max(top, std::fabs(x[i]));
  b.scale = top / 127.0f;
  for (std::size_t i = 0; i < n; ++i) {
    b.quotient.push_back(b.scale > 0 ? static_cast<double>(x[i]) / static_cast<double>(b.scale)
                                     : 0.0);
  }
  return b;
}

// Whether the library's q is the exact quotient q_exact rounded half away from zero. Where the
// quotient lies within a hair of a half-integer the product x * (1/scale) in float can land on
// either side of it, so both neighbours are accepted there.
bool int8_matches(int q, double q_exact) {
  const double clamped = std::clamp(q_exact, -127.0, 127.0);
  const double rounded = std::round(clamped);  // std::round: half away from zero
  if (q == static_cast<int>(rounded)) return true;
  const double frac = std::fabs(clamped - std::trunc(clamped));
  return std::fabs(frac - 0.5) < 1e-5 && std::fabs(q - clamped) < 0.5 + 1e-5;
}

}  // namespace

TEST_CASE("wire codecs: names, parsing and sizes") {
  for (const WireFormat f :
       {WireFormat::native, WireFormat::bf16, WireFormat::fp16, WireFormat::int8}) {
    CHECK(strata::parse_wire(strata::wire_name(f)) == f);
  }
  CHECK(strata::wire_name(WireFormat::int8) == "int8");
  CHECK_THROWS_WITH_AS((void)strata::parse_wire("fp8"),
                       "WireFormat: unknown wire format \"fp8\"; known: native, bf16, fp16, int8",
                       std::invalid_argument);
  CHECK_THROWS_AS((void)strata::parse_wire("BF16"), std::invalid_argument);

  CHECK(strata::wire_bytes(WireFormat::native, 10) == 40);
  CHECK(strata::wire_bytes(WireFormat::bf16, 10) == 20);
  CHECK(strata::wire_bytes(WireFormat::fp16, 7) == 14);
  CHECK(strata::wire_bytes(WireFormat::int8, 0) == 0);
  CHECK(strata::wire_bytes(WireFormat::int8, 1) == 1 + 4);
  CHECK(strata::wire_bytes(WireFormat::int8, 256) == 256 + 4);
  CHECK(strata::wire_bytes(WireFormat::int8, 257) == 257 + 8);
  CHECK(strata::wire_bytes(WireFormat::int8, 549) == 549 + 12);
  CHECK(strata::int8_block == 256);

  CHECK(strata::wire_unit(WireFormat::native) == 0.0);
  CHECK(strata::wire_unit(WireFormat::bf16) == std::ldexp(1.0, -8));
  CHECK(strata::wire_unit(WireFormat::fp16) == std::ldexp(1.0, -11));
  CHECK(strata::wire_unit(WireFormat::int8) == 0.5 / 127.0);

  const float x[1] = {1.0f};
  std::uint8_t wire[8] = {};
  float back[1] = {};
  CHECK_THROWS_WITH_AS(strata::wire_encode(WireFormat::native, x, 1, wire),
                       "wire_encode: native is not an encoding", std::invalid_argument);
  CHECK_THROWS_WITH_AS(strata::wire_decode(WireFormat::native, wire, 1, back),
                       "wire_decode: native is not an encoding", std::invalid_argument);
}

TEST_CASE("wire codecs: every half pattern decodes by the formula and round-trips") {
  for (std::uint32_t u = 0; u <= 0xffff; ++u) {
    const auto h = static_cast<std::uint16_t>(u);
    CAPTURE(u);
    const float x = strata::detail::fp16_to_float(h);
    if (is_half_nan(h)) {
      CHECK(std::isnan(x));
      CHECK(std::signbit(x) == ((h & 0x8000) != 0));
      const std::uint16_t back = to_half(x);
      CHECK(is_half_nan(back));
      CHECK((back & 0x8000) == (h & 0x8000));
      continue;
    }
    if ((h & 0x7fff) == 0x7c00) {
      CHECK(std::isinf(x));
      CHECK(std::signbit(x) == ((h & 0x8000) != 0));
    } else {
      CHECK(static_cast<double>(x) == half_value(h));
      CHECK(std::signbit(x) == ((h & 0x8000) != 0));  // -0 stays -0
    }
    CHECK(to_half(x) == h);
  }
}

TEST_CASE("wire codecs: every bfloat16 pattern decodes by the formula and round-trips") {
  for (std::uint32_t u = 0; u <= 0xffff; ++u) {
    const auto h = static_cast<std::uint16_t>(u);
    CAPTURE(u);
    const float x = strata::detail::bf16_to_float(h);
    if (is_bf16_nan(h)) {
      CHECK(std::isnan(x));
      CHECK(is_bf16_nan(to_bf16(x)));
      CHECK((to_bf16(x) & 0x8000) == (h & 0x8000));
      continue;
    }
    if ((h & 0x7fff) == 0x7f80) {
      CHECK(std::isinf(x));
    } else {
      CHECK(static_cast<double>(x) == bf16_value(h));
    }
    CHECK(std::signbit(x) == ((h & 0x8000) != 0));
    CHECK(to_bf16(x) == h);
  }
}

TEST_CASE("wire codecs: fp16 rounds to the nearest half, ties to even") {
  const Grid grid = half_grid();
  std::size_t bad = 0;
  for (const float x : midpoints(grid)) bad += to_half(x) != nearest(grid, x);
  for (const float x : random_floats(300000, 11)) bad += to_half(x) != nearest(grid, x);
  // Random floats of the half range, where the interesting exponents are.
  std::mt19937_64 rng(12);
  std::uniform_real_distribution<double> exponent(-27.0, 17.0);
  for (int i = 0; i < 300000; ++i) {
    const auto x = static_cast<float>(std::exp2(exponent(rng)) * (rng() % 2 ? 1 : -1));
    bad += to_half(x) != nearest(grid, x);
  }
  CHECK(bad == 0);
}

TEST_CASE("wire codecs: bf16 rounds to the nearest bfloat16, ties to even") {
  const Grid grid = bf16_grid();
  std::size_t bad = 0;
  for (const float x : midpoints(grid)) bad += to_bf16(x) != nearest(grid, x);
  for (const float x : random_floats(300000, 13)) bad += to_bf16(x) != nearest(grid, x);
  CHECK(bad == 0);
}

TEST_CASE("wire codecs: fp16 edges: overflow, subnormals, zero, infinity, NaN") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(to_half(65504.0f) == 0x7bff);
  CHECK(to_half(65519.99f) == 0x7bff);
  CHECK(to_half(std::nextafter(65520.0f, 0.0f)) == 0x7bff);
  CHECK(to_half(65520.0f) == 0x7c00);  // the tie goes to the even pattern: infinity
  CHECK(to_half(-65520.0f) == 0xfc00);
  CHECK(to_half(1e9f) == 0x7c00);
  CHECK(to_half(std::numeric_limits<float>::max()) == 0x7c00);
  CHECK(to_half(inf) == 0x7c00);
  CHECK(to_half(-inf) == 0xfc00);
  CHECK(std::isinf(strata::detail::fp16_to_float(to_half(70000.0f))));

  const float tiny = std::ldexp(1.0f, -24);  // the smallest subnormal half
  CHECK(to_half(tiny) == 0x0001);
  CHECK(to_half(-tiny) == 0x8001);
  CHECK(to_half(tiny / 2) == 0x0000);                        // tie: to even, zero
  CHECK(to_half(std::nextafter(tiny / 2, 1.0f)) == 0x0001);  // just above the tie
  CHECK(to_half(-tiny / 2) == 0x8000);                       // signed zero
  CHECK(to_half(3 * tiny / 2) == 0x0002);                    // tie between 1 and 2: 2
  CHECK(to_half(5 * tiny / 2) == 0x0002);                    // tie between 2 and 3: 2
  CHECK(to_half(1023.5f * tiny) == 0x0400);                  // up to the smallest normal
  CHECK(to_half(std::ldexp(1.0f, -14)) == 0x0400);
  CHECK(to_half(std::ldexp(1.0f, -40)) == 0x0000);
  CHECK(to_half(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(to_half(0.0f) == 0x0000);
  CHECK(to_half(-0.0f) == 0x8000);
  CHECK(strata::detail::fp16_to_float(0x0001) == tiny);
  CHECK(strata::detail::fp16_to_float(0x03ff) == 1023 * tiny);

  CHECK(to_half(1.0f) == 0x3c00);
  CHECK(to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie: 1.0 is even
  CHECK(to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);

  // A NaN whose payload lies only in the bits that half drops stays a NaN.
  CHECK(is_half_nan(to_half(from_bits(0x7f800001u))));
  CHECK(is_half_nan(to_half(from_bits(0xffc00000u))));
  CHECK((to_half(from_bits(0xffc00000u)) & 0x8000) != 0);
  CHECK(is_half_nan(to_half(std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("wire codecs: bf16 edges: overflow, subnormals, NaN") {
  const float inf = std::numeric_limits<float>::infinity();
  const float max = std::numeric_limits<float>::max();
  CHECK(to_bf16(max) == 0x7f80);  // above the last midpoint (2 - 2^-8) 2^127
  const float last_mid = std::ldexp(2.0f - std::ldexp(1.0f, -8), 127);
  CHECK(to_bf16(last_mid) == 0x7f80);
  CHECK(to_bf16(std::nextafter(last_mid, 0.0f)) == 0x7f7f);
  CHECK(to_bf16(-inf) == 0xff80);
  CHECK(to_bf16(1.0f) == 0x3f80);
  CHECK(to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);               // tie: to even
  CHECK(to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);           // tie: to even, upwards
  CHECK(to_bf16(std::numeric_limits<float>::denorm_min()) == 0x0000);  // far below 2^-134
  CHECK(to_bf16(std::ldexp(1.0f, -133)) == 0x0001);
  CHECK(to_bf16(-0.0f) == 0x8000);
  CHECK(is_bf16_nan(to_bf16(from_bits(0x7f800001u))));  // payload only in the dropped bits
  CHECK(is_bf16_nan(to_bf16(from_bits(0xff800001u))));
  CHECK((to_bf16(from_bits(0xff800001u)) & 0x8000) != 0);
  CHECK(is_bf16_nan(to_bf16(std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("wire codecs: encode and decode, 16-bit formats, within wire_unit in the normal range") {
  // Little-endian words.
  const float one[2] = {1.0f, -2.0f};
  std::uint8_t w[4];
  strata::wire_encode(WireFormat::bf16, one, 2, w);
  CHECK((w[0] == 0x80 && w[1] == 0x3f && w[2] == 0x00 && w[3] == 0xc0));
  strata::wire_encode(WireFormat::fp16, one, 2, w);
  CHECK((w[0] == 0x00 && w[1] == 0x3c && w[2] == 0x00 && w[3] == 0xc0));

  std::mt19937_64 rng(21);
  for (const WireFormat f : {WireFormat::bf16, WireFormat::fp16}) {
    CAPTURE(strata::wire_name(f));
    const Grid grid = f == WireFormat::bf16 ? bf16_grid() : half_grid();
    // |x| from the smallest normal to below the overflow threshold.
    const double lo = f == WireFormat::bf16 ? -126.0 : -14.0;
    const double hi = f == WireFormat::bf16 ? 126.0 : 15.99;
    std::uniform_real_distribution<double> exponent(lo, hi);
    const std::size_t n = 5001;
    std::vector<float> xf(n);
    std::vector<double> xd(n);
    for (std::size_t i = 0; i < n; ++i) {
      xd[i] = std::exp2(exponent(rng)) * (rng() % 2 ? 1 : -1);
      xf[i] = static_cast<float>(xd[i]);
    }
    std::vector<std::uint8_t> wire(strata::wire_bytes(f, n));
    std::vector<float> back(n);
    strata::wire_encode(f, xf.data(), n, wire.data());
    strata::wire_decode(f, wire.data(), n, back.data());
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto h = static_cast<std::uint16_t>(wire[2 * i] | (wire[2 * i + 1] << 8));
      bad += h != nearest(grid, xf[i]);
      bad += !(std::fabs(static_cast<double>(back[i]) - xf[i]) <=
               strata::wire_unit(f) * std::fabs(xf[i]));
    }
    CHECK(bad == 0);
    // Doubles go through float first; the bound still holds (the second rounding is far below
    // half a 16-bit ulp).
    std::vector<double> backd(n);
    strata::wire_encode(f, xd.data(), n, wire.data());
    strata::wire_decode(f, wire.data(), n, backd.data());
    for (std::size_t i = 0; i < n; ++i) {
      bad += !(std::fabs(backd[i] - xd[i]) <= strata::wire_unit(f) * std::fabs(xd[i]));
    }
    CHECK(bad == 0);
  }

  // Below the normal range the error is absolute: half a step of the subnormals.
  std::uniform_real_distribution<double> exponent(-30.0, -14.0);
  std::size_t bad = 0;
  for (int i = 0; i < 10000; ++i) {
    const auto x = static_cast<float>(std::exp2(exponent(rng)));
    bad += !(std::fabs(strata::detail::fp16_to_float(to_half(x)) - x) <= std::ldexp(1.0, -25));
  }
  CHECK(bad == 0);
}

TEST_CASE("wire codecs: int8 blocks of 256 with a scale each, the last one partial") {
  const std::size_t n = 2 * 256 + 37;  // three blocks; the second all zero
  std::mt19937_64 rng(31);
  std::uniform_real_distribution<float> big(-100.0f, 100.0f), small(-1e-3f, 1e-3f);
  std::vector<float> x(n, 0.0f);
  for (std::size_t i = 0; i < 256; ++i) x[i] = big(rng);
  for (std::size_t i = 512; i < n; ++i) x[i] = small(rng);
  x[600 - 64] = -0.004f;  // the last block's largest magnitude is a negative value

  std::vector<std::uint8_t> wire(strata::wire_bytes(WireFormat::int8, n));
  REQUIRE(wire.size() == n + 12);
  strata::wire_encode(WireFormat::int8, x.data(), n, wire.data());
  std::vector<float> back(n);
  strata::wire_decode(WireFormat::int8, wire.data(), n, back.data());

  std::size_t bad = 0;
  for (std::size_t b = 0; b < 3; ++b) {
    const std::size_t first = 256 * b;
    const std::size_t count = std::min<std::size_t>(256, n - first);
    const Int8Block ref = int8_reference(x.data() + first, count);
    float scale;
    std::memcpy(&scale, wire.data() + 4 * b, 4);  // the scales come first
    CHECK(std::bit_cast<std::uint32_t>(scale) == std::bit_cast<std::uint32_t>(ref.scale));
    float top = 0;
    for (std::size_t i = 0; i < count; ++i) top = std::max(top, std::fabs(x[first + i]));
    for (std::size_t i = 0; i < count; ++i) {
      const int q = static_cast<std::int8_t>(wire[12 + first + i]);  // then the values
      bad += !int8_matches(q, ref.quotient[i]);
      bad += back[first + i] != static_cast<float>(q) * scale;
      bad += !(std::fabs(static_cast<double>(back[first + i]) - x[first + i]) <=
               top * (strata::wire_unit(WireFormat::int8) + 1e-6));
    }
  }
  CHECK(bad == 0);
  // The all-zero block: scale 0, values 0, decoded exactly.
  float zero_scale = -1;
  std::memcpy(&zero_scale, wire.data() + 4, 4);
  CHECK(zero_scale == 0.0f);
  for (std::size_t i = 256; i < 512; ++i) {
    CHECK(wire[12 + i] == 0);
    CHECK(back[i] == 0.0f);
  }
  // The block's largest magnitude maps to +-127.
  CHECK(static_cast<std::int8_t>(wire[12 + 536]) == -127);
}

TEST_CASE("wire codecs: int8 rounds half away from zero") {
  // A block whose largest magnitude is 31.75 has the scale 0.25 exactly: quotients are exact.
  const std::vector<float> x{31.75f,  0.625f, -0.625f, 0.125f, -0.125f, 0.375f,
                             -0.375f, 0.0f,   -31.75f, 0.1f,   0.15f,   7.0f};
  const std::vector<int> q{127, 3, -3, 1, -1, 2, -2, 0, -127, 0, 1, 28};
  std::vector<std::uint8_t> wire(strata::wire_bytes(WireFormat::int8, x.size()));
  strata::wire_encode(WireFormat::int8, x.data(), x.size(), wire.data());
  float scale;
  std::memcpy(&scale, wire.data(), 4);
  CHECK(scale == 0.25f);
  for (std::size_t i = 0; i < x.size(); ++i) {
    CAPTURE(i);
    CHECK(static_cast<std::int8_t>(wire[4 + i]) == q[i]);
  }

  // Random blocks of every size up to two blocks, floats and doubles.
  std::mt19937_64 rng(41);
  std::size_t bad = 0;
  for (std::size_t n = 1; n <= 520; n += 7) {
    std::uniform_real_distribution<double> v(-3.0, 3.0);
    std::vector<double> xd(n);
    std::vector<float> xf(n);
    for (std::size_t i = 0; i < n; ++i) {
      xd[i] = v(rng) * std::exp2(static_cast<double>(rng() % 20) - 10.0);
      xf[i] = static_cast<float>(xd[i]);
    }
    std::vector<std::uint8_t> wf(strata::wire_bytes(WireFormat::int8, n));
    std::vector<std::uint8_t> wd(wf.size());
    strata::wire_encode(WireFormat::int8, xf.data(), n, wf.data());
    strata::wire_encode(WireFormat::int8, xd.data(), n, wd.data());
    bad += wf != wd;  // doubles are quantised as the floats they convert to
    std::vector<double> back(n);
    strata::wire_decode(WireFormat::int8, wd.data(), n, back.data());
    const std::size_t blocks = (n + 255) / 256;
    for (std::size_t b = 0; b < blocks; ++b) {
      const std::size_t first = 256 * b;
      const std::size_t count = std::min<std::size_t>(256, n - first);
      const Int8Block ref = int8_reference(xf.data() + first, count);
      double top = 0;
      for (std::size_t i = 0; i < count; ++i) top = std::max(top, std::fabs(xd[first + i]));
      for (std::size_t i = 0; i < count; ++i) {
        const int got = static_cast<std::int8_t>(wf[4 * blocks + first + i]);
        bad += !int8_matches(got, ref.quotient[i]);
        // Plus the rounding of doubles to float, and of q * scale.
        bad += !(std::fabs(back[first + i] - xd[first + i]) <=
                 top * (strata::wire_unit(WireFormat::int8) + 1e-6));
      }
    }
  }
  CHECK(bad == 0);
}

TEST_CASE("wire codec: a non-finite value turns its int8 block into NaN, not into zeros") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const float bad : {nan, inf, -inf}) {
    std::vector<float> x(300, 1.0f);
    x[7] = bad;  // in the first block; the second block (values 256..299) stays finite
    std::vector<std::uint8_t> wire(strata::wire_bytes(strata::WireFormat::int8, x.size()));
    strata::wire_encode(strata::WireFormat::int8, x.data(), x.size(), wire.data());
    std::vector<float> back(x.size());
    strata::wire_decode(strata::WireFormat::int8, wire.data(), x.size(), back.data());
    for (std::size_t i = 0; i < 256; ++i) CHECK(std::isnan(back[i]));
    for (std::size_t i = 256; i < 300; ++i) CHECK(back[i] == 1.0f);
  }
}

TEST_CASE("wire codec: fp16 rounds tiny values to its subnormal grid, within wire_floor") {
  // Below 2^-14 halves are multiples of 2^-24: the error is absolute, up to 2^-25.
  for (const float x : {1.3e-6f, -0.9e-6f, 3.0e-8f, 6.0e-5f}) {
    std::uint8_t wire[2];
    strata::wire_encode(strata::WireFormat::fp16, &x, 1, wire);
    float back = 0;
    strata::wire_decode(strata::WireFormat::fp16, wire, 1, &back);
    const double err = std::abs(static_cast<double>(back) - static_cast<double>(x));
    const double q = static_cast<double>(x) / 0x1p-24;  // the value in subnormal steps
    CHECK(static_cast<double>(back) == std::nearbyint(q) * 0x1p-24);
    CHECK(err <= strata::wire_unit(strata::WireFormat::fp16) * std::abs(x) +
                     strata::wire_floor(strata::WireFormat::fp16));
  }
}
