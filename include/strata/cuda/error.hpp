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

//! Whether this process sees at least one CUDA device; false (never an exception) on a machine
//! with no driver or no GPU, so that programs and tests can choose another path.
//!
//! \code
//! if (!strata::cuda_device_present()) { /* host path */ }
//! \endcode
inline bool cuda_device_present() noexcept {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" status for later calls
    return false;
  }
  return devices > 0;
}

}  // namespace strata
