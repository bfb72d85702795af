#pragma once
//! \file
//! The fused pack, unpack and scale of `strata/kernels/fused.hpp` as CUDA kernels (target
//! `strata::cuda`, nvcc only): one kernel launch per operation over all the tensors of a
//! `FusedPlan`, whatever their number. The plan is the host one; its chunks are copied once to
//! device memory (`DeviceChunkTable`) and every step then packs and unpacks with no allocation,
//! no copy of the table and no host synchronisation, so the launches can be captured in a CUDA
//! graph.
//!
//! Each chunk gets a whole thread block. Where a chunk's source and destination sit at the same
//! offset from a 16-byte boundary, the block peels the few elements up to that boundary and
//! moves the rest in 16-byte loads and stores; where the offsets differ, it moves element by
//! element, which is still coalesced. Results are bitwise those of the host path: a factor of
//! exactly 1 copies bits, any other factor uses the same formula (`T(float(x) * f)` for `__half`
//! and `__nv_bfloat16`, `T(x * f)` otherwise); only a scaled NaN may come out as another NaN,
//! since the GPU returns its canonical NaN. Do not build with `--use_fast_math` or `-ftz=true` if
//! that equality matters: flushing subnormals differs from the host.
//!
//! Layers, as in CUB: `strata::cuda::pack`, `unpack`, `scale` return a `cudaError_t` and never
//! throw; `strata::device_pack`, `device_unpack`, `device_scale` check sizes and throw
//! `std::invalid_argument` or `strata::cuda_error`. Needs nvcc, and no extended lambdas.

#if !defined(__CUDACC__)
#error "strata/kernels/multi_tensor.cuh holds CUDA kernels and needs nvcc; host code uses fused.hpp"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>

#include "strata/cuda/device_buffer.hpp"
#include "strata/cuda/error.hpp"
#include "strata/cuda/half.hpp"
#include "strata/kernels/fused.hpp"

// The agent below is host-callable too, and host compilers warn about a pragma they do not know.
#if defined(__CUDA_ARCH__)
#define STRATA_UNROLL _Pragma("unroll")
#else
#define STRATA_UNROLL
#endif

