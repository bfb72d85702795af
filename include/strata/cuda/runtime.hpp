#pragma once
//! \file
//! `strata::CudaRuntime`: the CUDA runtime calls strata's device code makes, as a policy, and the
//! `cuda_runtime_policy` concept it models (target `strata::cuda`). Host code: it builds with g++
//! against the CUDA runtime's headers.
//!
//! Device code that owns memory or streams (`DeviceBuffer`, the NCCL communicator, the device
//! averager) reaches CUDA only through such a policy, so that a host test double with the same
//! members can drive the same code on a machine without a GPU.

#include <cuda_runtime_api.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "strata/cuda/error.hpp"

namespace strata {

//! A policy of CUDA runtime calls: device and pinned host memory, streams, devices, and `check(call, rank, status)`,
//! which throws the policy's error (a `strata::error`) for a failed status.
//!
//! \code
//! static_assert(strata::cuda_runtime_policy<strata::CudaRuntime>);
//! static_assert(!strata::cuda_runtime_policy<int>);
//! \endcode
template <class R>
concept cuda_runtime_policy = requires(void** p, void* q, const void* c, std::size_t n,
                                       typename R::stream_handle s, int d, int* dp,
                                       typename R::error_type e) {
  typename R::error_type;
  typename R::stream_handle;
  { R::success } -> std::convertible_to<typename R::error_type>;
  { R::malloc(p, n) } -> std::same_as<typename R::error_type>;
  { R::free(q) } -> std::same_as<typename R::error_type>;
  { R::malloc_host(p, n) } -> std::same_as<typename R::error_type>;
  { R::free_host(q) } -> std::same_as<typename R::error_type>;
  { R::memcpy_async(q, c, n, s) } -> std::same_as<typename R::error_type>;
  { R::stream_create(&s) } -> std::same_as<typename R::error_type>;
  { R::stream_destroy(s) } -> std::same_as<typename R::error_type>;
  { R::stream_query(s) } -> std::same_as<typename R::error_type>;
  { R::set_device(d) } -> std::same_as<typename R::error_type>;
  { R::get_device(dp) } -> std::same_as<typename R::error_type>;
  R::check(std::string_view{}, d, e);
};

//! The CUDA runtime itself: each member forwards to the `cuda*` call of the same meaning.
//!
//! \code
//! void* p = nullptr;
//! if (strata::cuda_device_present()) {
//!   strata::CudaRuntime::check("cudaMalloc", -1, strata::CudaRuntime::malloc(&p, 256));
//!   strata::CudaRuntime::check("cudaFree", -1, strata::CudaRuntime::free(p));
//! }
//! \endcode
struct CudaRuntime {
  using error_type = cudaError_t;
  using stream_handle = cudaStream_t;
  static constexpr error_type success = cudaSuccess;
  //! The status of a stream that still has work pending (`stream_query`).
  static constexpr error_type not_ready = cudaErrorNotReady;

  static error_type malloc(void** p, std::size_t bytes) { return cudaMalloc(p, bytes); }
  static error_type free(void* p) { return cudaFree(p); }
  //! Page-locked host memory: copies between it and the device are truly asynchronous, where a
  //! copy to pageable memory returns only once it is done.
  static error_type malloc_host(void** p, std::size_t bytes) { return cudaMallocHost(p, bytes); }
  static error_type free_host(void* p) { return cudaFreeHost(p); }
  static error_type memcpy_async(void* dst, const void* src, std::size_t bytes, stream_handle s) {
    return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s);
  }
  static error_type stream_create(stream_handle* s) {
    return cudaStreamCreateWithFlags(s, cudaStreamNonBlocking);
  }
  static error_type stream_destroy(stream_handle s) { return cudaStreamDestroy(s); }
  //! `success` when all work on `s` is done, `not_ready` while some is pending.
  static error_type stream_query(stream_handle s) { return cudaStreamQuery(s); }
  static error_type set_device(int device) { return cudaSetDevice(device); }
  static error_type get_device(int* device) { return cudaGetDevice(device); }
  //! CUDA's process-wide unique id of the allocation that holds `p`, never reused for another
  //! allocation, even at the same address (the driver's `CU_POINTER_ATTRIBUTE_BUFFER_ID`, reached
  //! through the runtime so that nothing links the driver library). Optional in a policy: code
  //! that caches work on a caller's buffer (a captured graph) uses it to notice a buffer freed and
  //! reallocated at the same address.
  static error_type buffer_id(const void* p, std::uint64_t* id) {
    using Query = int (*)(void*, int, unsigned long long);
    static const Query query = [] {
      void* fn = nullptr;
      cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
      if (cudaGetDriverEntryPointByVersion("cuPointerGetAttribute", &fn, 12000, cudaEnableDefault,
                                           &found) != cudaSuccess ||
          found != cudaDriverEntryPointSuccess) {
        return Query{};
      }
      return reinterpret_cast<Query>(fn);
    }();
    if (query == nullptr) return cudaErrorNotSupported;
    constexpr int buffer_id_attribute = 7;  // CU_POINTER_ATTRIBUTE_BUFFER_ID in cuda.h
    unsigned long long value = 0;
    if (query(&value, buffer_id_attribute, reinterpret_cast<unsigned long long>(p)) != 0) {
      return cudaErrorInvalidValue;
    }
    *id = value;
    return cudaSuccess;
  }
  //! Throws `strata::cuda_error` naming `call` and `rank` unless `e` is `cudaSuccess`.
  static void check(std::string_view call, int rank, error_type e) { cuda_check(call, rank, e); }
};

static_assert(cuda_runtime_policy<CudaRuntime>);

//! Makes `device` current for its lifetime and restores the device that was current before:
//! code that allocates or launches on an object's device without changing the device the
//! calling thread had chosen. A negative `device` keeps the current one.
//!
//! \code
//! if (strata::cuda_device_present()) {
//!   int before = -1;
//!   cudaGetDevice(&before);
//!   {
//!     strata::DeviceGuard<> on(0);
//!     void* p = nullptr;
//!     strata::cuda_check("cudaMalloc", -1, cudaMalloc(&p, 64));  // on device 0
//!     strata::cuda_check("cudaFree", -1, cudaFree(p));
//!   }
//!   int after = -1;
//!   cudaGetDevice(&after);
//!   assert(after == before);
//! }
//! \endcode
template <cuda_runtime_policy Runtime = CudaRuntime>
class DeviceGuard {
 public:
  explicit DeviceGuard(int device, int rank = -1) {
    if (device < 0) return;
    Runtime::check("cudaGetDevice", rank, Runtime::get_device(&previous_));
    if (previous_ == device) return;
    Runtime::check("cudaSetDevice", rank, Runtime::set_device(device));
    restore_ = true;
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (restore_) (void)Runtime::set_device(previous_);
  }

 private:
  int previous_ = -1;
  bool restore_ = false;
};

}  // namespace strata
