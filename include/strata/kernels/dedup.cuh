#pragma once
//! \file
//! The de-duplication kernels of `dedup.hpp` for the device, built from CUB (target
//! `strata::cuda`, nvcc): a radix sort of (id, position) pairs, a run-length encoding into unique
//! ids and counts, a scan of the counts into run offsets, a scatter of the inverse map, and a
//! row-wise segmented sum. Results equal the Thrust path's exactly: the same unique ids, inverse
//! map and counts, and bitwise the same sums, because each id's rows are added in the same
//! (input) order.
//!
//! Two layers, as in CUB and as for the fused kernels of `multi_tensor.cuh`: the status API
//! `strata::cuda::unique_ids` and `strata::cuda::segmented_sum` (`dedup_status.cuh`) returns a
//! `cudaError_t` and never throws; `strata::device_unique_ids`, `device_unique_ids_async` and
//! `device_segmented_sum` (here) take spans and a `DeviceDedupWorkspace`
//! (`dedup_workspace.cuh`), and throw `std::invalid_argument` for bad sizes, before anything is
//! enqueued, and `strata::cuda_error` for CUDA failures. All work is enqueued on the caller's
//! stream. The host waits only where it must learn the number of unique ids:
//! `device_unique_ids` copies it back and synchronises the stream, `device_unique_ids_async`
//! leaves it in device memory and does not.
//!
//! Needs nvcc, and no extended lambdas (`--extended-lambda`); host-only code uses `dedup.hpp`.

#if !defined(__CUDACC__)
#error "strata/kernels/dedup.cuh holds CUDA kernels and needs nvcc; host code uses dedup.hpp"
#endif

#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <type_traits>

#include "strata/cuda/error.hpp"
#include "strata/kernels/dedup.hpp"
#include "strata/kernels/dedup_status.cuh"
#include "strata/kernels/dedup_workspace.cuh"

