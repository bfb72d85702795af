#pragma once
//! \file
//! The de-duplication kernels of `dedup.hpp` for the device, built from CUB: a radix sort of
//! (id, position) pairs, a run-length encoding into unique ids and counts, a scan of the counts
//! into run offsets, a scatter of the inverse map, and a row-wise segmented sum. Results equal
//! the Thrust path's exactly: the same unique ids, inverse map and counts, and bitwise the same
//! sums, because each id's rows are added in the same (input) order.
//!
//! Two layers, as in CUB. The status API takes raw device pointers, returns a `cudaError_t` and
//! allocates nothing: its scratch is one block of temporary storage whose size a first call with
//! a null `d_temp_storage` reports. On top of it, `DedupWorkspace` owns that block and the
//! grouping of the last batch, and the span functions throw `strata::cuda_error` or, for bad
//! sizes, `std::invalid_argument`. All work is enqueued on the caller's stream. The host waits
//! only where it must learn the number of unique ids: `unique_ids` copies it back and
//! synchronises the stream, `unique_ids_async` leaves it in device memory and does not.
//!
//! Needs nvcc (`--extended-lambda` is not required); host-only code uses `dedup.hpp`.

#if !defined(__CUDACC__)
#error "strata/kernels/dedup.cuh holds CUDA kernels and needs nvcc; host code uses dedup.hpp"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <bit>
#include <climits>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>

#include "strata/cuda/error.hpp"
#include "strata/detail/host_device.hpp"
#include "strata/kernels/dedup.hpp"

namespace strata::cuda {

//! The `end_bit` for ids in [0, max_id]: the radix sort then skips the bits above, one pass per
//! 7 or 8 bits saved (a table of a million rows needs 20 bits, not 32 or 64).
//!
//! \code
//! static_assert(strata::cuda::id_bits(0) == 1 && strata::cuda::id_bits(1) == 1);
//! static_assert(strata::cuda::id_bits(999'999) == 20 && strata::cuda::id_bits(1u << 20) == 21);
//! \endcode
constexpr int id_bits(std::uint64_t max_id) noexcept {
  return max_id == 0 ? 1 : static_cast<int>(std::bit_width(max_id));
}

//! Row elements the device's segmented sum adds: those of the host's (`segment_summable`), less
//! `long double`, which device code does not have.
//!
//! \code
//! static_assert(strata::cuda::device_summable<float> && strata::cuda::device_summable<int>);
//! static_assert(!strata::cuda::device_summable<long double>);
//! \endcode
template <class T>
concept device_summable = segment_summable<T> && !std::same_as<T, long double>;

}  // namespace strata::cuda

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

