#pragma once
//! \file
//! Fused pack, unpack and scale of many parameter tensors through one flat buffer, so that
//! averaging them takes one collective over the flat buffer instead of one per tensor.
//!
//! Every function takes a Thrust execution policy first and runs where that policy runs:
//! `thrust::seq`, `thrust::host` or `thrust::cpp::par` on the host (host translation units are
//! compiled with `THRUST_DEVICE_SYSTEM=THRUST_DEVICE_SYSTEM_CPP`), `thrust::device` or
//! `thrust::cuda::par.on(stream)` under nvcc. The work is cut into chunks of consecutive elements
//! of one tensor; Thrust runs one functor call per chunk, whose body is a plain contiguous loop
//! that the host compiler vectorises. On a GPU one thread per chunk is correct but slow: the
//! kernels of `strata/kernels/multi_tensor.cuh` give each chunk a whole block and read the same
//! plans. The functors here stay device-compatible (raw pointers only), so this path compiles and
//! runs under nvcc too.
//!
//! Elements are arithmetic types, or CUDA's `__half` and `__nv_bfloat16` (see
//! `is_reduced_float_v`) in translation units that include CUDA's headers for them, as
//! `strata/cuda/half.hpp` does; this header itself needs no CUDA. The flat buffer must not overlap
//! any of the tensors.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <thrust/execution_policy.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/type_traits/is_execution_policy.h>

#include "strata/detail/host_device.hpp"

// CUDA's 16-bit floats, declared as CUDA's own headers declare them: naming them needs no CUDA,
// and a translation unit that uses them has included their definitions (strata/cuda/half.hpp).
struct __half;
struct __nv_bfloat16;

