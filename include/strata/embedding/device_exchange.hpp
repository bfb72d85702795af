#pragma once
//! \file
//! `DeviceEmbeddingExchange`: the embedding exchange on a device communicator (NCCL), with ids,
//! tables and outputs in device memory and fixed-capacity buffers, so that a step enqueues its
//! work on a stream and never waits for the device (target `strata::cuda`; the CUDA launcher is
//! in `strata/embedding/device_exchange.cuh`).

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <thrust/copy.h>
#include <thrust/iterator/constant_iterator.h>
#include <thrust/reduce.h>
#include <thrust/sort.h>

#include "strata/comm/communicator.hpp"
#include "strata/cuda/device_buffer.hpp"
#include "strata/cuda/runtime.hpp"
#include "strata/embedding/batch.hpp"
#include "strata/embedding/detail/device_steps.hpp"
#include "strata/embedding/frequency.hpp"
#include "strata/embedding/hybrid_cost.hpp"
#include "strata/embedding/sharding.hpp"
#include "strata/error.hpp"

namespace strata {

//! The sizes a `DeviceEmbeddingExchange` is built for: at most `max_samples` samples and
//! `max_hotness` lookups per sample and table on any rank in any step, and room for
//! `ids_per_peer` unique ids from each rank to each owner (0: room for every lookup, which never
//! overflows). Every buffer is allocated once for these sizes; each all-to-all moves the whole
//! capacity, so a smaller `ids_per_peer` sends fewer bytes at the risk of an overflow, which is
//! reported like bad input.
//!
//! \code
//! strata::DeviceExchangeOptions o{.pooling = strata::Pooling::mean, .max_samples = 2048, .max_hotness = 1};
//! assert(o.check_each_step);
//! \endcode
struct DeviceExchangeOptions {
  Pooling pooling = Pooling::sum;
  std::size_t max_samples = 0;
  std::size_t max_hotness = 1;
  std::size_t ids_per_peer = 0;
  //! Wait for each forward's status and throw at once (one host wait per step); without it a
  //! step never waits, and `check()` reports a problem of the steps since the last check.
  bool check_each_step = true;
};

//! Plain sparse SGD for the device path: `values[d] -= lr * grad[d]`, callable on the device.
//!
//! \code
//! double v[2] = {1, 2};
//! const double g[2] = {10, 20};
//! strata::DeviceSgd<double>{0.1}(0, 0, 0, v, g, 2);
//! assert(v[0] == 0 && v[1] == 0);
//! \endcode
template <class T>
struct DeviceSgd {
  T lr = T(0.01);