namespace strata::cuda {

//! Status API: de-duplicates the `n` ids at `d_ids`, as `strata::unique_ids` does, on `stream`.
//! Writes the ascending unique ids to `d_unique[0, m)`, the inverse map to `d_inverse[0, n)`,
//! the counts to `d_counts[0, n)` (zero past m), m to `*d_num_unique`, and the grouping that the
//! grouped `segmented_sum` reads: `d_order[0, n)`, the positions sorted stably by id, and
//! `d_offsets[0, n]`, where each unique id's positions start in `d_order` (n past m). All are
//! device pointers with room for n (n + 1 for `d_offsets`, 1 for `d_num_unique`); `d_unique`
//! and `d_counts` need room for n because m is not known in advance.
//!
//! CUB's protocol: with `d_temp_storage == nullptr` it only sets `temp_storage_bytes` (never to
//! 0) and returns; otherwise it needs that many bytes there. Nothing waits for the device.
//! `end_bit` limits the sort to the low bits: every id must then lie in [0, 2^end_bit), see
//! `id_bits`, or some id may be listed twice (the inverse map stays consistent). Returns
//! `cudaErrorInvalidValue` if `end_bit` is outside [1, bits of Id], n exceeds `INT_MAX` (the
//! limit of `cub::DeviceRunLengthEncode`) or `Index`, or the storage is too small.
//!
//! Steps and bytes moved (I = sizeof(Index), K = sizeof(Id)): iota (n I); radix sort of
//! (id, position) pairs, ceil(end_bit / 8) passes or so (each reads and writes n (K + I));
//! zero the counts (n I); run-length encode (reads n K, writes m (K + I)); exclusive scan of the
//! counts (n I in, n I out); scatter of the inverse map (reads n I order, writes n I at random,
//! log2 m cached reads each). Temporary storage: n (K + I) plus CUB's, about n (K + I) more.
//!
//! \code
//! #include <thrust/device_vector.h>
//! const std::vector<int> host{5, 2, 5};
//! thrust::device_vector<int> ids(host.begin(), host.end()), unique(3), inverse(3), counts(3);
//! thrust::device_vector<int> count(1), order(3), offsets(4);
//! auto p = [](auto& v) { return thrust::raw_pointer_cast(v.data()); };
//! std::size_t bytes = 0;
//! cudaStream_t stream = nullptr;
//! strata::cuda::unique_ids(nullptr, bytes, p(ids), 3, p(unique), p(inverse), p(counts), p(count),
//!                          p(order), p(offsets), stream);
//! thrust::device_vector<char> temp(bytes);
//! const cudaError_t status =
//!     strata::cuda::unique_ids(p(temp), bytes, p(ids), 3, p(unique), p(inverse), p(counts),
//!                              p(count), p(order), p(offsets), stream, strata::cuda::id_bits(5));
//! assert(status == cudaSuccess && count[0] == 2 && inverse[0] == 1 && unique[0] == 2);
//! \endcode
template <dedup_integer Id, dedup_integer Index>
cudaError_t unique_ids(void* d_temp_storage, std::size_t& temp_storage_bytes, const Id* d_ids,
                       std::size_t n, Id* d_unique, Index* d_inverse, Index* d_counts,
                       Index* d_num_unique, Index* d_order, Index* d_offsets, cudaStream_t stream,
                       int end_bit = static_cast<int>(CHAR_BIT * sizeof(Id))) {
  namespace agent = strata::detail::cuda::dedup;
  if (end_bit < 1 || end_bit > static_cast<int>(CHAR_BIT * sizeof(Id)) ||
      n > static_cast<std::size_t>(INT_MAX) || !agent::fits_index<Index>(n)) {
    return cudaErrorInvalidValue;
  }
  const int items = static_cast<int>(n);
  std::size_t cub_bytes = 0;
  if (n != 0) {
    // The three CUB calls run one after the other and share one scratch area.
    std::size_t bytes = 0;
    cudaError_t status = cub::DeviceRadixSort::SortPairs(
        nullptr, bytes, d_ids, static_cast<Id*>(nullptr), static_cast<const Index*>(nullptr),
        static_cast<Index*>(nullptr), items, 0, end_bit, stream);
    if (status != cudaSuccess) return status;
    cub_bytes = std::max(cub_bytes, bytes);
    status = cub::DeviceRunLengthEncode::Encode(nullptr, bytes, static_cast<const Id*>(nullptr),
                                                d_unique, d_counts, d_num_unique, items, stream);
    if (status != cudaSuccess) return status;
    cub_bytes = std::max(cub_bytes, bytes);
    status = cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const Index*>(nullptr),
                                           d_offsets, items, stream);
    if (status != cudaSuccess) return status;
    cub_bytes = std::max(cub_bytes, bytes);
  }
  const std::array<std::size_t, 3> sizes{n * sizeof(Id), n * sizeof(Index), cub_bytes};
  const std::size_t needed = agent::layout_bytes(sizes);
  if (d_temp_storage == nullptr) {
    temp_storage_bytes = needed;
    return cudaSuccess;
  }
  if (temp_storage_bytes < needed) return cudaErrorInvalidValue;

  if (n == 0) {
    cudaError_t status = cudaMemsetAsync(d_num_unique, 0, sizeof(Index), stream);
    if (status != cudaSuccess) return status;
    return cudaMemsetAsync(d_offsets, 0, sizeof(Index), stream);
  }
  const auto pieces = agent::carve(d_temp_storage, sizes);
  Id* keys = static_cast<Id*>(pieces[0]);
  Index* positions = static_cast<Index*>(pieces[1]);
  void* cub_temp = pieces[2];

  agent::iota_kernel<<<agent::grid_for(n), agent::block_threads, 0, stream>>>(positions, n);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  // Radix sort is stable and the values start in input order: ties keep input order.
  status = cub::DeviceRadixSort::SortPairs(cub_temp, cub_bytes, d_ids, keys,
                                           static_cast<const Index*>(positions), d_order, items,
                                           0, end_bit, stream);
  if (status != cudaSuccess) return status;
  // Zero counts past m make the scan below leave n in offsets[m..n): no host round trip for m.
  status = cudaMemsetAsync(d_counts, 0, n * sizeof(Index), stream);
  if (status != cudaSuccess) return status;
  status = cub::DeviceRunLengthEncode::Encode(cub_temp, cub_bytes, static_cast<const Id*>(keys),
                                              d_unique, d_counts, d_num_unique, items, stream);
  if (status != cudaSuccess) return status;
  status = cub::DeviceScan::ExclusiveSum(cub_temp, cub_bytes, static_cast<const Index*>(d_counts),
                                         d_offsets, items, stream);
  if (status != cudaSuccess) return status;
  agent::scatter_inverse_kernel<<<agent::grid_for(n), agent::block_threads, 0, stream>>>(
      static_cast<const Index*>(d_order), d_offsets, static_cast<const Index*>(d_num_unique), n,
      d_inverse);
  return cudaGetLastError();
}

