#pragma once
//! \file
//! The NCCL backend: a communicator over an `ncclComm_t` for device buffers, on CUDA streams
//! (target `strata::nccl`). Host code: it builds with g++ against the CUDA and NCCL headers.
//!
//! Every collective is enqueued on a CUDA stream and returns without waiting for the device, as
//! NCCL's own calls do; the result is visible to later work on that stream, and to the host after
//! `synchronize()`. What NCCL does per operation (n ranks, c elements of s bytes), for the record:
//!
//! | operation | NCCL algorithm | steps | bytes sent per rank |
//! | --- | --- | --- | --- |
//! | `all_reduce` | ring (large), tree / NVLS (small, or where the fabric has them) | 2(n-1) | 2(n-1)/n·c·s |
//! | `all_reduce_many` | one grouped launch of the per-tensor all-reduces | 2(n-1) | 2(n-1)/n·Σc·s |
//! | `broadcast` | pipelined ring | n-1 | c·s |
//! | `all_gather` | ring | n-1 | (n-1)·c·s |
//! | `reduce_scatter` | ring | n-1 | (n-1)/n·c·s (c = the whole input) |
//! | `all_to_all` | grouped `ncclSend`/`ncclRecv` to every peer | 1 (all pairs at once) | what it sends to the others |
//! | `all_to_all` (uneven) | an all-gather of the counts (when checked), then grouped send/recv | 1 (+n-1) | what it sends (+2n counts) |
//! | `barrier` | an all-reduce of one element, then a wait | 2(n-1) | 8 |
//!
//! Faults: every NCCL and CUDA status becomes a `strata::nccl_error` / `strata::cuda_error`
//! naming the call, the rank and the library's own message. The communicator is created in
//! NCCL's non-blocking mode, so that creation, `split` and every wait are polled against a
//! deadline (`ncclCommGetAsyncError`); a communicator that misses it, or reports an asynchronous
//! error, is aborted (`ncclCommAbort`): the caller gets an error, never a hang, and every later
//! call on it throws.
//!
//! The communicator talks to NCCL and CUDA through a runtime policy (`NcclRuntime`), so that its
//! logic (argument checks, grouping, counts checking, deadlines, aborts) is one piece of code
//! that a host test double can drive across 1 to 16 ranks on a machine without GPUs.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/cuda/error.hpp"
#include "strata/error.hpp"

namespace strata {

//! A failure reported by NCCL, or a deadline NCCL missed; `code()` is the `ncclResult_t`
//! (`ncclSuccess` for a deadline).
//!
//! \code
//! strata::nccl_error e("ncclAllReduce", 1, "unhandled cuda error", ncclUnhandledCudaError);
//! assert(e.rank() == 1 && e.code() == ncclUnhandledCudaError);
//! \endcode
class nccl_error : public error {
 public:
  nccl_error(std::string_view call, int rank, std::string_view cause, ncclResult_t code)
      : error(call, rank, cause), code_(code) {}
  [[nodiscard]] ncclResult_t code() const noexcept { return code_; }

 private:
  ncclResult_t code_;
};

//! The element types the NCCL backend moves and reduces: those of every backend, plus half and
//! bfloat16.
//!
//! \code
//! static_assert(strata::nccl_value<__half> && strata::nccl_value<__nv_bfloat16>);
//! static_assert(strata::nccl_value<double> && !strata::nccl_value<char>);
//! \endcode
template <class T>
concept nccl_value =
    comm_value<T> || std::same_as<T, __half> || std::same_as<T, __nv_bfloat16>;

//! Settings of an `NcclComm`.
//!
//! \code
//! strata::NcclOptions opts;
//! opts.timeout = std::chrono::seconds(20);
//! opts.device = 0;
//! assert(opts.check_counts);
//! \endcode
struct NcclOptions {
  //! How long creation, `split` and each `synchronize` may take before the communicator is
  //! aborted and the call throws.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  //! The CUDA device of this rank, made current before the communicator is created; -1 keeps
  //! the device that is current.
  int device = -1;
  //! The uneven all-to-all first gathers every rank's counts and checks that each pair agrees,
  //! so that a mismatch is an error on every rank instead of a truncated or hung transfer. It
  //! costs one small all-gather and a wait for the stream; trainers that derive the counts from
  //! one shared plan can turn it off to keep the host out of the hot path.
  bool check_counts = true;
};

namespace detail::nccl {

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

}  // namespace detail::nccl

//! The NCCL and CUDA runtime calls an `NcclComm` makes: each forwards to the library. A test
//! double with the same members (`tests/nccl/fake_runtime.hpp`) runs the same communicator on
//! host threads.
//!
//! \code
//! static_assert(std::is_same_v<strata::NcclRuntime::comm_handle, ncclComm_t>);
//! static_assert(std::is_same_v<strata::NcclRuntime::stream_handle, cudaStream_t>);
//! \endcode
struct NcclRuntime {
  using comm_handle = ncclComm_t;
  using stream_handle = cudaStream_t;
  using graph_handle = cudaGraphExec_t;

