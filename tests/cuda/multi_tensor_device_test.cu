// The device kernels of strata/kernels/multi_tensor.cuh against plain serial host loops, for
// float, double, __half, __nv_bfloat16 and two integer types: tensors of 0, 1, odd and large
// sizes, starting on, one and two elements off a 16-byte boundary, a flat buffer on and off one,
// chunks from 1 element to whole tensors, 1000 small tensors, and a pack + unpack captured in a
// CUDA graph and replayed. Copies must be bitwise; scaled values bitwise too (the reference does
// the same float multiply and rounding), except that any NaN matches any NaN, since the GPU
// returns the canonical NaN where the host keeps a payload.
//
// Without a GPU it still checks, on the host, that the block agent moves every element exactly
// once for every alignment and thread count (test suite "host"), then exits 77 (skipped).
#include <doctest/doctest.h>

#include <strata/cuda/device_buffer.hpp>
#include <strata/kernels/multi_tensor.cuh>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "stream.hpp"

namespace {

static_assert(strata::cuda::launches_for(0) == 0 && strata::cuda::launches_for(12345) == 1);
static_assert(std::is_same_v<strata::fused_factor_t<__half>, float>);
static_assert(std::is_same_v<strata::fused_factor_t<__nv_bfloat16>, float>);
static_assert(!std::is_copy_constructible_v<strata::DeviceChunkTable<float>>);
static_assert(std::is_nothrow_move_constructible_v<strata::DeviceChunkTable<float>>);

// Mismatches are not fatal, so that one run reports every failing case.
void fail(const std::string& what) { FAIL_CHECK(what); }

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  else if constexpr (std::is_same_v<T, double>) return "double";
  else if constexpr (std::is_same_v<T, __half>) return "__half";
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return "__nv_bfloat16";
  else if constexpr (std::is_same_v<T, std::int32_t>) return "int32";
  else return "int8";
}

template <class T>
constexpr bool is_float_like = std::is_floating_point_v<T> || strata::is_reduced_float_v<T>;

template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(static_cast<float>(x));
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

template <class T>
T from_bits(std::uint64_t bits) {
  if constexpr (sizeof(T) == 8) return std::bit_cast<T>(bits);
  else if constexpr (sizeof(T) == 4) return std::bit_cast<T>(static_cast<std::uint32_t>(bits));
  else if constexpr (sizeof(T) == 2) return std::bit_cast<T>(static_cast<std::uint16_t>(bits));
  else return std::bit_cast<T>(static_cast<std::uint8_t>(bits));
}

template <class T>
bool is_nan(T x) {
  if constexpr (std::is_same_v<T, __half>) return std::isnan(__half2float(x));
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return std::isnan(__bfloat162float(x));
  else if constexpr (std::is_floating_point_v<T>) return std::isnan(x);
  else return false;
}

// The reference scale, written out per type rather than through strata's own formula.
template <class T>
T reference_scale(T x, strata::fused_factor_t<T> f) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(__half2float(x) * f);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(__bfloat162float(x) * f);
  } else {
    return static_cast<T>(x * f);
  }
}

// Inexact for the floating types, so that rounding shows.
template <class T>
strata::fused_factor_t<T> test_factor() {
  if constexpr (is_float_like<T>) return strata::fused_factor_t<T>(1) / 3;
  else return strata::fused_factor_t<T>(-3);
}

template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// A value no kernel writes: where it is found afterwards, nothing was written.
template <class T>
T sentinel() {
  return from_bits<T>(0x5A5A5A5A5A5A5A5Aull);
}

// Random values with, for the floating types, a sprinkling of the values a bit-exact copy must
// keep: signalling and quiet NaNs, infinities, negative zero, subnormals of every width.
template <class T>
T random_value(std::mt19937& gen) {
  if constexpr (is_float_like<T>) {
    const unsigned pick = std::uniform_int_distribution<unsigned>(0, 63)(gen);
    switch (pick) {
      case 0:
        return from_bits<T>(sizeof(T) == 8              ? 0x7FF0000000000001ull
                            : sizeof(T) == 4            ? 0x7F800001ull
                            : std::is_same_v<T, __half> ? 0x7C01ull
                                                        : 0x7F81ull);  // signalling NaN
      case 1: return from_double<T>(std::numeric_limits<double>::quiet_NaN());
      case 2: return from_double<T>(std::numeric_limits<double>::infinity());
      case 3: return from_double<T>(-0.0);
      case 4: return from_double<T>(1e-6);    // subnormal as a half
      case 5: return from_double<T>(1e-39);   // subnormal as a float or bfloat16
      case 6: return from_double<T>(1e-310);  // subnormal as a double
      default: return from_double<T>(std::uniform_real_distribution<double>(-100, 100)(gen));
    }
  } else {
    return static_cast<T>(std::uniform_int_distribution<int>(-100, 100)(gen));
  }
}