namespace strata::detail::cuda {

// 256 threads: 8 resident blocks fill the 2048 threads of an A100/H100 SM, and each block keeps
// 256 x 16 bytes x unroll of loads in flight, which is what hides the latency of memory.
inline constexpr unsigned block_threads = 256;
inline constexpr unsigned resident_blocks_per_sm = 2048 / block_threads;
// Beyond a few waves extra blocks only add scheduling; blocks loop over the remaining chunks.
inline constexpr unsigned grid_waves = 4;
inline constexpr std::size_t vector_bytes = 16;
// Vectors each thread loads before it stores any: independent loads in flight hide latency.
inline constexpr unsigned unroll = 4;

template <class T>
struct alignas(vector_bytes) Lanes {
  static constexpr std::size_t count = vector_bytes / sizeof(T);
  T v[count];
};

// Host-callable as well, so that a host program can check the agent's partition of the elements
// without a GPU; the library calls them from device code only.
template <bool Scaled, class T>
__host__ __device__ __forceinline__ T move_one(T x, [[maybe_unused]] fused_factor_t<T> factor) {
  if constexpr (Scaled) {
    return scale_element(x, factor);
  } else {
    return x;
  }
}

template <bool Scaled, class T>
__host__ __device__ __forceinline__ Lanes<T> move_lanes(Lanes<T> x,
                                                        [[maybe_unused]] fused_factor_t<T> factor) {
  if constexpr (Scaled) {
    STRATA_UNROLL
    for (std::size_t j = 0; j < Lanes<T>::count; ++j) x.v[j] = scale_element(x.v[j], factor);
  }
  return x;
}

// The agent: thread `tid` of a block of `threads` does its share of moving src[0, n) to
// dst[0, n); each element is moved by exactly one thread, whatever the alignment. src == dst is
// allowed (scale in place): every element is read and written by the same thread, read first.
template <bool Scaled, class T>
__host__ __device__ void block_move(const T* src, T* dst, std::size_t n, fused_factor_t<T> factor,
                                    std::size_t tid, std::size_t threads) {
  constexpr std::size_t width = Lanes<T>::count;
  const auto s = reinterpret_cast<std::uintptr_t>(src);
  const auto d = reinterpret_cast<std::uintptr_t>(dst);

  // Peeling whole elements aligns both pointers only if they are equally misaligned and src
  // sits on a multiple of sizeof(T).
  if (s % sizeof(T) != 0 || (s - d) % vector_bytes != 0) {
    for (std::size_t i = tid; i < n; i += threads) dst[i] = move_one<Scaled>(src[i], factor);
    return;
  }
  std::size_t head = (vector_bytes - s % vector_bytes) % vector_bytes / sizeof(T);
  head = head < n ? head : n;
  for (std::size_t i = tid; i < head; i += threads) dst[i] = move_one<Scaled>(src[i], factor);

  const std::size_t vectors = (n - head) / width;
  const auto* vs = reinterpret_cast<const Lanes<T>*>(src + head);
  auto* vd = reinterpret_cast<Lanes<T>*>(dst + head);
  std::size_t i = tid;
  for (; i + (unroll - 1) * threads < vectors; i += unroll * threads) {
    Lanes<T> r[unroll];
    STRATA_UNROLL
    for (unsigned k = 0; k < unroll; ++k) r[k] = vs[i + k * threads];
    STRATA_UNROLL
    for (unsigned k = 0; k < unroll; ++k) vd[i + k * threads] = move_lanes<Scaled>(r[k], factor);
  }
  for (; i < vectors; i += threads) vd[i] = move_lanes<Scaled>(vs[i], factor);

  for (std::size_t j = head + vectors * width + tid; j < n; j += threads) {
    dst[j] = move_one<Scaled>(src[j], factor);
  }
}

template <bool Scaled, class T>
__global__ void __launch_bounds__(block_threads)
    pack_kernel(ChunkTable<T> table, T* flat, fused_factor_t<T> factor) {
  for (std::size_t c = blockIdx.x; c < table.chunk_count; c += gridDim.x) {
    const TensorChunk<T> chunk = table.chunks[c];
    block_move<Scaled>(chunk.data, flat + chunk.offset, chunk.length, factor, threadIdx.x,
                       blockDim.x);
  }
}

template <bool Scaled, class T>
__global__ void __launch_bounds__(block_threads)
    unpack_kernel(const T* flat, ChunkTable<T> table, fused_factor_t<T> factor) {
  for (std::size_t c = blockIdx.x; c < table.chunk_count; c += gridDim.x) {
    const TensorChunk<T> chunk = table.chunks[c];
    block_move<Scaled>(flat + chunk.offset, chunk.data, chunk.length, factor, threadIdx.x,
                       blockDim.x);
  }
}

// Scale has no table: block c takes elements [c * chunk, (c + 1) * chunk), the same cut as a
// plan of one tensor.
template <class T>
__global__ void __launch_bounds__(block_threads)
    scale_kernel(T* data, std::size_t n, std::size_t chunk, fused_factor_t<T> factor) {
  const std::size_t chunks = n / chunk + (n % chunk != 0 ? 1 : 0);
  for (std::size_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    const std::size_t begin = c * chunk;
    const std::size_t left = n - begin;
    block_move<true>(data + begin, data + begin, left < chunk ? left : chunk, factor, threadIdx.x,
                     blockDim.x);
  }
}

// Host queries only (no stream work), so this is legal while a stream is being captured.
inline cudaError_t grid_for(std::size_t blocks_wanted, unsigned& grid) noexcept {
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  int sms = 0;
  if (const cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      e != cudaSuccess) {
    return e;
  }
  const std::size_t cap =
      static_cast<std::size_t>(sms > 0 ? sms : 1) * resident_blocks_per_sm * grid_waves;
  grid = static_cast<unsigned>(blocks_wanted < cap ? blocks_wanted : cap);
  return cudaSuccess;
}

}  // namespace strata::detail::cuda