//! Status API: sums gradient rows by the grouping that `unique_ids` wrote (`d_order`,
//! `d_offsets`, `*d_num_unique`, all still in device memory, so the count need not come back
//! to the host): row u of `d_sums` becomes the sum of the rows of `d_rows` (n rows of `width`)
//! whose id is unique id u, added in input order with the first row copied, bitwise as on the
//! host. `d_sums` needs room for m rows; rows past m are left alone. Needs no temporary
//! storage; one kernel, which reads each row once and writes m rows. Returns
//! `cudaErrorInvalidValue` if `width` is 0.
//!
//! \code
//! #include <thrust/device_vector.h>
//! // After strata::cuda::unique_ids(..., p(count), p(order), p(offsets), stream) on 3 ids:
//! thrust::device_vector<int> order(3), offsets(4), count(1);
//! thrust::device_vector<float> grads(3 * 8), sums(3 * 8);
//! auto p = [](auto& v) { return thrust::raw_pointer_cast(v.data()); };
//! const cudaError_t status = strata::cuda::segmented_sum(
//!     p(order), p(offsets), p(count), 3, p(grads), 8, p(sums), cudaStream_t{});
//! assert(status == cudaSuccess);
//! \endcode
template <device_summable T, dedup_integer Index>
cudaError_t segmented_sum(const Index* d_order, const Index* d_offsets, const Index* d_num_unique,
                          std::size_t n, const T* d_rows, std::size_t width, T* d_sums,
                          cudaStream_t stream) {
  namespace agent = strata::detail::cuda::dedup;
  if (width == 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  // Without the count the kernel would sum nothing and report success.
  if (d_order == nullptr || d_offsets == nullptr || d_num_unique == nullptr) {
    return cudaErrorInvalidValue;
  }
  const unsigned lanes = agent::lanes_for(width);
  // m is only on the device: launch for the most it can be (n) and let the loop stop at m.
  agent::sum_groups_kernel<<<agent::grid_for(n * lanes), agent::block_threads, 0, stream>>>(
      d_order, d_offsets, d_num_unique, 0, d_rows, width, d_sums, lanes);
  return cudaGetLastError();
}

//! Status API: sums gradient rows by an inverse map, as the `strata::segmented_sum` that takes
//! one: row u of `d_sums` (`num_sums` rows) becomes the sum of the rows i of `d_rows` with
//! `d_inverse[i] == u`, in input order with the first row copied, or zero if there are none.
//! Every `d_inverse[i]` must lie in [0, num_sums): the sort reads only the bits that range needs,
//! so other values make the sums unspecified (all accesses stay in bounds). CUB's temporary
//! storage protocol, as for `unique_ids`. Returns `cudaErrorInvalidValue` if `width` is 0, n
//! exceeds `INT_MAX` or `Index`, `num_sums` does not fit `Index`, or the storage is too small.
//!
//! Steps: iota (n I), radix sort of (group, position) over id_bits(num_sums - 1) bits, a binary
//! search of each group's start (num_sums + 1 searches of log2 n), then the sum kernel. Temporary
//! storage: 3 n I + (num_sums + 1) I plus CUB's.
//!
//! \code
//! #include <thrust/device_vector.h>
//! thrust::device_vector<int> inverse(std::vector<int>{1, 0, 1});
//! thrust::device_vector<double> grads(std::vector<double>{1, 2, 4}), sums(3);
//! auto p = [](auto& v) { return thrust::raw_pointer_cast(v.data()); };
//! std::size_t bytes = 0;
//! strata::cuda::segmented_sum(nullptr, bytes, p(inverse), 3, p(grads), 1, p(sums), 3,
//!                             cudaStream_t{});
//! thrust::device_vector<char> temp(bytes);
//! strata::cuda::segmented_sum(p(temp), bytes, p(inverse), 3, p(grads), 1, p(sums), 3,
//!                             cudaStream_t{});
//! assert(sums[0] == 2 && sums[1] == 5 && sums[2] == 0);
//! \endcode
template <device_summable T, dedup_integer Index>
cudaError_t segmented_sum(void* d_temp_storage, std::size_t& temp_storage_bytes,
                          const Index* d_inverse, std::size_t n, const T* d_rows,
                          std::size_t width, T* d_sums, std::size_t num_sums,
                          cudaStream_t stream) {
  namespace agent = strata::detail::cuda::dedup;
  if (width == 0 || n > static_cast<std::size_t>(INT_MAX) || !agent::fits_index<Index>(n) ||
      num_sums == std::numeric_limits<std::size_t>::max() ||
      !agent::fits_index<Index>(num_sums + 1)) {
    return cudaErrorInvalidValue;
  }
  const int items = static_cast<int>(n);
  const int end_bit = num_sums > 1 ? id_bits(num_sums - 1) : 1;
  std::size_t cub_bytes = 0;
  if (n != 0 && num_sums != 0) {
    const cudaError_t status = cub::DeviceRadixSort::SortPairs(
        nullptr, cub_bytes, d_inverse, static_cast<Index*>(nullptr),
        static_cast<const Index*>(nullptr), static_cast<Index*>(nullptr), items, 0, end_bit,
        stream);
    if (status != cudaSuccess) return status;
  }
  const std::array<std::size_t, 5> sizes{n * sizeof(Index), n * sizeof(Index), n * sizeof(Index),
                                         (num_sums + 1) * sizeof(Index), cub_bytes};
  const std::size_t needed = agent::layout_bytes(sizes);
  if (d_temp_storage == nullptr) {
    temp_storage_bytes = needed;
    return cudaSuccess;
  }
  if (temp_storage_bytes < needed) return cudaErrorInvalidValue;
  if (num_sums == 0) return cudaSuccess;
  if (n == 0) {
    // All-zero bytes are +0 for every arithmetic type.
    return cudaMemsetAsync(d_sums, 0, num_sums * width * sizeof(T), stream);
  }
  const auto pieces = agent::carve(d_temp_storage, sizes);
  Index* sorted = static_cast<Index*>(pieces[0]);
  Index* positions = static_cast<Index*>(pieces[1]);
  Index* order = static_cast<Index*>(pieces[2]);
  Index* offsets = static_cast<Index*>(pieces[3]);

  agent::iota_kernel<<<agent::grid_for(n), agent::block_threads, 0, stream>>>(positions, n);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  status = cub::DeviceRadixSort::SortPairs(pieces[4], cub_bytes, d_inverse, sorted,
                                           static_cast<const Index*>(positions), order, items, 0,
                                           end_bit, stream);
  if (status != cudaSuccess) return status;
  agent::group_offsets_kernel<<<agent::grid_for(num_sums + 1), agent::block_threads, 0,
                                stream>>>(static_cast<const Index*>(sorted), n, num_sums,
                                          offsets);
  status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const unsigned lanes = agent::lanes_for(width);
  agent::sum_groups_kernel<<<agent::grid_for(num_sums * lanes), agent::block_threads, 0,
                             stream>>>(static_cast<const Index*>(order),
                                       static_cast<const Index*>(offsets),
                                       static_cast<const Index*>(nullptr), num_sums, d_rows,
                                       width, d_sums, lanes);
  return cudaGetLastError();
}

}  // namespace strata::cuda