// --- The agent on the host: every element moved once, nothing outside touched -----------------

// Threads run one after another here; that is a valid schedule, because no element is touched
// by two threads.
template <class T>
void simulate_agent() {
  constexpr std::size_t size = 112;
  for (const std::size_t threads :
       {std::size_t{1}, std::size_t{3}, std::size_t{32}, std::size_t{256}}) {
    for (std::size_t n = 0; n < 80; n += (n < 40 ? 1 : 13)) {
      for (std::size_t so = 0; so < 16 / sizeof(T) + 1; ++so) {
        for (std::size_t dof = 0; dof < 16 / sizeof(T) + 1; ++dof) {
          alignas(16) T src[size];
          alignas(16) T dst[size];
          for (std::size_t i = 0; i < size; ++i) {
            // Distinct bit patterns, none of them the sentinel's.
            src[i] = from_bits<T>(i + 1 + (i + 1 >= 0x5A ? 1 : 0));
            dst[i] = sentinel<T>();
          }
          const std::string where = std::string("agent on the host, ") + type_name<T>() + ": n " +
                                    std::to_string(n) + ", src +" + std::to_string(so) + ", dst +" +
                                    std::to_string(dof) + ", " + std::to_string(threads) +
                                    " threads";
          for (std::size_t tid = 0; tid < threads; ++tid) {
            strata::detail::cuda::block_move<false>(src + so, dst + dof, n,
                                                    strata::fused_factor_t<T>(1), tid, threads);
          }
          for (std::size_t i = 0; i < size; ++i) {
            const bool inside = i >= dof && i < dof + n;
            if (!same_bits(dst[i], inside ? src[i - dof + so] : sentinel<T>())) {
              fail(where + ", element " + std::to_string(i));
              return;
            }
          }

          // In place and scaled, as scale runs.
          const auto factor = test_factor<T>();
          for (std::size_t i = 0; i < size; ++i) dst[i] = from_double<T>(static_cast<double>(i));
          for (std::size_t tid = 0; tid < threads; ++tid) {
            strata::detail::cuda::block_move<true>(dst + dof, dst + dof, n, factor, tid, threads);
          }
          for (std::size_t i = 0; i < size; ++i) {
            const T x = from_double<T>(static_cast<double>(i));
            const bool inside = i >= dof && i < dof + n;
            if (!same_bits(dst[i], inside ? reference_scale(x, factor) : x)) {
              fail(where + ", in place, element " + std::to_string(i));
              return;
            }
          }
        }
      }
    }
  }
}

// --- Device memory ------------------------------------------------------------------------------

using cuda_test::Stream;

// The whole buffer from `h` (of the same size), waiting for the copy.
template <class T>
void upload(const strata::DeviceBuffer<T>& d, const std::vector<T>& h, cudaStream_t s) {
  strata::cuda_check(
      "cudaMemcpyAsync", -1,
      cudaMemcpyAsync(d.data(), h.data(), d.size_bytes(), cudaMemcpyHostToDevice, s));
  strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(s));
}

template <class T>
std::vector<T> download(const strata::DeviceBuffer<T>& d, cudaStream_t s) {
  std::vector<T> h(d.size());
  strata::cuda_check(
      "cudaMemcpyAsync", -1,
      cudaMemcpyAsync(h.data(), d.data(), d.size_bytes(), cudaMemcpyDeviceToHost, s));
  strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(s));
  return h;
}

// Tensor k starts 0, 1 or 2 elements past a 16-byte boundary, after at least one guard element.
template <class T>
std::vector<std::size_t> layout(const std::vector<std::size_t>& sizes, std::size_t& extent) {
  constexpr std::size_t per_vector = 16 / sizeof(T);
  std::vector<std::size_t> starts;
  std::size_t cursor = 0;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    cursor = (cursor + 1 + per_vector - 1) / per_vector * per_vector + k % 3;
    starts.push_back(cursor);
    cursor += sizes[k];
  }
  extent = cursor + per_vector;
  return starts;
}