#undef STRATA_UNROLL

namespace strata::cuda {

//! Element types of the device kernels: the fused element types of 1, 2, 4 or 8 bytes, so that
//! a 16-byte vector holds a whole number of them (`float`, `double`, `__half`, `__nv_bfloat16`,
//! the integers; not `long double`).
//!
//! \code
//! static_assert(strata::cuda::device_fusable<float> && strata::cuda::device_fusable<__half>);
//! static_assert(!strata::cuda::device_fusable<long double>);
//! \endcode
template <class T>
concept device_fusable = fusable<T> &&
    (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8);

//! Kernel launches one `pack`, `unpack` or `scale` of `elements` elements makes: exactly one
//! whenever there is anything to move, however many tensors; none for no elements (and none for
//! a `scale` by exactly 1, which has nothing to do). An averaging step over device tensors is
//! thus `2 * launches_for(n)` launches (pack, unpack) around its one collective.
//!
//! \code
//! static_assert(strata::cuda::launches_for(1 << 20) == 1);
//! static_assert(strata::cuda::launches_for(0) == 0);
//! \endcode
[[nodiscard]] constexpr int launches_for(std::size_t elements) noexcept {
  return elements != 0 ? 1 : 0;
}

//! Enqueues on `stream` the copy of the tensors of `table` into `flat`
//! (`flat[offset + i] = tensor[i] * factor`; a factor of exactly 1 copies bits) as one kernel.
//! `table.chunks` must point to device memory (see `DeviceChunkTable`), `flat` must hold
//! `table.total_elements` elements of device memory and overlap none of the tensors. Returns
//! `cudaErrorInvalidValue` for a null pointer, else the status of the launch; an empty table
//! launches nothing. Never synchronises, allocates or copies: it may be captured in a graph.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! strata::DeviceBuffer<float> model(5), flat(5);  // two tensors of 3 and 2 floats, and a buffer
//! const std::vector<float> values{1, 2, 3, 4, 5};
//! cudaMemcpy(model.data(), values.data(), 5 * sizeof(float), cudaMemcpyHostToDevice);
//! const std::vector<std::span<float>> tensors{{model.data(), 3}, {model.data() + 3, 2}};
//! const strata::FusedPlan plan(tensors);
//! const strata::DeviceChunkTable<float> table(plan, stream);
//! const cudaError_t status = strata::cuda::pack(table.view(), flat.data(), 2.0f, stream);
//! assert(status == cudaSuccess);
//! std::vector<float> back(5);
//! cudaMemcpy(back.data(), flat.data(), 5 * sizeof(float), cudaMemcpyDeviceToHost);
//! assert((back == std::vector<float>{2, 4, 6, 8, 10}));
//! \endcode
template <device_fusable T>
cudaError_t pack(ChunkTable<T> table, T* flat, fused_factor_t<T> factor,
                 cudaStream_t stream) noexcept {
  namespace agent = strata::detail::cuda;
  if (table.chunk_count == 0 || table.total_elements == 0) return cudaSuccess;
  if (table.chunks == nullptr || flat == nullptr) return cudaErrorInvalidValue;
  unsigned grid = 0;
  if (const cudaError_t e = agent::grid_for(table.chunk_count, grid); e != cudaSuccess) return e;
  if (factor == fused_factor_t<T>(1)) {
    agent::pack_kernel<false, T><<<grid, agent::block_threads, 0, stream>>>(table, flat, factor);
  } else {
    agent::pack_kernel<true, T><<<grid, agent::block_threads, 0, stream>>>(table, flat, factor);
  }
  return cudaGetLastError();
}

//! Enqueues on `stream` the copy of `flat` back into the tensors of `table`
//! (`tensor[i] = flat[offset + i] * factor`) as one kernel: the end of an averaging, with the
//! 1/g of the mean as `factor`. Same requirements and guarantees as `pack`.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! strata::DeviceBuffer<double> model(4), flat(4);
//! const std::vector<std::span<double>> tensors{{model.data(), 1}, {model.data() + 1, 3}};
//! const strata::FusedPlan plan(tensors);
//! const strata::DeviceChunkTable<double> table(plan, stream);
//! // flat holds the sum over g = 4 ranks; the mean goes back into the tensors.
//! const std::vector<double> sum{4, 8, 12, 16};
//! cudaMemcpy(flat.data(), sum.data(), 4 * sizeof(double), cudaMemcpyHostToDevice);
//! assert(strata::cuda::unpack<double>(flat.data(), table.view(), 0.25, stream) == cudaSuccess);
//! std::vector<double> mean(4);
//! cudaMemcpy(mean.data(), model.data(), 4 * sizeof(double), cudaMemcpyDeviceToHost);
//! assert((mean == std::vector<double>{1, 2, 3, 4}));
//! \endcode
template <device_fusable T>
cudaError_t unpack(const T* flat, ChunkTable<T> table, fused_factor_t<T> factor,
                   cudaStream_t stream) noexcept {
  namespace agent = strata::detail::cuda;
  if (table.chunk_count == 0 || table.total_elements == 0) return cudaSuccess;
  if (table.chunks == nullptr || flat == nullptr) return cudaErrorInvalidValue;
  unsigned grid = 0;
  if (const cudaError_t e = agent::grid_for(table.chunk_count, grid); e != cudaSuccess) return e;
  if (factor == fused_factor_t<T>(1)) {
    agent::unpack_kernel<false, T><<<grid, agent::block_threads, 0, stream>>>(flat, table, factor);
  } else {
    agent::unpack_kernel<true, T><<<grid, agent::block_threads, 0, stream>>>(flat, table, factor);
  }
  return cudaGetLastError();
}

//! Enqueues on `stream` the multiplication of `data[0, n)` (device memory) by `factor` in place,
//! as one kernel; a factor of exactly 1, or `n == 0`, launches nothing. The form for a buffer
//! that is averaged in place, such as a `ParameterArena`'s. Returns `cudaErrorInvalidValue` for a
//! null `data` with `n > 0`, else the status of the launch. Capturable, as `pack`.
//!
//! \code
//! strata::DeviceBuffer<float> data(3);
//! const std::vector<float> values{4, 8, -2};
//! cudaMemcpy(data.data(), values.data(), 3 * sizeof(float), cudaMemcpyHostToDevice);
//! assert(strata::cuda::scale(data.data(), 3, 0.25f, cudaStream_t{}) == cudaSuccess);
//! std::vector<float> scaled(3);
//! cudaMemcpy(scaled.data(), data.data(), 3 * sizeof(float), cudaMemcpyDeviceToHost);
//! assert((scaled == std::vector<float>{1, 2, -0.5f}));
//! \endcode
template <device_fusable T>
cudaError_t scale(T* data, std::size_t n, fused_factor_t<T> factor, cudaStream_t stream) noexcept {
  namespace agent = strata::detail::cuda;
  if (n == 0 || factor == fused_factor_t<T>(1)) return cudaSuccess;
  if (data == nullptr) return cudaErrorInvalidValue;
  constexpr std::size_t chunk = default_chunk_elements;
  unsigned grid = 0;
  if (const cudaError_t e = agent::grid_for(n / chunk + (n % chunk != 0 ? 1 : 0), grid);
      e != cudaSuccess) {
    return e;
  }
  agent::scale_kernel<T><<<grid, agent::block_threads, 0, stream>>>(data, n, chunk, factor);
  return cudaGetLastError();
}

}  // namespace strata::cuda