namespace strata::detail::cuda::dedup {

// Device memory that grows and never shrinks. Before a block is replaced, the stream that may
// still use it is drained, so growth (first calls only) is the one place a wrapper waits
// without being asked to.
class DeviceBlock {
 public:
  DeviceBlock() = default;
  DeviceBlock(const DeviceBlock&) = delete;
  DeviceBlock& operator=(const DeviceBlock&) = delete;
  DeviceBlock(DeviceBlock&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBlock& operator=(DeviceBlock&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  ~DeviceBlock() { release(); }

  void grow(std::size_t bytes, cudaStream_t in_use_on) {
    if (bytes <= bytes_) return;
    if (data_ != nullptr) {
      strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(in_use_on));
      release();
    }
    void* p = nullptr;
    strata::cuda_check("cudaMalloc", -1, cudaMalloc(&p, bytes));
    data_ = p;
    bytes_ = bytes;
  }

  [[nodiscard]] void* get() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return bytes_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) (void)cudaFree(data_);  // a destructor cannot report; nothing to redo
    data_ = nullptr;
    bytes_ = 0;
  }

  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// One pinned host value: the unique count comes back by an asynchronous copy into it.
template <class T>
class PinnedValue {
 public:
  PinnedValue() = default;
  PinnedValue(const PinnedValue&) = delete;
  PinnedValue& operator=(const PinnedValue&) = delete;
  PinnedValue(PinnedValue&& other) noexcept : data_(std::exchange(other.data_, nullptr)) {}
  PinnedValue& operator=(PinnedValue&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
    }
    return *this;
  }
  ~PinnedValue() { release(); }

