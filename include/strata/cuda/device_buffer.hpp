#pragma once
//! \file
//! `strata::DeviceBuffer` and `strata::PinnedBuffer`: the owners of device memory and of
//! page-locked host memory in strata (target `strata::cuda`). Host code: it builds with g++; the
//! memory comes from a `cuda_runtime_policy`.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>

#include "strata/cuda/runtime.hpp"

namespace strata {

//! Where a `CudaBuffer` allocates: device memory, or page-locked host memory (the only host
//! memory a device-to-host copy can fill without the host waiting for it).
enum class MemoryKind { device, pinned_host };

//! `n` elements of `T` in device memory (or pinned host memory, per `Kind`), allocated and freed
//! through `Runtime` (the CUDA runtime, or a host double in tests). Movable, not copyable. The contents are uninitialised and are not
//! kept when the buffer is reallocated: callers make sure that no work still enqueued on a stream
//! uses the old allocation before they grow or free it. Freeing never throws (a failure of
//! `free` in a destructor has nobody to report to and nothing left to undo).
//!
//! \code
//! if (strata::cuda_device_present()) {
//!   strata::DeviceBuffer<float> buf(1024);
//!   assert(buf.size() == 1024 && buf.data() != nullptr);
//!   buf.reserve(512);   // large enough already: nothing happens
//!   assert(buf.size() == 1024);
//!   buf.reset();
//!   assert(buf.empty());
//! }
//! \endcode
template <class T, cuda_runtime_policy Runtime, MemoryKind Kind>
class CudaBuffer {
 public:
  using value_type = T;
  using runtime_type = Runtime;

  CudaBuffer() noexcept = default;
  //! Allocates `n` elements; `rank` only names the rank in an error.
  explicit CudaBuffer(std::size_t n, int rank = -1) { allocate(n, rank); }

  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  CudaBuffer(CudaBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  CudaBuffer& operator=(CudaBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~CudaBuffer() { reset(); }

  //! Frees the allocation; the buffer is then empty.
  void reset() noexcept {
    if (data_ != nullptr) {
      (void)(Kind == MemoryKind::device ? Runtime::free(data_) : Runtime::free_host(data_));
    }
    data_ = nullptr;
    size_ = 0;
  }

  //! Exactly `n` elements: reallocates when the size differs, frees when `n` is 0.
  void resize(std::size_t n, int rank = -1) {
    if (n == size_) return;
    reset();
    allocate(n, rank);
  }

  //! At least `n` elements: reallocates only when the buffer is smaller, so that a loop whose
  //! sizes stop growing stops allocating.
  void reserve(std::size_t n, int rank = -1) {
    if (n <= size_) return;
    reset();
    allocate(n, rank);
  }

  [[nodiscard]] T* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t size_bytes() const noexcept { return size_ * sizeof(T); }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] std::span<T> span() const noexcept { return {data_, size_}; }

 private:
  void allocate(std::size_t n, int rank) {
    if (n == 0) return;
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) {
      throw std::invalid_argument(
          std::string(Kind == MemoryKind::device ? "CudaBuffer" : "PinnedBuffer") + ": " +
          std::to_string(n) + " elements of " + std::to_string(sizeof(T)) +
          " bytes exceed the address space");
    }
    void* p = nullptr;
    if constexpr (Kind == MemoryKind::device) {
      Runtime::check("cudaMalloc", rank, Runtime::malloc(&p, n * sizeof(T)));
    } else {
      Runtime::check("cudaMallocHost", rank, Runtime::malloc_host(&p, n * sizeof(T)));
    }
    data_ = static_cast<T*>(p);
    size_ = n;
  }

  T* data_ = nullptr;
  std::size_t size_ = 0;
};

template <class T, cuda_runtime_policy Runtime = CudaRuntime>
using DeviceBuffer = CudaBuffer<T, Runtime, MemoryKind::device>;

//! `n` elements of `T` in page-locked host memory: where results copied back from the device
//! land without the host blocking in the copy, so that the wait can be polled under a deadline.
//!
//! \code
//! if (strata::cuda_device_present()) {
//!   strata::PinnedBuffer<std::int64_t> words(16);
//!   words.data()[0] = 42;  // host memory: the host reads and writes it directly
//!   assert(words.size() == 16);
//! }
//! \endcode
template <class T, cuda_runtime_policy Runtime = CudaRuntime>
using PinnedBuffer = CudaBuffer<T, Runtime, MemoryKind::pinned_host>;

}  // namespace strata