namespace strata {

namespace detail {

// The body of device_unique_ids and device_unique_ids_async; `operation` names the caller.
template <class Id, class Index>
void enqueue_device_unique_ids(const char* operation, std::span<const Id> ids, std::span<Id> unique,
                               std::span<Index> inverse, std::span<Index> counts,
                               DeviceDedupWorkspace<Id, Index>& workspace, cudaStream_t stream,
                               int end_bit) {
  using Access = DeviceDedupAccess;
  const std::size_t n = ids.size();
  check_dedup_outputs(operation, n, unique.size(), inverse.size(), counts.size());
  if (end_bit < 1 || end_bit > static_cast<int>(CHAR_BIT * sizeof(Id))) {
    dedup_size_error(operation, "end_bit " + std::to_string(end_bit) + " is outside [1, " +
                                    std::to_string(CHAR_BIT * sizeof(Id)) + "]");
  }
  Access::check_batch(workspace, operation, n);

  std::size_t bytes = 0;
  const auto run = [&](void* temp) {
    return strata::cuda::unique_ids<Id, Index>(temp, bytes, ids.data(), n, unique.data(),
                                               inverse.data(), counts.data(),
                                               Access::count(workspace), Access::order(workspace),
                                               Access::offsets(workspace), stream, end_bit);
  };
  cuda_check("strata::cuda::unique_ids", -1, run(nullptr));
  // No grouping unless this call succeeds: a buffer replaced below (or a growth that throws
  // half-way) no longer holds the last one.
  Access::forget(workspace);
  Access::grow_for(workspace, bytes, n, stream);
  cuda_check("strata::cuda::unique_ids", -1, run(Access::temp(workspace).data()));
  Access::set(workspace, n, std::nullopt);
}

}  // namespace detail

//! De-duplicates device ids on `stream` without waiting for it: as `device_unique_ids`, but the
//! unique count stays in device memory (`workspace.device_unique_count()`), for kernels and the
//! grouped `device_segmented_sum` to read there; `workspace.unique_count()` is empty until a
//! `device_unique_ids` call. The spans are device memory; `unique` and `counts` need room for
//! every id, `inverse` one entry per id, else `std::invalid_argument` (before anything is
//! enqueued); CUDA failures throw `strata::cuda_error`. See the status API for `end_bit`.
//!
//! \code
//! #include <thrust/device_vector.h>
//! strata::DeviceDedupWorkspace<int> workspace;
//! thrust::device_vector<int> ids(std::vector<int>{7, 7, 1}), unique(3), inverse(3), counts(3);
//! auto s = [](auto& v) { return std::span(thrust::raw_pointer_cast(v.data()), v.size()); };
//! const cudaStream_t stream = nullptr;
//! strata::device_unique_ids_async(s(ids), s(unique), s(inverse), s(counts), workspace, stream);
//! assert(workspace.batch_size() == 3 && !workspace.unique_count());
//! // Kernels on `stream` read the count there; here the host fetches it once to look.
//! int m = 0;
//! cudaMemcpyAsync(&m, workspace.device_unique_count(), sizeof m, cudaMemcpyDeviceToHost, stream);
//! cudaStreamSynchronize(stream);
//! assert(m == 2 && unique[0] == 1 && unique[1] == 7);
//! \endcode
template <dedup_integer Id, dedup_integer Index>
void device_unique_ids_async(std::type_identity_t<std::span<const Id>> ids,
                             std::type_identity_t<std::span<Id>> unique,
                             std::type_identity_t<std::span<Index>> inverse,
                             std::type_identity_t<std::span<Index>> counts,
                             DeviceDedupWorkspace<Id, Index>& workspace, cudaStream_t stream,
                             int end_bit = static_cast<int>(CHAR_BIT * sizeof(Id))) {
  detail::enqueue_device_unique_ids<Id, Index>("device_unique_ids_async", ids, unique, inverse,
                                               counts, workspace, stream, end_bit);
}

//! De-duplicates device ids on `stream`, as `strata::unique_ids` does on the host, and returns
//! the unique count, which the host needs to size the next step (the lookup, the message). That
//! makes it the one call that waits: it copies the count into pinned memory and synchronises
//! `stream`. Otherwise as `device_unique_ids_async`; afterwards `workspace.unique_count()` holds
//! the count too.
//!
//! \code
//! #include <thrust/device_vector.h>
//! strata::DeviceDedupWorkspace<int> workspace;
//! thrust::device_vector<int> ids(std::vector<int>{7, 7, 1}), unique(3), inverse(3), counts(3);
//! auto s = [](auto& v) { return std::span(thrust::raw_pointer_cast(v.data()), v.size()); };
//! const std::size_t m =
//!     strata::device_unique_ids(s(ids), s(unique), s(inverse), s(counts), workspace, nullptr);
//! assert(m == 2 && workspace.unique_count() == 2);
//! assert(unique[0] == 1 && inverse[0] == 1 && counts[1] == 2);
//! \endcode
template <dedup_integer Id, dedup_integer Index>
std::size_t device_unique_ids(std::type_identity_t<std::span<const Id>> ids,
                              std::type_identity_t<std::span<Id>> unique,
                              std::type_identity_t<std::span<Index>> inverse,
                              std::type_identity_t<std::span<Index>> counts,
                              DeviceDedupWorkspace<Id, Index>& workspace, cudaStream_t stream,
                              int end_bit = static_cast<int>(CHAR_BIT * sizeof(Id))) {
  using Access = detail::DeviceDedupAccess;
  detail::enqueue_device_unique_ids<Id, Index>("device_unique_ids", ids, unique, inverse, counts,
                                               workspace, stream, end_bit);
  Index* host = Access::host_count(workspace);
  cuda_check("cudaMemcpyAsync", -1,
             cudaMemcpyAsync(host, workspace.device_unique_count(), sizeof(Index),
                             cudaMemcpyDeviceToHost, stream));
  cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(stream));
  const auto m = static_cast<std::size_t>(*host);
  Access::set(workspace, ids.size(), m);
  return m;
}