  // --- NCCL -----------------------------------------------------------------------------------
  static ncclResult_t get_unique_id(ncclUniqueId* id) { return ncclGetUniqueId(id); }
  static ncclConfig_t config() {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every wait is polled by strata against its deadline
    return config;
  }
  static ncclResult_t init_rank(comm_handle* comm, int size, const ncclUniqueId& id, int rank) {
    ncclConfig_t c = config();
    return ncclCommInitRankConfig(comm, size, id, rank, &c);
  }
  static ncclResult_t split(comm_handle comm, int color, int key, comm_handle* child) {
    ncclConfig_t c = config();
    return ncclCommSplit(comm, color, key, child, &c);
  }
  static ncclResult_t async_error(comm_handle comm, ncclResult_t* state) {
    return ncclCommGetAsyncError(comm, state);
  }
  static ncclResult_t user_rank(comm_handle comm, int* rank) { return ncclCommUserRank(comm, rank); }
  static ncclResult_t count(comm_handle comm, int* size) { return ncclCommCount(comm, size); }
  static ncclResult_t finalize(comm_handle comm) { return ncclCommFinalize(comm); }
  static ncclResult_t destroy(comm_handle comm) { return ncclCommDestroy(comm); }
  static ncclResult_t abort(comm_handle comm) { return ncclCommAbort(comm); }
  static std::string error_string(ncclResult_t code, comm_handle comm) {
    std::string s = ncclGetErrorString(code);
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && *last != '\0') {
      s += " (";
      s += last;
      s += ')';
    }
    return s;
  }

  static ncclResult_t all_reduce(const void* in, void* out, std::size_t count, ncclDataType_t type,
                                 ncclRedOp_t op, comm_handle comm, stream_handle stream) {
    return ncclAllReduce(in, out, count, type, op, comm, stream);
  }
  static ncclResult_t broadcast(const void* in, void* out, std::size_t count, ncclDataType_t type,
                                int root, comm_handle comm, stream_handle stream) {
    return ncclBroadcast(in, out, count, type, root, comm, stream);
  }
  static ncclResult_t all_gather(const void* in, void* out, std::size_t count, ncclDataType_t type,
                                 comm_handle comm, stream_handle stream) {
    return ncclAllGather(in, out, count, type, comm, stream);
  }
  static ncclResult_t reduce_scatter(const void* in, void* out, std::size_t count,
                                     ncclDataType_t type, ncclRedOp_t op, comm_handle comm,
                                     stream_handle stream) {
    return ncclReduceScatter(in, out, count, type, op, comm, stream);
  }
  static ncclResult_t send(const void* data, std::size_t count, ncclDataType_t type, int peer,
                           comm_handle comm, stream_handle stream) {
    return ncclSend(data, count, type, peer, comm, stream);
  }
  static ncclResult_t recv(void* data, std::size_t count, ncclDataType_t type, int peer,
                           comm_handle comm, stream_handle stream) {
    return ncclRecv(data, count, type, peer, comm, stream);
  }
  static ncclResult_t group_start() { return ncclGroupStart(); }
  static ncclResult_t group_end() { return ncclGroupEnd(); }

  // --- CUDA runtime ---------------------------------------------------------------------------
  static cudaError_t set_device(int device) { return cudaSetDevice(device); }
  static cudaError_t stream_create(stream_handle* stream) {
    return cudaStreamCreateWithFlags(stream, cudaStreamNonBlocking);
  }
  static cudaError_t stream_destroy(stream_handle stream) { return cudaStreamDestroy(stream); }
  //! `cudaSuccess` when all work is done, `cudaErrorNotReady` while some is pending.
  static cudaError_t stream_query(stream_handle stream) { return cudaStreamQuery(stream); }
  static cudaError_t malloc(void** p, std::size_t bytes) { return cudaMalloc(p, bytes); }
  static cudaError_t free(void* p) { return cudaFree(p); }
  static cudaError_t memcpy_async(void* dst, const void* src, std::size_t bytes,
                                  stream_handle stream) {
    return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream);
  }
  //! Thread-local capture: NCCL's own host-side work on other threads must not join the graph.
  static cudaError_t begin_capture(stream_handle stream) {
    return cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
  }
  //! Ends the capture and instantiates it; the captured graph itself is no longer needed.
  static cudaError_t end_capture(stream_handle stream, graph_handle* exec) {
    cudaGraph_t graph = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream, &graph);
    if (e != cudaSuccess) return e;
    const cudaError_t i = cudaGraphInstantiate(exec, graph, 0);
    cudaGraphDestroy(graph);
    return i;
  }
  static cudaError_t graph_launch(graph_handle exec, stream_handle stream) {
    return cudaGraphLaunch(exec, stream);
  }
  static cudaError_t graph_destroy(graph_handle exec) { return cudaGraphExecDestroy(exec); }
};

