#pragma once
//! \file
//! Compressed wire formats for averaging: bf16, fp16, and int8 with one fp32 scale per block of
//! 256 values. Element codecs are host-and-device functions, so the host averagers and the CUDA
//! kernels encode the same bits.

#include <math.h>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>

#include "strata/detail/host_device.hpp"

namespace strata {

//! What an averaging level sends: the parameters' own type (`native`, the default: no rounding),
//! or a compressed form of each member's pseudo-gradient.
//!
//! \code
//! static_assert(strata::wire_bytes(strata::WireFormat::bf16, 1000) == 2000);
//! static_assert(strata::wire_bytes(strata::WireFormat::int8, 512) == 512 + 2 * 4);
//! \endcode
enum class WireFormat {
  native,  //!< the parameters' own type (fp32 for float parameters)
  bf16,    //!< bfloat16, round to nearest even
  fp16,    //!< IEEE half, round to nearest even; values beyond 65504 become infinite
  int8,    //!< symmetric int8, one fp32 scale (max |x| / 127) per block of 256, round to nearest
};

//! Values per int8 block (one fp32 scale each).
inline constexpr std::size_t int8_block = 256;

//! The name used on command lines and in messages: "native", "bf16", "fp16", "int8".
[[nodiscard]] constexpr std::string_view wire_name(WireFormat f) noexcept {
  switch (f) {
    case WireFormat::native: return "native";
    case WireFormat::bf16: return "bf16";
    case WireFormat::fp16: return "fp16";
    case WireFormat::int8: return "int8";
  }
  return "?";
}

//! Parses `wire_name`'s words; throws `std::invalid_argument` naming the known ones.
//!
//! \code
//! assert(strata::parse_wire("int8") == strata::WireFormat::int8);
//! \endcode
[[nodiscard]] inline WireFormat parse_wire(std::string_view s) {
  for (WireFormat f : {WireFormat::native, WireFormat::bf16, WireFormat::fp16, WireFormat::int8}) {
    if (s == wire_name(f)) return f;
  }
  throw std::invalid_argument("WireFormat: unknown wire format \"" + std::string(s) +
                              "\"; known: native, bf16, fp16, int8");
}

//! Bytes that `n` values take in format `f` (`native` counted as fp32: 4 bytes each).
[[nodiscard]] constexpr std::size_t wire_bytes(WireFormat f, std::size_t n) noexcept {
  switch (f) {
    case WireFormat::native: return 4 * n;
    case WireFormat::bf16:
    case WireFormat::fp16: return 2 * n;
    case WireFormat::int8: return n + 4 * ((n + int8_block - 1) / int8_block);
  }
  return 0;
}

//! The relative rounding error of one encoding, as a bound: |decode(encode(x)) - x| <=
//! `wire_unit(f) * s + wire_floor(f)`, with s = |x| for bf16 and fp16 and s = the block's max |x|
//! for int8, for finite x within the format's range (fp16: |x| < 65520, beyond which it gives
//! infinity). 0 for `native`.
[[nodiscard]] constexpr double wire_unit(WireFormat f) noexcept {
  switch (f) {
    case WireFormat::native: return 0.0;
    case WireFormat::bf16: return 1.0 / 256.0;   // 2^-8: 8 significant bits, half an ulp
    case WireFormat::fp16: return 1.0 / 2048.0;  // 2^-11
    case WireFormat::int8: return 0.5 / 127.0;   // half a step of max/127
  }
  return 0.0;
}

//! The absolute part of the rounding bound: values below the format's smallest normal number are
//! rounded to a multiple of its smallest subnormal (fp16: 2^-24 below 2^-14, so up to 2^-25 off,
//! which matters for pseudo-gradients of 1e-6; bf16: 2^-134, as float's own). 0 for int8 and
//! `native`.
//!
//! \code
//! static_assert(strata::wire_floor(strata::WireFormat::fp16) == 0x1p-25);
//! \endcode
[[nodiscard]] constexpr double wire_floor(WireFormat f) noexcept {
  switch (f) {
    case WireFormat::bf16: return 0x1p-134;
    case WireFormat::fp16: return 0x1p-25;
    default: return 0.0;
  }
}

namespace detail {

// float -> bfloat16 bits, round to nearest even; NaN stays NaN.
STRATA_HOST_DEVICE inline std::uint16_t float_to_bf16(float x) noexcept {
  std::uint32_t u;
  __builtin_memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

STRATA_HOST_DEVICE inline float bf16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  float x;
  __builtin_memcpy(&x, &u, sizeof x);
  return x;
}

// float -> IEEE binary16 bits, round to nearest even, with subnormals; overflow gives infinity.
STRATA_HOST_DEVICE inline std::uint16_t float_to_fp16(float x) noexcept {
  std::uint32_t u;
  __builtin_memcpy(&u, &x, sizeof u);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (abs < 0x38800000u) {
    // Subnormal half (below 2^-14) or zero: the value in units of 2^-24, rounded to even.
    if (abs < 0x33000000u) return static_cast<std::uint16_t>(sign);  // below half of 2^-24
    const std::uint32_t exp = abs >> 23;
    const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exp;  // 113 - exp + 13
    std::uint32_t q = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }
  // Normal: rebias the exponent (127 -> 15) and round the mantissa from 23 to 10 bits.
  std::uint32_t h = abs - 0x38000000u;
  const std::uint32_t rem = h & 0x1fffu;
  h >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

STRATA_HOST_DEVICE inline float fp16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  std::uint32_t u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;
  } else {
    // Subnormal half: mant * 2^-24, exact in float.
    float x = static_cast<float>(mant) * 5.9604644775390625e-8f;
    __builtin_memcpy(&u, &x, sizeof u);
    u |= sign;
  }
  float x;
  __builtin_memcpy(&x, &u, sizeof x);
  return x;
}

// int8 of q = x / scale (divided by the caller, correctly rounded on host and device alike):
// round(q) in [-127, 127], ties away from zero. NaN (a block with a non-finite value has a NaN
// scale, see wire_encode; 0 / 0 in an all-zero block) gives 0.
STRATA_HOST_DEVICE inline std::int8_t float_to_int8(float q) noexcept {
  if (!(q == q)) return 0;
  q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
  // Truncate, then step away from zero when the dropped part is at least a half: q - i is exact
  // in float for |q| <= 127, so this is round-half-away-from-zero without a libm call.
  int i = static_cast<int>(q);
  const float rest = q - static_cast<float>(i);
  if (rest >= 0.5f) ++i;
  if (rest <= -0.5f) --i;
  return static_cast<std::int8_t>(i);
}

}  // namespace detail

