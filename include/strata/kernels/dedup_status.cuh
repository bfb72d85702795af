#pragma once
//! \file
//! The status API of the device de-duplication (target `strata::cuda`, nvcc), CUB's layer: the
//! functions take raw device pointers, enqueue their work on the caller's stream, return a
//! `cudaError_t`, never throw and allocate nothing. Their scratch is one block of temporary
//! storage whose size a first call with a null `d_temp_storage` reports. Results equal those of
//! the Thrust path of `strata/kernels/dedup.hpp` exactly: the same unique ids, inverse map and
//! counts, and bitwise the same sums, because each id's rows are added in input order.
//! `strata/kernels/dedup.cuh` adds the workspace that owns the storage and throwing wrappers.

#if !defined(__CUDACC__)
#error "strata/kernels/dedup_status.cuh holds CUDA kernels and needs nvcc; host code uses dedup.hpp"
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

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>

#include "strata/kernels/dedup.hpp"
#include "strata/kernels/detail/dedup_kernels.cuh"

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
                                           static_cast<const Index*>(positions), d_order, items, 0,
                                           end_bit, stream);
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
//! thrust::device_vector<long> ids(std::vector<long>{9, 4, 9});
//! thrust::device_vector<long> unique(3);
//! thrust::device_vector<int> inverse(3), counts(3), count(1), order(3), offsets(4);
//! thrust::device_vector<float> grads(std::vector<float>{1, 10, 2, 20, 4, 40}), sums(2 * 2);
//! auto p = [](auto& v) { return thrust::raw_pointer_cast(v.data()); };
//! const cudaStream_t stream = nullptr;
//! std::size_t bytes = 0;
//! strata::cuda::unique_ids(nullptr, bytes, p(ids), 3, p(unique), p(inverse), p(counts), p(count),
//!                          p(order), p(offsets), stream);
//! thrust::device_vector<char> temp(bytes);
//! strata::cuda::unique_ids(p(temp), bytes, p(ids), 3, p(unique), p(inverse), p(counts), p(count),
//!                          p(order), p(offsets), stream);
//! // Rows of width 2; the unique count stays on the device.
//! const cudaError_t status = strata::cuda::segmented_sum(p(order), p(offsets), p(count), 3,
//!                                                        p(grads), 2, p(sums), stream);
//! assert(status == cudaSuccess);
//! assert(sums[0] == 2 && sums[1] == 20 && sums[2] == 5 && sums[3] == 50);  // ids 4 and 9
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
                          const Index* d_inverse, std::size_t n, const T* d_rows, std::size_t width,
                          T* d_sums, std::size_t num_sums, cudaStream_t stream) {
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
    const cudaError_t status =
        cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, d_inverse, static_cast<Index*>(nullptr),
                                        static_cast<const Index*>(nullptr),
                                        static_cast<Index*>(nullptr), items, 0, end_bit, stream);
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
  agent::group_offsets_kernel<<<agent::grid_for(num_sums + 1), agent::block_threads, 0, stream>>>(
      static_cast<const Index*>(sorted), n, num_sums, offsets);
  status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const unsigned lanes = agent::lanes_for(width);
  agent::sum_groups_kernel<<<agent::grid_for(num_sums * lanes), agent::block_threads, 0, stream>>>(
      static_cast<const Index*>(order), static_cast<const Index*>(offsets),
      static_cast<const Index*>(nullptr), num_sums, d_rows, width, d_sums, lanes);
  return cudaGetLastError();
}

}  // namespace strata::cuda