//! One rank's handle on an NCCL communicator over device buffers; models `strata::communicator`
//! (spans point to device memory) and adds half, bfloat16, explicit streams, grouped multi-tensor
//! all-reduce and `synchronize`. Each collective comes in two forms: without a stream it runs
//! on the communicator's own stream (`stream()`), with one it runs on that stream. Communicators
//! made by `split` share their parent's stream, so that every level of a hierarchy is ordered
//! with the others. Movable, not copyable.
//!
//! Create it with `BasicNcclComm::from_unique_id` (the caller distributes the id) or with
//! `nccl_bootstrap` over any host communicator (MPI across nodes, the local backend across the
//! GPUs of one process).
//!
//! \code
//! static_assert(strata::communicator<strata::NcclComm>);
//! static_assert(!std::is_copy_constructible_v<strata::NcclComm>);
//! \endcode
template <class Runtime>
class BasicNcclComm {
 public:
  using runtime_type = Runtime;
  using comm_handle = typename Runtime::comm_handle;
  using stream_handle = typename Runtime::stream_handle;

  //! A collective on NCCL can fail half-way (a peer dies mid-transfer).
  static constexpr bool all_or_nothing = false;
  //! Buffers are device memory: host-side averagers refuse this communicator.
  static constexpr bool device_memory = true;

  //! A fresh id for one new communicator; rank 0 makes it and hands it to every rank.
  [[nodiscard]] static ncclUniqueId unique_id() {
    ncclUniqueId id{};
    const ncclResult_t rc = Runtime::get_unique_id(&id);
    if (rc != ncclSuccess) {
      throw nccl_error("ncclGetUniqueId", -1, ncclGetErrorString(rc), rc);
    }
    return id;
  }

  //! Collective over the `size` ranks that pass the same `id`: joins the communicator as `rank`,
  //! on `options.device`, with a new stream of its own. Waits at most `options.timeout` for the
  //! others, then aborts and throws.
  [[nodiscard]] static BasicNcclComm from_unique_id(const ncclUniqueId& id, int rank, int size,
                                                    NcclOptions options = {}) {
    if (size <= 0 || rank < 0 || rank >= size) {
      throw nccl_error("ncclCommInitRankConfig", rank,
                       "rank " + std::to_string(rank) + " is not a rank of a world of " +
                           std::to_string(size),
                       ncclInvalidArgument);
    }
    if (options.device >= 0) {
      cuda_check("cudaSetDevice", rank, Runtime::set_device(options.device));
    }
    auto stream = std::make_shared<OwnedStream>();
    cuda_check("cudaStreamCreate", rank, Runtime::stream_create(&stream->handle));
    stream->owned = true;
    BasicNcclComm comm(options, rank, size, std::move(stream));
    comm.call("ncclCommInitRankConfig", Runtime::init_rank(&comm.comm_, size, id, rank));
    comm.wait_ready("ncclCommInitRankConfig");
    return comm;
  }

  BasicNcclComm(BasicNcclComm&& other) noexcept
      : comm_(std::exchange(other.comm_, comm_handle{})),
        options_(other.options_),
        rank_(other.rank_),
        size_(other.size_),
        stream_(std::move(other.stream_)),
        scratch_(std::exchange(other.scratch_, nullptr)),
        scratch_bytes_(std::exchange(other.scratch_bytes_, 0)),
        broken_(std::move(other.broken_)),
        deferring_(std::exchange(other.deferring_, 0)) {}
  BasicNcclComm& operator=(BasicNcclComm&& other) noexcept {
    if (this != &other) {
      release();
      comm_ = std::exchange(other.comm_, comm_handle{});
      options_ = other.options_;
      rank_ = other.rank_;
      size_ = other.size_;
      stream_ = std::move(other.stream_);
      scratch_ = std::exchange(other.scratch_, nullptr);
      scratch_bytes_ = std::exchange(other.scratch_bytes_, 0);
      broken_ = std::move(other.broken_);
      deferring_ = std::exchange(other.deferring_, 0);
    }
    return *this;
  }
  BasicNcclComm(const BasicNcclComm&) = delete;
  BasicNcclComm& operator=(const BasicNcclComm&) = delete;
  ~BasicNcclComm() { release(); }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  //! The stream collectives run on when the call names none.
  [[nodiscard]] stream_handle stream() const noexcept {
    return stream_ ? stream_->handle : stream_handle{};  // a moved-from communicator has none
  }
  [[nodiscard]] comm_handle native() const noexcept { return comm_; }
  [[nodiscard]] const NcclOptions& options() const noexcept { return options_; }
  //! Why the communicator can no longer be used; empty while it can.
  [[nodiscard]] const std::string& broken() const noexcept { return broken_; }