namespace strata {

//! The chunks of a `FusedPlan` in device memory, owned (a `DeviceBuffer`): what the device
//! kernels read. Built once per set of tensors; `assign` re-uploads a plan into the same
//! allocation when it fits, so re-planning tensors of unchanged sizes allocates nothing and
//! leaves `view().chunks` where it was. The allocation only grows. Movable, not copyable; the
//! destructor frees the allocation (`cudaFree`, which waits for the device, so kernels still
//! reading the table finish first).
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! strata::DeviceBuffer<float> weights(1000), bias(10), flat(1010);
//! const std::vector<std::span<float>> tensors{weights.span(), bias.span()};
//! const strata::FusedPlan plan(tensors, /*chunk_elements=*/256);
//! strata::DeviceChunkTable<float> table(plan, stream);
//! assert(table.chunk_count() == 5 && table.total_elements() == 1010);
//! strata::device_pack(table, flat.span(), stream);
//! // ... all-reduce flat over g = 2 ranks ...
//! strata::device_unpack(flat.span(), table, stream, 0.5f);
//! // Re-planned tensors of the same sizes reuse the allocation.
//! const auto* chunks = table.view().chunks;
//! table.assign(strata::FusedPlan(tensors, 256), stream);
//! assert(table.view().chunks == chunks && table.capacity() == 5);
//! cudaStreamSynchronize(stream);
//! \endcode
template <cuda::device_fusable T>
class DeviceChunkTable {
 public:
  using value_type = T;