  T* get() {
    if (data_ == nullptr) {
      void* p = nullptr;
      strata::cuda_check("cudaMallocHost", -1, cudaMallocHost(&p, sizeof(T)));
      data_ = static_cast<T*>(p);
    }
    return data_;
  }

 private:
  void release() noexcept {
    if (data_ != nullptr) (void)cudaFreeHost(data_);
    data_ = nullptr;
  }

  T* data_ = nullptr;
};

struct WorkspaceAccess;

}  // namespace strata::detail::cuda::dedup

namespace strata::cuda {

//! Owns the device memory of the CUB path: the temporary storage, the grouping of the last
//! batch (`order()`, `offsets()`) and its unique count (`device_unique_count()`), plus one
//! pinned value for the count's trip back. Buffers grow to the largest batch and never shrink,
//! so a loop allocates (and waits) only while its batches still grow; construct it with the
//! largest batch to allocate up front. One workspace per stream: calls on two streams at once
//! would share its buffers. Move-only.
//!
//! \code
//! strata::cuda::DedupWorkspace<std::int64_t> workspace(/*max_ids=*/1 << 20);
//! assert(workspace.batch_size() == 0 && !workspace.unique_count());
//! \endcode
template <dedup_integer Id, dedup_integer Index = std::int32_t>
class DedupWorkspace {
 public:
  using id_type = Id;
  using index_type = Index;

  DedupWorkspace() = default;
  //! Allocates for batches of up to `max_ids` ids (with the full `end_bit`) now, so that not
  //! even the first `unique_ids` allocates. Throws `std::invalid_argument` if `max_ids` exceeds
  //! `INT_MAX` or `Index`, `strata::cuda_error` if the memory cannot be had.
  explicit DedupWorkspace(std::size_t max_ids) { reserve(max_ids, cudaStream_t{}); }

  //! Grows the buffers for batches of up to `max_ids` ids; `stream` is where the workspace has
  //! been used, which is drained before a buffer is replaced.
  //! The last grouping is forgotten: a replaced buffer no longer holds it.
  void reserve(std::size_t max_ids, cudaStream_t stream) {
    check_batch("DedupWorkspace::reserve", max_ids);
    batch_size_ = 0;
    unique_count_.reset();
    std::size_t bytes = 0;
    cuda_check("strata::cuda::unique_ids", -1,
               strata::cuda::unique_ids<Id, Index>(nullptr, bytes, nullptr, max_ids, nullptr,
                                                   nullptr, nullptr, nullptr, nullptr, nullptr,
                                                   stream));
    temp_.grow(bytes, stream);
    order_.grow(max_ids * sizeof(Index), stream);
    offsets_.grow((max_ids + 1) * sizeof(Index), stream);
    count_.grow(sizeof(Index), stream);
  }

  //! The number of ids in the last batch given to `unique_ids` (0 before the first).
  [[nodiscard]] std::size_t batch_size() const noexcept { return batch_size_; }
  //! The last unique count, if the host has it: after `unique_ids`, not `unique_ids_async`.
  [[nodiscard]] std::optional<std::size_t> unique_count() const noexcept { return unique_count_; }
  //! The last unique count in device memory, for kernels that must not wait for the host.
  [[nodiscard]] const Index* device_unique_count() const noexcept {
    return static_cast<const Index*>(count_.get());
  }
  //! The last batch's positions, sorted stably by id (`batch_size()` of them, device memory).
  [[nodiscard]] const Index* order() const noexcept {
    return static_cast<const Index*>(order_.get());
  }
  //! Where each unique id's positions start in `order()` (`batch_size() + 1`, device memory).
  [[nodiscard]] const Index* offsets() const noexcept {
    return static_cast<const Index*>(offsets_.get());
  }

 private:
  friend struct strata::detail::cuda::dedup::WorkspaceAccess;

