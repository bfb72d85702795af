// What `make gpu-check` records about the machine before it runs anything: the CUDA runtime this
// build links, the driver, NCCL and each device, as one JSON object on stdout.
//
//   strata_gpu_versions
//
// Exits 0 with at least one device, 77 without one (no device, or no driver installed), and 1
// when CUDA cannot run (a driver too old for the runtime, say); the versions it could read are
// printed in every case, so that a failure says which versions met.
#include <strata/cuda/error.hpp>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

namespace {

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out + "\"";
}

// NCCL's version code: 22809 for 2.28.9 since 2.9, 2708 for 2.7.8 before.
std::string nccl_version_text(int code) {
  const int major = code >= 10000 ? code / 10000 : code / 1000;
  const int minor = code >= 10000 ? code / 100 % 100 : code / 100 % 10;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(code % 100);
}

}  // namespace

int main() {
  int runtime = 0;
  int driver = -1;
  int nccl = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = -1;
  const bool nccl_known = ncclGetVersion(&nccl) == ncclSuccess;
  std::string devices = "[";
  std::string error;
  int rc = 0;
  try {
    if (strata::cuda_device_present()) {
      int n = 0;
      strata::cuda_check("cudaGetDeviceCount", -1, cudaGetDeviceCount(&n));
      for (int d = 0; d < n; ++d) {
        cudaDeviceProp p{};
        strata::cuda_check("cudaGetDeviceProperties", -1, cudaGetDeviceProperties(&p, d));
        char line[512];
        std::snprintf(line, sizeof line,
                      "%s{\"index\":%d,\"name\":%s,\"compute_capability\":\"%d.%d\","
                      "\"multiprocessors\":%d,\"memory_bytes\":%zu}",
                      d == 0 ? "" : ",", d, json_string(p.name).c_str(), p.major, p.minor,
                      p.multiProcessorCount, p.totalGlobalMem);
        devices += line;
      }
    } else {
      error = "no CUDA device";
      rc = 77;
    }
  } catch (const std::exception& e) {
    error = e.what();
    rc = 1;
  }
  devices += "]";
  std::printf("{\"cuda_runtime\":%s,\"cuda_driver\":%s,\"nccl\":%s,\"devices\":%s,\"error\":%s}\n",
              json_string(strata::detail::cuda_version_text(runtime)).c_str(),
              driver > 0 ? json_string(strata::detail::cuda_version_text(driver)).c_str()
                         : (driver == 0 ? "\"none\"" : "null"),
              nccl_known ? json_string(nccl_version_text(nccl)).c_str() : "null", devices.c_str(),
              error.empty() ? "null" : json_string(error).c_str());
  return rc;
}