  //! An empty table: `view()` has no chunks and 0 elements.
  DeviceChunkTable() noexcept = default;

  //! A table holding `plan`'s chunks, uploaded on `stream`; see `assign`.
  DeviceChunkTable(const FusedPlan<T>& plan, cudaStream_t stream) { assign(plan, stream); }

  DeviceChunkTable(const DeviceChunkTable&) = delete;
  DeviceChunkTable& operator=(const DeviceChunkTable&) = delete;

  //! Takes over `other`'s allocation; `other` is left empty.
  DeviceChunkTable(DeviceChunkTable&& other) noexcept
      : chunks_(std::move(other.chunks_)),
        count_(std::exchange(other.count_, 0)),
        total_(std::exchange(other.total_, 0)) {}

  DeviceChunkTable& operator=(DeviceChunkTable&& other) noexcept {
    if (this != &other) {
      chunks_ = std::move(other.chunks_);
      count_ = std::exchange(other.count_, 0);
      total_ = std::exchange(other.total_, 0);
    }
    return *this;
  }

  //! Uploads `plan`'s chunks with `cudaMemcpyAsync` on `stream`, first growing the allocation
  //! only if it is too small. Kernels on `stream` enqueued earlier still read the old chunks;
  //! kernels on other streams that read them must be finished. The plan's host memory may be
  //! reused as soon as this returns. Call it outside stream capture: a pageable copy cannot be
  //! captured. A graph captured over `view()` stays valid across an `assign` of a plan with the
  //! same chunk count and total (same allocation, new contents). Throws `strata::cuda_error`;
  //! after a failure the table is empty.
  void assign(const FusedPlan<T>& plan, cudaStream_t stream) {
    const std::span<const TensorChunk<T>> chunks = plan.chunks();
    count_ = 0;
    total_ = 0;
    chunks_.reserve(chunks.size());
    if (!chunks.empty()) {
      cuda_check("cudaMemcpyAsync", -1,
                 cudaMemcpyAsync(chunks_.data(), chunks.data(), chunks.size_bytes(),
                                 cudaMemcpyHostToDevice, stream));
    }
    count_ = chunks.size();
    total_ = plan.total_elements();
  }

  //! The table the kernels read: its chunks are in device memory.
  [[nodiscard]] ChunkTable<T> view() const noexcept { return {chunks_.data(), count_, total_}; }
  [[nodiscard]] std::size_t chunk_count() const noexcept { return count_; }
  [[nodiscard]] std::size_t total_elements() const noexcept { return total_; }
  //! Chunks the allocation holds without growing.
  [[nodiscard]] std::size_t capacity() const noexcept { return chunks_.size(); }

