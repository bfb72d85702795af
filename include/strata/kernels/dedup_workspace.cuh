#pragma once
//! \file
//! `strata::DeviceDedupWorkspace`: the device memory of the CUB de-duplication path (target
//! `strata::cuda`, nvcc), kept from call to call. The throwing functions that use it are in
//! `strata/kernels/dedup.cuh`; the status API it sizes itself by in
//! `strata/kernels/dedup_status.cuh`.

#if !defined(__CUDACC__)
#error "strata/kernels/dedup_workspace.cuh needs nvcc; host code uses dedup.hpp"
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "strata/cuda/device_buffer.hpp"
#include "strata/cuda/error.hpp"
#include "strata/kernels/dedup.hpp"
#include "strata/kernels/dedup_status.cuh"

namespace strata {

namespace detail {
struct DeviceDedupAccess;
}  // namespace detail

//! The device counterpart of `DedupWorkspace`, for the CUB kernels on a stream: it owns their
//! temporary storage, the grouping of the last batch (`order()`, `offsets()`) and its unique count
//! in device memory (`device_unique_count()`), plus one pinned host value for the count's trip
//! back. `batch_size()` and `unique_count()` mean what they mean on the host, except that the
//! host does not know the unique count after `device_unique_ids_async`. Buffers grow to the
//! largest batch and never shrink, so a loop allocates (and waits) only while its batches still
//! grow; construct it with the largest batch to allocate up front. One workspace per stream:
//! calls on two streams at once would share its buffers. Move-only.
//!
//! \code
//! strata::DeviceDedupWorkspace<std::int64_t> workspace(/*max_ids=*/1 << 20);
//! assert(workspace.batch_size() == 0 && workspace.unique_count() == 0);
//! assert(workspace.order() != nullptr && workspace.device_unique_count() != nullptr);
//! \endcode
template <dedup_integer Id, dedup_integer Index = std::int32_t>
class DeviceDedupWorkspace {
 public:
  using id_type = Id;
  using index_type = Index;

  DeviceDedupWorkspace() = default;
  //! Allocates for batches of up to `max_ids` ids (with the full `end_bit`) now, so that not
  //! even the first `device_unique_ids` allocates. Throws `std::invalid_argument` if `max_ids`
  //! exceeds `INT_MAX` or `Index`, `strata::cuda_error` if the memory cannot be had.
  explicit DeviceDedupWorkspace(std::size_t max_ids) { reserve(max_ids, cudaStream_t{}); }

  //! Grows the buffers for batches of up to `max_ids` ids; `stream` is where the workspace has
  //! been used, which is drained before a buffer is replaced. The last grouping is forgotten
  //! (the batch size and unique count become 0): a replaced buffer no longer holds it.
  //!
  //! \code
  //! strata::DeviceDedupWorkspace<int> workspace;
  //! workspace.reserve(4096, cudaStream_t{});
  //! assert(workspace.batch_size() == 0 && workspace.offsets() != nullptr);
  //! \endcode
  void reserve(std::size_t max_ids, cudaStream_t stream) {
    check_batch("DeviceDedupWorkspace::reserve", max_ids);
    forget();
    std::size_t bytes = 0;
    cuda_check(
        "strata::cuda::unique_ids", -1,
        strata::cuda::unique_ids<Id, Index>(nullptr, bytes, nullptr, max_ids, nullptr, nullptr,
                                            nullptr, nullptr, nullptr, nullptr, stream));
    grow(temp_, bytes, stream);
    grow(order_, max_ids, stream);
    grow(offsets_, max_ids + 1, stream);
    grow(count_, 1, stream);
  }