  static void check_batch(const char* operation, std::size_t n) {
    const auto limit = std::min<std::size_t>(static_cast<std::size_t>(INT_MAX),
                                             std::numeric_limits<Index>::max());
    if (n > limit) {
      throw std::invalid_argument(std::string("strata::cuda::") + operation + ": " +
                                  std::to_string(n) + " ids exceed the limit of " +
                                  std::to_string(limit) + " (INT_MAX for CUB, or the index type)");
    }
  }

  strata::detail::cuda::dedup::DeviceBlock temp_;
  strata::detail::cuda::dedup::DeviceBlock order_;
  strata::detail::cuda::dedup::DeviceBlock offsets_;
  strata::detail::cuda::dedup::DeviceBlock count_;
  strata::detail::cuda::dedup::PinnedValue<Index> host_count_;
  std::size_t batch_size_ = 0;
  std::optional<std::size_t> unique_count_;
};

}  // namespace strata::cuda

namespace strata::detail::cuda::dedup {

struct WorkspaceAccess {
  template <class W>
  static DeviceBlock& temp(W& w) noexcept { return w.temp_; }
  template <class W>
  static DeviceBlock& order(W& w) noexcept { return w.order_; }
  template <class W>
  static DeviceBlock& offsets(W& w) noexcept { return w.offsets_; }
  template <class W>
  static DeviceBlock& count(W& w) noexcept { return w.count_; }
  template <class W>
  static auto* host_count(W& w) { return w.host_count_.get(); }
  template <class W>
  static void set(W& w, std::size_t batch, std::optional<std::size_t> unique) noexcept {
    w.batch_size_ = batch;
    w.unique_count_ = unique;
  }
  template <class W>
  static void check_batch(const W&, const char* operation, std::size_t n) {
    W::check_batch(operation, n);
  }
};

[[noreturn]] inline void size_error(const char* operation, const std::string& what) {
  throw std::invalid_argument(std::string("strata::cuda::") + operation + ": " + what);
}

inline void check_rows(const char* operation, const char* name, std::size_t size,
                       std::size_t count, std::size_t width, const char* counted) {
  if (width == 0) size_error(operation, "the row width must be positive");
  if (size % width != 0 || size / width != count) {
    size_error(operation, std::string(name) + " holds " + std::to_string(size) +
                              " elements but " + std::to_string(count) + " " + counted +
                              " of width " + std::to_string(width) + " need " +
                              std::to_string(count) + " * " + std::to_string(width));
  }
}

}  // namespace strata::detail::cuda::dedup

