#pragma once
// The CUB de-duplication path's own kernels and device helpers (see strata/kernels/dedup.cuh):
// the layout of its one block of temporary storage, launch shapes, and the kernels that CUB does
// not provide (positions, the inverse map's scatter, group offsets, the row sums).

#if !defined(__CUDACC__)
#error "strata/kernels/detail/dedup_kernels.cuh holds CUDA kernels and needs nvcc"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "strata/detail/host_device.hpp"

// Not strata::detail::cuda itself: the fused kernels' agents live there, under the same names.
namespace strata::detail::cuda::dedup {

inline constexpr unsigned block_threads = 256;
// Enough blocks to fill any current GPU several times over; grid-stride loops do the rest.
inline constexpr std::size_t max_blocks = 4096;
// cudaMalloc's alignment, which CUB expects of its own temporary storage.
inline constexpr std::size_t temp_alignment = 256;

constexpr std::size_t align_up(std::size_t bytes) noexcept {
  return (bytes + temp_alignment - 1) / temp_alignment * temp_alignment;
}

// Bytes of one block holding `sizes` one after the other, each 256-byte aligned, with room to
// align the base too. Never 0: a caller that allocates what the query said and passes a null
// pointer for 0 bytes would otherwise be taken for a second query.
template <std::size_t N>
constexpr std::size_t layout_bytes(const std::array<std::size_t, N>& sizes) noexcept {
  std::size_t total = temp_alignment;
  for (const std::size_t s : sizes) total += align_up(s);
  return total;
}

template <std::size_t N>
std::array<void*, N> carve(void* base, const std::array<std::size_t, N>& sizes) noexcept {
  std::uintptr_t p = reinterpret_cast<std::uintptr_t>(base);
  p = (p + temp_alignment - 1) / temp_alignment * temp_alignment;
  std::array<void*, N> pieces{};
  for (std::size_t i = 0; i < N; ++i) {
    pieces[i] = reinterpret_cast<void*>(p);
    p += align_up(sizes[i]);
  }
  return pieces;
}

inline unsigned grid_for(std::size_t threads) noexcept {
  const std::size_t blocks = (threads + block_threads - 1) / block_threads;
  return static_cast<unsigned>(std::clamp<std::size_t>(blocks, 1, max_blocks));
}

// Lanes that share one group's row: as many as the row has columns, up to a warp, rounded to a
// power of two so that a group never straddles two warps.
inline unsigned lanes_for(std::size_t width) noexcept {
  return static_cast<unsigned>(std::bit_ceil(std::min<std::size_t>(width, 32)));
}

template <class Index>
constexpr bool fits_index(std::size_t n) noexcept {
  return n <= static_cast<std::size_t>(std::numeric_limits<Index>::max());
}

__device__ inline std::size_t global_thread() noexcept {
  return static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ inline std::size_t grid_threads() noexcept {
  return static_cast<std::size_t>(gridDim.x) * blockDim.x;
}

template <class Index>
__global__ void iota_kernel(Index* out, std::size_t n) {
  for (std::size_t i = global_thread(); i < n; i += grid_threads()) out[i] = static_cast<Index>(i);
}

// Sorted position k belongs to the last of the m runs that starts at or before it. A binary
// search of the run starts (at most log2 m reads of a small, cached array) finds it without a
// second pass over the n sorted ids, which a scan of run-start flags would need.
template <class Index>
STRATA_HOST_DEVICE std::size_t run_of(const Index* offsets, std::size_t m, std::size_t k) {
  std::size_t lo = 0;                      // offsets[lo] <= k
  std::size_t hi = m < k + 1 ? m : k + 1;  // run(k) < hi: every run holds a position
  while (hi - lo > 1) {
    const std::size_t mid = lo + (hi - lo) / 2;
    if (static_cast<std::size_t>(offsets[mid]) <= k) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The first of the n sorted entries that is not below `target`.
template <class Index>
STRATA_HOST_DEVICE std::size_t lower_bound_of(const Index* sorted, std::size_t n, Index target) {
  std::size_t lo = 0;
  std::size_t hi = n;
  while (lo < hi) {
    const std::size_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] < target) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Column c of the sum of the rows order[begin, end), added in that order, the first row copied
// rather than added to zero (as on the host: -0.0 stays -0.0); zero if there are none. The rows
// are fetched 8 at a time, all in flight at once, and only the additions wait in turn: a heavy id
// costs its count in dependent additions, not in memory round trips.
template <class T, class Index>
STRATA_HOST_DEVICE T sum_column(const Index* order, std::size_t begin, std::size_t end,
                                const T* rows, std::size_t width, std::size_t c) {
  if (begin >= end) return T(0);
  T acc = rows[static_cast<std::size_t>(order[begin]) * width + c];
  constexpr std::size_t batch = 8;
  std::size_t k = begin + 1;
  for (; k + batch <= end; k += batch) {
    T v[batch];  // registers once unrolled; the host compiler has no use for the pragma
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (std::size_t j = 0; j < batch; ++j) {
      v[j] = rows[static_cast<std::size_t>(order[k + j]) * width + c];
    }
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (std::size_t j = 0; j < batch; ++j) acc = static_cast<T>(acc + v[j]);
  }
  for (; k < end; ++k) {
    acc = static_cast<T>(acc + rows[static_cast<std::size_t>(order[k]) * width + c]);
  }
  return acc;
}

// offsets[m..n) already hold n (the counts past m are zero) and offsets[n] is set here, so every
// run u < m has its end at offsets[u + 1].
template <class Index>
__global__ void scatter_inverse_kernel(const Index* order, Index* offsets, const Index* num_unique,
                                       std::size_t n, Index* inverse) {
  const auto m = static_cast<std::size_t>(*num_unique);
  for (std::size_t k = global_thread(); k < n; k += grid_threads()) {
    inverse[order[k]] = static_cast<Index>(run_of(offsets, m, k));
  }
  if (global_thread() == 0) offsets[n] = static_cast<Index>(n);
}

// offsets[u] = the first sorted position whose group is not below u, for u in [0, groups].
template <class Index>
__global__ void group_offsets_kernel(const Index* sorted, std::size_t n, std::size_t groups,
                                     Index* offsets) {
  for (std::size_t u = global_thread(); u <= groups; u += grid_threads()) {
    offsets[u] = static_cast<Index>(lower_bound_of(sorted, n, static_cast<Index>(u)));
  }
}

// One group of `lanes` threads (up to a warp) per unique id; each lane owns the columns
// lane, lane + lanes, ... and adds that id's rows into them one after the other, in input order.
// That order is the contract (bitwise the host's sums, run after run), so the parallelism comes
// from ids and columns, never from splitting one id's rows: a tree over the rows would be
// deterministic too, but would not equal the serial sum. cub::DeviceSegmentedReduce reduces one
// scalar per segment; for rows it would need a segment per (id, column), gather through the
// positions with a strided iterator and make no promise on the order of additions. Loads of a
// row are coalesced across the lanes.
template <class T, class Index>
__global__ void sum_groups_kernel(const Index* order, const Index* offsets,
                                  const Index* device_groups, std::size_t host_groups,
                                  const T* rows, std::size_t width, T* sums, unsigned lanes) {
  const std::size_t groups =
      device_groups != nullptr ? static_cast<std::size_t>(*device_groups) : host_groups;
  const std::size_t thread = global_thread();
  const std::size_t lane = thread % lanes;
  const std::size_t stride = grid_threads() / lanes;
  for (std::size_t u = thread / lanes; u < groups; u += stride) {
    const auto begin = static_cast<std::size_t>(offsets[u]);
    const auto end = static_cast<std::size_t>(offsets[u + 1]);
    T* out = sums + u * width;
    for (std::size_t c = lane; c < width; c += lanes) {
      out[c] = sum_column(order, begin, end, rows, width, c);
    }
  }
}

}  // namespace strata::detail::cuda::dedup
