#pragma once
//! \file
//! `strata::nccl_error` and the element types of the NCCL backend (target `strata::nccl`).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <nccl.h>

#include <concepts>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "strata/comm/communicator.hpp"
#include "strata/comm/detail/call.hpp"
#include "strata/error.hpp"

namespace strata {

//! A failure reported by NCCL; `code()` is the `ncclResult_t`.
//!
//! \code
//! strata::nccl_error e("all_reduce", 1, "ncclAllReduce: unhandled cuda error",
//!                      ncclUnhandledCudaError);
//! assert(e.rank() == 1 && e.code() == ncclUnhandledCudaError);
//! \endcode
class nccl_error : public coded_error<ncclResult_t> {
 public:
  using coded_error::coded_error;
};

//! The element types the NCCL backend moves and reduces: those of every backend, plus half and
//! bfloat16.
//!
//! \code
//! static_assert(strata::nccl_value<__half> && strata::nccl_value<__nv_bfloat16>);
//! static_assert(strata::nccl_value<double> && !strata::nccl_value<char>);
//! \endcode
template <class T>
concept nccl_value = comm_value<T> || std::same_as<T, __half> || std::same_as<T, __nv_bfloat16>;

namespace detail {

template <>
struct element_info<__half> {
  static constexpr std::uint8_t code = half_code;
  static constexpr std::string_view name = "half";
};
template <>
struct element_info<__nv_bfloat16> {
  static constexpr std::uint8_t code = bfloat16_code;
  static constexpr std::string_view name = "bfloat16";
};

namespace nccl {

template <nccl_value T>
constexpr ncclDataType_t datatype() noexcept {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<T, std::int32_t>) return ncclInt32;
  else if constexpr (std::is_same_v<T, std::int64_t>) return ncclInt64;
  else if constexpr (std::is_same_v<T, __half>) return ncclFloat16;
  else return ncclBfloat16;
}

// NCCL's ncclAvg is the truncated quotient of the sum for integers; for floating point it scales
// each input by 1/n before summing (a pre-multiplied sum), which every rank rounds alike.
constexpr ncclRedOp_t reduction(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::average: return ncclAvg;
    case ReduceOp::min: return ncclMin;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

}  // namespace nccl
}  // namespace detail
}  // namespace strata
