#pragma once
//! \file
//! CUDA's 16-bit floats, `__half` and `__nv_bfloat16`, for host and device code (target
//! `strata::cuda`). Host code: it builds with g++ against the CUDA headers, no nvcc and no GPU
//! needed, because CUDA's headers define the conversions to and from `float` for the host too.
//! The fused kernels (`strata/kernels/fused.hpp`, `strata/kernels/multi_tensor.cuh`) take both
//! types as elements and scale them in `float`; include this header wherever they see them, so
//! that a build that removed those conversions fails here, with the reason.
//!
//! \code
//! const __half h(0.75f);
//! const __nv_bfloat16 b(-2.0f);
//! assert(static_cast<float>(h) == 0.75f && static_cast<float>(b) == -2.0f);
//! static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2);
//! \endcode

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

// The fused kernels scale a reduced float as `T(float(x) * factor)`. Builds that define
// __CUDA_NO_HALF_CONVERSIONS__ or __CUDA_NO_BFLOAT16_CONVERSIONS__ (PyTorch extensions do) remove
// those conversions; fail here with the reason rather than deep inside a kernel.
static_assert(std::is_constructible_v<__half, float> && std::is_constructible_v<float, __half>,
              "__half: must convert to and from float for strata's fused kernels; do not define "
              "__CUDA_NO_HALF_CONVERSIONS__ in translation units that use them");
static_assert(std::is_constructible_v<__nv_bfloat16, float> &&
                  std::is_constructible_v<float, __nv_bfloat16>,
              "__nv_bfloat16: must convert to and from float for strata's fused kernels; do not "
              "define __CUDA_NO_BFLOAT16_CONVERSIONS__ in translation units that use them");