//! Encodes `n` values (converted to float) into `out`, which holds `wire_bytes(f, n)` bytes:
//! bf16/fp16 as little-endian 16-bit words; int8 as the blocks' fp32 scales first, then the
//! int8 values. A non-finite value makes its int8 block's scale NaN, so that the whole block
//! decodes as NaN: a diverging run stays visible instead of turning into zeros. `native` is not an encoding (throws `std::invalid_argument`). A host loop over
//! the element codecs; the device kernels call the same codecs.
//!
//! \code
//! #include <cstdint>
//! const float x[3] = {1.0f, -0.5f, 3.0f};
//! std::uint8_t wire[strata::wire_bytes(strata::WireFormat::bf16, 3)];
//! strata::wire_encode(strata::WireFormat::bf16, x, 3, wire);
//! float back[3];
//! strata::wire_decode(strata::WireFormat::bf16, wire, 3, back);
//! assert(back[0] == 1.0f && back[1] == -0.5f && back[2] == 3.0f);
//! \endcode
template <class T>
void wire_encode(WireFormat f, const T* in, std::size_t n, std::uint8_t* out) {
  switch (f) {
    case WireFormat::native: throw std::invalid_argument("wire_encode: native is not an encoding");
    case WireFormat::bf16:
    case WireFormat::fp16:
      for (std::size_t i = 0; i < n; ++i) {
        const float x = static_cast<float>(in[i]);
        const std::uint16_t h =
            f == WireFormat::bf16 ? detail::float_to_bf16(x) : detail::float_to_fp16(x);
        out[2 * i] = static_cast<std::uint8_t>(h & 0xffu);
        out[2 * i + 1] = static_cast<std::uint8_t>(h >> 8);
      }
      return;
    case WireFormat::int8: {
      const std::size_t blocks = (n + int8_block - 1) / int8_block;
      std::uint8_t* values = out + 4 * blocks;
      for (std::size_t b = 0; b < blocks; ++b) {
        const std::size_t first = b * int8_block;
        const std::size_t last = first + int8_block < n ? first + int8_block : n;
        float top = 0.0f;
        bool finite = true;
        for (std::size_t i = first; i < last; ++i) {
          const float x = static_cast<float>(in[i]);
          finite = finite && std::isfinite(x);
          top = std::fmax(top, std::fabs(x));
        }
        const float scale = finite ? top / 127.0f : std::numeric_limits<float>::quiet_NaN();
        __builtin_memcpy(out + 4 * b, &scale, 4);
        // x / scale, not x * (1 / scale): the reciprocal of a subnormal scale overflows.
        for (std::size_t i = first; i < last; ++i) {
          const float q = scale > 0.0f ? static_cast<float>(in[i]) / scale : 0.0f;
          values[i] = static_cast<std::uint8_t>(detail::float_to_int8(q));
        }
      }
      return;
    }
  }
}

//! Decodes `n` values written by `wire_encode` into `out` (as T).
template <class T>
void wire_decode(WireFormat f, const std::uint8_t* in, std::size_t n, T* out) {
  switch (f) {
    case WireFormat::native: throw std::invalid_argument("wire_decode: native is not an encoding");
    case WireFormat::bf16:
    case WireFormat::fp16:
      for (std::size_t i = 0; i < n; ++i) {
        const auto h = static_cast<std::uint16_t>(in[2 * i] | (in[2 * i + 1] << 8));
        out[i] = static_cast<T>(f == WireFormat::bf16 ? detail::bf16_to_float(h)
                                                      : detail::fp16_to_float(h));
      }
      return;
    case WireFormat::int8: {
      const std::size_t blocks = (n + int8_block - 1) / int8_block;
      const std::uint8_t* values = in + 4 * blocks;
      for (std::size_t b = 0; b < blocks; ++b) {
        float scale;
        __builtin_memcpy(&scale, in + 4 * b, 4);
        const std::size_t first = b * int8_block;
        const std::size_t last = first + int8_block < n ? first + int8_block : n;
        for (std::size_t i = first; i < last; ++i) {
          out[i] = static_cast<T>(static_cast<float>(static_cast<std::int8_t>(values[i])) * scale);
        }
      }
      return;
    }
  }
}

}  // namespace strata