// Compares `got` with `want` element by element; `nan_equal` lets any NaN match any NaN.
template <class T>
void compare(const std::vector<T>& got, const std::vector<T>& want, bool nan_equal,
             const std::string& what) {
  if (got.size() != want.size()) {
    fail(what + ": size " + std::to_string(got.size()) + " != " + std::to_string(want.size()));
    return;
  }
  std::size_t bad = 0;
  std::size_t first = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool ok = same_bits(got[i], want[i]) || (nan_equal && is_nan(got[i]) && is_nan(want[i]));
    if (!ok && bad++ == 0) first = i;
  }
  if (bad != 0) {
    fail(what + ": " + std::to_string(bad) + " of " + std::to_string(got.size()) +
         " elements differ, the first at " + std::to_string(first));
  }
}

template <class T>
void check_case(const std::vector<std::size_t>& sizes, std::size_t chunk, std::size_t shift,
                std::uint32_t seed, cudaStream_t stream) {
  constexpr std::size_t per_vector = 16 / sizeof(T);
  const auto factor = test_factor<T>();
  const std::string label =
      std::string(type_name<T>()) + ", " + std::to_string(sizes.size()) + " tensors (seed " +
      std::to_string(seed) + "), chunk " +
      (chunk == std::numeric_limits<std::size_t>::max() ? std::string("unbounded")
                                                        : std::to_string(chunk)) +
      ", flat +" + std::to_string(shift);

  std::size_t extent = 0;
  const std::vector<std::size_t> starts = layout<T>(sizes, extent);
  std::mt19937 gen(seed);
  std::vector<T> model(extent, sentinel<T>());
  std::vector<T> concat;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    for (std::size_t i = 0; i < sizes[k]; ++i) {
      model[starts[k] + i] = random_value<T>(gen);
      concat.push_back(model[starts[k] + i]);
    }
  }
  std::vector<T> scaled(concat.size());
  for (std::size_t i = 0; i < concat.size(); ++i) scaled[i] = reference_scale(concat[i], factor);

  const strata::DeviceBuffer<T> d_model(extent);
  upload(d_model, model, stream);
  std::vector<std::span<T>> tensors;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    tensors.emplace_back(d_model.data() + starts[k], sizes[k]);
  }
  const strata::FusedPlan<T> plan(tensors, chunk);
  const strata::DeviceChunkTable<T> table(plan, stream);
  const std::size_t total = plan.total_elements();
  if (total != concat.size() || table.total_elements() != total ||
      table.chunk_count() != plan.chunks().size()) {
    fail(label + ": the table does not describe the plan");
    return;
  }

  // The flat buffer sits `shift` elements into an allocation with guards on both sides.
  const strata::DeviceBuffer<T> d_flat(shift + total + per_vector);
  const std::span<T> flat(d_flat.data() + shift, total);
  const auto with_guards = [&](const std::vector<T>& inside) {
    std::vector<T> v(shift + total + per_vector, sentinel<T>());
    std::copy(inside.begin(), inside.end(), v.begin() + static_cast<std::ptrdiff_t>(shift));
    return v;
  };
  const auto model_with = [&](const std::vector<T>& flat_values) {
    std::vector<T> v(extent, sentinel<T>());
    std::size_t at = 0;
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      for (std::size_t i = 0; i < sizes[k]; ++i) v[starts[k] + i] = flat_values[at++];
    }
    return v;
  };

  // pack: a copy, then scaled.
  upload(d_flat, with_guards({}), stream);
  strata::device_pack(table, flat, stream);
  compare(download(d_flat, stream), with_guards(concat), false, label + ": pack");
  strata::device_pack(table, flat, stream, factor);
  compare(download(d_flat, stream), with_guards(scaled), true, label + ": pack scaled");

  // unpack: scaled, then a copy that restores the model bit for bit.
  upload(d_flat, with_guards(concat), stream);
  upload(d_model, std::vector<T>(extent, sentinel<T>()), stream);
  strata::device_unpack(flat, table, stream, factor);
  compare(download(d_model, stream), model_with(scaled), true, label + ": unpack scaled");
  strata::device_unpack(flat, table, stream);
  compare(download(d_model, stream), model, false, label + ": unpack");

  // scale in place, and a scale by 1 that must leave every bit alone.
  strata::device_scale(flat, factor, stream);
  compare(download(d_flat, stream), with_guards(scaled), true, label + ": scale");
  upload(d_flat, with_guards(concat), stream);
  strata::device_scale(flat, strata::fused_factor_t<T>(1), stream);
  compare(download(d_flat, stream), with_guards(concat), false, label + ": scale by 1");
}

