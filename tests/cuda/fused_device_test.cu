// The fused pack / unpack of strata/kernels/fused.hpp run on the device through the same Thrust
// code as on the host, against a serial host reference. Compiled in every build where nvcc is
// present; run (label gpu) where a GPU is, skipped (exit 77) elsewhere.
#include <doctest/doctest.h>

#include <strata/kernels/fused.hpp>

#include <cuda_runtime.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>

#include <cstddef>
#include <iterator>
#include <span>
#include <vector>

TEST_CASE("Thrust's device policy packs and unpacks as the serial reference does") {
  const std::size_t sizes[] = {1, 1000, 0, 70001, 33};
  std::vector<thrust::device_vector<float>> tensors;
  std::vector<std::span<float>> spans;
  for (std::size_t k = 0; k < std::size(sizes); ++k) {
    std::vector<float> host(sizes[k]);
    for (std::size_t i = 0; i < sizes[k]; ++i) host[i] = static_cast<float>(k * 100000 + i);
    tensors.emplace_back(host.begin(), host.end());
  }
  for (auto& t : tensors) spans.emplace_back(thrust::raw_pointer_cast(t.data()), t.size());

  // The plan is built on the host; the kernels read its chunks from device memory.
  const strata::FusedPlan<float> plan(spans, /*chunk_elements=*/256);
  const thrust::device_vector<strata::TensorChunk<float>> chunks(plan.chunks().begin(),
                                                                 plan.chunks().end());
  const strata::ChunkTable<float> table{thrust::raw_pointer_cast(chunks.data()), chunks.size(),
                                        plan.total_elements()};
  thrust::device_vector<float> flat(plan.total_elements());
  const std::span<float> flat_span(thrust::raw_pointer_cast(flat.data()), flat.size());
  strata::pack(thrust::device, table, flat_span);
  strata::unpack(thrust::device, std::span<const float>(flat_span), table, 0.5f);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);

  std::size_t bad = 0;
  for (std::size_t k = 0; k < std::size(sizes); ++k) {
    const std::vector<float> back(tensors[k].begin(), tensors[k].end());
    for (std::size_t i = 0; i < sizes[k]; ++i) {
      bad += back[i] != static_cast<float>(k * 100000 + i) * 0.5f ? 1 : 0;
    }
  }
  CHECK(bad == 0);
}