namespace strata {

//! Customisation point: true for a 16-bit floating-point class type that converts explicitly to
//! and from `float`, as CUDA's `__half` and `__nv_bfloat16` (specialised here) do. Such a type
//! joins the fused kernels, which scale it in `float` (see `fused_factor_t`). Specialise it only
//! for cv-unqualified types, before the first use of the type with the fused kernels.
//!
//! \code
//! static_assert(strata::is_reduced_float_v<__half> && strata::is_reduced_float_v<__nv_bfloat16>);
//! static_assert(!strata::is_reduced_float_v<float> && !strata::is_reduced_float_v<int>);
//! \endcode
template <class T>
inline constexpr bool is_reduced_float_v = false;
template <>
inline constexpr bool is_reduced_float_v<__half> = true;
template <>
inline constexpr bool is_reduced_float_v<__nv_bfloat16> = true;

//! Element types the fused kernels move: arithmetic, but not `bool` (scaling a flag has no
//! meaning) and not cv-qualified (the same type is read and written); or a reduced float (see
//! `is_reduced_float_v`).
//!
//! \code
//! static_assert(strata::fusable<float> && strata::fusable<long long>);
//! static_assert(!strata::fusable<bool> && !strata::fusable<const float>);
//! \endcode
template <class T>
concept fusable = std::same_as<T, std::remove_cv_t<T>> &&
    ((std::is_arithmetic_v<T> && !std::same_as<T, bool>) || is_reduced_float_v<T>);

//! The type of the factor that scales elements of type `T`: `T` itself for arithmetic types,
//! `float` for reduced floats. A factor such as 1/3 rounded to a half is off by up to 2^-11 of
//! its value (2^-8 for bfloat16), an error every element would inherit; kept in `float`, each
//! element is multiplied in `float` and rounded to `T` once, the same on host and device.
//!
//! \code
//! static_assert(std::is_same_v<strata::fused_factor_t<double>, double>);
//! static_assert(std::is_same_v<strata::fused_factor_t<int>, int>);
//! \endcode
template <fusable T>
using fused_factor_t = std::conditional_t<is_reduced_float_v<T>, float, T>;

//! An element type of the fused kernels that is scaled in `float`: `__half`, `__nv_bfloat16`, or
//! any other type for which `is_reduced_float_v` is specialised.
//!
//! \code
//! static_assert(!strata::reduced_float<float> && !strata::reduced_float<int>);
//! static_assert(!strata::reduced_float<const __half>);  // not fusable: cv-qualified
//! \endcode
template <class T>
concept reduced_float = fusable<T> && is_reduced_float_v<T>;

//! A Thrust execution policy: `thrust::seq`, `thrust::host`, `thrust::device`, `thrust::cpp::par`.
//!
//! \code
//! static_assert(strata::thrust_policy<decltype(thrust::seq)>);
//! static_assert(!strata::thrust_policy<int>);
//! \endcode
template <class P>
concept thrust_policy = thrust::is_execution_policy<std::remove_cvref_t<P>>::value;

namespace detail {

template <class S>
struct span_element {};
template <class T>
struct span_element<std::span<T>> {
  using type = T;
};

// Thrust's sequential, cpp, omp and tbb systems all derive from the sequential one: those
// policies run on host threads and may read tables kept in host memory.
template <class P>
inline constexpr bool host_policy =
    std::is_base_of_v<thrust::system::detail::sequential::execution_policy<std::remove_cvref_t<P>>,
                      std::remove_cvref_t<P>>;

}  // namespace detail

//! A list of tensors of one element type: any range of `std::span<T>`, such as
//! `std::vector<std::span<T>>` or `std::span<const std::span<T>>`.
//!
//! \code
//! static_assert(strata::tensor_list<std::vector<std::span<float>>>);
//! static_assert(strata::tensor_list<std::span<const std::span<double>>>);
//! static_assert(!strata::tensor_list<std::vector<float>>);
//! \endcode
template <class R>
concept tensor_list = std::ranges::forward_range<const R&> && requires {
  typename detail::span_element<std::ranges::range_value_t<const R&>>::type;
} && fusable<typename detail::span_element<std::ranges::range_value_t<const R&>>::type>;

//! The element type of a tensor list.
//!
//! \code
//! static_assert(std::is_same_v<strata::tensor_element_t<std::vector<std::span<int>>>, int>);
//! \endcode
template <tensor_list R>
using tensor_element_t = typename detail::span_element<std::ranges::range_value_t<const R&>>::type;

//! Elements per chunk unless the caller says otherwise: large enough that the per-chunk overhead
//! vanishes on the host, small enough that a parallel host policy balances its threads.
//!
//! \code
//! static_assert(strata::default_chunk_elements == 16384);
//! \endcode
inline constexpr std::size_t default_chunk_elements = 16384;

//! The number of elements of all the tensors together: the size their flat buffer must have.
//!
//! \code
//! std::vector<double> a(3), b(4);
//! std::vector<std::span<double>> tensors{a, b};
//! assert(strata::total_elements(tensors) == 7);
//! \endcode
template <tensor_list Tensors>
[[nodiscard]] std::size_t total_elements(const Tensors& tensors) noexcept {
  std::size_t n = 0;
  for (const auto& tensor : tensors) n += tensor.size();
  return n;
}

//! A run of consecutive elements that lies inside one tensor: the unit of work of the kernels.
//!
//! \code
//! float x[8]{};
//! const strata::TensorChunk<float> c{x + 4, 12, 4};  // x[4..8) is flat[12..16)
//! assert(c.data == x + 4 && c.offset == 12 && c.length == 4);
//! \endcode
template <fusable T>
struct TensorChunk {
  T* data;             //!< the chunk's first element, inside its tensor
  std::size_t offset;  //!< where that element sits in the flat buffer
  std::size_t length;  //!< how many elements the chunk holds
};

//! A non-owning view of a chunk table; the kernels read it where the policy runs, so for
//! `thrust::device` the chunks must be in device (or managed) memory: copy `FusedPlan::chunks()`
//! there and describe the copy with a `ChunkTable`.
//!
//! \code
//! std::vector<int> a{1, 2, 3};
//! std::vector<std::span<int>> tensors{a};
//! const strata::FusedPlan plan(tensors);
//! const strata::ChunkTable<int> table = plan.table();
//! assert(table.chunk_count == 1 && table.total_elements == 3);
//! \endcode
template <fusable T>
struct ChunkTable {
  const TensorChunk<T>* chunks = nullptr;  //!< `chunk_count` chunks, in flat order
  std::size_t chunk_count = 0;
  std::size_t total_elements = 0;  //!< the size the flat buffer must have
};

//! How a list of tensors maps onto a flat buffer, cut into chunks of at most `chunk_elements`
//! elements, each inside one tensor; tensor k fills the flat buffer right after tensor k-1, with
//! no gaps. Built once on the host and reused for as long as the tensors neither move nor
//! resize: an averager packs the same tensors at every step, and rebuilding the plan each time
//! would cost an allocation per call.
//!
//! \code
//! std::vector<float> a(5, 1.0f), b(2, 2.0f);
//! std::vector<std::span<float>> tensors{a, b};
//! const strata::FusedPlan plan(tensors, /*chunk_elements=*/2);
//! assert(plan.total_elements() == 7 && plan.tensor_count() == 2);
//! assert(plan.chunks().size() == 4);  // a: 2 + 2 + 1, b: 2
//! \endcode
template <fusable T>
class FusedPlan {
 public:
  using value_type = T;