std::vector<std::vector<std::size_t>> size_sets() {
  std::vector<std::vector<std::size_t>> sets = {
      {},
      {0},
      {1},
      {0, 1, 0, 3, 7, 0},
      {5, 33, 2, 64, 65, 1000, 17, 4097},
      {70001, 131, 16384, 16385, 1},
      {(std::size_t{1} << 20) + 3},
  };
  std::vector<std::size_t> many;  // 1000 small tensors, some empty
  for (std::size_t k = 0; k < 1000; ++k) many.push_back(k * 37 % 61);
  sets.push_back(many);
  return sets;
}

template <class T>
void check_type(cudaStream_t stream) {
  const std::size_t chunks[] = {1, 7, 256, strata::default_chunk_elements,
                                std::numeric_limits<std::size_t>::max()};
  const auto sets = size_sets();
  for (std::size_t s = 0; s < sets.size(); ++s) {
    for (const std::size_t chunk : chunks) {
      // One element per chunk over a million elements proves nothing the smaller sets do not.
      std::size_t total = 0;
      for (const std::size_t n : sets[s]) total += n;
      if (chunk == 1 && total > 200000) continue;
      for (const std::size_t shift : {std::size_t{0}, std::size_t{1}}) {
        check_case<T>(sets[s], chunk, shift, static_cast<std::uint32_t>(s * 7919 + chunk % 997),
                      stream);
      }
    }
  }
}

// --- Graph capture ------------------------------------------------------------------------------

void check_graph(cudaStream_t stream) {
  const std::vector<std::size_t> sizes = [] {
    std::vector<std::size_t> v;
    for (std::size_t k = 0; k < 1000; ++k) v.push_back(k * 13 % 29);
    v.push_back(50001);
    return v;
  }();
  std::size_t extent = 0;
  const std::vector<std::size_t> starts = layout<float>(sizes, extent);
  std::mt19937 gen(99);
  std::vector<float> model(extent, sentinel<float>());
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    for (std::size_t i = 0; i < sizes[k]; ++i) {
      model[starts[k] + i] = std::uniform_real_distribution<float>(-100, 100)(gen);
    }
  }
  const strata::DeviceBuffer<float> d_model(extent);
  upload(d_model, model, stream);
  std::vector<std::span<float>> tensors;
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    tensors.emplace_back(d_model.data() + starts[k], sizes[k]);
  }
  const strata::FusedPlan<float> plan(tensors, 1024);
  strata::DeviceChunkTable<float> table(plan, stream);
  const strata::DeviceBuffer<float> d_flat(plan.total_elements());

  // One step of an averaging over g = 4 ranks whose sum is 3x: x -> (3x) / 4, rounded each time.
  // The pack is scaled by 3 to stand in for the collective, the unpack by 1/4.
  constexpr float sum_factor = 3.0f;
  constexpr float mean_factor = 0.25f;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  strata::cuda_check("cudaStreamBeginCapture", -1,
                     cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const cudaError_t packed = strata::cuda::pack(table.view(), d_flat.data(), sum_factor, stream);
  const cudaError_t unpacked =
      strata::cuda::unpack<float>(d_flat.data(), table.view(), mean_factor, stream);
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  strata::cuda_check("strata::cuda::pack (captured)", -1, packed);
  strata::cuda_check("strata::cuda::unpack (captured)", -1, unpacked);
  strata::cuda_check("cudaStreamEndCapture", -1, ended);
  strata::cuda_check("cudaGraphInstantiate", -1, cudaGraphInstantiate(&exec, graph, 0));

  std::size_t nodes = 0;
  strata::cuda_check("cudaGraphGetNodes", -1, cudaGraphGetNodes(graph, nullptr, &nodes));
  if (nodes != 2) fail("graph: " + std::to_string(nodes) + " nodes captured, not 2");

  const auto step = [&](std::vector<float>& m) {
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      for (std::size_t i = 0; i < sizes[k]; ++i) {
        float& x = m[starts[k] + i];
        x = (x * sum_factor) * mean_factor;
      }
    }
  };
  std::vector<float> want = model;
  for (int replay = 1; replay <= 3; ++replay) {
    strata::cuda_check("cudaGraphLaunch", -1, cudaGraphLaunch(exec, stream));
    step(want);
    compare(download(d_model, stream), want, false, "graph replay " + std::to_string(replay));
  }

  // Re-planning the same tensors reuses the allocation, so the graph still reads the table.
  const auto* before = table.view().chunks;
  const std::size_t capacity = table.capacity();
  table.assign(strata::FusedPlan<float>(tensors, 1024), stream);
  if (table.view().chunks != before || table.capacity() != capacity) {
    fail("assign of a plan of the same size reallocated the table");
  }
  strata::cuda_check("cudaGraphLaunch", -1, cudaGraphLaunch(exec, stream));
  step(want);
  compare(download(d_model, stream), want, false, "graph replay after assign");

  (void)cudaGraphExecDestroy(exec);
  (void)cudaGraphDestroy(graph);
}

