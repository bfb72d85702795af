#pragma once
//! \file
//! The compressed wire formats of `strata/kernels/wire_codec.hpp` as CUDA kernels (target
//! `strata::cuda`, nvcc only), fused with the steps of `compressed_average` around them, so that
//! device tensors are averaged with compressed wires without host copies and without flat
//! staging buffers of the values:
//!
//! - `wire_encode`: the pseudo-gradient a - p (an anchor, flat, minus the tensors of a
//!   `FusedPlan`) encoded straight into the send buffer in one pass: the pack, the subtraction
//!   and the encoding in one kernel.
//! - `wire_average`: the owner's step: the g encoded contributions to its chunk decoded, summed
//!   in member order, scaled by 1/g, and re-encoded for the all-gather.
//! - `wire_decode`: the all-gathered chunks decoded into the flat result.
//!
//! The bytes and values are bitwise those of the host path (`wire_encode`, `wire_decode`,
//! `compressed_average`): the kernels call the same element codecs and round each addition,
//! multiplication and division on its own (`__fadd_rn` and kin), so no multiply-add is ever
//! contracted. NaNs are the exception: the GPU returns its canonical NaN where the host keeps a
//! payload, and bf16 and fp16 keep part of a NaN's bits. Do not build with `--use_fast_math` or
//! `-ftz=true` if the equality matters: flushing subnormals differs from the host.
//!
//! Where the encoded values sit is a `WireLayout`: `compressed_average_layout` is the layout of
//! `compressed_average`'s buffers, `flat_wire_layout` that of one `wire_encode` of n values.
//!
//! Layers, as in CUB: `strata::cuda::wire_encode`, `wire_average`, `wire_decode` return a
//! `cudaError_t` and never throw, allocate or synchronise (they may be captured in a CUDA graph);
//! `strata::device_wire_encode`, `device_wire_average`, `device_wire_decode` check sizes and throw
//! `std::invalid_argument` or `strata::cuda_error`. Needs nvcc.

#if !defined(__CUDACC__)
#error "strata/kernels/wire_codec.cuh holds CUDA kernels and needs nvcc; host code: wire_codec.hpp"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <cub/block/block_reduce.cuh>

#include "strata/comm/compressed_average.hpp"
#include "strata/cuda/error.hpp"
#include "strata/kernels/fused.hpp"
#include "strata/kernels/multi_tensor.cuh"
#include "strata/kernels/wire_codec.hpp"

namespace strata {

//! Where encoded values sit in a wire buffer: `chunks` chunks of `chunk_values` values each,
//! chunk j starting at byte `j * chunk_bytes` and encoded as `wire_encode` encodes
//! `chunk_values` values (so an int8 chunk holds its blocks' scales first). Value k of the
//! `values` real ones is value k mod `chunk_values` of chunk k / `chunk_values`; the values past
//! `values` are zeros, and the bytes between a chunk's `wire_bytes` and `chunk_bytes` are zero.
//!
//! \code
//! const strata::WireLayout l = strata::compressed_average_layout(strata::WireFormat::bf16, 1000, 4);
//! assert(l.chunks == 4 && l.chunk_values == 250 && l.chunk_bytes == 500 && l.bytes() == 2000);
//! \endcode
struct WireLayout {
  WireFormat format = WireFormat::bf16;
  std::size_t values = 0;        //!< the real values, n
  std::size_t chunk_values = 0;  //!< values per chunk, padding included
  std::size_t chunk_bytes = 0;   //!< the stride of the chunks in the buffer
  std::size_t chunks = 0;        //!< how many chunks (the group size in `compressed_average`)

