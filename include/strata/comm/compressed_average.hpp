#pragma once
//! \file
//! The mean over a group with the values sent in a compressed wire format.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/comm/communicator_traits.hpp"
#include "strata/comm/detail/keep_forever.hpp"
#include "strata/error.hpp"
#include "strata/kernels/wire_codec.hpp"

namespace strata {

namespace detail {

// Values per member's chunk: n / g rounded up, to whole int8 blocks (so that a block's scale
// belongs to one chunk) or to whole 32-bit words for the 16-bit formats.
[[nodiscard]] inline std::size_t compressed_chunk(WireFormat f, std::size_t n, std::size_t g) {
  std::size_t c = (n + g - 1) / g;
  const std::size_t unit = f == WireFormat::int8 ? int8_block : 2;
  return (c + unit - 1) / unit * unit;
}

}  // namespace detail

//! Bytes one member sends in `compressed_average` of `n` values over `g` members (the padding of
//! the last chunk included): an all-to-all and an all-gather of one encoded chunk per member.
//! int8 chunks are whole 256-value blocks, so for fewer than about 256·g values int8 sends more
//! than the native type would (61 floats over 16 members: 7800 bytes against 457): compress
//! large tensors, not small ones.
//!
//! \code
//! // 1024 floats over 4 members in bf16: chunks of 256 values, 512 bytes, sent 3 + 3 times
//! static_assert(strata::compressed_average_bytes(strata::WireFormat::bf16, 1024, 4) == 6 * 512);
//! \endcode
[[nodiscard]] constexpr std::size_t compressed_average_bytes(WireFormat f, std::size_t n,
                                                             std::size_t g) noexcept {
  if (g <= 1 || n == 0) return 0;
  std::size_t c = (n + g - 1) / g;
  const std::size_t unit = f == WireFormat::int8 ? int8_block : 2;
  c = (c + unit - 1) / unit * unit;
  const std::size_t words = (wire_bytes(f, c) + 3) / 4;
  return 2 * (g - 1) * 4 * words;
}

//! Every member's `out` becomes the mean over the group of the members' `in`, the values sent in
//! wire format `f` (not `native`) and summed in the wider of T and float, bitwise identical on
//! every member. Each member owns one chunk of n/g values: the members send their chunks encoded
//! to the owners (an all-to-all), each owner decodes the g contributions, sums them in a fixed
//! order and multiplies by 1/g, and the encoded means are all-gathered and decoded. Every value is
//! thus rounded twice, on the way in and on the way out: |out - mean| <= wire_unit(f) times
//! (the mean of the inputs' magnitudes + the result's magnitude), per value for bf16 and fp16 and
//! per 256-value block's largest magnitude for int8, plus 2 wire_floor(f) (fp16's subnormals).
//! A group of one returns `in` unrounded.
//! Collective; `in` and `out` of the same size on every member (`usage_error` on every member
//! otherwise, agreed in one small all-reduce before the transfer). Returns the bytes this member sent.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! strata::LocalWorld(2).run([](strata::LocalComm& comm) {
//!   const std::vector<float> in(300, comm.rank() == 0 ? 1.0f : 2.0f);
//!   std::vector<float> out(300);
//!   strata::compressed_average(comm, std::span<const float>(in), std::span<float>(out),
//!                              strata::WireFormat::bf16);
//!   assert(out[0] == 1.5f && out[299] == 1.5f);
//! });
//! \endcode
template <class Comm, class T>
std::size_t compressed_average(Comm& comm, std::span<const T> in, std::span<T> out, WireFormat f) {
  static_assert(std::is_floating_point_v<T>, "compressed_average: floating-point values only");
  if (f == WireFormat::native) {
    throw std::invalid_argument("compressed_average: native is not a compressed format");
  }
  if (in.size() != out.size()) {
    throw std::invalid_argument("compressed_average: input of " + std::to_string(in.size()) +
                                " values, output of " + std::to_string(out.size()));
  }
  const auto g = static_cast<std::size_t>(comm.size());
  const std::size_t n = in.size();
  if (g == 1) {
    if (out.data() != in.data()) std::copy(in.begin(), in.end(), out.begin());
    return 0;
  }
  // The chunks' sizes hide n from the collectives' own checks (n = 3 and n = 4 both make chunks
  // of 2 bf16 values over 2 members): the members agree on it first, in one small all-reduce.
  std::int64_t sizes[2] = {static_cast<std::int64_t>(n), -static_cast<std::int64_t>(n)};
  comm.all_reduce(std::span<std::int64_t>(sizes), ReduceOp::max);
  if (sizes[0] != -sizes[1]) {
    throw usage_error("compressed_average", comm.rank(),
                      "the members pass between " + std::to_string(-sizes[1]) + " and " +
                          std::to_string(sizes[0]) + " values; every member must pass the same");
  }
  using Acc = std::conditional_t<(sizeof(T) > sizeof(float)), T, float>;
  const std::size_t c = detail::compressed_chunk(f, n, g);
  const std::size_t words = (wire_bytes(f, c) + 3) / 4;
  // Chunk j of this member's values, zero-padded past n, encoded into words [j*words, ...).
  std::vector<std::int32_t> send(g * words, 0);
  std::vector<std::int32_t> recv(g * words);
  std::vector<std::int32_t> mine(words, 0);
  std::vector<Acc> chunk(c);
  for (std::size_t j = 0; j < g; ++j) {
    for (std::size_t i = 0; i < c; ++i) {
      const std::size_t k = j * c + i;
      chunk[i] = k < n ? static_cast<Acc>(in[k]) : Acc(0);
    }
    wire_encode(f, chunk.data(), c, reinterpret_cast<std::uint8_t*>(send.data() + j * words));
  }
  try {
    comm.all_to_all(std::span<const std::int32_t>(send), std::span<std::int32_t>(recv));
    // This member's chunk from every member, summed in member order.
    std::vector<Acc> sum(c, Acc(0));
    for (std::size_t m = 0; m < g; ++m) {
      wire_decode(f, reinterpret_cast<const std::uint8_t*>(recv.data() + m * words), c,
                  chunk.data());
      for (std::size_t i = 0; i < c; ++i) sum[i] += chunk[i];
    }
    const Acc inv = Acc(1) / static_cast<Acc>(g);
    for (Acc& v : sum) v *= inv;
    wire_encode(f, sum.data(), c, reinterpret_cast<std::uint8_t*>(mine.data()));
    comm.all_gather(std::span<const std::int32_t>(mine), std::span<std::int32_t>(recv));
  } catch (const usage_error&) {
    throw;  // refused before anything was posted
  } catch (...) {
    if constexpr (!all_or_nothing_v<Comm>) {
      // A collective that timed out may still be writing into these (MPI): they stay alive.
      detail::keep_forever(send);
      detail::keep_forever(recv);
      detail::keep_forever(mine);
    }
    throw;
  }
  for (std::size_t j = 0; j < g; ++j) {
    wire_decode(f, reinterpret_cast<const std::uint8_t*>(recv.data() + j * words), c, chunk.data());
    for (std::size_t i = 0; i < c && j * c + i < n; ++i) out[j * c + i] = static_cast<T>(chunk[i]);
  }
  return 2 * (g - 1) * 4 * words;
}

}  // namespace strata