namespace strata::cuda {

//! De-duplicates device ids on `stream` without waiting for it: as `unique_ids`, but the unique
//! count stays in device memory (`workspace.device_unique_count()`), for kernels and the grouped
//! `segmented_sum` to read there; `workspace.unique_count()` is empty until a `unique_ids` call.
//! The spans are device memory; `unique` and `counts` need room for every id, `inverse` one entry
//! per id, else `std::invalid_argument` (before anything is enqueued); CUDA failures throw
//! `strata::cuda_error`. See the status API for `end_bit`.
//!
//! \code
//! #include <thrust/device_vector.h>
//! strata::cuda::DedupWorkspace<int> workspace;
//! thrust::device_vector<int> ids(std::vector<int>{7, 7, 1}), unique(3), inverse(3), counts(3);
//! auto s = [](auto& v) { return std::span(thrust::raw_pointer_cast(v.data()), v.size()); };
//! cudaStream_t stream = nullptr;
//! strata::cuda::unique_ids_async(s(ids), s(unique), s(inverse), s(counts), workspace, stream);
//! // ... kernels that read workspace.device_unique_count() ...
//! \endcode
template <dedup_integer Id, dedup_integer Index>
void unique_ids_async(std::type_identity_t<std::span<const Id>> ids,
                      std::type_identity_t<std::span<Id>> unique,
                      std::type_identity_t<std::span<Index>> inverse,
                      std::type_identity_t<std::span<Index>> counts,
                      DedupWorkspace<Id, Index>& workspace, cudaStream_t stream,
                      int end_bit = static_cast<int>(CHAR_BIT * sizeof(Id))) {
  namespace agent = strata::detail::cuda::dedup;
  using Access = agent::WorkspaceAccess;
  const char* op = "unique_ids";
  const std::size_t n = ids.size();
  if (inverse.size() != n) {
    agent::size_error(op, "inverse holds " + std::to_string(inverse.size()) +
                              " entries but there are " + std::to_string(n) + " ids");
  }
  if (unique.size() < n) {
    agent::size_error(op, "unique has room for " + std::to_string(unique.size()) +
                              " ids but needs room for all " + std::to_string(n));
  }
  if (counts.size() < n) {
    agent::size_error(op, "counts has room for " + std::to_string(counts.size()) +
                              " ids but needs room for all " + std::to_string(n));
  }
  if (end_bit < 1 || end_bit > static_cast<int>(CHAR_BIT * sizeof(Id))) {
    agent::size_error(op, "end_bit " + std::to_string(end_bit) + " is outside [1, " +
                              std::to_string(CHAR_BIT * sizeof(Id)) + "]");
  }
  Access::check_batch(workspace, op, n);

  std::size_t bytes = 0;
  const auto run = [&](void* temp) {
    return strata::cuda::unique_ids<Id, Index>(
        temp, bytes, ids.data(), n, unique.data(), inverse.data(), counts.data(),
        static_cast<Index*>(Access::count(workspace).get()),
        static_cast<Index*>(Access::order(workspace).get()),
        static_cast<Index*>(Access::offsets(workspace).get()), stream, end_bit);
  };
  cuda_check("strata::cuda::unique_ids", -1, run(nullptr));
  // No valid grouping unless this call succeeds: a buffer replaced below (or a grow that throws
  // half-way) no longer holds the last one.
  Access::set(workspace, 0, std::nullopt);
  Access::temp(workspace).grow(bytes, stream);
  Access::order(workspace).grow(n * sizeof(Index), stream);
  Access::offsets(workspace).grow((n + 1) * sizeof(Index), stream);
  Access::count(workspace).grow(sizeof(Index), stream);
  cuda_check("strata::cuda::unique_ids", -1, run(Access::temp(workspace).get()));
  Access::set(workspace, n, std::nullopt);
}

//! De-duplicates device ids on `stream` and returns the unique count, which the host needs to
//! size the next step (the lookup, the message). That makes it the one call that waits: it
//! copies the count into pinned memory and synchronises `stream`. Otherwise as
//! `unique_ids_async`; afterwards `workspace.unique_count()` holds the count too.
//!
//! \code
//! #include <thrust/device_vector.h>
//! strata::cuda::DedupWorkspace<int> workspace;
//! thrust::device_vector<int> ids(std::vector<int>{7, 7, 1}), unique(3), inverse(3), counts(3);
//! auto s = [](auto& v) { return std::span(thrust::raw_pointer_cast(v.data()), v.size()); };
//! const std::size_t m =
//!     strata::cuda::unique_ids(s(ids), s(unique), s(inverse), s(counts), workspace, nullptr);
//! assert(m == 2 && unique[0] == 1 && inverse[0] == 1 && counts[1] == 2);
//! \endcode
template <dedup_integer Id, dedup_integer Index>
std::size_t unique_ids(std::type_identity_t<std::span<const Id>> ids,
                       std::type_identity_t<std::span<Id>> unique,
                       std::type_identity_t<std::span<Index>> inverse,
                       std::type_identity_t<std::span<Index>> counts,
                       DedupWorkspace<Id, Index>& workspace, cudaStream_t stream,
                       int end_bit = static_cast<int>(CHAR_BIT * sizeof(Id))) {
  namespace agent = strata::detail::cuda::dedup;
  using Access = agent::WorkspaceAccess;
  strata::cuda::unique_ids_async<Id, Index>(ids, unique, inverse, counts, workspace, stream,
                                            end_bit);
  Index* host = Access::host_count(workspace);
  cuda_check("cudaMemcpyAsync", -1,
             cudaMemcpyAsync(host, workspace.device_unique_count(), sizeof(Index),
                             cudaMemcpyDeviceToHost, stream));
  cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(stream));
  const auto m = static_cast<std::size_t>(*host);
  Access::set(workspace, ids.size(), m);
  return m;
}