  //! Plans `tensors`; throws `std::invalid_argument` if `chunk_elements` is 0.
  template <tensor_list Tensors>
  requires std::same_as<tensor_element_t<Tensors>, T>
  explicit FusedPlan(const Tensors& tensors, std::size_t chunk_elements = default_chunk_elements)
      : chunk_elements_(chunk_elements) {
    if (chunk_elements == 0) {
      throw std::invalid_argument("FusedPlan: chunk_elements must be positive");
    }
    std::size_t count = 0;
    for (const std::span<T> tensor : tensors) {
      count += tensor.size() / chunk_elements + (tensor.size() % chunk_elements != 0 ? 1 : 0);
    }
    chunks_.reserve(count);
    first_chunk_.push_back(0);
    for (const std::span<T> tensor : tensors) {
      // Written as a difference, never as begin + chunk_elements, which may overflow.
      for (std::size_t begin = 0; begin < tensor.size();) {
        const std::size_t length = std::min(chunk_elements, tensor.size() - begin);
        chunks_.push_back(TensorChunk<T>{tensor.data() + begin, total_ + begin, length});
        begin += length;
      }
      total_ += tensor.size();
      ++tensor_count_;
      first_chunk_.push_back(chunks_.size());
    }
  }

  [[nodiscard]] std::size_t total_elements() const noexcept { return total_; }
  [[nodiscard]] std::size_t tensor_count() const noexcept { return tensor_count_; }
  [[nodiscard]] std::size_t chunk_elements() const noexcept { return chunk_elements_; }
  //! The chunks in flat order; empty tensors have none.
  [[nodiscard]] std::span<const TensorChunk<T>> chunks() const noexcept { return chunks_; }
  //! A view of the chunks, which live in host memory.
  [[nodiscard]] ChunkTable<T> table() const noexcept {
    return {chunks_.data(), chunks_.size(), total_};
  }
  //! A view of the chunks of tensors `[first, last)` only, at their places in the whole flat
  //! buffer (its size is still `total_elements()`): to pack or unpack part of the tensors, or
  //! each part with a factor of its own. Throws `std::invalid_argument` unless
  //! `first <= last <= tensor_count()`.
  [[nodiscard]] ChunkTable<T> table(std::size_t first, std::size_t last) const {
    if (first > last || last > tensor_count_) {
      throw std::invalid_argument("FusedPlan::table: tensors [" + std::to_string(first) + ", " +
                                  std::to_string(last) + ") of " + std::to_string(tensor_count_));
    }
    return {chunks_.data() + first_chunk_[first], first_chunk_[last] - first_chunk_[first], total_};
  }