// --- The table and the wrappers -----------------------------------------------------------------

void check_api(cudaStream_t stream) {
  const strata::DeviceBuffer<float> d(64);
  std::vector<std::span<float>> tensors{{d.data(), 10}, {d.data() + 16, 20}};
  const strata::FusedPlan<float> plan(tensors, 8);
  strata::DeviceChunkTable<float> table(plan, stream);
  if (table.chunk_count() != 5 || table.total_elements() != 30 || table.capacity() != 5) {
    fail("DeviceChunkTable does not hold the plan's 5 chunks");
  }

  // Growing, then shrinking, which keeps the allocation.
  const std::vector<std::span<float>> more{{d.data(), 64}};
  table.assign(strata::FusedPlan<float>(more, 4), stream);
  if (table.capacity() != 16 || table.chunk_count() != 16) fail("assign did not grow the table");
  const auto* grown = table.view().chunks;
  table.assign(plan, stream);
  if (table.view().chunks != grown || table.capacity() != 16 || table.chunk_count() != 5) {
    fail("assign of a smaller plan reallocated the table");
  }

  strata::DeviceChunkTable<float> moved(std::move(table));
  if (table.view().chunks != nullptr || table.chunk_count() != 0 || moved.chunk_count() != 5) {
    fail("a moved-from DeviceChunkTable is not empty");
  }

  // Size mismatches throw before anything is enqueued.
  const strata::DeviceBuffer<float> flat(31);
  bool threw = false;
  try {
    strata::device_pack(moved, std::span<float>(flat.data(), 31), stream);
  } catch (const std::invalid_argument& e) {
    threw = std::string(e.what()) ==
            "device_pack: the flat buffer holds 31 elements but the tensors hold 30";
  }
  if (!threw) fail("device_pack accepted a flat buffer of the wrong size");
  threw = false;
  try {
    strata::device_unpack(std::span<const float>(flat.data(), 29), moved, stream);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  if (!threw) fail("device_unpack accepted a flat buffer of the wrong size");

  // The status API: bad pointers are refused, empty work launches nothing.
  const strata::ChunkTable<float> broken{nullptr, 3, 30};
  if (strata::cuda::pack(broken, flat.data(), 1.0f, stream) != cudaErrorInvalidValue) {
    fail("pack accepted a table with no chunks pointer");
  }
  if (strata::cuda::unpack<float>(nullptr, moved.view(), 1.0f, stream) != cudaErrorInvalidValue) {
    fail("unpack accepted a null flat buffer");
  }
  if (strata::cuda::pack(strata::ChunkTable<float>{}, static_cast<float*>(nullptr), 2.0f, stream) !=
          cudaSuccess ||
      strata::cuda::scale(static_cast<float*>(nullptr), 0, 2.0f, stream) != cudaSuccess) {
    fail("empty work was not a no-op");
  }
  const strata::DeviceChunkTable<float> empty;
  strata::device_pack(empty, std::span<float>(), stream);
  strata::device_unpack(std::span<const float>(), empty, stream, 0.5f);
  strata::cuda_check("cudaStreamSynchronize", -1, cudaStreamSynchronize(stream));
}

}  // namespace

TEST_SUITE("host") {
  TEST_CASE_TEMPLATE("the block agent moves every element exactly once, run on the host", T, float,
                     double, __half, __nv_bfloat16, std::int8_t) {
    simulate_agent<T>();
  }
}

TEST_CASE("DeviceChunkTable and the throwing wrappers") {
  const Stream stream;
  check_api(stream);
}

TEST_CASE_TEMPLATE("pack, unpack and scale agree with the serial reference", T, float, double,
                   __half, __nv_bfloat16, std::int32_t, std::int8_t) {
  const Stream stream;
  check_type<T>(stream);
}

TEST_CASE("a pack and unpack captured in a CUDA graph replay, also after an assign") {
  const Stream stream;
  check_graph(stream);
}