//! Sums gradient rows on `stream` by the grouping of the last `unique_ids` (or
//! `unique_ids_async`) on `workspace`, with no sort and no wait: `rows` (device memory) holds one
//! row of `width` per id of that batch, and row u of `sums` becomes the sum of the rows of
//! unique id u, added in input order, bitwise as `strata::segmented_sum` on the host. Rows of
//! `sums` past the unique count are left alone. Throws `std::invalid_argument` unless
//! `width > 0`, `rows` has `batch_size() * width` elements and `sums` room for the unique count
//! of rows (`batch_size()` rows while the host does not know it); `strata::cuda_error` on CUDA
//! failures.
//!
//! \code
//! #include <thrust/device_vector.h>
//! strata::cuda::DedupWorkspace<int> workspace;
//! thrust::device_vector<int> ids(std::vector<int>{7, 7, 1}), unique(3), inverse(3), counts(3);
//! thrust::device_vector<float> grads(std::vector<float>{1, 2, 4}), sums(3);
//! auto s = [](auto& v) { return std::span(thrust::raw_pointer_cast(v.data()), v.size()); };
//! strata::cuda::unique_ids_async(s(ids), s(unique), s(inverse), s(counts), workspace, nullptr);
//! strata::cuda::segmented_sum(workspace, s(grads), 1, s(sums), nullptr);
//! assert(sums[0] == 4 && sums[1] == 3);  // ids 1 and 7
//! \endcode
template <device_summable T, dedup_integer Id, dedup_integer Index>
void segmented_sum(const DedupWorkspace<Id, Index>& workspace,
                   std::type_identity_t<std::span<const T>> rows, std::size_t width,
                   std::span<T> sums, cudaStream_t stream) {
  namespace agent = strata::detail::cuda::dedup;
  const char* op = "segmented_sum";
  const std::size_t n = workspace.batch_size();
  agent::check_rows(op, "rows", rows.size(), n, width, "ids");
  const std::size_t m = workspace.unique_count().value_or(n);
  if (sums.size() / width < m) {
    agent::size_error(op, "sums has room for " + std::to_string(sums.size() / width) +
                              " rows of width " + std::to_string(width) + " but needs " +
                              std::to_string(m) +
                              (workspace.unique_count() ? " (the unique count)"
                                                        : " (the batch size: the unique count "
                                                          "is still on the device)"));
  }
  cuda_check("strata::cuda::segmented_sum", -1,
             strata::cuda::segmented_sum<T, Index>(workspace.order(), workspace.offsets(),
                                                   workspace.device_unique_count(), n,
                                                   rows.data(), width, sums.data(), stream));
}

//! Sums gradient rows on `stream` by an inverse map (device memory) into `sums.size() / width`
//! rows, as the status API of that form: every `inverse[i]` must lie in [0, that many rows).
//! Uses the workspace's temporary storage and leaves its grouping alone. Throws
//! `std::invalid_argument` unless `width > 0`, `rows` has `inverse.size() * width` elements and
//! `sums` a whole number of rows, and the counts fit; `strata::cuda_error` on CUDA failures.
//!
//! \code
//! #include <thrust/device_vector.h>
//! strata::cuda::DedupWorkspace<int> workspace;
//! thrust::device_vector<int> inverse(std::vector<int>{1, 0, 1});
//! thrust::device_vector<double> grads(std::vector<double>{1, 2, 4}), sums(3);
//! auto s = [](auto& v) { return std::span(thrust::raw_pointer_cast(v.data()), v.size()); };
//! strata::cuda::segmented_sum(s(inverse), s(grads), 1, s(sums), workspace, nullptr);
//! assert(sums[0] == 2 && sums[1] == 5 && sums[2] == 0);
//! \endcode
template <device_summable T, dedup_integer Id, dedup_integer Index>
void segmented_sum(std::type_identity_t<std::span<const Index>> inverse,
                   std::type_identity_t<std::span<const T>> rows, std::size_t width,
                   std::span<T> sums, DedupWorkspace<Id, Index>& workspace, cudaStream_t stream) {
  namespace agent = strata::detail::cuda::dedup;
  using Access = agent::WorkspaceAccess;
  const char* op = "segmented_sum";
  const std::size_t n = inverse.size();
  agent::check_rows(op, "rows", rows.size(), n, width, "inverse entries");
  if (sums.size() % width != 0) {
    agent::size_error(op, "sums holds " + std::to_string(sums.size()) +
                              " elements, not a whole number of rows of width " +
                              std::to_string(width));
  }
  const std::size_t m = sums.size() / width;
  Access::check_batch(workspace, op, n);
  Access::check_batch(workspace, op, m + 1);
  std::size_t bytes = 0;
  const auto run = [&](void* temp) {
    return strata::cuda::segmented_sum<T, Index>(temp, bytes, inverse.data(), n, rows.data(),
                                                 width, sums.data(), m, stream);
  };
  cuda_check("strata::cuda::segmented_sum", -1, run(nullptr));
  Access::temp(workspace).grow(bytes, stream);
  cuda_check("strata::cuda::segmented_sum", -1, run(Access::temp(workspace).get()));
}

}  // namespace strata::cuda
