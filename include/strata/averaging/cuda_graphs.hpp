#pragma once
//! \file
//! `strata::CudaGraphs`: the CUDA graph calls of the device averager, as a policy (target
//! `strata::cuda`). Host code: it builds with g++ against the CUDA runtime's headers.

#include <cuda_runtime_api.h>

#include <concepts>
#include <string_view>

#include "strata/cuda/error.hpp"

namespace strata {

//! A policy that captures the work enqueued on a stream into an executable graph and replays
//! it: `begin_capture(s)`, `end_capture(s, &exec)` (ends and instantiates), `launch(exec, s)`,
//! `destroy(exec)`, and `check(call, rank, status)` that throws for a failed status.
//!
//! \code
//! static_assert(strata::graph_policy<strata::CudaGraphs>);
//! static_assert(!strata::graph_policy<int>);
//! \endcode
template <class G>
concept graph_policy = requires(typename G::stream_handle s, typename G::graph_handle g,
                                typename G::error_type e) {
  { G::success } -> std::convertible_to<typename G::error_type>;
  { G::begin_capture(s) } -> std::same_as<typename G::error_type>;
  { G::end_capture(s, &g) } -> std::same_as<typename G::error_type>;
  { G::launch(g, s) } -> std::same_as<typename G::error_type>;
  { G::destroy(g) } -> std::same_as<typename G::error_type>;
  G::check(std::string_view{}, 0, e);
};

//! CUDA's graphs. Capture is thread-local: NCCL's own host-side work on other threads must not
//! join the graph.
//!
//! \code
//! static_assert(std::is_same_v<strata::CudaGraphs::graph_handle, cudaGraphExec_t>);
//! \endcode
struct CudaGraphs {
  using error_type = cudaError_t;
  using stream_handle = cudaStream_t;
  using graph_handle = cudaGraphExec_t;
  static constexpr error_type success = cudaSuccess;

  static error_type begin_capture(stream_handle s) {
    return cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  }
  //! Ends the capture and instantiates it; the captured graph itself is no longer needed.
  static error_type end_capture(stream_handle s, graph_handle* exec) {
    cudaGraph_t graph = nullptr;
    const cudaError_t e = cudaStreamEndCapture(s, &graph);
    if (e != cudaSuccess) return e;
    const cudaError_t i = cudaGraphInstantiate(exec, graph, 0);
    (void)cudaGraphDestroy(graph);
    return i;
  }
  static error_type launch(graph_handle exec, stream_handle s) { return cudaGraphLaunch(exec, s); }
  static error_type destroy(graph_handle exec) { return cudaGraphExecDestroy(exec); }
  static void check(std::string_view call, int rank, error_type e) { cuda_check(call, rank, e); }
};

static_assert(graph_policy<CudaGraphs>);

}  // namespace strata