 private:
  DeviceBuffer<TensorChunk<T>> chunks_;
  std::size_t count_ = 0;
  std::size_t total_ = 0;
};

//! Enqueues `strata::cuda::pack` of `table`'s tensors into `flat` (device memory) on `stream`.
//! Throws `std::invalid_argument`, before enqueuing anything, unless `flat` has exactly
//! `table.total_elements()` elements, and `strata::cuda_error` if the launch fails.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! strata::DeviceBuffer<float> model(6), flat(6);
//! const std::vector<std::span<float>> tensors{{model.data(), 2}, {model.data() + 2, 4}};
//! const strata::FusedPlan plan(tensors);
//! const strata::DeviceChunkTable<float> table(plan, stream);
//! strata::device_pack(table, flat.span(), stream);        // a plain copy
//! strata::device_pack(table, flat.span(), stream, 0.5f);  // pre-scaled
//! bool refused = false;
//! try {
//!   strata::device_pack(table, flat.span().first(5), stream);
//! } catch (const std::invalid_argument&) {
//!   refused = true;  // nothing was enqueued
//! }
//! assert(refused);
//! cudaStreamSynchronize(stream);
//! \endcode
template <cuda::device_fusable T>
void device_pack(const DeviceChunkTable<T>& table, std::type_identity_t<std::span<T>> flat,
                 cudaStream_t stream, fused_factor_t<T> factor = fused_factor_t<T>(1)) {
  detail::check_flat_size("device_pack", flat.size(), table.total_elements());
  cuda_check("strata::cuda::pack", -1, cuda::pack(table.view(), flat.data(), factor, stream));
}

//! Enqueues `strata::cuda::unpack` of `flat` (device memory) into `table`'s tensors on `stream`.
//! Throws as `device_pack`.
//!
//! \code
//! const cudaStream_t stream = nullptr;
//! strata::DeviceBuffer<float> model(3), flat(3);
//! const std::vector<std::span<float>> tensors{{model.data(), 1}, {model.data() + 1, 2}};
//! const strata::FusedPlan plan(tensors);
//! const strata::DeviceChunkTable<float> table(plan, stream);
//! const std::vector<float> sum{3, 6, 9};  // the sum over g = 3 ranks
//! cudaMemcpy(flat.data(), sum.data(), 3 * sizeof(float), cudaMemcpyHostToDevice);
//! strata::device_unpack(flat.span(), table, stream, 1.0f / 3);
//! std::vector<float> mean(3);
//! cudaMemcpy(mean.data(), model.data(), 3 * sizeof(float), cudaMemcpyDeviceToHost);
//! assert(mean[0] == 3 * (1.0f / 3) && mean[2] == 9 * (1.0f / 3));
//! \endcode
template <cuda::device_fusable T>
void device_unpack(std::type_identity_t<std::span<const T>> flat, const DeviceChunkTable<T>& table,
                   cudaStream_t stream, fused_factor_t<T> factor = fused_factor_t<T>(1)) {
  detail::check_flat_size("device_unpack", flat.size(), table.total_elements());
  cuda_check("strata::cuda::unpack", -1, cuda::unpack(flat.data(), table.view(), factor, stream));
}

//! Enqueues `strata::cuda::scale` of `data` (device memory) on `stream`; throws
//! `strata::cuda_error` if the launch fails.
//!
//! \code
//! strata::DeviceBuffer<float> flat(1 << 20);
//! cudaMemset(flat.data(), 0, flat.size_bytes());
//! strata::device_scale(flat.span(), 0.125f, cudaStream_t{});
//! cudaStreamSynchronize(cudaStream_t{});
//! \endcode
template <cuda::device_fusable T>
void device_scale(std::span<T> data, fused_factor_t<T> factor, cudaStream_t stream) {
  cuda_check("strata::cuda::scale", -1, cuda::scale(data.data(), data.size(), factor, stream));
}

}  // namespace strata
