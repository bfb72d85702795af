#pragma once
//! \file
//! CUDA's 16-bit floats, `__half` and `__nv_bfloat16`, as elements of the fused kernels (target
//! `strata::cuda`). Host code: it builds with g++ against the CUDA headers, no nvcc and no GPU
//! needed, because CUDA's headers define the conversions to and from `float` for the host too.
//! Include it wherever the fused kernels (`strata/kernels/fused.hpp` on the host,
//! `strata/kernels/multi_tensor.cuh` on the device) see these types.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "strata/kernels/fused.hpp"

// The fused kernels scale a reduced float as `T(float(x) * factor)`. Builds that define
// __CUDA_NO_HALF_CONVERSIONS__ or __CUDA_NO_BFLOAT16_CONVERSIONS__ (PyTorch extensions do) remove
// those conversions; fail here with the reason rather than deep inside a kernel.
static_assert(std::is_constructible_v<__half, float> && std::is_constructible_v<float, __half>,
              "strata/cuda/half.hpp: __half must convert to and from float; do not define "
              "__CUDA_NO_HALF_CONVERSIONS__ in translation units that use strata's fused kernels");
static_assert(std::is_constructible_v<__nv_bfloat16, float> &&
                  std::is_constructible_v<float, __nv_bfloat16>,
              "strata/cuda/half.hpp: __nv_bfloat16 must convert to and from float; do not define "
              "__CUDA_NO_BFLOAT16_CONVERSIONS__ in translation units that use strata's fused "
              "kernels");

namespace strata {

//! `__half` (IEEE binary16) is a reduced float: the fused kernels move it and scale it in
//! `float`.
//!
//! \code
//! static_assert(strata::fusable<__half> && !strata::fusable<const __half>);
//! static_assert(std::is_same_v<strata::fused_factor_t<__half>, float>);
//! \endcode
template <>
inline constexpr bool is_reduced_float_v<__half> = true;

//! `__nv_bfloat16` (bfloat16) is a reduced float: the fused kernels move it and scale it in
//! `float`.
//!
//! \code
//! static_assert(strata::fusable<__nv_bfloat16>);
//! static_assert(std::is_same_v<strata::fused_factor_t<__nv_bfloat16>, float>);
//! \endcode
template <>
inline constexpr bool is_reduced_float_v<__nv_bfloat16> = true;

//! An element type of the fused kernels that is scaled in `float`: `__half`, `__nv_bfloat16`, or
//! any other type for which `is_reduced_float_v` is specialised.
//!
//! \code
//! static_assert(strata::reduced_float<__half> && strata::reduced_float<__nv_bfloat16>);
//! static_assert(!strata::reduced_float<float> && !strata::reduced_float<const __half>);
//!
//! // The host path takes them like any other element type.
//! std::vector<__half> w{__half(1.0f), __half(3.0f)};
//! std::vector<std::span<__half>> tensors{w};
//! std::vector<__half> flat(2);
//! strata::pack(thrust::seq, tensors, flat, 0.5f);
//! assert(static_cast<float>(flat[0]) == 0.5f && static_cast<float>(flat[1]) == 1.5f);
//! \endcode
template <class T>
concept reduced_float = fusable<T> && is_reduced_float_v<T>;

}  // namespace strata
