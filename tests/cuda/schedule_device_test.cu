// The compile-time schedule evaluated inside a CUDA kernel agrees with the host. Compiled in every
// build where nvcc is present; run (label gpu) where a GPU is, and skipped (exit 77) elsewhere.
#include <strata/schedule/schedule.hpp>

#include <cstdio>
#include <cuda_runtime.h>
#include <vector>

namespace {

using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>, strata::Level<8, 64>>;

// The hierarchy's facts are usable in device code at compile time.
static_assert(H::hyper_period == 8);

__global__ void levels_kernel(int* out, std::size_t steps, std::size_t warmup) {
  const std::size_t s = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (s >= steps) return;
  const strata::Schedule<H> schedule(warmup);
  const auto l = schedule.level_at(s);
  out[s] = l ? static_cast<int>(*l) : -1;
}

int fail(const char* what, cudaError_t e) {
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return 1;
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device\n");
    return 77;
  }
  constexpr std::size_t steps = 4096;
  constexpr std::size_t warmup = 5;
  int* d = nullptr;
  if (const auto e = cudaMalloc(&d, steps * sizeof(int)); e != cudaSuccess) return fail("cudaMalloc", e);
  levels_kernel<<<(steps + 255) / 256, 256>>>(d, steps, warmup);
  if (const auto e = cudaGetLastError(); e != cudaSuccess) return fail("launch", e);
  std::vector<int> got(steps);
  if (const auto e = cudaMemcpy(got.data(), d, steps * sizeof(int), cudaMemcpyDeviceToHost);
      e != cudaSuccess) {
    return fail("cudaMemcpy", e);
  }
  cudaFree(d);
  const strata::Schedule<H> host(warmup);
  for (std::size_t s = 0; s < steps; ++s) {
    const auto l = host.level_at(s);
    const int expected = l ? static_cast<int>(*l) : -1;
    if (got[s] != expected) {
      std::fprintf(stderr, "step %zu: device %d, host %d\n", s, got[s], expected);
      return 1;
    }
  }
  std::printf("device and host schedules agree over %zu steps\n", steps);
  return 0;
}