  // --- all_reduce ------------------------------------------------------------------------------
  template <nccl_value T>
  void all_reduce(std::span<T> buf, ReduceOp op, stream_handle s) {
    ensure_usable("ncclAllReduce");
    call("ncclAllReduce",
         Runtime::all_reduce(buf.data(), buf.data(), buf.size(), detail::nccl::datatype<T>(),
                             detail::nccl::reduction(op), comm_, s));
  }
  template <nccl_value T>
  void all_reduce(std::span<T> buf, ReduceOp op) {
    all_reduce(buf, op, stream());
  }
  template <nccl_value T>
  void all_reduce(std::span<const T> in, std::span<T> out, ReduceOp op, stream_handle s) {
    ensure_usable("ncclAllReduce");
    if (in.size() != out.size()) {
      fail("ncclAllReduce", "input has " + std::to_string(in.size()) +
                                " elements but output has " + std::to_string(out.size()));
    }
    call("ncclAllReduce",
         Runtime::all_reduce(in.data(), out.data(), in.size(), detail::nccl::datatype<T>(),
                             detail::nccl::reduction(op), comm_, s));
  }
  template <nccl_value T>
  void all_reduce(std::span<const T> in, std::span<T> out, ReduceOp op) {
    all_reduce(in, out, op, stream());
  }

  //! Many tensors in place with one grouped launch (`ncclGroupStart/End`): the fused form for
  //! tensors that are not packed into one buffer.
  template <nccl_value T>
  void all_reduce_many(std::span<const std::span<T>> tensors, ReduceOp op, stream_handle s) {
    ensure_usable("ncclAllReduce (grouped)");
    Group group(*this, "ncclAllReduce (grouped)");
    for (const std::span<T> t : tensors) {
      if (t.empty()) continue;
      call("ncclAllReduce (grouped)",
           Runtime::all_reduce(t.data(), t.data(), t.size(), detail::nccl::datatype<T>(),
                               detail::nccl::reduction(op), comm_, s));
    }
    group.end();
  }
  template <nccl_value T>
  void all_reduce_many(std::span<const std::span<T>> tensors, ReduceOp op) {
    all_reduce_many(tensors, op, stream());
  }

  // --- broadcast, all_gather, reduce_scatter ---------------------------------------------------
  template <nccl_value T>
  void broadcast(std::span<T> buf, int root, stream_handle s) {
    ensure_usable("ncclBroadcast");
    if (root < 0 || root >= size_) {
      fail("ncclBroadcast", "root " + std::to_string(root) + " is not a rank of a group of " +
                                std::to_string(size_));
    }
    call("ncclBroadcast", Runtime::broadcast(buf.data(), buf.data(), buf.size(),
                                             detail::nccl::datatype<T>(), root, comm_, s));
  }
  template <nccl_value T>
  void broadcast(std::span<T> buf, int root) {
    broadcast(buf, root, stream());
  }

