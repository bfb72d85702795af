// A non-blocking CUDA stream for one test case, shared by the device tests.
#pragma once

#include <strata/cuda/error.hpp>

#include <cuda_runtime_api.h>

namespace cuda_test {

class Stream {
 public:
  Stream() {
    strata::cuda_check("cudaStreamCreateWithFlags", -1,
                       cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() { (void)cudaStreamDestroy(stream_); }
  operator cudaStream_t() const noexcept { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace cuda_test