  //! The bytes of the whole buffer.
  [[nodiscard]] constexpr std::size_t bytes() const noexcept { return chunks * chunk_bytes; }
};

//! The layout of one `wire_encode(f, in, n, out)`: a single chunk of `n` values.
//!
//! \code
//! static_assert(strata::flat_wire_layout(strata::WireFormat::int8, 300).bytes() == 300 + 2 * 4);
//! \endcode
[[nodiscard]] constexpr WireLayout flat_wire_layout(WireFormat f, std::size_t n) noexcept {
  return {f, n, n, wire_bytes(f, n), 1};
}

//! The layout of `compressed_average`'s buffers for `n` values over `g` members: the send
//! buffer of the all-to-all and the receive buffer of the all-gather are `g` chunks of this
//! layout; the receive buffer of the all-to-all is the same `g` chunks, all of one member's
//! chunk (see `wire_average`). Throws `std::invalid_argument` for `g == 0`.
//!
//! \code
//! // int8 chunks are whole blocks: 1000 values over 3 members, 512 values (334 rounded up) each
//! const auto l = strata::compressed_average_layout(strata::WireFormat::int8, 1000, 3);
//! assert(l.chunk_values == 512 && l.chunk_bytes == 512 + 2 * 4);
//! assert(strata::compressed_average_bytes(strata::WireFormat::int8, 1000, 3) == 2 * 2 * l.chunk_bytes);
//! \endcode
[[nodiscard]] inline WireLayout compressed_average_layout(WireFormat f, std::size_t n,
                                                          std::size_t g) {
  if (g == 0) {
    throw std::invalid_argument("compressed_average_layout: the group size must be at least 1");
  }
  const std::size_t c = detail::compressed_chunk(f, n, g);
  return {f, n, c, 4 * ((wire_bytes(f, c) + 3) / 4), g};
}

//! Why `layout` cannot be used, or null if it can: the format must be an encoding (not
//! `native`), the chunks must hold at least `values` values, `chunk_bytes` must hold a chunk's
//! encoding, and with several chunks it must be a multiple of 4 (each chunk starts on a 32-bit
//! word, as the scales and the collectives' words need).
//!
//! \code
//! assert(strata::wire_layout_error(strata::flat_wire_layout(strata::WireFormat::fp16, 7)) == nullptr);
//! assert(strata::wire_layout_error(strata::flat_wire_layout(strata::WireFormat::native, 7)) != nullptr);
//! \endcode
[[nodiscard]] constexpr const char* wire_layout_error(const WireLayout& layout) noexcept {
  if (layout.format != WireFormat::bf16 && layout.format != WireFormat::fp16 &&
      layout.format != WireFormat::int8) {
    return "the format must be bf16, fp16 or int8 (native is not an encoding)";
  }
  if (layout.chunk_values != 0 &&
      layout.chunks > std::numeric_limits<std::size_t>::max() / layout.chunk_values) {
    return "chunks times chunk_values overflows";
  }
  if (layout.chunks * layout.chunk_values < layout.values) {
    return "the chunks hold fewer than `values` values";
  }
  if (layout.chunks != 0 && layout.chunk_bytes < wire_bytes(layout.format, layout.chunk_values)) {
    return "chunk_bytes is smaller than the encoding of chunk_values values";
  }
  if (layout.chunks > 1 && layout.chunk_bytes % 4 != 0) {
    return "with several chunks, chunk_bytes must be a multiple of 4";
  }
  return nullptr;
}

}  // namespace strata

namespace strata::cuda {

//! Value types of the device wire kernels: those of `compressed_average`, `float` and `double`
//! (a `double` is rounded to `float` on the way in, as the host codec does).
//!
//! \code
//! static_assert(strata::cuda::wire_value<float> && strata::cuda::wire_value<double>);
//! static_assert(!strata::cuda::wire_value<int> && !strata::cuda::wire_value<long double>);
//! \endcode
template <class T>
concept wire_value = std::is_same_v<T, float> || std::is_same_v<T, double>;

}  // namespace strata::cuda

namespace strata::detail::cuda {

static_assert(block_threads == int8_block, "one thread per value of an int8 block");

// Values one block takes per turn in the element-wise kernels: 16 per thread, so that the rare
// chunk boundary costs one division per thread and turn rather than one per value.
inline constexpr std::size_t wire_tile = 16 * block_threads;

// Each operation rounded on its own: nvcc must not contract them into multiply-adds, which the
// host never does.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

struct FloatMax {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Which chunk of the layout flat index k falls in, remembered so that a thread walking upwards
// through the indices divides only when it crosses into another chunk.
class ChunkCursor {
 public:
  __device__ explicit ChunkCursor(std::size_t chunk_values) : c_(chunk_values) {}
  __device__ __forceinline__ void seek(std::size_t k) {
    if (k < begin_ || k >= begin_ + c_) {
      chunk_ = k / c_;
      begin_ = chunk_ * c_;
    }
  }
  [[nodiscard]] __device__ __forceinline__ std::size_t chunk() const { return chunk_; }
  [[nodiscard]] __device__ __forceinline__ std::size_t index(std::size_t k) const {
    return k - begin_;
  }

