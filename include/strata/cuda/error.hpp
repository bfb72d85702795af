#pragma once
//! \file
//! `strata::cuda_error`: a CUDA runtime status turned into an exception (target `strata::cuda`).
//! Host code only: it builds with g++ against the CUDA runtime's headers, no nvcc needed.

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "strata/error.hpp"

namespace strata {

//! A failed CUDA runtime call: `code()` is the `cudaError_t`, and `what()` names the call, the
//! rank and CUDA's own name and description of the code.
//!
//! \code
//! strata::cuda_error e("cudaMemcpyAsync", 2, cudaErrorInvalidValue);
//! assert(e.rank() == 2 && e.code() == cudaErrorInvalidValue);
//! assert(std::string(e.what()).find("cudaErrorInvalidValue") != std::string::npos);
//! \endcode
class cuda_error : public coded_error<cudaError_t> {
 public:
  cuda_error(std::string_view call, int rank, cudaError_t code)
      : coded_error(call, rank, describe(code), code) {}
  cuda_error(std::string_view call, int rank, cudaError_t code, std::string_view context)
      : coded_error(call, rank, describe(code) + "; " + std::string(context), code) {}

  //! CUDA's name and description of `code`, e.g. "cudaErrorInvalidValue: invalid argument".
  [[nodiscard]] static std::string describe(cudaError_t code) {
    const char* name = cudaGetErrorName(code);
    const char* text = cudaGetErrorString(code);
    std::string s =
        name != nullptr ? name : ("cudaError " + std::to_string(static_cast<int>(code)));
    if (text != nullptr) {
      s += ": ";
      s += text;
    }
    return s;
  }
};

//! Throws `cuda_error` unless `code` is `cudaSuccess`: the host-side wrapper of every CUDA call.
//!
//! \code
//! strata::cuda_check("cudaGetLastError", -1, cudaSuccess);  // no throw
//! bool threw = false;
//! try { strata::cuda_check("cudaMalloc", 0, cudaErrorMemoryAllocation); }
//! catch (const strata::cuda_error& e) { threw = e.code() == cudaErrorMemoryAllocation; }
//! assert(threw);
//! \endcode
inline void cuda_check(std::string_view call, int rank, cudaError_t code) {
  if (code != cudaSuccess) throw cuda_error(call, rank, code);
}

namespace detail {

// Whether a failed `cudaGetDeviceCount` means that this machine has no GPU to use, rather than a
// CUDA installation that cannot run: no device, or no driver installed at all. The runtime reports
// a missing driver and a driver too old for it with the same status; `cudaDriverGetVersion` tells
// them apart (0 only when no driver is installed).
[[nodiscard]] constexpr bool cuda_absent(cudaError_t status, int driver_version) noexcept {
  return status == cudaErrorNoDevice ||
         (status == cudaErrorInsufficientDriver && driver_version == 0);
}

// "13.0" for CUDA's version number 13000.
inline std::string cuda_version_text(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

}  // namespace detail

//! Whether this process sees at least one CUDA device: false on a machine with no GPU or no CUDA
//! driver at all, so that programs and tests can choose another path. Any other failure (a
//! driver too old for this runtime, a device that cannot be initialised) throws `cuda_error`
//! naming `cudaGetDeviceCount` and both versions: a broken installation is not "no GPU".
//!
//! \code
//! const bool gpu = strata::cuda_device_present();
//! int devices = 0;
//! if (gpu) strata::cuda_check("cudaGetDeviceCount", -1, cudaGetDeviceCount(&devices));
//! assert(gpu == (devices > 0));
//! \endcode
inline bool cuda_device_present() {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status == cudaSuccess) return devices > 0;
  (void)cudaGetLastError();  // cleared for later calls, where the runtime lets it be
  int driver = -1;           // unknown, unless the query answers
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = -1;
  (void)cudaGetLastError();
  if (detail::cuda_absent(status, driver)) return false;
  int runtime = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  const std::string found = driver < 0    ? "the driver's version is unknown"
                            : driver == 0 ? "no driver installed"
                                          : "driver " + detail::cuda_version_text(driver);
  throw cuda_error("cudaGetDeviceCount", -1, status,
                   found + ", runtime " + detail::cuda_version_text(runtime));
}

}  // namespace strata