  STRATA_HOST_DEVICE void operator()(std::int64_t /*table*/, std::int64_t /*row*/,
                                     std::int64_t /*col_begin*/, T* values, const T* grad,
                                     std::int64_t width) const {
    for (std::int64_t d = 0; d < width; ++d) values[d] -= lr * grad[d];
  }
};

//! A row update the device path can run where a row lives: called on the device (or on the host
//! double) with the table, the row, the shard's first column, the shard's values of that row,
//! their gradient summed over every sample of the world, and the width.
//!
//! \code
//! static_assert(strata::device_row_update<strata::DeviceSgd<float>, float>);
//! \endcode
template <class U, class T>
concept device_row_update = std::copy_constructible<U> &&
    std::invocable<const U&, std::int64_t, std::int64_t, std::int64_t, T*, const T*, std::int64_t>;

//! The hybrid-parallel embedding layer on a device communicator (docs/embeddings.md, "The
//! device path"). The same plan, placements and results as `EmbeddingExchange` with
//! de-duplication, but:
//! - ids, tables, outputs and gradients are device memory, and every step is enqueued on a
//!   stream: the requester's keys, sort and run-length steps, the owners' gather, pooling and
//!   the update are Thrust algorithms launched through `Launcher` (`launch(stream, f)` calls
//!   `f(policy)` in stream order: CUDA's stream in `device_exchange.cuh`, the host double in the
//!   tests), and the exchanges are the communicator's equal-block all-to-alls;
//! - counts never leave the device: each rank sends every owner a fixed-capacity block whose
//!   header holds the count and this rank's status (an id outside its table, or more unique
//!   ids for one owner than `ids_per_peer`), and every step reads counts from those headers and
//!   masks the slots past them;
//! - a problem on any rank reaches every rank in the headers: no rank updates any row in that
//!   step's backward, and `check()` (after every forward with `check_each_step`) throws the same
//!   `strata::usage_error` on every rank, naming the lowest rank with a problem, the table, the
//!   lookup and the value.
//! A batch of a shape it was not built for (more samples than `max_samples`, ids or output of
//! the wrong size) is reported the same way, on every rank; a gradient of the wrong size is
//! `std::invalid_argument` on its rank alone, before anything is enqueued (its peers then see
//! their deadline pass). The hierarchical all-to-all and per-owner pooling (no de-duplication) are host-path options only.
//!
//! \code
//! // See tests/nccl/embedding_device_test.cpp (host double of NCCL) and
//! // tests/cuda/embedding_exchange_device_test.cu (a real GPU) for complete programs.
//! static_assert(strata::device_row_update<strata::DeviceSgd<double>, double>);
//! \endcode
template <class Comm, class T, class Launcher>
requires(std::same_as<T, float> || std::same_as<T, double>) class DeviceEmbeddingExchange {
  using i64 = std::int64_t;
  using Runtime = typename Comm::runtime_type;
  using stream_handle = typename Comm::stream_handle;
  template <class U>
  using Buffer = DeviceBuffer<U, Runtime>;

 public:
  using value_type = T;

  //! Allocates every buffer and uploads the plan's tables of owners (it waits for that copy).
  //! Throws `std::invalid_argument` for a plan of another world size or options without
  //! `max_samples`.
  DeviceEmbeddingExchange(Comm& world, ShardingPlan plan, DeviceExchangeOptions options,
                          FrequentSets frequent = {}, Launcher launcher = {})
      : comm_(world),
        plan_(std::move(plan)),
        options_(options),
        frequent_(std::move(frequent)),
        launcher_(std::move(launcher)) {
    if (plan_.world_size() != static_cast<std::size_t>(world.size())) {
      throw std::invalid_argument("DeviceEmbeddingExchange: the plan is made for " +
                                  std::to_string(plan_.world_size()) + " ranks, the world has " +
                                  std::to_string(world.size()));
    }
    if (options_.max_samples == 0 || options_.max_hotness == 0) {
      throw std::invalid_argument(
          "DeviceEmbeddingExchange: max_samples and max_hotness must be positive");
    }
    me_ = static_cast<std::size_t>(world.rank());
    world_ = plan_.world_size();
    slots_ = check_frequent_sets(plan_, frequent_, "DeviceEmbeddingExchange");
    layout();
    const DeviceGuard<Runtime> on(comm_.device(), static_cast<int>(me_));
    allocate();
  }

  [[nodiscard]] const ShardingPlan& plan() const noexcept { return plan_; }
  [[nodiscard]] std::size_t output_width() const noexcept { return total_width_; }
  [[nodiscard]] std::size_t output_offset(std::size_t j) const { return col_off_.at(j); }
  //! Unique ids each rank can send each owner per step.
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
  //! Bytes this rank sends per step (forward and backward), the same every step: the whole
  //! capacity of each all-to-all, other ranks' blocks only, and the replicas' all-reduce input.
  [[nodiscard]] std::size_t bytes_per_step() const noexcept {
    const std::size_t peers = world_ - 1;
    return peers * (id_block_ * 8 + 2 * capacity_ * wmax_ * sizeof(T)) + dense_size_ * sizeof(T);
  }

  //! Sets every element this rank holds to `value(table, row, column)` (waits for the copy).
  template <class F>
  void initialize(F&& value) {
    const DeviceGuard<Runtime> on(comm_.device(), static_cast<int>(me_));
    wait_last_stream();
    std::vector<T> host(table_size_);
    for (std::size_t b = 0; b < blocks_.size(); ++b) {
      const HostBlock& k = blocks_[b];
      for (std::size_t i = 0; i < k.rows; ++i)
        for (std::size_t d = 0; d < k.width; ++d)
          host[k.offset + i * k.width + d] =
              static_cast<T>(value(k.table, block_row(k, i), k.col_begin + d));
    }
    upload(table_, host);
  }

  //! Enqueues the forward exchange on `stream`: `ids` (device memory) holds
  //! `tables × samples × hotness` ids, table-major as in `SparseBatch`; `out` (device memory)
  //! receives `samples × output_width()` pooled values. `ids` must stay valid until the
  //! backward's work has run (it reads the replicated tables' ids again). With `check_each_step` it then waits
  //! for the step's status and throws on every rank if any rank had a problem.
  void forward(std::span<const i64> ids, std::size_t samples, std::size_t hotness, std::span<T> out,
               stream_handle stream) {
    const char* op = "DeviceEmbeddingExchange::forward";
    const std::size_t nt = plan_.num_tables();
    const bool shape_ok = samples <= options_.max_samples && hotness <= options_.max_hotness &&
                          (hotness != 0 || samples == 0) &&
                          ids.size() / nt / std::max<std::size_t>(hotness, 1) == samples &&
                          ids.size() == nt * samples * hotness &&
                          out.size() / std::max<std::size_t>(total_width_, 1) == samples &&
                          out.size() == samples * total_width_;
    // A shape this rank cannot take travels in its headers like a bad id, so that every rank
    // reports it; this rank then asks for nothing and writes no output.
    bad_shape_ = !shape_ok;
    samples_ = shape_ok ? samples : 0;
    hotness_ = shape_ok ? hotness : 0;
    ids_ = ids.data();
    last_stream_ = stream;
    const i64 n = static_cast<i64>(segments_host_.size() * samples_ * hotness_);
    const i64 positions = static_cast<i64>(nt * samples_ * hotness_);
    const i64 world = static_cast<i64>(world_), cap = static_cast<i64>(capacity_);
    const i64 B = static_cast<i64>(samples_), K = static_cast<i64>(hotness_);
    detail::dev::ShardTables shards{key_base_.data(), row_begin_.data(), dest_key_start_.data(),
                                    world};
    // Requester: keys, their unique runs by destination, and the id blocks with headers.
    {
      i64 *key = key_.data(), *pos = pos_.data(), *bad = bad_.data(), *head = head_.data(),
          *uscan = uscan_.data(), *dfp = dest_first_pos_.data(), *dfu = dest_first_u_.data(),
          *inverse = inverse_.data(), *u_dest = u_dest_.data(), *u_slot = u_slot_.data(),
          *u_start = u_start_.data(), *send = send_ids_.data();
      const i64* dks = dest_key_start_.data();
      const detail::dev::Segment* segs = segments_.data();
      const i64* id = ids.data();
      const i64* rows = table_rows_.data();
      const i64* members = members_.data();
      const std::size_t send_words = send_ids_.size();
      const i64 given = static_cast<i64>(ids.size()),
                needed = static_cast<i64>(nt * samples * hotness),
                asked = static_cast<i64>(samples), lookups = static_cast<i64>(hotness),
                block = static_cast<i64>(id_block_);
      launcher_.launch(stream, [=](const auto& policy) {
        namespace dv = detail::dev;
        thrust::fill_n(policy, send, send_words, i64(0));
        if (!shape_ok) {
          const auto at = thrust::counting_iterator<i64>(0);
          thrust::for_each(policy, at, at + world,
                           dv::ShapeHeaders{given, needed, asked, lookups, block, send});
          return;
        }
        thrust::fill_n(policy, inverse, n, i64(-1));
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::for_each(policy, it, it + positions, dv::BadPositions{id, rows, B * K, bad});
        thrust::inclusive_scan(policy, bad, bad + positions, bad, dv::Minimum{});
        thrust::for_each(policy, it, it + n,
                         dv::MakeKeys{id, segs, members, shards, B, K, key, pos});
        thrust::stable_sort_by_key(policy, key, key + n, pos);
        thrust::for_each(policy, it, it + n, dv::Heads{key, head});
        thrust::inclusive_scan(policy, head, head + n, uscan);
        thrust::lower_bound(policy, key, key + n, dks, dks + world + 1, dfp);
        thrust::for_each(policy, it, it + world,
                         dv::Headers{dfp, uscan, bad, id, positions, B, K, cap, world, dfu, send});
        thrust::for_each(policy, it, it + n,
                         dv::Scatter{key, pos, head, uscan, dfu, shards, cap, inverse, u_dest,
                                     u_slot, u_start, send});
        thrust::for_each(policy, it, it + 1, dv::CloseRuns{dfp, dfu, world, u_start});
      });
    }
    comm_.all_to_all(std::span<const i64>(send_ids_.data(), send_ids_.size()),
                     std::span<i64>(recv_ids_.data(), recv_ids_.size()), stream);
    // Owner: one gather of every requested row; the headers for the status.
    {
      const i64* recv = recv_ids_.data();
      const T* table = table_.data();
      const detail::dev::OwnedBlocks owned = owned_blocks();
      const i64 wmax = static_cast<i64>(wmax_);
      T* rows = send_rows_.data();
      i64* status = status_dev_.data();
      const i64 block = static_cast<i64>(id_block_);
      launcher_.launch(stream, [=](const auto& policy) {
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::for_each(policy, it, it + world * cap,
                         detail::dev::Gather<T>{recv, table, owned, cap, wmax, rows});
        thrust::for_each(policy, it, it + world, detail::dev::HeaderCopy{recv, block, status});
      });
    }
    comm_.all_to_all(std::span<const T>(send_rows_.data(), send_rows_.size()),
                     std::span<T>(recv_rows_.data(), recv_rows_.size()), stream);
    // Requester: pool in lookup order.
    if (shape_ok) {
      const detail::dev::Column* cols = columns_.data();
      const i64* members = members_.data();
      const T* table = table_.data();
      const T* recv = recv_rows_.data();
      const i64 *inverse = inverse_.data(), *u_dest = u_dest_.data(), *u_slot = u_slot_.data();
      const i64* id = ids.data();
      const i64 tw = static_cast<i64>(total_width_), wmax = static_cast<i64>(wmax_);
      const bool mean = options_.pooling == Pooling::mean;
      T* o = out.data();
      launcher_.launch(stream, [=](const auto& policy) {
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::for_each(policy, it, it + B * tw,
                         detail::dev::Pool<T>{id, cols, members, table, inverse, u_dest, u_slot,
                                              recv, B, K, tw, cap, wmax, mean, o});
      });
    }
    Runtime::check("cudaMemcpyAsync", static_cast<int>(me_),
                   Runtime::memcpy_async(status_host_.data(), status_dev_.data(),
                                         status_host_.size() * sizeof(i64), stream));
    forwarded_ = true;
    if (options_.check_each_step) {
      comm_.synchronize(stream);
      check_status(op, stream);
    }
  }

  //! Enqueues the backward exchange on `stream`: `grad` (device memory) is the upstream
  //! gradient of the last forward's output; `update` runs on the device where each row lives,
  //! once per row looked up anywhere (not at all in a step where any rank had a problem).
  template <class Update>
  requires device_row_update<Update, T>
  void backward(std::span<const T> grad, Update update, stream_handle stream) {
    backward(grad, update, std::span<T>(), stream);
  }

  //! The backward exchange with the caller's dense gradients (device memory, one buffer) in the
  //! same all-reduce as the replicated rows' gradients: one collective; `dense` comes back
  //! averaged over the world, the replicated rows' gradients stay a world sum. The buffer that
  //! carries them grows (and waits for the last stream) only when `dense` is larger than before.
  template <class Update>
  requires device_row_update<Update, T>
  void backward(std::span<const T> grad, Update update, std::span<T> dense, stream_handle stream) {
    const char* op = "DeviceEmbeddingExchange::backward";
    if (!forwarded_) throw std::logic_error(std::string(op) + ": needs a forward first");
    if (!bad_shape_ && grad.size() != samples_ * total_width_) {
      throw std::invalid_argument(std::string(op) + ": the gradient holds " +
                                  std::to_string(grad.size()) + " elements, the output " +
                                  std::to_string(samples_ * total_width_));
    }
    forwarded_ = false;
    last_stream_ = stream;
    const i64 world = static_cast<i64>(world_), cap = static_cast<i64>(capacity_);
    const i64 B = static_cast<i64>(samples_), K = static_cast<i64>(hotness_);
    const i64 n = static_cast<i64>(segments_host_.size() * samples_ * hotness_);
    const i64 tw = static_cast<i64>(total_width_), wmax = static_cast<i64>(wmax_);
    const T scale = options_.pooling == Pooling::mean && K != 0 ? T(1) / static_cast<T>(K) : T(1);
    {
      const i64 *u_start = u_start_.data(), *u_dest = u_dest_.data(), *u_slot = u_slot_.data(),
                *pos = pos_.data(), *dfu = dest_first_u_.data(), *seg_col = seg_col_.data(),
                *seg_width = seg_width_.data();
      const detail::dev::Segment* segs = segments_.data();
      const T* g = grad.data();
      T* send = send_rows_.data();
      const std::size_t rows = send_rows_.size();
      // n is 0 after a forward whose shape was refused: this rank then sends zeros.
      launcher_.launch(stream, [=](const auto& policy) {
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::fill_n(policy, send, rows, T(0));
        thrust::for_each(
            policy, it, it + n,
            detail::dev::SumUnique<T>{u_start, u_dest, u_slot, pos, dfu, segs, seg_col, seg_width,
                                      g, scale, B, K, tw, cap, wmax, world, send});
      });
    }
    comm_.all_to_all(std::span<const T>(send_rows_.data(), send_rows_.size()),
                     std::span<T>(recv_rows_.data(), recv_rows_.size()), stream);
    if (dense_size_ + dense.size() != 0) {
      if (dense_.size() < dense_size_ + dense.size()) {
        wait_last_stream();
        dense_.resize(dense_size_ + dense.size(), static_cast<int>(me_));
      }
      last_stream_ = stream;
      const detail::dev::ReplicaSegment* segs = replica_segs_.data();
      const i64* row_start = replica_row_start_.data();
      const i64* members = members_.data();
      const i64 nsegs = static_cast<i64>(replica_segs_host_.size());
      const i64 ndp = static_cast<i64>(replica_segs_host_.size() * samples_ * hotness_);
      const i64* id = ids_;
      const T* g = grad.data();
      T* fused = dense_.data();
      const std::size_t replica_size = dense_size_;
      const i64 caller = static_cast<i64>(dense.size());
      T* caller_dense = dense.data();
      i64 *key = dp_key_.data(), *pos = dp_pos_.data();
      launcher_.launch(stream, [=](const auto& policy) {
        namespace dv = detail::dev;
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::fill_n(policy, fused, replica_size, T(0));
        thrust::for_each(policy, it, it + ndp,
                         dv::ReplicaKeys{id, segs, row_start, members, B, K, key, pos});
        thrust::stable_sort_by_key(policy, key, key + ndp, pos);
        thrust::for_each(
            policy, it, it + ndp,
            dv::ReplicaRuns<T>{key, pos, segs, row_start, nsegs, ndp, B, K, tw, g, scale, fused});
        thrust::for_each(policy, it, it + caller,
                         dv::ScaleCopy<T>{caller_dense, fused + replica_size, T(1)});
      });
      comm_.all_reduce(std::span<T>(dense_.data(), dense_size_ + dense.size()), ReduceOp::sum,
                       stream);
      if (caller != 0) {
        const T average = T(1) / static_cast<T>(world_);
        launcher_.launch(stream, [=](const auto& policy) {
          const auto it = thrust::counting_iterator<i64>(0);
          thrust::for_each(policy, it, it + caller,
                           detail::dev::ScaleCopy<T>{fused + replica_size, caller_dense, average});
        });
      }
    }
    {
      const i64* recv = recv_ids_.data();
      const T* rows = recv_rows_.data();
      i64 *key = key_.data(), *pos = pos_.data(), *head = head_.data(), *flag = flag_.data();
      T* table = table_.data();
      T* sums = sums_.data();
      const detail::dev::OwnedBlocks owned = owned_blocks();
      const i64 *btable = block_table_.data(), *brow = block_row_begin_.data(),
                *bcol = block_col_begin_.data();
      const i64 slots = world * cap;
      const detail::dev::ReplicaSegment* rsegs = replica_segs_.data();
      const i64* row_start = replica_row_start_.data();
      const i64* slot_rows = slot_rows_.data();
      const i64 nsegs = static_cast<i64>(replica_segs_host_.size());
      const i64 replica_rows = static_cast<i64>(replica_rows_);
      const T* dense = dense_.data();
      launcher_.launch(stream, [=](const auto& policy) {
        namespace dv = detail::dev;
        const auto it = thrust::counting_iterator<i64>(0);
        thrust::for_each(policy, it, it + 1, dv::AnyProblem{recv, cap, world, flag});
        thrust::for_each(policy, it, it + slots, dv::OwnerKeys{recv, cap, key, pos});
        thrust::stable_sort_by_key(policy, key, key + slots, pos);
        thrust::for_each(policy, it, it + slots, dv::Heads{key, head});
        thrust::for_each(policy, it, it + slots,
                         dv::ApplyRuns<T, Update>{key, pos, head, flag, rows, owned, btable, brow,
                                                  bcol, slots, wmax, table, sums, update});
        if (replica_rows != 0) {
          thrust::for_each(policy, it, it + replica_rows,
                           dv::ReplicaApply<T, Update>{rsegs, row_start, slot_rows, nsegs, dense,
                                                       flag, table, update});
        }
      });
    }
  }

  //! Waits for `stream` and throws the same `strata::usage_error` on every rank if any rank's
  //! last forward had a problem (an id outside its table, or more unique ids for one owner than
  //! the capacity).
  void check(stream_handle stream) {
    comm_.synchronize(stream);
    check_status("DeviceEmbeddingExchange::check", stream);
  }

  //! Table j's values (row-major) as this rank holds them: its shards' rows and columns, others
  //! zero; a replica whole. Waits for the device.
  [[nodiscard]] std::vector<T> local_table(std::size_t j) {
    const DeviceGuard<Runtime> on(comm_.device(), static_cast<int>(me_));
    wait_last_stream();
    std::vector<T> host(table_size_);
    download(host, table_);
    const TableSpec& t = plan_.table(j);
    std::vector<T> full(t.rows * t.width, T(0));
    // Shards first, then the replica: a hybrid table's frequent rows live in its replica.
    for (const HostBlock& k : blocks_) {
      if (k.table != j) continue;
      for (std::size_t i = 0; i < k.rows; ++i)
        for (std::size_t d = 0; d < k.width; ++d)
          full[block_row(k, i) * t.width + k.col_begin + d] = host[k.offset + i * k.width + d];
    }
    return full;
  }

 private:
  struct HostBlock {
    std::size_t table, row_begin, col_begin, rows, width, offset;
    bool hybrid_replica = false;
  };

  // The table row of row i of block k (a hybrid replica's rows are its frequent rows).
  [[nodiscard]] std::size_t block_row(const HostBlock& k, std::size_t i) const {
    return k.hybrid_replica ? static_cast<std::size_t>(frequent_.rows[k.table][i])
                            : k.row_begin + i;
  }

  // The steps of a caller's stream other than the communicator's may still use the tables.
  void wait_last_stream() {
    if (last_stream_ && *last_stream_ != comm_.stream()) comm_.synchronize(*last_stream_);
    comm_.synchronize(comm_.stream());
  }

  // Reads the statuses the forwards since the last check kept, clears them (here and on the
  // device, in stream order), and throws for the lowest rank with a problem.
  void check_status(const char* op, stream_handle stream) {
    const std::size_t h = detail::dev::header_words;
    const std::vector<i64> words(status_host_.data(), status_host_.data() + status_host_.size());
    std::fill(status_host_.data(), status_host_.data() + status_host_.size(), i64(0));
    {
      i64* status = status_dev_.data();
      const std::size_t size = status_dev_.size();
      launcher_.launch(stream,
                       [=](const auto& policy) { thrust::fill_n(policy, status, size, i64(0)); });
    }
    for (std::size_t q = 0; q < world_; ++q) {
      const i64* w = words.data() + q * h;
      if (w[1] == detail::dev::status_ok) continue;
      std::string why = "rank " + std::to_string(q) + ": ";
      if (w[1] == detail::dev::status_bad_shape) {
        why += "the batch holds " + std::to_string(w[2]) + " ids for " + std::to_string(w[4]) +
               " samples of hotness " + std::to_string(w[5]) + " (" + std::to_string(w[3]) +
               " needed, and an output of as many samples), built for at most " +
               std::to_string(options_.max_samples) + " samples of hotness " +
               std::to_string(options_.max_hotness);
      } else if (w[1] == detail::dev::status_bad_id) {
        why += "table " + std::to_string(w[2]) + ", lookup " + std::to_string(w[3]) + ": id " +
               std::to_string(w[4]) + " is outside the table's " +
               std::to_string(plan_.table(static_cast<std::size_t>(w[2])).rows) + " rows";
      } else {
        why += std::to_string(w[5]) + " unique ids for one owner exceed the capacity of " +
               std::to_string(capacity_) + " (DeviceExchangeOptions::ids_per_peer)";
      }
      throw usage_error(op, static_cast<int>(me_), why);
    }
  }

  detail::dev::OwnedBlocks owned_blocks() const {
    return {owned_key_start_.data(), owned_offset_.data(), owned_width_.data(),
            static_cast<i64>(owned_host_blocks_)};
  }

  void layout() {
    const std::size_t nt = plan_.num_tables();
    col_off_.assign(nt + 1, 0);
    for (std::size_t j = 0; j < nt; ++j) col_off_[j + 1] = col_off_[j] + plan_.table(j).width;
    total_width_ = col_off_[nt];
    // Membership maps of the hybrid tables, and their rows by slot, one after the other.
    std::vector<i64> member_at(nt, -1), slot_row_at(nt, -1);
    for (std::size_t j = 0; j < nt; ++j) {
      if (slots_[j].empty()) continue;
      member_at[j] = i64(members_host_.size());
      members_host_.insert(members_host_.end(), slots_[j].begin(), slots_[j].end());
      slot_row_at[j] = i64(slot_rows_host_.size());
      slot_rows_host_.insert(slot_rows_host_.end(), frequent_.rows[j].begin(),
                             frequent_.rows[j].end());
    }
    // Segments: one per (sharded table, column block).
    std::vector<std::size_t> seg_of(nt, 0);
    for (std::size_t j = 0; j < nt; ++j) {
      if (plan_.replicated(j)) continue;
      seg_of[j] = segments_host_.size();
      const TableSpec& t = plan_.table(j);
      const bool rows =
          t.placement.kind == Placement::row_wise || t.placement.kind == Placement::table_row_wise;
      for (std::size_t c = 0; c < plan_.column_blocks(j); ++c) {
        const Shard& s = plan_.shards()[plan_.first_shard(j) + c];
        segments_host_.push_back({i64(j), i64(t.rows), i64(plan_.first_shard(j)),
                                  rows ? i64(plan_.shards_of(j).size()) : 1, i64(c), member_at[j]});
        seg_col_host_.push_back(i64(col_off_[j] + s.col_begin));
        seg_width_host_.push_back(i64(s.width()));
      }
    }
    // Dense keys ordered by destination (as the host path's).
    const auto shards = plan_.shards();
    key_base_host_.assign(shards.size(), 0);
    row_begin_host_.assign(shards.size(), 0);
    dest_key_start_host_.assign(world_ + 1, 0);
    i64 base = 0;
    for (std::size_t p = 0; p < world_; ++p) {
      dest_key_start_host_[p] = base;
      for (std::size_t k : plan_.shards_on(p)) {
        key_base_host_[k] = base;
        row_begin_host_[k] = i64(shards[k].row_begin);
        base += i64(shards[k].rows());
      }
    }
    dest_key_start_host_[world_] = base;
    // This rank's blocks: shards in key order, then replicas; one buffer for all of them.
    i64 my_key = 0;
    for (std::size_t k : plan_.shards_on(me_)) {
      const Shard& s = shards[k];
      blocks_.push_back({s.table, s.row_begin, s.col_begin, s.rows(), s.width(), table_size_});
      owned_key_start_host_.push_back(my_key);
      owned_offset_host_.push_back(i64(table_size_));
      owned_width_host_.push_back(i64(s.width()));
      block_table_host_.push_back(i64(s.table));
      block_row_begin_host_.push_back(i64(s.row_begin));
      block_col_begin_host_.push_back(i64(s.col_begin));
      my_key += i64(s.rows());
      table_size_ += s.rows() * s.width();
      wmax_ = std::max(wmax_, s.width());
    }
    owned_host_blocks_ = owned_key_start_host_.size();
    owned_key_start_host_.push_back(my_key);
    for (const Shard& s : shards) wmax_ = std::max(wmax_, s.width());
    if (wmax_ == 0) wmax_ = 1;
    std::vector<std::size_t> replica_at(nt, 0);
    for (std::size_t j = 0; j < nt; ++j) {
      const bool whole = plan_.replicated(j);
      if (!whole && frequent_.count(j) == 0) continue;
      const TableSpec& t = plan_.table(j);
      const std::size_t n = whole ? t.rows : frequent_.count(j);
      replica_at[j] = table_size_;
      blocks_.push_back({j, 0, 0, n, t.width, table_size_, !whole});
      replica_segs_host_.push_back({i64(j), i64(n), i64(t.width), i64(col_off_[j]),
                                    i64(dense_size_), i64(table_size_), i64(t.rows), member_at[j],
                                    slot_row_at[j]});
      replica_row_start_host_.push_back(i64(replica_rows_));
      replica_rows_ += n;
      dense_size_ += n * (t.width + 1);
      table_size_ += n * t.width;
    }
    // Output columns.
    for (std::size_t j = 0; j < nt; ++j) {
      const TableSpec& t = plan_.table(j);
      for (std::size_t d = 0; d < t.width; ++d) {
        detail::dev::Column c;
        c.table = i64(j);
        c.replica = i64(replica_at[j]);
        c.width = i64(t.width);
        c.rows = i64(t.rows);
        c.rd = i64(d);
        c.member = member_at[j];
        if (plan_.replicated(j)) {
          c.replicated = 1;
          c.dd = i64(d);
        } else {
          const std::size_t w = t.width / plan_.column_blocks(j);
          c.segment = i64(seg_of[j] + d / w);
          c.dd = i64(d % w);
        }
        columns_host_.push_back(c);
      }
    }
    // Every size below is checked: a product that wraps would allocate too little.
    const auto mul = [](std::size_t a, std::size_t b, const char* what) {
      if (b != 0 && a > (std::size_t(1) << 62) / b) {
        throw std::invalid_argument(std::string("DeviceEmbeddingExchange: ") + what +
                                    " is too large to allocate");
      }
      return a * b;
    };
    const std::size_t per_table =
        mul(options_.max_samples, options_.max_hotness, "max_samples x max_hotness");
    max_lookups_ = mul(segments_host_.size(), per_table, "the lookups of a batch");
    max_positions_ = mul(nt, per_table, "the ids of a batch");
    dp_lookups_ = mul(replica_segs_host_.size(), per_table, "the replicated lookups of a batch");
    capacity_ =
        options_.ids_per_peer != 0 ? options_.ids_per_peer : std::max<std::size_t>(max_lookups_, 1);
    id_block_ = detail::dev::header_words + capacity_;
    (void)mul(mul(world_, id_block_, "ids_per_peer"), 8, "ids_per_peer");
    (void)mul(mul(mul(world_, capacity_, "ids_per_peer"), wmax_, "ids_per_peer"), sizeof(T),
              "ids_per_peer");
    (void)mul(mul(options_.max_samples, std::max<std::size_t>(total_width_, 1), "max_samples"),
              sizeof(T), "max_samples");
  }

  template <class U>
  void upload(Buffer<U>& dst, const std::vector<U>& src) {
    const std::size_t n = std::max<std::size_t>(src.size(), 1);
    if (dst.size() < n) dst.resize(n, static_cast<int>(me_));
    if (src.empty()) return;
    PinnedBuffer<U, Runtime> staging(src.size(), static_cast<int>(me_));
    std::copy(src.begin(), src.end(), staging.data());
    Runtime::check(
        "cudaMemcpyAsync", static_cast<int>(me_),
        Runtime::memcpy_async(dst.data(), staging.data(), src.size() * sizeof(U), comm_.stream()));
    comm_.synchronize(comm_.stream());
  }

  template <class U>
  void download(std::vector<U>& dst, const Buffer<U>& src) {
    if (dst.empty()) return;
    PinnedBuffer<U, Runtime> staging(dst.size(), static_cast<int>(me_));
    Runtime::check(
        "cudaMemcpyAsync", static_cast<int>(me_),
        Runtime::memcpy_async(staging.data(), src.data(), dst.size() * sizeof(U), comm_.stream()));
    comm_.synchronize(comm_.stream());
    std::copy(staging.data(), staging.data() + dst.size(), dst.begin());
  }

  void allocate() {
    const int r = static_cast<int>(me_);
    const std::size_t n = std::max<std::size_t>(max_lookups_, 1);
    for (Buffer<i64>* b : {&key_, &pos_, &head_, &uscan_, &inverse_, &u_dest_, &u_slot_})
      b->resize(n, r);
    bad_.resize(std::max<std::size_t>(max_positions_, 1), r);
    dp_key_.resize(std::max<std::size_t>(dp_lookups_, 1), r);
    dp_pos_.resize(std::max<std::size_t>(dp_lookups_, 1), r);
    // The owner side sorts one key per received slot; the same buffers serve it.
    const std::size_t slots = world_ * capacity_;
    for (Buffer<i64>* b : {&key_, &pos_, &head_}) b->resize(std::max(n, slots), r);
    u_start_.resize(n + 1, r);
    dest_first_pos_.resize(world_ + 1, r);
    dest_first_u_.resize(world_ + 1, r);
    send_ids_.resize(world_ * id_block_, r);
    recv_ids_.resize(world_ * id_block_, r);
    send_rows_.resize(slots * wmax_, r);
    recv_rows_.resize(slots * wmax_, r);
    sums_.resize(std::max<std::size_t>(slots * wmax_, 1), r);
    status_dev_.resize(world_ * detail::dev::header_words, r);
    status_host_.resize(world_ * detail::dev::header_words, r);
    flag_.resize(1, r);
    dense_.resize(std::max<std::size_t>(dense_size_, 1), r);
    table_.resize(std::max<std::size_t>(table_size_, 1), r);
    upload(segments_, segments_host_);
    upload(seg_col_, seg_col_host_);
    upload(seg_width_, seg_width_host_);
    upload(key_base_, key_base_host_);
    upload(row_begin_, row_begin_host_);
    upload(dest_key_start_, dest_key_start_host_);
    upload(owned_key_start_, owned_key_start_host_);
    upload(owned_offset_, owned_offset_host_);
    upload(owned_width_, owned_width_host_);
    upload(block_table_, block_table_host_);
    upload(block_row_begin_, block_row_begin_host_);
    upload(block_col_begin_, block_col_begin_host_);
    upload(columns_, columns_host_);
    upload(replica_segs_, replica_segs_host_);
    upload(replica_row_start_, replica_row_start_host_);
    upload(members_, members_host_);
    upload(slot_rows_, slot_rows_host_);
    std::vector<i64> rows(plan_.num_tables());
    for (std::size_t j = 0; j < rows.size(); ++j) rows[j] = i64(plan_.table(j).rows);
    upload(table_rows_, rows);
    upload(status_dev_, std::vector<i64>(status_dev_.size(), 0));
    std::fill(status_host_.data(), status_host_.data() + status_host_.size(), i64(0));
    upload(table_, std::vector<T>(std::max<std::size_t>(table_size_, 1), T(0)));
  }

  Comm& comm_;
  ShardingPlan plan_;
  DeviceExchangeOptions options_;
  FrequentSets frequent_;
  Launcher launcher_;
  std::size_t me_ = 0, world_ = 0, total_width_ = 0, wmax_ = 0, capacity_ = 0, id_block_ = 0;
  std::size_t max_lookups_ = 0, max_positions_ = 0, dp_lookups_ = 0, table_size_ = 0,
              dense_size_ = 0, replica_rows_ = 0;
  std::size_t owned_host_blocks_ = 0;
  std::vector<std::size_t> col_off_;
  std::vector<HostBlock> blocks_;

  // Host copies of the constant tables, and their device twins.
  std::vector<detail::dev::Segment> segments_host_;
  std::vector<i64> seg_col_host_, seg_width_host_, key_base_host_, row_begin_host_,
      dest_key_start_host_, owned_key_start_host_, owned_offset_host_, owned_width_host_,
      block_table_host_, block_row_begin_host_, block_col_begin_host_, replica_row_start_host_;
  std::vector<detail::dev::Column> columns_host_;
  std::vector<detail::dev::ReplicaSegment> replica_segs_host_;
  Buffer<detail::dev::Segment> segments_;
  Buffer<i64> seg_col_, seg_width_, key_base_, row_begin_, dest_key_start_, owned_key_start_,
      owned_offset_, owned_width_, block_table_, block_row_begin_, block_col_begin_,
      replica_row_start_;
  Buffer<detail::dev::Column> columns_;
  Buffer<detail::dev::ReplicaSegment> replica_segs_;

  // Work buffers, sized once.
  Buffer<i64> key_, pos_, bad_, head_, uscan_, inverse_, u_dest_, u_slot_, u_start_;
  Buffer<i64> dp_key_, dp_pos_, table_rows_, members_, slot_rows_;
  std::vector<i64> members_host_, slot_rows_host_;
  std::vector<std::vector<i64>> slots_;
  Buffer<i64> dest_first_pos_, dest_first_u_, send_ids_, recv_ids_, status_dev_, flag_;
  Buffer<T> send_rows_, recv_rows_, sums_, dense_, table_;
  PinnedBuffer<i64, Runtime> status_host_;

  bool forwarded_ = false;
  bool bad_shape_ = false;
  std::optional<stream_handle> last_stream_;
  std::size_t samples_ = 0, hotness_ = 0;
  const i64* ids_ = nullptr;
};

//! The statistics phase of hybrid tables on the device: counts the lookups of every hybrid
//! table in `ids` (device memory, `tables × samples × hotness`, table-major) with a sort and a
//! reduction by key on `stream` (through `launcher`, as the exchange's steps), copies the
//! distinct rows and their counts back through pinned memory, and adds them to `counts`. It waits
//! for the stream: statistics come before training, and the steps after it never wait.
//! Throws `std::invalid_argument` for a batch of the wrong size or an id outside its table.
//!
//! \code
//! // See tests/nccl/embedding_device_test.cpp: the counts equal FrequencyCounts::add's.
//! static_assert(sizeof(strata::FrequencyCounts) > 0);
//! \endcode
template <class Comm, class Launcher>
void count_lookups_on_device(Comm& comm, Launcher& launcher, FrequencyCounts& counts,
                             std::span<const std::int64_t> ids, std::size_t samples,
                             std::size_t hotness, typename Comm::stream_handle stream) {
  using i64 = std::int64_t;
  using Runtime = typename Comm::runtime_type;
  const ShardingPlan& plan = counts.plan();
  const std::size_t per = samples * hotness, nt = plan.num_tables();
  if (ids.size() != nt * per || (per != 0 && ids.size() / per != nt)) {
    throw std::invalid_argument("count_lookups_on_device: " + std::to_string(ids.size()) +
                                " ids for " + std::to_string(nt) + " tables x " +
                                std::to_string(samples) + " samples x " + std::to_string(hotness) +
                                " lookups");
  }
  if (per == 0) return;
  const DeviceGuard<Runtime> on(comm.device(), comm.rank());
  DeviceBuffer<i64, Runtime> keys(per, comm.rank()), rows(per, comm.rank()),
      times(per, comm.rank());
  PinnedBuffer<i64, Runtime> host_rows(per, comm.rank()), host_times(per, comm.rank());
  for (std::size_t j = 0; j < nt; ++j) {
    if (!plan.hybrid(j)) continue;
    std::size_t distinct = 0;  // written by the launched work, read after the wait
    std::size_t* out = &distinct;
    const i64* src = ids.data() + j * per;
    i64 *k = keys.data(), *r = rows.data(), *t = times.data();
    const i64 n = static_cast<i64>(per);
    launcher.launch(stream, [=](const auto& policy) {
      thrust::copy_n(policy, src, n, k);
      thrust::sort(policy, k, k + n);
      const auto ends =
          thrust::reduce_by_key(policy, k, k + n, thrust::constant_iterator<i64>(1), r, t);
      *out = static_cast<std::size_t>(ends.first - r);
    });
    comm.synchronize(stream);
    Runtime::check(
        "cudaMemcpyAsync", comm.rank(),
        Runtime::memcpy_async(host_rows.data(), rows.data(), distinct * sizeof(i64), stream));
    Runtime::check(
        "cudaMemcpyAsync", comm.rank(),
        Runtime::memcpy_async(host_times.data(), times.data(), distinct * sizeof(i64), stream));
    comm.synchronize(stream);
    counts.add_counts(j, std::span<const i64>(host_rows.data(), distinct),
                      std::span<const i64>(host_times.data(), distinct));
  }
}

}  // namespace strata