 private:
  std::size_t c_;
  std::size_t chunk_ = 0;
  std::size_t begin_ = 0;
};

template <WireFormat F>
__device__ __forceinline__ std::uint16_t encode16(float x) {
  if constexpr (F == WireFormat::bf16) {
    return float_to_bf16(x);
  } else {
    return float_to_fp16(x);
  }
}

template <WireFormat F>
__device__ __forceinline__ float decode16(std::uint16_t h) {
  if constexpr (F == WireFormat::bf16) {
    return bf16_to_float(h);
  } else {
    return fp16_to_float(h);
  }
}

// The value the host encodes for flat index k: float(T(a - p)), or float(p) without an anchor.
template <class T>
__device__ __forceinline__ float wire_input(const T* anchor, T p, std::size_t k) {
  return static_cast<float>(anchor != nullptr ? sub_rn(anchor[k], p) : p);
}

// The index of the table chunk holding flat index k < table.total_elements: the last chunk
// starting at or before k (empty chunks, if a table has any, start where the next one does).
// The search runs within [lo, hi], chunk indices known to bracket k.
template <class T>
__device__ std::size_t find_chunk(const TensorChunk<T>* chunks, std::size_t lo, std::size_t hi,
                                  std::size_t k) {
  while (lo < hi) {
    const std::size_t mid = lo + (hi - lo + 1) / 2;
    if (chunks[mid].offset <= k) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// The bytes between each chunk's encoding and the next chunk, and the 16-bit formats' padding
// values (the int8 kernels write their own): all zero, as the host's zero-filled buffers are.
// Shared by every thread of the grid.
inline __device__ void zero_fill(WireLayout layout, std::uint8_t* wire, bool padding_values) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const std::size_t first = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (padding_values) {
    const std::size_t total = layout.chunks * layout.chunk_values;
    for (std::size_t k = layout.values + first; k < total; k += stride) {
      const std::size_t j = k / layout.chunk_values;
      const std::size_t i = k - j * layout.chunk_values;
      *reinterpret_cast<std::uint16_t*>(wire + j * layout.chunk_bytes + 2 * i) = 0;
    }
  }
  const std::size_t used = wire_bytes(layout.format, layout.chunk_values);
  const std::size_t gap = layout.chunk_bytes - used;
  if (gap == 0) return;
  for (std::size_t b = first; b < layout.chunks * gap; b += stride) {
    const std::size_t j = b / gap;
    wire[j * layout.chunk_bytes + used + (b - j * gap)] = 0;
  }
}

// One int8 block of 256 values, one per thread (x = 0 for lanes past the chunk's end, which
// write nothing): the scale max|x| / 127 from a block reduction, then the values. `chunk` is the
// chunk's first byte, b the block's index in it.
template <class Reduce>
__device__ __forceinline__ void encode_int8_block(float x, bool in_chunk, std::uint8_t* chunk,
                                                  std::size_t blocks_per_chunk, std::size_t b,
                                                  typename Reduce::TempStorage& temp,
                                                  float& shared_scale) {
  // A non-finite value (NaN included, which fmaxf would skip) counts as infinite, and an
  // infinite maximum makes the scale NaN, as on the host: the block then decodes as NaN.
  const float top = Reduce(temp).Reduce(isfinite(x) ? fabsf(x) : INFINITY, FloatMax{});
  if (threadIdx.x == 0) {
    const float scale = isinf(top) ? NAN : __fdiv_rn(top, 127.0f);
    *reinterpret_cast<float*>(chunk + 4 * b) = scale;
    shared_scale = scale;
  }
  __syncthreads();
  const float scale = shared_scale;
  if (in_chunk) {
    // The quotient correctly rounded, as the host's x / scale.
    const float q = scale > 0.0f ? __fdiv_rn(x, scale) : 0.0f;
    chunk[4 * blocks_per_chunk + b * int8_block + threadIdx.x] =
        static_cast<std::uint8_t>(float_to_int8(q));
  }
  __syncthreads();  // temp and shared_scale are reused by the block's next turn
}

template <class T, WireFormat F>
__global__ void __launch_bounds__(block_threads)
    encode16_kernel(ChunkTable<T> table, const T* anchor, WireLayout layout, std::uint8_t* wire) {
  ChunkCursor cursor(layout.chunk_values);
  for (std::size_t c = blockIdx.x; c < table.chunk_count; c += gridDim.x) {
    const TensorChunk<T> chunk = table.chunks[c];
    for (std::size_t i = threadIdx.x; i < chunk.length; i += blockDim.x) {
      const std::size_t k = chunk.offset + i;
      cursor.seek(k);
      const std::uint16_t h = encode16<F>(wire_input(anchor, chunk.data[i], k));
      *reinterpret_cast<std::uint16_t*>(wire + cursor.chunk() * layout.chunk_bytes +
                                        2 * cursor.index(k)) = h;
    }
  }
  zero_fill(layout, wire, true);
}

template <class T>
__global__ void __launch_bounds__(block_threads)
    encode_int8_kernel(ChunkTable<T> table, const T* anchor, WireLayout layout,
                       std::uint8_t* wire) {
  using Reduce = cub::BlockReduce<float, block_threads>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ float shared_scale;
  __shared__ std::size_t bracket[2];
  const std::size_t c = layout.chunk_values;
  const std::size_t per_chunk = (c + int8_block - 1) / int8_block;
  const std::size_t blocks = layout.chunks * per_chunk;
  for (std::size_t q = blockIdx.x; q < blocks; q += gridDim.x) {
    const std::size_t j = q / per_chunk;
    const std::size_t b = q - j * per_chunk;
    const std::size_t i = b * int8_block + threadIdx.x;
    const bool in_chunk = i < c;
    const std::size_t k = j * c + i;
    const bool real = in_chunk && k < layout.values;
    // The chunks holding this block's first and last real values bracket every thread's search,
    // which is then short: a block spans few tensors unless they are tiny.
    const std::size_t first = j * c + b * int8_block;
    if (threadIdx.x < 2 && first < layout.values) {
      std::size_t last = first + int8_block - 1;
      last = last < j * c + c - 1 ? last : j * c + c - 1;
      last = last < layout.values - 1 ? last : layout.values - 1;
      bracket[threadIdx.x] =
          find_chunk(table.chunks, 0, table.chunk_count - 1, threadIdx.x == 0 ? first : last);
    }
    __syncthreads();
    float x = 0.0f;
    if (real) {
      const TensorChunk<T>& chunk =
          table.chunks[find_chunk(table.chunks, bracket[0], bracket[1], k)];
      x = wire_input(anchor, chunk.data[k - chunk.offset], k);
    }
    encode_int8_block<Reduce>(x, in_chunk, wire + j * layout.chunk_bytes, per_chunk, b, temp,
                              shared_scale);
  }
  zero_fill(layout, wire, false);
}

// The owner's step for the 16-bit formats: value i of the g chunks in `received`, decoded, added
// in member order from a zero (so that -0 sums to +0, as on the host), times 1/g.
template <class Acc, WireFormat F>
__global__ void __launch_bounds__(block_threads)
    average16_kernel(const std::uint8_t* received, WireLayout layout, Acc inv, Acc* mean,
                     std::uint8_t* encoded) {
  const std::size_t c = layout.chunk_values;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < c;
       i += stride) {
    Acc sum = Acc(0);
    for (std::size_t m = 0; m < layout.chunks; ++m) {
      const std::uint16_t h =
          *reinterpret_cast<const std::uint16_t*>(received + m * layout.chunk_bytes + 2 * i);
      sum = add_rn(sum, static_cast<Acc>(decode16<F>(h)));
    }
    sum = mul_rn(sum, inv);
    if (mean != nullptr) mean[i] = sum;
    if (encoded != nullptr) {
      *reinterpret_cast<std::uint16_t*>(encoded + 2 * i) = encode16<F>(static_cast<float>(sum));
    }
  }
  if (encoded != nullptr) {
    WireLayout one = layout;
    one.chunks = 1;
    one.values = c;
    zero_fill(one, encoded, false);
  }
}

template <class Acc>
__global__ void __launch_bounds__(block_threads)
    average_int8_kernel(const std::uint8_t* received, WireLayout layout, Acc inv, Acc* mean,
                        std::uint8_t* encoded) {
  using Reduce = cub::BlockReduce<float, block_threads>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ float shared_scale;
  const std::size_t c = layout.chunk_values;
  const std::size_t per_chunk = (c + int8_block - 1) / int8_block;
  for (std::size_t b = blockIdx.x; b < per_chunk; b += gridDim.x) {
    const std::size_t i = b * int8_block + threadIdx.x;
    const bool in_chunk = i < c;
    Acc sum = Acc(0);
    if (in_chunk) {
      for (std::size_t m = 0; m < layout.chunks; ++m) {
        const std::uint8_t* chunk = received + m * layout.chunk_bytes;
        const float scale = *reinterpret_cast<const float*>(chunk + 4 * b);
        const auto q = static_cast<std::int8_t>(chunk[4 * per_chunk + i]);
        sum = add_rn(sum, static_cast<Acc>(__fmul_rn(static_cast<float>(q), scale)));
      }
      sum = mul_rn(sum, inv);
      if (mean != nullptr) mean[i] = sum;
    }
    // Uniform across the block: every thread reaches the reduction's barriers or none does.
    if (encoded != nullptr) {
      encode_int8_block<Reduce>(in_chunk ? static_cast<float>(sum) : 0.0f, in_chunk, encoded,
                                per_chunk, b, temp, shared_scale);
    }
  }
  if (encoded != nullptr) {
    WireLayout one = layout;
    one.chunks = 1;
    one.values = c;
    zero_fill(one, encoded, false);
  }
}

template <class T, WireFormat F>
__global__ void __launch_bounds__(block_threads)
    decode16_kernel(const std::uint8_t* wire, WireLayout layout, T* out) {
  ChunkCursor cursor(layout.chunk_values);
  for (std::size_t t = static_cast<std::size_t>(blockIdx.x) * wire_tile; t < layout.values;
       t += static_cast<std::size_t>(gridDim.x) * wire_tile) {
    const std::size_t end = t + wire_tile < layout.values ? t + wire_tile : layout.values;
    for (std::size_t k = t + threadIdx.x; k < end; k += blockDim.x) {
      cursor.seek(k);
      const std::uint16_t h = *reinterpret_cast<const std::uint16_t*>(
          wire + cursor.chunk() * layout.chunk_bytes + 2 * cursor.index(k));
      out[k] = static_cast<T>(decode16<F>(h));
    }
  }
}

template <class T>
__global__ void __launch_bounds__(block_threads)
    decode_int8_kernel(const std::uint8_t* wire, WireLayout layout, T* out) {
  const std::size_t per_chunk = (layout.chunk_values + int8_block - 1) / int8_block;
  ChunkCursor cursor(layout.chunk_values);
  for (std::size_t t = static_cast<std::size_t>(blockIdx.x) * wire_tile; t < layout.values;
       t += static_cast<std::size_t>(gridDim.x) * wire_tile) {
    const std::size_t end = t + wire_tile < layout.values ? t + wire_tile : layout.values;
    for (std::size_t k = t + threadIdx.x; k < end; k += blockDim.x) {
      cursor.seek(k);
      const std::size_t i = cursor.index(k);
      const std::uint8_t* chunk = wire + cursor.chunk() * layout.chunk_bytes;
      const float scale = *reinterpret_cast<const float*>(chunk + 4 * (i / int8_block));
      const auto q = static_cast<std::int8_t>(chunk[4 * per_chunk + i]);
      out[k] = static_cast<T>(__fmul_rn(static_cast<float>(q), scale));
    }
  }
}

// 16-bit words and fp32 scales are stored whole: the buffer must be aligned for them.
inline bool wire_aligned(const void* p) noexcept {
  return reinterpret_cast<std::uintptr_t>(p) % 4 == 0;
}

}  // namespace strata::detail::cuda

namespace strata::cuda {

//! Enqueues on `stream` the encoding of a - p into `wire` as one kernel: p the tensors of
//! `tensors` (a chunk table in device memory, see `DeviceChunkTable`), a the flat `anchor` in
//! device memory (`tensors.total_elements` values; null encodes the tensors' values themselves),
//! laid out as `layout` says (`layout.values == tensors.total_elements`): bitwise the bytes the
//! host's `wire_encode` writes for the packed values T(a - p), chunk by chunk, with the padding
//! values and bytes zero. bf16 and fp16 take one thread per value; int8 one block of 256
//! threads per 256-value block, whose scale is a block-wide maximum. `wire` holds
//! `layout.bytes()` bytes of device memory, 4-byte aligned (as `cudaMalloc` returns).
//! Returns `cudaErrorInvalidValue` for a layout `wire_layout_error` refuses, a size mismatch, a
//! null or misaligned pointer; else the status of the launch. Nothing to encode launches nothing.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! strata::DeviceBuffer<float> params(300), anchor(300);
//! strata::DeviceBuffer<std::uint8_t> wire(strata::wire_bytes(strata::WireFormat::int8, 300));
//! // ... fill params and anchor ...
//! const std::vector<std::span<float>> tensors{{params.data(), 100}, {params.data() + 100, 200}};
//! const strata::FusedPlan plan(tensors);
//! const strata::DeviceChunkTable<float> table(plan, stream);
//! const auto layout = strata::flat_wire_layout(strata::WireFormat::int8, 300);
//! assert(strata::cuda::wire_encode(table.view(), anchor.data(), layout, wire.data(), stream) ==
//!        cudaSuccess);
//! \endcode
template <wire_value T>
cudaError_t wire_encode(ChunkTable<T> tensors, const T* anchor, WireLayout layout,
                        std::uint8_t* wire, cudaStream_t stream) noexcept {
  namespace agent = strata::detail::cuda;
  if (wire_layout_error(layout) != nullptr || tensors.total_elements != layout.values) {
    return cudaErrorInvalidValue;
  }
  if (layout.bytes() == 0) return cudaSuccess;
  if (wire == nullptr || !agent::wire_aligned(wire)) return cudaErrorInvalidValue;
  if (layout.values != 0 && (tensors.chunks == nullptr || tensors.chunk_count == 0)) {
    return cudaErrorInvalidValue;
  }
  unsigned grid = 0;
  cudaError_t e = cudaSuccess;
  if (layout.format == WireFormat::int8) {
    const std::size_t per_chunk = (layout.chunk_values + int8_block - 1) / int8_block;
    const std::size_t blocks = layout.chunks * per_chunk;
    e = agent::grid_for(blocks != 0 ? blocks : 1, grid);
    if (e != cudaSuccess) return e;
    agent::encode_int8_kernel<T>
        <<<grid, agent::block_threads, 0, stream>>>(tensors, anchor, layout, wire);
  } else {
    const std::size_t padding = layout.chunks * layout.chunk_values - layout.values;
    const std::size_t blocks = tensors.chunk_count + padding / agent::block_threads + 1;
    e = agent::grid_for(blocks, grid);
    if (e != cudaSuccess) return e;
    if (layout.format == WireFormat::bf16) {
      agent::encode16_kernel<T, WireFormat::bf16>
          <<<grid, agent::block_threads, 0, stream>>>(tensors, anchor, layout, wire);
    } else {
      agent::encode16_kernel<T, WireFormat::fp16>
          <<<grid, agent::block_threads, 0, stream>>>(tensors, anchor, layout, wire);
    }
  }
  return cudaGetLastError();
}

//! Enqueues on `stream` the owner's step of `compressed_average` as one kernel: `received` holds
//! `layout.chunks` (the group size g) encoded chunks of `layout.chunk_values` values at stride
//! `layout.chunk_bytes`, every member's contribution to one chunk (what the all-to-all of
//! `wire_encode`'s buffers delivers); value i of the mean is the decoded values summed in member
//! order in `Acc` (`float`, or `double` for double parameters), times Acc(1)/Acc(g). Writes the
//! `chunk_values` means to `mean` unless it is null, and their encoding (`wire_bytes` of
//! `chunk_values` values, then zeros up to `chunk_bytes`) to `encoded` unless it is null: the
//! buffer each member all-gathers. Both bitwise the host's. `layout.values` is not used.
//! Device pointers; `received` and `encoded` 4-byte aligned. Returns `cudaErrorInvalidValue` for
//! a refused layout, a null `received` or a misaligned buffer, else the status of the launch.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! const auto layout = strata::compressed_average_layout(strata::WireFormat::bf16, 1 << 20, 8);
//! strata::DeviceBuffer<std::uint8_t> received(layout.bytes()), mine(layout.chunk_bytes);
//! // ... the all-to-all fills received ...
//! assert(strata::cuda::wire_average<float>(received.data(), layout, nullptr, mine.data(),
//!                                          stream) == cudaSuccess);
//! // ... the all-gather of mine, then wire_decode ...
//! \endcode
template <wire_value Acc>
cudaError_t wire_average(const std::uint8_t* received, WireLayout layout, Acc* mean,
                         std::uint8_t* encoded, cudaStream_t stream) noexcept {
  namespace agent = strata::detail::cuda;
  layout.values = 0;  // only the chunks matter here
  if (wire_layout_error(layout) != nullptr || layout.chunks == 0) return cudaErrorInvalidValue;
  if (layout.chunk_values == 0 || (mean == nullptr && encoded == nullptr)) {
    if (encoded != nullptr && layout.chunk_bytes != 0) {
      return cudaMemsetAsync(encoded, 0, layout.chunk_bytes, stream);
    }
    return cudaSuccess;
  }
  if (received == nullptr || !agent::wire_aligned(received) ||
      (encoded != nullptr && !agent::wire_aligned(encoded))) {
    return cudaErrorInvalidValue;
  }
  const Acc inv = Acc(1) / static_cast<Acc>(layout.chunks);
  unsigned grid = 0;
  cudaError_t e = cudaSuccess;
  if (layout.format == WireFormat::int8) {
    e = agent::grid_for((layout.chunk_values + int8_block - 1) / int8_block, grid);
    if (e != cudaSuccess) return e;
    agent::average_int8_kernel<Acc>
        <<<grid, agent::block_threads, 0, stream>>>(received, layout, inv, mean, encoded);
  } else {
    e = agent::grid_for((layout.chunk_values + agent::block_threads - 1) / agent::block_threads,
                        grid);
    if (e != cudaSuccess) return e;
    if (layout.format == WireFormat::bf16) {
      agent::average16_kernel<Acc, WireFormat::bf16>
          <<<grid, agent::block_threads, 0, stream>>>(received, layout, inv, mean, encoded);
    } else {
      agent::average16_kernel<Acc, WireFormat::fp16>
          <<<grid, agent::block_threads, 0, stream>>>(received, layout, inv, mean, encoded);
    }
  }
  return cudaGetLastError();
}

//! Enqueues on `stream` the decoding of `wire` (laid out as `layout`, such as the all-gathered
//! encoded means) into the flat `out[0, layout.values)` as one kernel, one thread per value:
//! bitwise the host's `wire_decode` of each chunk, the padding skipped. Device pointers, `wire`
//! 4-byte aligned. Returns `cudaErrorInvalidValue` for a refused layout or a null or misaligned
//! pointer, else the status of the launch.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! const auto layout = strata::compressed_average_layout(strata::WireFormat::fp16, 5000, 4);
//! strata::DeviceBuffer<std::uint8_t> gathered(layout.bytes());
//! strata::DeviceBuffer<float> mean(5000);
//! // ... the all-gather fills gathered ...
//! assert(strata::cuda::wire_decode(gathered.data(), layout, mean.data(), stream) == cudaSuccess);
//! \endcode
template <wire_value T>
cudaError_t wire_decode(const std::uint8_t* wire, WireLayout layout, T* out,
                        cudaStream_t stream) noexcept {
  namespace agent = strata::detail::cuda;
  if (wire_layout_error(layout) != nullptr) return cudaErrorInvalidValue;
  if (layout.values == 0) return cudaSuccess;
  if (wire == nullptr || out == nullptr || !agent::wire_aligned(wire)) {
    return cudaErrorInvalidValue;
  }
  unsigned grid = 0;
  if (const cudaError_t e =
          agent::grid_for((layout.values + agent::wire_tile - 1) / agent::wire_tile, grid);
      e != cudaSuccess) {
    return e;
  }
  switch (layout.format) {
    case WireFormat::bf16:
      agent::decode16_kernel<T, WireFormat::bf16>
          <<<grid, agent::block_threads, 0, stream>>>(wire, layout, out);
      break;
    case WireFormat::fp16:
      agent::decode16_kernel<T, WireFormat::fp16>
          <<<grid, agent::block_threads, 0, stream>>>(wire, layout, out);
      break;
    default:
      agent::decode_int8_kernel<T><<<grid, agent::block_threads, 0, stream>>>(wire, layout, out);
      break;
  }
  return cudaGetLastError();
}

}  // namespace strata::cuda

namespace strata {

namespace detail {

inline void check_wire_layout(const char* operation, const WireLayout& layout) {
  if (const char* why = wire_layout_error(layout); why != nullptr) {
    throw std::invalid_argument(std::string(operation) + ": bad wire layout: " + why);
  }
}

inline void check_wire_buffer(const char* operation, const char* name, const void* data,
                              std::size_t size, std::size_t needed) {
  if (size < needed) {
    throw std::invalid_argument(std::string(operation) + ": the " + name + " buffer holds " +
                                std::to_string(size) + " bytes, the layout needs " +
                                std::to_string(needed));
  }
  if (needed != 0 && !detail::cuda::wire_aligned(data)) {
    throw std::invalid_argument(std::string(operation) + ": the " + name +
                                " buffer must start on a 4-byte boundary");
  }
}

}  // namespace detail

//! Enqueues `strata::cuda::wire_encode` of a - p: `anchor` the flat anchor (device memory,
//! `tensors.total_elements()` values, or empty to encode the tensors' values themselves), p the
//! tensors of `tensors`, into `wire` (device memory, at least `layout.bytes()` bytes).
//! Throws `std::invalid_argument`, before enqueuing anything, for a refused layout, a
//! `layout.values` other than the tensors' total, an anchor of another size, or a `wire` too
//! small or misaligned; `strata::cuda_error` if the launch fails.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! strata::DeviceBuffer<float> params(1000), anchor(1000);
//! const std::vector<std::span<float>> tensors{params.span()};
//! const strata::FusedPlan plan(tensors);
//! const strata::DeviceChunkTable<float> table(plan, stream);
//! const auto layout = strata::compressed_average_layout(strata::WireFormat::bf16, 1000, 4);
//! strata::DeviceBuffer<std::uint8_t> send(layout.bytes());
//! strata::device_wire_encode(table, std::span<const float>(anchor.span()), layout, send.span(),
//!                            stream);
//! \endcode
template <cuda::wire_value T>
void device_wire_encode(const DeviceChunkTable<T>& tensors,
                        std::type_identity_t<std::span<const T>> anchor, const WireLayout& layout,
                        std::span<std::uint8_t> wire, cudaStream_t stream) {
  constexpr const char* op = "device_wire_encode";
  detail::check_wire_layout(op, layout);
  if (layout.values != tensors.total_elements()) {
    throw std::invalid_argument(std::string(op) + ": the layout has " +
                                std::to_string(layout.values) + " values but the tensors hold " +
                                std::to_string(tensors.total_elements()));
  }
  if (!anchor.empty() && anchor.size() != tensors.total_elements()) {
    throw std::invalid_argument(std::string(op) + ": the anchor holds " +
                                std::to_string(anchor.size()) + " values but the tensors hold " +
                                std::to_string(tensors.total_elements()));
  }
  detail::check_wire_buffer(op, "wire", wire.data(), wire.size(), layout.bytes());
  cuda_check("strata::cuda::wire_encode", -1,
             cuda::wire_encode(tensors.view(), anchor.empty() ? nullptr : anchor.data(), layout,
                               wire.data(), stream));
}

//! Enqueues `strata::cuda::wire_average`: the owner's step over the `layout.chunks` encoded
//! contributions in `received` (at least `layout.bytes()` bytes), writing the means to `mean`
//! (empty, or `layout.chunk_values` values) and their encoding to `encoded` (empty, or at least
//! `layout.chunk_bytes` bytes). Device memory. Throws `std::invalid_argument`, before enqueuing
//! anything, for a refused layout (or one of no chunks) or a buffer of the wrong size or
//! alignment; `strata::cuda_error` if the launch fails.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! const auto layout = strata::compressed_average_layout(strata::WireFormat::int8, 4096, 4);
//! strata::DeviceBuffer<std::uint8_t> received(layout.bytes()), mine(layout.chunk_bytes);
//! // ... the all-to-all fills received ...
//! strata::device_wire_average(std::span<const std::uint8_t>(received.span()), layout,
//!                             std::span<float>{}, mine.span(), stream);
//! \endcode
template <cuda::wire_value Acc>
void device_wire_average(std::span<const std::uint8_t> received, const WireLayout& layout,
                         std::span<Acc> mean, std::span<std::uint8_t> encoded,
                         cudaStream_t stream) {
  constexpr const char* op = "device_wire_average";
  WireLayout chunks = layout;
  chunks.values = 0;
  detail::check_wire_layout(op, chunks);
  if (layout.chunks == 0) {
    throw std::invalid_argument(std::string(op) + ": the layout has no chunks (the group size)");
  }
  detail::check_wire_buffer(op, "received", received.data(), received.size(), layout.bytes());
  if (!mean.empty() && mean.size() != layout.chunk_values) {
    throw std::invalid_argument(std::string(op) + ": the mean holds " +
                                std::to_string(mean.size()) + " values, a chunk " +
                                std::to_string(layout.chunk_values));
  }
  if (!encoded.empty()) {
    detail::check_wire_buffer(op, "encoded", encoded.data(), encoded.size(), layout.chunk_bytes);
  }
  cuda_check("strata::cuda::wire_average", -1,
             cuda::wire_average<Acc>(received.data(), chunks, mean.empty() ? nullptr : mean.data(),
                                     encoded.empty() ? nullptr : encoded.data(), stream));
}

//! Enqueues `strata::cuda::wire_decode` of `wire` (device memory, at least `layout.bytes()`
//! bytes) into `out` (device memory, exactly `layout.values` values). Throws
//! `std::invalid_argument`, before enqueuing anything, for a refused layout or a buffer of the
//! wrong size or alignment; `strata::cuda_error` if the launch fails.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! const auto layout = strata::compressed_average_layout(strata::WireFormat::fp16, 5000, 4);
//! strata::DeviceBuffer<std::uint8_t> gathered(layout.bytes());
//! strata::DeviceBuffer<double> mean(5000);
//! // ... the all-gather fills gathered ...
//! strata::device_wire_decode(std::span<const std::uint8_t>(gathered.span()), layout,
//!                            mean.span(), stream);
//! \endcode
template <cuda::wire_value T>
void device_wire_decode(std::span<const std::uint8_t> wire, const WireLayout& layout,
                        std::span<T> out, cudaStream_t stream) {
  constexpr const char* op = "device_wire_decode";
  detail::check_wire_layout(op, layout);
  detail::check_wire_buffer(op, "wire", wire.data(), wire.size(), layout.bytes());
  if (out.size() != layout.values) {
    throw std::invalid_argument(std::string(op) + ": the output holds " +
                                std::to_string(out.size()) + " values, the layout " +
                                std::to_string(layout.values));
  }
  cuda_check("strata::cuda::wire_decode", -1,
             cuda::wire_decode(wire.data(), layout, out.data(), stream));
}

}  // namespace strata