//! Sums gradient rows on `stream` by the grouping of the last `device_unique_ids` (or
//! `device_unique_ids_async`) on `workspace`, with no sort and no wait: `rows` (device memory)
//! holds one row of `width` per id of that batch, and row u of `sums` becomes the sum of the rows
//! of unique id u, added in input order, bitwise as `strata::segmented_sum` on the host. Rows of
//! `sums` past the unique count are left alone. Throws `std::invalid_argument` unless
//! `width > 0`, `rows` has `batch_size() * width` elements and `sums` room for the unique count
//! of rows (`batch_size()` rows while the host does not know it); `strata::cuda_error` on CUDA
//! failures.
//!
//! \code
//! #include <thrust/device_vector.h>
//! strata::DeviceDedupWorkspace<int> workspace;
//! thrust::device_vector<int> ids(std::vector<int>{7, 7, 1}), unique(3), inverse(3), counts(3);
//! thrust::device_vector<float> grads(std::vector<float>{1, 2, 4}), sums(3);
//! auto s = [](auto& v) { return std::span(thrust::raw_pointer_cast(v.data()), v.size()); };
//! strata::device_unique_ids_async(s(ids), s(unique), s(inverse), s(counts), workspace, nullptr);
//! strata::device_segmented_sum(workspace, s(grads), 1, s(sums), nullptr);
//! assert(sums[0] == 4 && sums[1] == 3);  // ids 1 and 7
//! \endcode
template <cuda::device_summable T, dedup_integer Id, dedup_integer Index>
void device_segmented_sum(const DeviceDedupWorkspace<Id, Index>& workspace,
                          std::type_identity_t<std::span<const T>> rows, std::size_t width,
                          std::span<T> sums, cudaStream_t stream) {
  const char* op = "device_segmented_sum";
  const std::size_t n = workspace.batch_size();
  detail::check_width(op, width);
  detail::check_rows(op, "rows", rows.size(), n, width, "ids");
  const std::size_t m = workspace.unique_count().value_or(n);
  if (sums.size() / width < m) {
    detail::dedup_size_error(
        op, "sums has room for " + std::to_string(sums.size() / width) + " rows of width " +
                std::to_string(width) + " but needs " + std::to_string(m) +
                (workspace.unique_count() ? " (the unique count)"
                                          : " (the batch size: the unique count is still on the "
                                            "device)"));
  }
  cuda_check("strata::cuda::segmented_sum", -1,
             cuda::segmented_sum<T, Index>(workspace.order(), workspace.offsets(),
                                           workspace.device_unique_count(), n, rows.data(), width,
                                           sums.data(), stream));
}

//! Sums gradient rows on `stream` by an inverse map (device memory) into `sums.size() / width`
//! rows, as the status API of that form: every `inverse[i]` must lie in [0, that many rows).
//! Uses the workspace's temporary storage and leaves its grouping alone. Throws
//! `std::invalid_argument` unless `width > 0`, `rows` has `inverse.size() * width` elements and
//! `sums` a whole number of rows, and the counts fit; `strata::cuda_error` on CUDA failures.
//!
//! \code
//! #include <thrust/device_vector.h>
//! strata::DeviceDedupWorkspace<int> workspace;
//! thrust::device_vector<int> inverse(std::vector<int>{1, 0, 1});
//! thrust::device_vector<double> grads(std::vector<double>{1, 2, 4}), sums(3);
//! auto s = [](auto& v) { return std::span(thrust::raw_pointer_cast(v.data()), v.size()); };
//! strata::device_segmented_sum(s(inverse), s(grads), 1, s(sums), workspace, nullptr);
//! assert(sums[0] == 2 && sums[1] == 5 && sums[2] == 0);
//! \endcode
template <cuda::device_summable T, dedup_integer Id, dedup_integer Index>
void device_segmented_sum(std::type_identity_t<std::span<const Index>> inverse,
                          std::type_identity_t<std::span<const T>> rows, std::size_t width,
                          std::span<T> sums, DeviceDedupWorkspace<Id, Index>& workspace,
                          cudaStream_t stream) {
  using Access = detail::DeviceDedupAccess;
  const char* op = "device_segmented_sum";
  const std::size_t n = inverse.size();
  detail::check_width(op, width);
  detail::check_rows(op, "rows", rows.size(), n, width, "inverse entries");
  if (sums.size() % width != 0) {
    detail::dedup_size_error(op, "sums holds " + std::to_string(sums.size()) +
                                     " elements, not a whole number of rows of width " +
                                     std::to_string(width));
  }
  const std::size_t m = sums.size() / width;
  Access::check_batch(workspace, op, n);
  Access::check_batch(workspace, op, m + 1);
  std::size_t bytes = 0;
  const auto run = [&](void* temp) {
    return cuda::segmented_sum<T, Index>(temp, bytes, inverse.data(), n, rows.data(), width,
                                         sums.data(), m, stream);
  };
  cuda_check("strata::cuda::segmented_sum", -1, run(nullptr));
  Access::grow_temp(workspace, bytes, stream);
  cuda_check("strata::cuda::segmented_sum", -1, run(Access::temp(workspace).data()));
}

}  // namespace strata