  //! The number of ids in the last batch given to `device_unique_ids` (0 before the first).
  [[nodiscard]] std::size_t batch_size() const noexcept { return batch_size_; }
  //! The number of unique ids in that batch, when the host knows it: after `device_unique_ids`
  //! (0 before the first batch), not after `device_unique_ids_async`.
  [[nodiscard]] std::optional<std::size_t> unique_count() const noexcept { return unique_count_; }
  //! The last unique count in device memory, for kernels that must not wait for the host.
  [[nodiscard]] const Index* device_unique_count() const noexcept { return count_.data(); }
  //! The last batch's positions, sorted stably by id (`batch_size()` of them, device memory).
  [[nodiscard]] const Index* order() const noexcept { return order_.data(); }
  //! Where each unique id's positions start in `order()` (`batch_size() + 1`, device memory).
  [[nodiscard]] const Index* offsets() const noexcept { return offsets_.data(); }

 private:
  friend struct detail::DeviceDedupAccess;

  static void check_batch(const char* operation, std::size_t n) {
    const auto limit =
        std::min<std::size_t>(static_cast<std::size_t>(INT_MAX), std::numeric_limits<Index>::max());
    if (n > limit) {
      throw std::invalid_argument(std::string(operation) + ": " + std::to_string(n) +
                                  " ids exceed the limit of " + std::to_string(limit) +
                                  " (INT_MAX for CUB, or the index type)");
    }
  }

  // At least `n` elements. Work still enqueued on `in_use_on` may read the old allocation, so
  // that stream is drained before it is freed: growth (first calls only) is the one place a
  // call waits without being asked to.
  template <class T>
  static void grow(DeviceBuffer<T>& buffer, std::size_t n, cudaStream_t in_use_on) {
    if (n <= buffer.size()) return;
    if (!buffer.empty()) {
      cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(in_use_on));
    }
    buffer.reserve(n);
  }

  // No grouping: the state before the first batch, and while buffers may be replaced.
  void forget() noexcept {
    batch_size_ = 0;
    unique_count_ = 0;
  }

  DeviceBuffer<std::byte> temp_;
  DeviceBuffer<Index> order_;
  DeviceBuffer<Index> offsets_;
  DeviceBuffer<Index> count_;
  // The unique count comes back by an asynchronous copy into pinned memory, allocated on first
  // use.
  PinnedBuffer<Index> host_count_;
  std::size_t batch_size_ = 0;
  std::optional<std::size_t> unique_count_ = 0;
};

namespace detail {

// The throwing functions' view of a workspace's buffers (strata/kernels/dedup.cuh).
struct DeviceDedupAccess {
  template <class W>
  static auto& temp(W& w) noexcept {
    return w.temp_;
  }
  template <class W>
  static auto* order(W& w) noexcept {
    return w.order_.data();
  }
  template <class W>
  static auto* offsets(W& w) noexcept {
    return w.offsets_.data();
  }
  template <class W>
  static auto* count(W& w) noexcept {
    return w.count_.data();
  }
  template <class W>
  static auto* host_count(W& w) {
    w.host_count_.reserve(1);
    return w.host_count_.data();
  }
  template <class W>
  static void forget(W& w) noexcept {
    w.forget();
  }
  template <class W>
  static void set(W& w, std::size_t batch, std::optional<std::size_t> unique) noexcept {
    w.batch_size_ = batch;
    w.unique_count_ = unique;
  }
  template <class W>
  static void check_batch(const W&, const char* operation, std::size_t n) {
    W::check_batch(operation, n);
  }
  // Grows every buffer a batch of `n` ids needs, `temp_bytes` of temporary storage included.
  template <class W>
  static void grow_for(W& w, std::size_t temp_bytes, std::size_t n, cudaStream_t stream) {
    W::grow(w.temp_, temp_bytes, stream);
    W::grow(w.order_, n, stream);
    W::grow(w.offsets_, n + 1, stream);
    W::grow(w.count_, 1, stream);
  }
  template <class W>
  static void grow_temp(W& w, std::size_t temp_bytes, cudaStream_t stream) {
    W::grow(w.temp_, temp_bytes, stream);
  }
};

}  // namespace detail

}  // namespace strata
