// The compile-time schedule evaluated inside a CUDA kernel agrees with the host. Compiled in every
// build where nvcc is present; run (label gpu) where a GPU is, and skipped (exit 77) elsewhere.
#include <doctest/doctest.h>

#include <strata/cuda/device_buffer.hpp>
#include <strata/schedule/schedule.hpp>

#include <cuda_runtime.h>

#include <cstddef>
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

}  // namespace

TEST_CASE("the schedule evaluated in a kernel agrees with the host, step for step") {
  constexpr std::size_t steps = 4096;
  constexpr std::size_t warmup = 5;
  strata::DeviceBuffer<int> d(steps);
  levels_kernel<<<(steps + 255) / 256, 256>>>(d.data(), steps, warmup);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  std::vector<int> got(steps);
  REQUIRE(cudaMemcpy(got.data(), d.data(), d.size_bytes(), cudaMemcpyDeviceToHost) == cudaSuccess);

  const strata::Schedule<H> host(warmup);
  std::size_t mismatches = 0;
  for (std::size_t s = 0; s < steps; ++s) {
    const auto l = host.level_at(s);
    const int expected = l ? static_cast<int>(*l) : -1;
    if (got[s] != expected) {
      if (mismatches++ == 0) {
        INFO("step " << s << ": device " << got[s] << ", host " << expected);
        CHECK(got[s] == expected);
      }
    }
  }
  CHECK(mismatches == 0);
}