  template <nccl_value T>
  void all_gather(std::span<const T> in, std::span<T> out, stream_handle s) {
    ensure_usable("ncclAllGather");
    const auto n = static_cast<std::size_t>(size_);
    if (out.size() % n != 0 || out.size() / n != in.size()) {  // no product that could wrap
      fail("ncclAllGather", "output has " + std::to_string(out.size()) + " elements; it needs " +
                                std::to_string(in.size()) + " x " + std::to_string(size_));
    }
    call("ncclAllGather", Runtime::all_gather(in.data(), out.data(), in.size(),
                                              detail::nccl::datatype<T>(), comm_, s));
  }
  template <nccl_value T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    all_gather(in, out, stream());
  }

  template <nccl_value T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op, stream_handle s) {
    ensure_usable("ncclReduceScatter");
    const auto n = static_cast<std::size_t>(size_);
    if (in.size() % n != 0 || in.size() / n != out.size()) {  // no product that could wrap
      fail("ncclReduceScatter", "input has " + std::to_string(in.size()) +
                                    " elements; it needs " + std::to_string(out.size()) + " x " +
                                    std::to_string(size_));
    }
    call("ncclReduceScatter",
         Runtime::reduce_scatter(in.data(), out.data(), out.size(), detail::nccl::datatype<T>(),
                                 detail::nccl::reduction(op), comm_, s));
  }
  template <nccl_value T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op) {
    reduce_scatter(in, out, op, stream());
  }

  // --- all_to_all ------------------------------------------------------------------------------
  //! Equal blocks of `in.size() / size()` elements, as one group of sends and receives.
  template <nccl_value T>
  void all_to_all(std::span<const T> in, std::span<T> out, stream_handle s) {
    constexpr std::string_view op = "all_to_all (ncclSend/ncclRecv)";
    ensure_usable(op);
    const auto n = static_cast<std::size_t>(size_);
    if (in.size() != out.size() || in.size() % n != 0) {
      fail(op, "input has " + std::to_string(in.size()) + " and output " +
                   std::to_string(out.size()) + " elements; both must be the same multiple of " +
                   std::to_string(n));
    }
    const std::size_t block = in.size() / n;
    exchange(op, in.data(), out.data(), [block](std::size_t) { return block; },
             [block](std::size_t j) { return j * block; }, [block](std::size_t) { return block; },
             [block](std::size_t j) { return j * block; }, s);
  }
  template <nccl_value T>
  void all_to_all(std::span<const T> in, std::span<T> out) {
    all_to_all(in, out, stream());
  }

  //! Uneven blocks: `send_counts[j]` elements go to rank j, `recv_counts[j]` come from it. With
  //! `options().check_counts` the counts are gathered and checked first, and when a pair
  //! disagrees every rank throws the same error before anything moves (this waits for the
  //! stream); without it, agreeing counts are the caller's promise.
  template <nccl_value T>
  void all_to_all(std::span<const T> in, std::span<const std::size_t> send_counts,
                  std::span<T> out, std::span<const std::size_t> recv_counts, stream_handle s) {
    constexpr std::string_view op = "all_to_all (uneven, ncclSend/ncclRecv)";
    ensure_usable(op);
    const auto n = static_cast<std::size_t>(size_);
    if (send_counts.size() != n || recv_counts.size() != n) {
      fail(op, "needs one send and one receive count per member (" + std::to_string(n) +
                   "), got " + std::to_string(send_counts.size()) + " and " +
                   std::to_string(recv_counts.size()));
    }
    std::vector<std::size_t> send_offsets(n), recv_offsets(n);
    std::size_t sent = 0;
    std::size_t received = 0;
    for (std::size_t j = 0; j < n; ++j) {
      send_offsets[j] = sent;
      recv_offsets[j] = received;
      // Counts larger than the buffers are wrong whatever the sum: checking each first keeps
      // the sums from wrapping around.
      if (send_counts[j] > in.size() || recv_counts[j] > out.size()) {
        fail(op, "count " + std::to_string(std::max(send_counts[j], recv_counts[j])) +
                     " for rank " + std::to_string(j) + " exceeds the buffers (" +
                     std::to_string(in.size()) + " and " + std::to_string(out.size()) +
                     " elements)",
             ncclInvalidArgument);
      }
      sent += send_counts[j];
      received += recv_counts[j];
      if (sent > in.size() || received > out.size()) break;  // reported below
    }
    if (sent != in.size() || received != out.size()) {
      fail(op, "counts add up to " + std::to_string(sent) + " sent and " +
                   std::to_string(received) + " received, but the buffers hold " +
                   std::to_string(in.size()) + " and " + std::to_string(out.size()));
    }
    if (options_.check_counts) check_uneven_counts(op, send_counts, recv_counts, s);
    exchange(op, in.data(), out.data(), [&](std::size_t j) { return send_counts[j]; },
             [&](std::size_t j) { return send_offsets[j]; },
             [&](std::size_t j) { return recv_counts[j]; },
             [&](std::size_t j) { return recv_offsets[j]; }, s);
  }
  template <nccl_value T>
  void all_to_all(std::span<const T> in, std::span<const std::size_t> send_counts,
                  std::span<T> out, std::span<const std::size_t> recv_counts) {
    all_to_all(in, send_counts, out, recv_counts, stream());
  }

  // --- synchronisation, split, abort -----------------------------------------------------------
  //! Waits until the work enqueued on `s` is done, polling NCCL's asynchronous error state; an
  //! asynchronous error, a failed stream or the deadline aborts the communicator and throws.
  void synchronize(stream_handle s) {
    constexpr std::string_view op = "synchronize";
    ensure_usable(op);
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    for (std::size_t polls = 0;; ++polls) {
      const cudaError_t q = Runtime::stream_query(s);
      poll_async_error(op);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) {
        break_and_abort("the stream failed");
        throw cuda_error("cudaStreamQuery", rank_, q, "the communicator was aborted");
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        break_and_abort("a " + std::string(op) + " timed out");
        fail(op, "the stream did not finish within " + std::to_string(options_.timeout.count()) +
                     " ms (a peer that never joined a collective, or a device that stopped); " +
                     "the communicator was aborted and cannot be used again");
      }
      pause(polls);
    }
  }
  void synchronize() { synchronize(stream()); }

  //! Every member has reached this point and the work on the communicator's stream is done: an
  //! all-reduce of one element on that stream, then `synchronize()`. Work enqueued on other
  //! streams is not waited for.
  void barrier() {
    ensure_usable("barrier");
    std::int32_t* one = static_cast<std::int32_t*>(scratch(sizeof(std::int32_t)));
    call("barrier", Runtime::all_reduce(one, one, 1, ncclInt32, ncclSum, comm_, stream()));
    synchronize();
  }

  //! Collective: `ncclCommSplit`. The new communicator shares this one's stream and options.
  //! Colors must be non-negative (every rank joins some new communicator).
  BasicNcclComm split(int color, int key) {
    if (color < 0) fail("ncclCommSplit", "color " + std::to_string(color) + " is negative");
    ensure_usable("ncclCommSplit");
    BasicNcclComm child(options_, -1, 0, stream_);
    call("ncclCommSplit", Runtime::split(comm_, color, key, &child.comm_));
    child.rank_ = rank_;  // errors while waiting name the parent rank
    child.wait_ready("ncclCommSplit");
    child.read_rank_and_size();
    return child;
  }

  //! Aborts the communicator now: pending work on it is cancelled and every later call throws.
  //! For a rank that must give up without leaving its peers waiting for it.
  void abort() { break_and_abort("abort() was called"); }

  //! Throws `nccl_error` if the communicator cannot be used: aborted, moved from, or with an
  //! asynchronous error pending (which aborts it). Cheap (a host-side query): callers that launch
  //! work NCCL does not see, such as a captured graph, check before each launch.
  void check_usable(std::string_view op) { ensure_usable(op); }

  //! Aborts that become due while the returned guard lives wait until it is destroyed: for a
  //! caller that is capturing a CUDA graph, where the synchronous CUDA calls of `ncclCommAbort`
  //! are illegal. End the capture before the guard goes.
  [[nodiscard]] auto defer_aborts() {
    struct Guard {
      explicit Guard(BasicNcclComm* c) : comm(c) {}
      BasicNcclComm* comm;
      Guard(const Guard&) = delete;
      Guard& operator=(const Guard&) = delete;
      ~Guard() { comm->resume_aborts(); }
    };
    ++deferring_;
    return Guard{this};
  }

 private:
  struct OwnedStream {
    stream_handle handle{};
    bool owned = false;
    OwnedStream() = default;
    OwnedStream(const OwnedStream&) = delete;
    OwnedStream& operator=(const OwnedStream&) = delete;
    ~OwnedStream() {
      if (owned) (void)Runtime::stream_destroy(handle);
    }
  };

  BasicNcclComm(NcclOptions options, int rank, int size, std::shared_ptr<OwnedStream> stream)
      : options_(options), rank_(rank), size_(size), stream_(std::move(stream)) {}

  // Ends an ncclGroupStart scope on every path: NCCL requires the pairing even when a call inside
  // the group failed.
  // Aborting a communicator with operations queued in an open group would leave ncclGroupEnd
  // walking a freed communicator: inside the group, aborts are deferred until it has ended.
  class Group {
   public:
    Group(BasicNcclComm& comm, std::string_view op) : comm_(comm), op_(op) {
      comm_.call(op_, Runtime::group_start());
      ++comm_.deferring_;
    }
    void end() {
      open_ = false;
      const ncclResult_t rc = Runtime::group_end();
      comm_.resume_aborts();
      comm_.call(op_, rc);
    }
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;
    ~Group() {
      if (open_) {
        (void)Runtime::group_end();
        comm_.resume_aborts();
      }
    }

   private:
    BasicNcclComm& comm_;
    std::string_view op_;
    bool open_ = true;
  };

  void read_rank_and_size() {
    // The runtime may only know the new rank and size once the split is complete.
    int r = -1;
    int n = 0;
    call("ncclCommUserRank", Runtime::user_rank(comm_, &r));
    call("ncclCommCount", Runtime::count(comm_, &n));
    rank_ = r;
    size_ = n;
  }

  // One group of sends and receives to and from every rank (self included), skipping empty
  // blocks; the counts and offsets are in elements.
  template <class T, class SendCount, class SendOffset, class RecvCount, class RecvOffset>
  void exchange(std::string_view op, const T* in, T* out, SendCount send_count,
                SendOffset send_offset, RecvCount recv_count, RecvOffset recv_offset,
                stream_handle s) {
    Group group(*this, op);
    for (int j = 0; j < size_; ++j) {
      const auto u = static_cast<std::size_t>(j);
      if (send_count(u) != 0) {
        call(op, Runtime::send(in + send_offset(u), send_count(u), detail::nccl::datatype<T>(),
                               j, comm_, s));
      }
      if (recv_count(u) != 0) {
        call(op, Runtime::recv(out + recv_offset(u), recv_count(u), detail::nccl::datatype<T>(),
                               j, comm_, s));
      }
    }
    group.end();
  }

  // Every rank gathers every rank's send and receive counts, so all of them find the same first
  // disagreement (lowest receiver, then sender) and throw the same message.
  void check_uneven_counts(std::string_view op, std::span<const std::size_t> send,
                           std::span<const std::size_t> recv, stream_handle s) {
    const auto n = static_cast<std::size_t>(size_);
    std::vector<std::int64_t> mine(2 * n);
    for (std::size_t j = 0; j < n; ++j) {
      mine[j] = static_cast<std::int64_t>(send[j]);
      mine[n + j] = static_cast<std::int64_t>(recv[j]);
    }
    std::vector<std::int64_t> all(2 * n * n);
    auto* device = static_cast<std::int64_t*>(scratch((2 * n + 2 * n * n) * sizeof(std::int64_t)));
    std::int64_t* gathered = device + 2 * n;
    cuda_check("cudaMemcpyAsync", rank_,
               Runtime::memcpy_async(device, mine.data(), 2 * n * sizeof(std::int64_t), s));
    call(op, Runtime::all_gather(device, gathered, 2 * n, ncclInt64, comm_, s));
    cuda_check("cudaMemcpyAsync", rank_,
               Runtime::memcpy_async(all.data(), gathered, all.size() * sizeof(std::int64_t), s));
    synchronize(s);
    for (std::size_t r = 0; r < n; ++r) {
      for (std::size_t j = 0; j < n; ++j) {
        const std::int64_t sends = all[j * 2 * n + r];     // rank j sends to r
        const std::int64_t expects = all[r * 2 * n + n + j];  // rank r expects from j
        if (sends != expects) {
          fail(op, "counts disagree: rank " + std::to_string(j) + " sends " +
                       std::to_string(sends) + " elements to rank " + std::to_string(r) +
                       ", which expects " + std::to_string(expects));
        }
      }
    }
  }

  // A device buffer of at least `bytes`, kept for the communicator's lifetime.
  void* scratch(std::size_t bytes) {
    if (bytes > scratch_bytes_) {
      if (scratch_ != nullptr) {
        // The old buffer may still be read by enqueued work: wait for it before freeing.
        synchronize();
        cuda_check("cudaFree", rank_, Runtime::free(scratch_));
        scratch_ = nullptr;
        scratch_bytes_ = 0;
      }
      const std::size_t size = std::max<std::size_t>(bytes, 256);
      // On the communicator's GPU, whichever device the calling thread last made current.
      if (options_.device >= 0) {
        cuda_check("cudaSetDevice", rank_, Runtime::set_device(options_.device));
      }
      cuda_check("cudaMalloc", rank_, Runtime::malloc(&scratch_, size));
      scratch_bytes_ = size;
    }
    return scratch_;
  }

  [[noreturn]] void fail(std::string_view op, const std::string& why,
                         ncclResult_t code = ncclSuccess) const {
    throw nccl_error(op, rank_, why, code);
  }

  // A status returned by an NCCL call. In non-blocking mode a call may return ncclInProgress:
  // the work is accepted and completes in the background, and the next call must wait for it.
  void call(std::string_view op, ncclResult_t rc) {
    if (rc == ncclSuccess) return;
    if (rc == ncclInProgress) {
      wait_ready(op);
      return;
    }
    const std::string why = Runtime::error_string(rc, comm_);
    if (rc != ncclInvalidArgument && rc != ncclInvalidUsage) {
      break_and_abort(std::string(op) + " failed: " + why);
    }
    fail(op, why, rc);
  }

  // NCCL's asynchronous state of the communicator; a failure of the query itself counts as one.
  ncclResult_t async_state() const {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = Runtime::async_error(comm_, &state);
    return rc != ncclSuccess ? rc : state;
  }

  // Polls the communicator until NCCL reports it ready (creation, split, a call that returned
  // ncclInProgress), or its deadline passes, which aborts it.
  void wait_ready(std::string_view op) {
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    for (std::size_t polls = 0;; ++polls) {
      const ncclResult_t state = async_state();
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        const std::string why = Runtime::error_string(state, comm_);
        break_and_abort(std::string(op) + " failed: " + why);
        fail(op, why + "; the communicator was aborted", state);
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        break_and_abort("a " + std::string(op) + " timed out");
        fail(op, "not complete after " + std::to_string(options_.timeout.count()) +
                     " ms (a rank that never joined?); the communicator was aborted");
      }
      pause(polls);
    }
  }

  // An asynchronous error (a peer that failed, a network fault) makes the communicator unusable.
  void poll_async_error(std::string_view op) {
    const ncclResult_t state = async_state();
    if (state == ncclSuccess || state == ncclInProgress) return;
    const std::string why = Runtime::error_string(state, comm_);
    break_and_abort("an asynchronous error: " + why);
    fail(op, "asynchronous NCCL error: " + why + "; the communicator was aborted", state);
  }

  void ensure_usable(std::string_view op) {
    if (!broken_.empty()) fail(op, "the communicator is unusable since " + broken_);
    if (comm_ == comm_handle{}) fail(op, "the communicator was moved from");
    poll_async_error(op);
  }

  // Marks the communicator broken at once; the ncclCommAbort itself waits while aborts are
  // deferred (an open group, a capture).
  void break_and_abort(const std::string& why) {
    if (!broken_.empty()) return;
    broken_ = why;
    if (deferring_ > 0) return;
    if (comm_ != comm_handle{}) (void)Runtime::abort(comm_);
    comm_ = comm_handle{};
  }

  void resume_aborts() noexcept {
    if (deferring_ > 0) --deferring_;
    if (deferring_ == 0 && !broken_.empty() && comm_ != comm_handle{}) {
      (void)Runtime::abort(comm_);
      comm_ = comm_handle{};
    }
  }

  static void pause(std::size_t polls) {
    if (polls < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // Destruction never throws and never waits past the deadline: the flush and the finalize go
  // through the same deadline-bound waits as every call, and a communicator that misses them or
  // fails is aborted instead of destroyed.
  void release() noexcept {
    if (comm_ != comm_handle{}) {
      bool clean = broken_.empty();
      if (clean) {
        try {
          synchronize();
          call("ncclCommFinalize", Runtime::finalize(comm_));
          wait_ready("ncclCommFinalize");
        } catch (...) {
          clean = false;
        }
      }
      if (comm_ != comm_handle{}) {
        (void)(clean ? Runtime::destroy(comm_) : Runtime::abort(comm_));
      }
      comm_ = comm_handle{};
    }
    if (scratch_ != nullptr) {
      (void)Runtime::free(scratch_);
      scratch_ = nullptr;
      scratch_bytes_ = 0;
    }
  }

  comm_handle comm_{};
  NcclOptions options_;
  int rank_ = -1;
  int size_ = 0;
  std::shared_ptr<OwnedStream> stream_;
  void* scratch_ = nullptr;
  std::size_t scratch_bytes_ = 0;
  std::string broken_;
  int deferring_ = 0;  // open groups and deferral guards: aborts wait until they are gone
};

//! The NCCL communicator over the real libraries.
using NcclComm = BasicNcclComm<NcclRuntime>;

//! Collective over `host`, any host communicator (`MpiComm` across processes and nodes,
//! `LocalComm` across the GPUs of one process): rank 0 of `host` makes the unique id, `host`
//! broadcasts it, and every rank joins an NCCL communicator of the same ranks in the same order.
//! If rank 0 cannot make the id, every rank throws the same error instead of waiting.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! // strata::MpiEnvironment env(argc, argv);
//! // strata::MpiComm world = strata::MpiComm::world();
//! // strata::NcclOptions opts;
//! // opts.device = local_rank;
//! // strata::NcclComm gpus = strata::nccl_bootstrap(world, opts);
//! static_assert(std::is_same_v<decltype(strata::nccl_bootstrap<strata::NcclRuntime>(
//!                                  std::declval<strata::LocalComm&>())), strata::NcclComm>);
//! \endcode
template <class Runtime = NcclRuntime, communicator HostComm>
[[nodiscard]] BasicNcclComm<Runtime> nccl_bootstrap(HostComm& host, NcclOptions options = {}) {
  // Word 0 says whether rank 0 has an id (1) or why not (the negated NCCL code); the id follows.
  constexpr std::size_t words = 1 + (sizeof(ncclUniqueId) + 7) / 8;
  std::array<std::int64_t, words> message{};
  if (host.rank() == 0) {
    ncclUniqueId id{};
    const ncclResult_t rc = Runtime::get_unique_id(&id);
    message[0] = rc == ncclSuccess ? 1 : -static_cast<std::int64_t>(rc);
    std::memcpy(&message[1], &id, sizeof(id));
  }
  host.broadcast(std::span<std::int64_t>(message), 0);
  if (message[0] != 1) {
    const auto rc = static_cast<ncclResult_t>(-message[0]);
    throw nccl_error("ncclGetUniqueId", host.rank(),
                     std::string("rank 0 could not make the unique id: ") + ncclGetErrorString(rc),
                     rc);
  }
  ncclUniqueId id{};
  std::memcpy(&id, &message[1], sizeof(id));
  return BasicNcclComm<Runtime>::from_unique_id(id, host.rank(), host.size(), options);
}

}  // namespace strata