 private:
  std::vector<TensorChunk<T>> chunks_;
  std::vector<std::size_t> first_chunk_;
  std::size_t total_ = 0;
  std::size_t tensor_count_ = 0;
  std::size_t chunk_elements_;
};

template <tensor_list Tensors>
FusedPlan(const Tensors&, std::size_t = default_chunk_elements)
    -> FusedPlan<tensor_element_t<Tensors>>;

namespace detail {

// The one formula every path uses, host and device, so that all of them agree bitwise. A
// reduced float goes through float: its own arithmetic, where there is any, would first round
// the factor to 16 bits.
template <class T>
STRATA_HOST_DEVICE inline T scale_element(T x, fused_factor_t<T> factor) {
  if constexpr (is_reduced_float_v<T>) {
    return static_cast<T>(static_cast<float>(x) * factor);
  } else {
    return static_cast<T>(x * factor);
  }
}

// Scaling by exactly 1 is a plain copy: a multiply would turn signalling NaNs quiet, and the
// averaging contract is bitwise reproducibility. On the host the copy is a memcpy and the scaled
// loop runs in fixed blocks of 16, which g++ vectorises at -O2 (a loop of unknown length it
// vectorises only at -O3); the device keeps one plain loop.
template <bool Scaled, class T>
STRATA_HOST_DEVICE inline void move_elements(const T* src, T* dst, std::size_t n,
                                             [[maybe_unused]] fused_factor_t<T> factor) {
#if defined(__CUDA_ARCH__)
  if constexpr (Scaled) {
    for (std::size_t i = 0; i < n; ++i) dst[i] = scale_element(src[i], factor);
  } else {
    for (std::size_t i = 0; i < n; ++i) dst[i] = src[i];
  }
#else
  if constexpr (Scaled) {
    constexpr std::size_t block = 16;
    std::size_t i = 0;
    for (; i + block <= n; i += block) {
      for (std::size_t k = 0; k < block; ++k) dst[i + k] = scale_element(src[i + k], factor);
    }
    for (; i < n; ++i) dst[i] = scale_element(src[i], factor);
  } else if (n != 0 && src != dst) {
    std::memcpy(dst, src, n * sizeof(T));
  }
#endif
}

template <class T, bool Scaled>
struct PackChunks {
  const TensorChunk<T>* chunks;
  T* flat;
  fused_factor_t<T> factor;
  STRATA_HOST_DEVICE void operator()(std::size_t c) const {
    const TensorChunk<T> chunk = chunks[c];
    move_elements<Scaled>(chunk.data, flat + chunk.offset, chunk.length, factor);
  }
};

template <class T, bool Scaled>
struct UnpackChunks {
  const TensorChunk<T>* chunks;
  const T* flat;
  fused_factor_t<T> factor;
  STRATA_HOST_DEVICE void operator()(std::size_t c) const {
    const TensorChunk<T> chunk = chunks[c];
    move_elements<Scaled>(flat + chunk.offset, chunk.data, chunk.length, factor);
  }
};

template <class T>
struct ScaleChunks {
  T* data;
  std::size_t size;
  std::size_t chunk_elements;
  fused_factor_t<T> factor;
  STRATA_HOST_DEVICE void operator()(std::size_t c) const {
    const std::size_t begin = c * chunk_elements;
    const std::size_t left = size - begin;
    T* p = data + begin;
    move_elements<true>(p, p, left < chunk_elements ? left : chunk_elements, factor);
  }
};

template <class Policy, class F>
void for_each_index(const Policy& policy, std::size_t count, F f) {
  if (count == 0) return;  // nothing to launch
  thrust::for_each_n(policy, thrust::counting_iterator<std::size_t>(0), count, f);
}

inline void check_flat_size(const char* operation, std::size_t flat, std::size_t tensors) {
  if (flat != tensors) {
    throw std::invalid_argument(std::string(operation) + ": the flat buffer holds " +
                                std::to_string(flat) + " elements but the tensors hold " +
                                std::to_string(tensors));
  }
}

inline void check_chunk_elements(const char* operation, std::size_t chunk_elements) {
  if (chunk_elements == 0) {
    throw std::invalid_argument(std::string(operation) + ": chunk_elements must be positive");
  }
}

}  // namespace detail

//! Copies the tensors of `table` into `flat` (`flat[offset + i] = tensor[i] * factor`), one
//! functor call per chunk. `factor == 1` copies without multiplying, so the copy is bit-exact.
//! Throws `std::invalid_argument`, before writing anything, unless `flat` has exactly
//! `table.total_elements` elements. Any policy: the table must be readable where it runs.
//!
//! \code
//! std::vector<float> a{1, 2}, b{3};
//! std::vector<std::span<float>> tensors{a, b};
//! const strata::FusedPlan plan(tensors);
//! std::vector<float> flat(3);
//! strata::pack(thrust::seq, plan.table(), flat, 2.0f);
//! assert((flat == std::vector<float>{2, 4, 6}));
//! \endcode
template <thrust_policy Policy, fusable T>
void pack(const Policy& policy, ChunkTable<T> table, std::type_identity_t<std::span<T>> flat,
          fused_factor_t<T> factor = fused_factor_t<T>(1)) {
  detail::check_flat_size("pack", flat.size(), table.total_elements);
  if (factor == fused_factor_t<T>(1)) {
    detail::for_each_index(policy, table.chunk_count,
                           detail::PackChunks<T, false>{table.chunks, flat.data(), factor});
  } else {
    detail::for_each_index(policy, table.chunk_count,
                           detail::PackChunks<T, true>{table.chunks, flat.data(), factor});
  }
}

//! Packs with a prebuilt plan, the form to use at every step. Its table is in host memory, so
//! only host policies are accepted; for `thrust::device` copy the chunks to the device and pass
//! a `ChunkTable`.
//!
//! \code
//! std::vector<double> a{1, 2}, b{3};
//! std::vector<std::span<double>> tensors{a, b};
//! const strata::FusedPlan plan(tensors);
//! std::vector<double> flat(plan.total_elements());
//! strata::pack(thrust::host, plan, flat);
//! a[0] = 9;
//! strata::pack(thrust::host, plan, flat);  // same plan, next step
//! assert((flat == std::vector<double>{9, 2, 3}));
//! \endcode
template <thrust_policy Policy, fusable T>
void pack(const Policy& policy, const FusedPlan<T>& plan, std::type_identity_t<std::span<T>> flat,
          fused_factor_t<T> factor = fused_factor_t<T>(1)) {
  static_assert(detail::host_policy<Policy>,
                "pack: a FusedPlan keeps its chunks in host memory; with a device "
                "policy, copy plan.chunks() to device memory and pass a ChunkTable");
  pack(policy, plan.table(), flat, factor);
}

//! Packs a tensor list, planning it on the fly (one allocation per call; reuse a `FusedPlan`
//! when the same tensors are packed again). Host policies only, as for a `FusedPlan`.
//!
//! \code
//! std::vector<int> a{1, 2}, b{}, c{3};
//! std::vector<std::span<int>> tensors{a, b, c};
//! std::vector<int> flat(3);
//! strata::pack(thrust::seq, tensors, flat);
//! assert((flat == std::vector<int>{1, 2, 3}));
//! \endcode
template <thrust_policy Policy, tensor_list Tensors>
void pack(
    const Policy& policy, const Tensors& tensors, std::span<tensor_element_t<Tensors>> flat,
    fused_factor_t<tensor_element_t<Tensors>> factor = fused_factor_t<tensor_element_t<Tensors>>(1),
    std::size_t chunk_elements = default_chunk_elements) {
  static_assert(detail::host_policy<Policy>,
                "pack: a tensor list is planned in host memory; with a device policy, "
                "copy the chunks of a FusedPlan to device memory and pass a ChunkTable");
  detail::check_flat_size("pack", flat.size(), total_elements(tensors));
  detail::check_chunk_elements("pack", chunk_elements);
  pack(policy, FusedPlan<tensor_element_t<Tensors>>(tensors, chunk_elements), flat, factor);
}

//! Copies `flat` back into the tensors of `table` (`tensor[i] = flat[offset + i] * factor`): the
//! end of an averaging, with the 1/g of the mean fused in as `factor`. `factor == 1` copies
//! bit-exactly. Throws `std::invalid_argument`, before writing anything, unless `flat` has
//! exactly `table.total_elements` elements. Any policy: the table must be readable where it runs.
//!
//! \code
//! std::vector<float> a(2), b(1);
//! std::vector<std::span<float>> tensors{a, b};
//! const strata::FusedPlan plan(tensors);
//! const std::vector<float> flat{2, 4, 6};
//! strata::unpack(thrust::seq, flat, plan.table(), 0.5f);
//! assert(a[0] == 1 && a[1] == 2 && b[0] == 3);
//! \endcode
template <thrust_policy Policy, fusable T>
void unpack(const Policy& policy, std::type_identity_t<std::span<const T>> flat,
            ChunkTable<T> table, fused_factor_t<T> factor = fused_factor_t<T>(1)) {
  detail::check_flat_size("unpack", flat.size(), table.total_elements);
  if (factor == fused_factor_t<T>(1)) {
    detail::for_each_index(policy, table.chunk_count,
                           detail::UnpackChunks<T, false>{table.chunks, flat.data(), factor});
  } else {
    detail::for_each_index(policy, table.chunk_count,
                           detail::UnpackChunks<T, true>{table.chunks, flat.data(), factor});
  }
}

//! Unpacks with a prebuilt plan; host policies only (see `pack`).
//!
//! \code
//! std::vector<double> a(2), b(1);
//! std::vector<std::span<double>> tensors{a, b};
//! const strata::FusedPlan plan(tensors);
//! const std::vector<double> sum{3, 6, 9};  // the sum over 4 ranks
//! strata::unpack(thrust::host, sum, plan, 1.0 / 4);
//! assert(a[0] == 0.75 && a[1] == 1.5 && b[0] == 2.25);
//! \endcode
template <thrust_policy Policy, fusable T>
void unpack(const Policy& policy, std::type_identity_t<std::span<const T>> flat,
            const FusedPlan<T>& plan, fused_factor_t<T> factor = fused_factor_t<T>(1)) {
  static_assert(detail::host_policy<Policy>,
                "unpack: a FusedPlan keeps its chunks in host memory; with a device "
                "policy, copy plan.chunks() to device memory and pass a ChunkTable");
  unpack(policy, flat, plan.table(), factor);
}

//! Unpacks with a prebuilt plan, each tensor with a factor of its own (`factors[t]` for tensor
//! t): tensors that share a factor are unpacked together, one kernel per run of equal factors.
//! A fused all-reduce of several kinds of gradients uses it to average some and keep the sum of
//! others. Host policies only (see `pack`); throws `std::invalid_argument` unless there is one
//! factor per tensor.
//!
//! \code
//! std::vector<double> a(2), b(1);
//! std::vector<std::span<double>> tensors{a, b};
//! const strata::FusedPlan plan(tensors);
//! const std::vector<double> flat{4, 8, 6};
//! const std::vector<double> factors{0.25, 1.0};  // a averaged over 4 ranks, b kept a sum
//! strata::unpack(thrust::host, flat, plan, std::span<const double>(factors));
//! assert(a[0] == 1 && a[1] == 2 && b[0] == 6);
//! \endcode
template <thrust_policy Policy, fusable T>
void unpack(const Policy& policy, std::type_identity_t<std::span<const T>> flat,
            const FusedPlan<T>& plan, std::span<const fused_factor_t<T>> factors) {
  static_assert(detail::host_policy<Policy>,
                "unpack: a FusedPlan keeps its chunks in host memory; with a device "
                "policy, copy plan.chunks() to device memory and pass a ChunkTable");
  if (factors.size() != plan.tensor_count()) {
    throw std::invalid_argument("unpack: " + std::to_string(factors.size()) + " factors for " +
                                std::to_string(plan.tensor_count()) + " tensors");
  }
  detail::check_flat_size("unpack", flat.size(), plan.total_elements());
  for (std::size_t first = 0; first < factors.size();) {
    std::size_t last = first + 1;
    while (last < factors.size() && factors[last] == factors[first]) ++last;
    unpack(policy, flat, plan.table(first, last), factors[first]);
    first = last;
  }
}

//! Unpacks into a tensor list, planning it on the fly; host policies only (see `pack`).
//!
//! \code
//! std::vector<int> a(2), b(1);
//! std::vector<std::span<int>> tensors{a, b};
//! const std::vector<int> flat{1, 2, 3};
//! strata::unpack(thrust::seq, flat, tensors, 10);
//! assert(a[0] == 10 && a[1] == 20 && b[0] == 30);
//! \endcode
template <thrust_policy Policy, tensor_list Tensors>
void unpack(
    const Policy& policy, std::span<const tensor_element_t<Tensors>> flat, const Tensors& tensors,
    fused_factor_t<tensor_element_t<Tensors>> factor = fused_factor_t<tensor_element_t<Tensors>>(1),
    std::size_t chunk_elements = default_chunk_elements) {
  static_assert(detail::host_policy<Policy>,
                "unpack: a tensor list is planned in host memory; with a device policy, "
                "copy the chunks of a FusedPlan to device memory and pass a ChunkTable");
  detail::check_flat_size("unpack", flat.size(), total_elements(tensors));
  detail::check_chunk_elements("unpack", chunk_elements);
  unpack(policy, flat, FusedPlan<tensor_element_t<Tensors>>(tensors, chunk_elements), factor);
}

//! Multiplies every element of `data` by `factor` in place, in chunks of `chunk_elements`; a
//! factor of exactly 1 leaves the data untouched. Needs no table, so any policy works, provided
//! `data` is memory the policy can reach. Throws `std::invalid_argument` if `chunk_elements` is 0.
//!
//! \code
//! std::vector<float> v{1, 2, 3};
//! strata::scale(thrust::seq, v, 0.5f);
//! assert((v == std::vector<float>{0.5f, 1, 1.5f}));
//! \endcode
template <thrust_policy Policy, class Data>
requires std::ranges::contiguous_range<Data> && std::ranges::sized_range<Data> &&
    fusable<std::ranges::range_value_t<Data>> &&
    std::ranges::output_range<Data, std::ranges::range_value_t<Data>>
void scale(const Policy& policy, Data&& data,
           fused_factor_t<std::ranges::range_value_t<Data>> factor,
           std::size_t chunk_elements = default_chunk_elements) {
  using T = std::ranges::range_value_t<Data>;
  detail::check_chunk_elements("scale", chunk_elements);
  if (factor == fused_factor_t<T>(1)) return;
  const auto size = static_cast<std::size_t>(std::ranges::size(data));
  const std::size_t chunks = size / chunk_elements + (size % chunk_elements != 0 ? 1 : 0);
  detail::for_each_index(
      policy, chunks,
      detail::ScaleChunks<T>{std::ranges::data(data), size, chunk_elements, factor});
}

}  // namespace strata
