#pragma once
//! \file
//! `EmbeddingExchange`: the forward and backward all-to-all of model-parallel embedding tables,
//! generated from a `ShardingPlan`, on any communicator.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <thrust/execution_policy.h>

#include "strata/comm/communicator.hpp"
#include "strata/embedding/batch.hpp"
#include "strata/embedding/frequency.hpp"
#include "strata/embedding/fused_tables.hpp"
#include "strata/embedding/hierarchical_all_to_all.hpp"
#include "strata/embedding/hybrid_cost.hpp"
#include "strata/embedding/sharding.hpp"
#include "strata/error.hpp"
#include "strata/kernels/dedup.hpp"
#include "strata/kernels/fused.hpp"

namespace strata {

//! How `EmbeddingExchange` moves lookups: pooling, de-duplication of each rank's ids per owner
//! (and of its gradient rows), and the hierarchical all-to-all over nodes of the plan's
//! `ranks_per_node()`.
//!
//! \code
//! strata::ExchangeOptions o{.pooling = strata::Pooling::mean, .dedup = false};
//! assert(!o.hierarchical);
//! \endcode
struct ExchangeOptions {
  Pooling pooling = Pooling::sum;
  bool dedup = true;
  bool hierarchical = false;
};

//! What the last step sent, counted on this rank: `lookups` of sharded tables whose owner is
//! another rank (once per column shard), the ids it sent those owners (as many without
//! de-duplication, fewer with it), and the elements of each exchange it sent other ranks
//! (`request_words` are 64-bit words of ids and counts; the rest are table elements), plus the
//! elements the fused all-reduce carries for the replicated rows (their gradients and one count
//! per row: data-parallel tables and the frequent rows of hybrid ones) and for the caller's dense
//! gradients, and the link traffic of the exchanges.
//!
//! \code
//! strata::ExchangeStats s{.lookups = 100, .ids_sent = 40};
//! assert(s.dedup_ratio() == 0.4);
//! \endcode
struct ExchangeStats {
  std::size_t lookups = 0;
  std::size_t ids_sent = 0;
  std::size_t request_words = 0;
  std::size_t response_elements = 0;
  std::size_t gradient_elements = 0;
  std::size_t allreduce_elements = 0;
  std::size_t dense_elements = 0;
  LinkTraffic traffic{};

  //! Ids sent per lookup sent to another rank: 1 without de-duplication.
  [[nodiscard]] double dedup_ratio() const noexcept {
    return lookups == 0 ? 1.0 : static_cast<double>(ids_sent) / static_cast<double>(lookups);
  }
  //! Bytes this rank sent to other ranks in the exchanges, for elements of `element_bytes`.
  [[nodiscard]] std::size_t bytes_sent(std::size_t element_bytes) const noexcept {
    return request_words * 8 + (response_elements + gradient_elements) * element_bytes;
  }
};

//! The hybrid-parallel embedding layer of one rank (docs/embeddings.md). It holds this rank's
//! shards and replicas (`FusedTables`, one buffer per width), and each step runs
//! - `forward(batch, out)`: validates every rank's batch (one small exchange that also
//!   transposes the counts), sends each id to the ranks that own its row (de-duplicated per
//!   owner and shard unless `dedup` is off), has the owners gather the rows (one gather per width)
//!   and return them (or, without de-duplication, return the pooled vectors of each sample), and
//!   pools them into `out`, `samples × (sum of the widths)`, tables side by side, column shards
//!   concatenated; data-parallel tables are looked up locally;
//! - `backward(grad, update)`: sends each sample's gradient to the owners (summed per unique row
//!   first with de-duplication), where the rows' gradients from every rank are summed in rank
//!   order and `update` runs once per row that any sample looked up; the gradients of
//!   data-parallel rows are summed by one all-reduce and updated identically on every replica.
//!
//! Every member calls both in the same order. Bad input (an id outside its table, a batch whose
//! table count is not the plan's, buffers of the wrong size) gives the same `strata::usage_error`
//! on every rank, naming the lowest rank that has a problem, the table and the value, before any
//! table is touched. `T` is `float` or `double`.
//!
//! \code
//! #include <strata/comm/local.hpp>
//! auto plan = strata::ShardingPlan::parse("0: 10x2 row; 1: 6x4 column:2", 2);
//! strata::LocalWorld(2).run([&](strata::LocalComm& world) {
//!   strata::EmbeddingExchange<strata::LocalComm, double> emb(world, plan);
//!   emb.initialize([](std::size_t j, std::size_t i, std::size_t d) { return double(j + i + d); });
//!   const std::vector<std::int64_t> ids{9, 5};  // one sample, one lookup in each table
//!   std::vector<double> out(2 + 4);
//!   emb.forward({ids, 2, 1, 1}, out);
//!   assert(out[0] == 9 && out[2] == 6 && out[5] == 9);
//!   const std::vector<double> grad(6, 1.0);
//!   emb.backward(grad, strata::Sgd{0.5});
//! });
//! \endcode
template <communicator Comm, class T = float>
requires(std::same_as<T, float> || std::same_as<T, double>) class EmbeddingExchange {
  static_assert(!device_memory_v<Comm>,
                "EmbeddingExchange: this communicator's buffers are device memory; exchange "
                "embeddings in device memory with DeviceEmbeddingExchange");

 public:
  //! Collective when `options.hierarchical` (it splits the node and strided communicators).
  //! `frequent` holds the replicated rows of each hybrid table (`choose_frequent`, or rows of the
  //! caller's choice; the same on every rank). Throws `std::invalid_argument` when the plan is
  //! made for another world size, or the frequent sets do not fit the plan (rows outside a
  //! table or repeated, rows for a table that is not hybrid, another count than the plan names).
  EmbeddingExchange(Comm& world, ShardingPlan plan, ExchangeOptions options = {},
                    FrequentSets frequent = {})
      : comm_(world), plan_(std::move(plan)), options_(options), frequent_(std::move(frequent)) {
    if (plan_.world_size() != static_cast<std::size_t>(world.size())) {
      throw std::invalid_argument("EmbeddingExchange: the plan is made for " +
                                  std::to_string(plan_.world_size()) + " ranks, the world has " +
                                  std::to_string(world.size()));
    }
    me_ = static_cast<std::size_t>(world.rank());
    world_ = plan_.world_size();
    check_frequent();
    layout();
    if (options_.hierarchical) hier_.emplace(world, plan_.ranks_per_node());
  }

  //! The rows each hybrid table replicates, slot by slot.
  [[nodiscard]] const FrequentSets& frequent() const noexcept { return frequent_; }

  [[nodiscard]] const ShardingPlan& plan() const noexcept { return plan_; }
  [[nodiscard]] const ExchangeOptions& options() const noexcept { return options_; }
  //! This rank's shards (blocks in the order of `plan().shards_on(rank)`) and replicas (then, in
  //! table order).
  [[nodiscard]] FusedTables<T>& tables() noexcept { return tables_; }
  [[nodiscard]] const FusedTables<T>& tables() const noexcept { return tables_; }
  //! The width of one sample's output: every table's width, side by side.
  [[nodiscard]] std::size_t output_width() const noexcept { return total_width_; }
  //! The first output column of table j.
  [[nodiscard]] std::size_t output_offset(std::size_t j) const { return col_off_.at(j); }
  //! What the last `forward` and `backward` sent.
  [[nodiscard]] const ExchangeStats& stats() const noexcept { return stats_; }

  //! Sets every element this rank holds, shards and replicas, to `value(table, row, column)`.
  template <class F>
  requires std::convertible_to<std::invoke_result_t<F&, std::size_t, std::size_t, std::size_t>, T>
  void initialize(F&& value) {
    for (std::size_t b = 0; b < block_shard_.size(); ++b) {
      const Shard s = block_source(b);
      for (std::size_t i = 0; i < s.rows(); ++i) {
        const auto row = tables_.row(b, i);
        const std::size_t r = block_shard_[b] == npos ? replica_row(s.table, i) : s.row_begin + i;
        for (std::size_t d = 0; d < s.width(); ++d)
          row[d] = static_cast<T>(value(s.table, r, s.col_begin + d));
      }
    }
  }

  //! The forward exchange (see the class): `out` receives `batch.samples × output_width()`
  //! pooled values.
  void forward(const SparseBatch& batch, std::span<T> out) {
    const char* op = "EmbeddingExchange::forward";
    ctx_valid_ = false;
    stats_ = {};
    Problem problem = check_batch(batch, out);
    if (!problem) bucket(batch);
    // The requests this rank sends each owner, and with them the size of every stream.
    std::vector<std::int64_t> requests;
    std::vector<std::size_t> req_send(world_, 0);
    if (!problem) build_requests(requests, req_send);
    // One small exchange validates every rank's batch and transposes the request counts.
    constexpr std::size_t words = 5;
    std::vector<std::int64_t> rec_out(world_ * words), rec_in(world_ * words);
    for (std::size_t p = 0; p < world_; ++p) {
      rec_out[p * words + 0] = static_cast<std::int64_t>(req_send[p]);
      rec_out[p * words + 1] = problem.code;
      rec_out[p * words + 2] = problem.a;
      rec_out[p * words + 3] = problem.b;
      rec_out[p * words + 4] = problem.c;
    }
    comm_.template all_to_all<std::int64_t>(rec_out, rec_in);
    for (std::size_t q = 0; q < world_; ++q) {
      const std::int64_t* r = &rec_in[q * words];
      if (r[1] != 0) {
        throw usage_error(op, static_cast<int>(me_), describe(q, Problem{r[1], r[2], r[3], r[4]}));
      }
    }
    std::vector<std::size_t> req_recv(world_);
    for (std::size_t q = 0; q < world_; ++q)
      req_recv[q] = static_cast<std::size_t>(rec_in[q * words]);
    std::size_t total = 0;
    for (std::size_t c : req_recv) total += c;
    req_in_.assign(total, 0);
    exchange<std::int64_t>(requests, req_send, req_in_, req_recv, stats_.request_words);
    req_in_counts_ = req_recv;

    // Owner: serve every request with one gather per width group.
    std::vector<T> responses;
    std::vector<std::size_t> resp_send(world_, 0);
    serve(responses, resp_send);
    // Requester: what each owner returns follows from what this rank asked.
    std::vector<std::size_t> resp_recv(world_, 0);
    for (std::size_t p = 0; p < world_; ++p) resp_recv[p] = expected_response(p);
    std::size_t resp_total = 0;
    for (std::size_t c : resp_recv) resp_total += c;
    std::vector<T> got(resp_total);
    exchange<T>(responses, resp_send, got, resp_recv, stats_.response_elements);
    pool(batch, got, out);
    ctx_valid_ = true;
  }

  //! The backward exchange (see the class): `grad` holds the upstream gradient of the last
  //! `forward`'s output, `samples × output_width()`; `update(const RowGradient<T>&)` runs where
  //! each looked-up row lives, once per row and shard or replica.
  template <class Update>
  requires std::invocable < Update&, const RowGradient<T>
  & > void backward(std::span<const T> grad, Update&& update) {
    backward(grad, std::forward<Update>(update), std::span<const std::span<T>>());
  }

  //! The backward exchange with the caller's dense gradients in the same all-reduce: `dense`
  //! (any tensors of T) and the replicated rows' gradients are packed into one buffer and summed
  //! by one all-reduce; `dense` comes back averaged over the world (1/world), the replicated
  //! rows' gradients stay a sum over every sample of the world, as the sharded rows' do. Every
  //! member passes tensors of the same sizes.
  template <class Update>
  requires std::invocable < Update&, const RowGradient<T>
  & > void backward(std::span<const T> grad, Update&& update, std::span<const std::span<T>> dense) {
    const char* op = "EmbeddingExchange::backward";
    Problem problem;
    if (!ctx_valid_) {
      problem = {kNoForward, 0, 0, 0};
    } else if (grad.size() != samples_ * total_width_) {
      problem = {kBadGrad, static_cast<std::int64_t>(grad.size()),
                 static_cast<std::int64_t>(samples_ * total_width_), 0};
    }
    constexpr std::size_t words = 4;
    const std::vector<std::int64_t> mine{problem.code, problem.a, problem.b, problem.c};
    std::vector<std::int64_t> all(world_ * words);
    comm_.template all_gather<std::int64_t>(mine, all);
    for (std::size_t q = 0; q < world_; ++q) {
      const std::int64_t* r = &all[q * words];
      if (r[0] != 0) {
        ctx_valid_ = false;
        throw usage_error(op, static_cast<int>(me_), describe(q, Problem{r[0], r[1], r[2], r[3]}));
      }
    }
    ctx_valid_ = false;  // one backward per forward
    const T scale = options_.pooling == Pooling::mean ? T(1) / static_cast<T>(hotness_) : T(1);
    std::vector<T> g(grad.begin(), grad.end());
    if (options_.pooling == Pooling::mean) {
      for (T& x : g) x = x * scale;
    }
    std::vector<T> sends;
    std::vector<std::size_t> send(world_, 0), recv(world_, 0);
    build_gradients(g, sends, send);
    for (std::size_t q = 0; q < world_; ++q) recv[q] = expected_gradient(q);
    std::size_t total = 0;
    for (std::size_t c : recv) total += c;
    std::vector<T> got(total);
    exchange<T>(sends, send, got, recv, stats_.gradient_elements);
    // Replicated rows (data-parallel tables, frequent rows of hybrid ones): local sums of this
    // rank's samples, then one all-reduce together with the caller's dense gradients.
    std::vector<T> replicas = replica_gradients(g);
    fused_all_reduce(dense, replicas);
    apply_sharded(got, update);
    apply_replicated(replicas, update);
  }

  //! Collective: table j whole (row-major) on `root`, empty elsewhere.
  //! Throws `std::invalid_argument` (on every member alike, before any exchange) for a table or
  //! root that does not exist.
  [[nodiscard]] std::vector<T> gather_table(std::size_t j, int root = 0) {
    if (root < 0 || static_cast<std::size_t>(root) >= world_) {
      throw std::invalid_argument("EmbeddingExchange::gather_table: root " + std::to_string(root) +
                                  " is outside the world of " + std::to_string(world_));
    }
    const TableSpec& t = plan_.table(j);
    std::vector<T> full;
    if (plan_.replicated(j)) {
      if (static_cast<int>(me_) == root) {
        full.resize(t.rows * t.width);
        const std::size_t b = replica_block_[j];
        for (std::size_t i = 0; i < t.rows; ++i)
          std::copy_n(tables_.row(b, i).data(), t.width, full.data() + i * t.width);
      }
      return full;
    }
    std::vector<T> mine;
    std::vector<std::size_t> send(world_, 0), recv(world_, 0);
    for (std::size_t b = 0; b < block_shard_.size(); ++b) {
      if (block_shard_[b] == npos || plan_.shards()[block_shard_[b]].table != j) continue;
      const Shard& s = plan_.shards()[block_shard_[b]];
      for (std::size_t i = 0; i < s.rows(); ++i) {
        const auto row = tables_.row(b, i);
        mine.insert(mine.end(), row.begin(), row.end());
      }
    }
    send[static_cast<std::size_t>(root)] = mine.size();
    if (static_cast<int>(me_) == root) {
      for (const Shard& s : plan_.shards_of(j)) recv[s.rank] += s.rows() * s.width();
    }
    std::size_t total = 0;
    for (std::size_t c : recv) total += c;
    std::vector<T> got(total);
    comm_.template all_to_all<T>(std::span<const T>(mine), send, std::span<T>(got), recv);
    if (static_cast<int>(me_) != root) return full;
    full.resize(t.rows * t.width);
    std::vector<std::size_t> at(world_, 0);
    for (std::size_t p = 1; p < world_; ++p) at[p] = at[p - 1] + recv[p - 1];
    for (std::size_t p = 0; p < world_; ++p) {
      for (std::size_t k : plan_.shards_on(p)) {
        const Shard& s = plan_.shards()[k];
        if (s.table != j) continue;
        for (std::size_t i = 0; i < s.rows(); ++i) {
          std::copy_n(got.data() + at[p], s.width(),
                      full.data() + (s.row_begin + i) * t.width + s.col_begin);
          at[p] += s.width();
        }
      }
    }
    // A hybrid table's frequent rows live in the replica; their shard copies are not updated.
    for (std::size_t i = 0; i < frequent_.count(j); ++i) {
      std::copy_n(tables_.row(replica_block_[j], i).data(), t.width,
                  full.data() + replica_row(j, i) * t.width);
    }
    return full;
  }

 private:
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  static constexpr std::int64_t kTables = 1, kIdCount = 2, kOutSize = 3, kBadId = 4, kNoForward = 5,
                                kBadGrad = 6;

  struct Problem {
    std::int64_t code = 0, a = 0, b = 0, c = 0;
    explicit operator bool() const noexcept { return code != 0; }
  };

  // ---- layout ---------------------------------------------------------------------------------

  void layout() {
    const std::size_t nt = plan_.num_tables();
    col_off_.assign(nt + 1, 0);
    for (std::size_t j = 0; j < nt; ++j) col_off_[j + 1] = col_off_[j] + plan_.table(j).width;
    total_width_ = col_off_[nt];
    std::vector<std::pair<std::size_t, std::size_t>> blocks;
    shard_block_.assign(plan_.shards().size(), npos);
    for (std::size_t k : plan_.shards_on(me_)) {
      shard_block_[k] = blocks.size();
      block_shard_.push_back(k);
      block_table_.push_back(plan_.shards()[k].table);
      blocks.emplace_back(plan_.shards()[k].rows(), plan_.shards()[k].width());
    }
    replica_block_.assign(nt, npos);
    for (std::size_t j = 0; j < nt; ++j) {
      if (!plan_.replicated(j) && !plan_.hybrid(j)) continue;
      replica_block_[j] = blocks.size();
      block_shard_.push_back(npos);
      block_table_.push_back(j);
      blocks.emplace_back(replica_rows(j), plan_.table(j).width);
    }
    tables_ = FusedTables<T>(blocks);
    group_blocks_.assign(tables_.num_groups(), {});
    for (std::size_t b = 0; b < tables_.num_blocks(); ++b)
      group_blocks_[tables_.block(b).group].push_back(b);
    // Dense keys for de-duplication: shards in destination order (rank, then global index), each
    // shard's rows consecutive, so sorted keys come grouped by destination and shard.
    key_base_.assign(plan_.shards().size(), 0);
    std::size_t base = 0;
    for (std::size_t p = 0; p < world_; ++p) {
      for (std::size_t k : plan_.shards_on(p)) {
        key_base_[k] = base;
        base += plan_.shards()[k].rows();
      }
    }
    // Width classes of shards: requester-side de-duplication sums gradient rows per class.
    shard_class_.assign(plan_.shards().size(), 0);
    for (std::size_t k = 0; k < plan_.shards().size(); ++k) {
      const std::size_t w = plan_.shards()[k].width();
      const auto it = std::find(class_width_.begin(), class_width_.end(), w);
      shard_class_[k] = static_cast<std::size_t>(it - class_width_.begin());
      if (it == class_width_.end()) class_width_.push_back(w);
    }
    cls_.resize(class_width_.size());
  }

  Shard block_source(std::size_t b) const {
    if (block_shard_[b] != npos) return plan_.shards()[block_shard_[b]];
    const std::size_t j = block_table_[b];
    return Shard{j, me_, 0, replica_rows(j), 0, plan_.table(j).width};
  }

  // ---- replicas: data-parallel tables whole, hybrid tables' frequent rows ------------------------

  void check_frequent() { slot_ = check_frequent_sets(plan_, frequent_, "EmbeddingExchange"); }

  [[nodiscard]] std::size_t replica_rows(std::size_t j) const {
    return plan_.replicated(j) ? plan_.table(j).rows : frequent_.count(j);
  }
  // The table row in replica slot i of table j.
  [[nodiscard]] std::size_t replica_row(std::size_t j, std::size_t i) const {
    return plan_.replicated(j) ? i : static_cast<std::size_t>(frequent_.rows[j][i]);
  }
  // The replica slot of row `id` of table j, or -1 when the row is not replicated.
  [[nodiscard]] std::int64_t replica_slot(std::size_t j, std::int64_t id) const {
    if (plan_.replicated(j)) return id;
    return slot_[j].empty() ? -1 : slot_[j][static_cast<std::size_t>(id)];
  }

  // One all-reduce for the caller's dense gradients (averaged) and the replicas' (summed).
  void fused_all_reduce(std::span<const std::span<T>> dense, std::vector<T>& replicas) {
    std::vector<std::span<T>> tensors(dense.begin(), dense.end());
    std::size_t dense_elements = 0;
    for (const auto& t : dense) dense_elements += t.size();
    stats_.dense_elements = dense_elements;
    stats_.allreduce_elements = replicas.size();
    if (dense_elements == 0 && replicas.empty()) return;
    tensors.emplace_back(replicas);
    const FusedPlan<T> plan(tensors);
    flat_.resize(plan.total_elements());
    pack(thrust::host, plan, std::span<T>(flat_));
    comm_.template all_reduce<T>(std::span<T>(flat_), ReduceOp::sum);
    std::vector<T> factors(tensors.size(), T(1) / static_cast<T>(world_));
    factors.back() = T(1);
    unpack(thrust::host, std::span<const T>(flat_), plan, std::span<const T>(factors));
  }

  // ---- validation -----------------------------------------------------------------------------

  Problem check_batch(const SparseBatch& batch, std::span<const T> out) const {
    const std::size_t nt = plan_.num_tables();
    if (batch.tables != nt) return {kTables, static_cast<std::int64_t>(batch.tables), 0, 0};
    if (batch.hotness == 0 && batch.samples != 0) return {kIdCount, 0, 0, 0};
    // A product of huge sizes must not wrap into a size that fits: such a batch needs more ids
    // than memory can address (-1 in the message's field).
    const std::size_t per_sample = nt * batch.hotness;
    const bool fits =
        per_sample == 0 || batch.samples <= std::numeric_limits<std::size_t>::max() / per_sample;
    const std::size_t need = fits ? per_sample * batch.samples : static_cast<std::size_t>(-1);
    if (batch.ids.size() != need) {
      return {kIdCount, static_cast<std::int64_t>(batch.ids.size()),
              static_cast<std::int64_t>(need), 0};
    }
    if (out.size() / std::max<std::size_t>(total_width_, 1) != batch.samples ||
        out.size() != batch.samples * total_width_) {
      return {kOutSize, static_cast<std::int64_t>(out.size()),
              static_cast<std::int64_t>(batch.samples * total_width_), 0};
    }
    for (std::size_t j = 0; j < nt; ++j) {
      const auto rows = static_cast<std::int64_t>(plan_.table(j).rows);
      for (std::size_t s = 0; s < batch.samples; ++s) {
        for (std::size_t k = 0; k < batch.hotness; ++k) {
          const std::int64_t id = batch.id(j, s, k);
          if (id < 0 || id >= rows) {
            return {kBadId, static_cast<std::int64_t>(j),
                    static_cast<std::int64_t>(s * batch.hotness + k), id};
          }
        }
      }
    }
    return {};
  }

  std::string describe(std::size_t rank, const Problem& p) const {
    std::string s = "rank " + std::to_string(rank) + ": ";
    switch (p.code) {
      case kTables:
        return s + "the batch has ids for " + std::to_string(p.a) + " tables, the plan has " +
               std::to_string(plan_.num_tables());
      case kIdCount:
        if (p.b == 0 && p.a == 0) return s + "a batch with samples needs a hotness of at least 1";
        return s + "the batch holds " + std::to_string(p.a) + " ids, its tables x samples x " +
               "hotness need " +
               (p.b == -1 ? std::string("more than memory can address") : std::to_string(p.b));
      case kOutSize:
        return s + "the output holds " + std::to_string(p.a) + " elements, samples x " +
               std::to_string(total_width_) + " columns need " + std::to_string(p.b);
      case kBadId:
        return s + "table " + std::to_string(p.a) + ", lookup " + std::to_string(p.b) + ": id " +
               std::to_string(p.c) + " is outside the table's " +
               std::to_string(plan_.table(static_cast<std::size_t>(p.a)).rows) + " rows";
      case kNoForward: return s + "backward needs a forward of the same step first";
      case kBadGrad:
        return s + "the gradient holds " + std::to_string(p.a) +
               " elements, the last forward's output " + std::to_string(p.b);
      default: break;
    }
    return s + "unknown problem " + std::to_string(p.code);
  }

  // ---- requester: forward -----------------------------------------------------------------------

  // Every lookup of a sharded table, once per column block, in the order (table, column block,
  // sample, lookup): its shard and its row inside the shard.
  void bucket(const SparseBatch& batch) {
    samples_ = batch.samples;
    hotness_ = batch.hotness;
    // The backward pass reads the data-parallel ids again; the caller's may be gone by then.
    ids_.assign(batch.ids.begin(), batch.ids.end());
    batch_ = SparseBatch{ids_, batch.tables, batch.samples, batch.hotness};
    entries_.clear();
    const std::size_t nshards = plan_.shards().size();
    per_sample_.assign(nshards, {});
    shard_ids_.assign(nshards, {});
    for (std::size_t j = 0; j < plan_.num_tables(); ++j) {
      if (plan_.replicated(j)) continue;
      for (std::size_t c = 0; c < plan_.column_blocks(j); ++c) {
        for (std::size_t s = 0; s < samples_; ++s) {
          for (std::size_t k = 0; k < hotness_; ++k) {
            if (replica_slot(j, batch.id(j, s, k)) >= 0) continue;  // a frequent row: local
            const auto id = static_cast<std::size_t>(batch.id(j, s, k));
            const std::size_t sh = plan_.owner_index(j, id, c);
            const std::size_t local = id - plan_.shards()[sh].row_begin;
            if (plan_.shards()[sh].rank != me_) ++stats_.lookups;
            entries_.push_back({sh, s, local});
          }
        }
      }
    }
    if (!options_.dedup) {
      for (std::size_t sh = 0; sh < nshards; ++sh) per_sample_[sh].assign(samples_, 0);
      for (const Entry& e : entries_) {
        ++per_sample_[e.shard][e.sample];
        shard_ids_[e.shard].push_back(static_cast<std::int64_t>(e.row));
      }
      return;
    }
    // De-duplication: one unique_ids call per width class, on keys ordered by destination.
    for (std::size_t c = 0; c < cls_.size(); ++c) {
      Class& k = cls_[c];
      k.entries.clear();
      k.keys.clear();
    }
    for (std::size_t e = 0; e < entries_.size(); ++e) {
      Class& k = cls_[shard_class_[entries_[e].shard]];
      k.entries.push_back(e);
      k.keys.push_back(static_cast<std::int64_t>(key_base_[entries_[e].shard] + entries_[e].row));
    }
    for (Class& k : cls_) {
      const std::size_t n = k.keys.size();
      k.unique.resize(n);
      k.inverse.resize(n);
      k.counts.resize(n);
      const auto policy = thrust::host(k.workspace.allocator());
      k.m = unique_ids(policy, std::span<const std::int64_t>(k.keys), std::span(k.unique),
                       std::span(k.inverse), std::span(k.counts), k.workspace);
    }
  }

  // The unique keys of shard `sh` in its class's sorted unique list: [first, last).
  std::pair<std::size_t, std::size_t> unique_range(std::size_t sh) const {
    const Class& k = cls_[shard_class_[sh]];
    const auto lo = static_cast<std::int64_t>(key_base_[sh]);
    const auto hi = lo + static_cast<std::int64_t>(plan_.shards()[sh].rows());
    const auto b = k.unique.begin(), e = k.unique.begin() + static_cast<std::ptrdiff_t>(k.m);
    return {static_cast<std::size_t>(std::lower_bound(b, e, lo) - b),
            static_cast<std::size_t>(std::lower_bound(b, e, hi) - b)};
  }

  void build_requests(std::vector<std::int64_t>& out, std::vector<std::size_t>& counts) {
    for (std::size_t p = 0; p < world_; ++p) {
      const std::size_t start = out.size();
      if (!options_.dedup) {
        out.push_back(static_cast<std::int64_t>(samples_));
        for (std::size_t sh : plan_.shards_on(p)) {
          for (std::size_t s = 0; s < samples_; ++s)
            out.push_back(static_cast<std::int64_t>(per_sample_[sh][s]));
          out.insert(out.end(), shard_ids_[sh].begin(), shard_ids_[sh].end());
          if (p != me_) stats_.ids_sent += shard_ids_[sh].size();
        }
      } else {
        for (std::size_t sh : plan_.shards_on(p)) {
          const auto [lo, hi] = unique_range(sh);
          const Class& k = cls_[shard_class_[sh]];
          out.push_back(static_cast<std::int64_t>(hi - lo));
          for (std::size_t u = lo; u < hi; ++u)
            out.push_back(k.unique[u] - static_cast<std::int64_t>(key_base_[sh]));
          if (p != me_) stats_.ids_sent += hi - lo;
        }
      }
      counts[p] = out.size() - start;
    }
  }

  // Elements owner p returns for this rank's requests.
  std::size_t expected_response(std::size_t p) const {
    std::size_t n = 0;
    for (std::size_t sh : plan_.shards_on(p)) {
      const std::size_t w = plan_.shards()[sh].width();
      if (!options_.dedup) {
        for (std::size_t s = 0; s < samples_; ++s) n += per_sample_[sh][s] != 0 ? w : 0;
      } else {
        const auto [lo, hi] = unique_range(sh);
        n += (hi - lo) * w;
      }
    }
    return n;
  }

  // ---- owner: forward ---------------------------------------------------------------------------

  // Walks the requests of rank q (the slice of req_in_ it sent): for each of this rank's shards,
  // `visit(shard, block, per-sample counts or empty, ids)`.
  template <class Visit>
  void walk_requests(std::size_t q, Visit&& visit) const {
    std::size_t at = 0;
    for (std::size_t r = 0; r < q; ++r) at += req_in_counts_[r];
    const std::int64_t* p = req_in_.data() + at;
    if (!options_.dedup) {
      const auto b = static_cast<std::size_t>(*p++);
      for (std::size_t sh : plan_.shards_on(me_)) {
        const std::int64_t* counts = p;
        p += b;
        std::size_t n = 0;
        for (std::size_t s = 0; s < b; ++s) n += static_cast<std::size_t>(counts[s]);
        visit(sh, shard_block_[sh], std::span<const std::int64_t>(counts, b),
              std::span<const std::int64_t>(p, n));
        p += n;
      }
    } else {
      for (std::size_t sh : plan_.shards_on(me_)) {
        const auto n = static_cast<std::size_t>(*p++);
        visit(sh, shard_block_[sh], std::span<const std::int64_t>(),
              std::span<const std::int64_t>(p, n));
        p += n;
      }
    }
  }

  void serve(std::vector<T>& out, std::vector<std::size_t>& counts) {
    // One gather per width group for every requested row of every requester.
    const std::size_t groups = tables_.num_groups();
    std::vector<std::vector<std::size_t>> rows(groups);
    for (std::size_t q = 0; q < world_; ++q) {
      walk_requests(q, [&](std::size_t, std::size_t b, auto, std::span<const std::int64_t> ids) {
        for (std::int64_t id : ids)
          rows[tables_.block(b).group].push_back(
              tables_.fused_row(b, static_cast<std::size_t>(id)));
      });
    }
    std::vector<std::vector<T>> gathered(groups);
    for (std::size_t g = 0; g < groups; ++g) {
      gathered[g].resize(rows[g].size() * tables_.group_width(g));
      tables_.gather(g, rows[g], gathered[g]);
    }
    std::vector<std::size_t> next(groups, 0);  // next gathered row of each group
    for (std::size_t q = 0; q < world_; ++q) {
      const std::size_t start = out.size();
      walk_requests(q, [&](std::size_t sh, std::size_t b, std::span<const std::int64_t> per,
                           std::span<const std::int64_t> ids) {
        const std::size_t g = tables_.block(b).group, w = plan_.shards()[sh].width();
        const T* src = gathered[g].data();
        if (!options_.dedup) {
          // Pool each sample's rows, in lookup order, into one partial vector.
          std::size_t at = 0;
          for (std::int64_t n : per) {
            if (n == 0) continue;
            const std::size_t base = out.size();
            out.resize(base + w, T(0));
            for (std::int64_t i = 0; i < n; ++i, ++at) {
              const T* row = src + (next[g] + at) * w;
              for (std::size_t d = 0; d < w; ++d) out[base + d] = out[base + d] + row[d];
            }
          }
          next[g] += ids.size();
        } else {
          out.insert(out.end(), src + next[g] * w, src + (next[g] + ids.size()) * w);
          next[g] += ids.size();
        }
      });
      counts[q] = out.size() - start;
    }
  }

  void pool(const SparseBatch& batch, std::span<const T> got, std::span<T> out) {
    std::fill(out.begin(), out.end(), T(0));
    const std::size_t K = hotness_;
    // Replicated rows from the local replica, in lookup order.
    for (std::size_t j = 0; j < plan_.num_tables(); ++j) {
      if (replica_block_[j] == npos) continue;
      const std::size_t w = plan_.table(j).width, b = replica_block_[j];
      for (std::size_t s = 0; s < samples_; ++s) {
        T* o = out.data() + s * total_width_ + col_off_[j];
        for (std::size_t k = 0; k < K; ++k) {
          const std::int64_t slot = replica_slot(j, batch.id(j, s, k));
          if (slot < 0) continue;
          const auto row = tables_.row(b, static_cast<std::size_t>(slot));
          for (std::size_t d = 0; d < w; ++d) o[d] = o[d] + row[d];
        }
      }
    }
    if (!options_.dedup) {
      // Partial pools, owner by owner, added into the sample's columns of the shard.
      std::size_t at = 0;
      for (std::size_t p = 0; p < world_; ++p) {
        for (std::size_t sh : plan_.shards_on(p)) {
          const Shard& s = plan_.shards()[sh];
          for (std::size_t smp = 0; smp < samples_; ++smp) {
            if (per_sample_[sh][smp] == 0) continue;
            T* o = out.data() + smp * total_width_ + col_off_[s.table] + s.col_begin;
            for (std::size_t d = 0; d < s.width(); ++d) o[d] = o[d] + got[at + d];
            at += s.width();
          }
        }
      }
    } else {
      // Unique rows arrive owner by owner, shard by shard: place each class's rows by unique
      // index, then pool every lookup in order through the inverse map.
      for (Class& k : cls_) k.rows.resize(k.m * class_width_[&k - cls_.data()]);
      std::size_t at = 0;
      for (std::size_t p = 0; p < world_; ++p) {
        for (std::size_t sh : plan_.shards_on(p)) {
          const auto [lo, hi] = unique_range(sh);
          const std::size_t c = shard_class_[sh], w = class_width_[c];
          std::copy_n(got.data() + at, (hi - lo) * w, cls_[c].rows.data() + lo * w);
          at += (hi - lo) * w;
        }
      }
      for (const Class& k : cls_) {
        const std::size_t w = class_width_[static_cast<std::size_t>(&k - cls_.data())];
        for (std::size_t i = 0; i < k.entries.size(); ++i) {
          const Entry& e = entries_[k.entries[i]];
          const Shard& s = plan_.shards()[e.shard];
          T* o = out.data() + e.sample * total_width_ + col_off_[s.table] + s.col_begin;
          const T* row = k.rows.data() + static_cast<std::size_t>(k.inverse[i]) * w;
          for (std::size_t d = 0; d < w; ++d) o[d] = o[d] + row[d];
        }
      }
    }
    if (options_.pooling == Pooling::mean && K != 0) {
      for (T& x : out) x = x / static_cast<T>(K);
    }
  }

  // ---- backward -------------------------------------------------------------------------------

  void build_gradients(std::span<const T> g, std::vector<T>& out,
                       std::vector<std::size_t>& counts) {
    if (options_.dedup) {
      // Each class: the gradient row of every lookup, summed per unique row in lookup order.
      for (std::size_t c = 0; c < cls_.size(); ++c) {
        Class& k = cls_[c];
        const std::size_t w = class_width_[c];
        k.rows.resize(k.entries.size() * w);
        for (std::size_t i = 0; i < k.entries.size(); ++i) {
          const Entry& e = entries_[k.entries[i]];
          const Shard& s = plan_.shards()[e.shard];
          std::copy_n(g.data() + e.sample * total_width_ + col_off_[s.table] + s.col_begin, w,
                      k.rows.data() + i * w);
        }
        k.sums.resize(k.m * w);
        if (!k.entries.empty()) {
          segmented_sum(thrust::host(k.workspace.allocator()), k.workspace,
                        std::span<const T>(k.rows), w, std::span<T>(k.sums));
        }
      }
    }
    for (std::size_t p = 0; p < world_; ++p) {
      const std::size_t start = out.size();
      for (std::size_t sh : plan_.shards_on(p)) {
        const Shard& s = plan_.shards()[sh];
        if (!options_.dedup) {
          for (std::size_t smp = 0; smp < samples_; ++smp) {
            if (per_sample_[sh][smp] == 0) continue;
            const T* src = g.data() + smp * total_width_ + col_off_[s.table] + s.col_begin;
            out.insert(out.end(), src, src + s.width());
          }
        } else {
          const auto [lo, hi] = unique_range(sh);
          const Class& k = cls_[shard_class_[sh]];
          out.insert(out.end(), k.sums.begin() + static_cast<std::ptrdiff_t>(lo * s.width()),
                     k.sums.begin() + static_cast<std::ptrdiff_t>(hi * s.width()));
        }
      }
      counts[p] = out.size() - start;
    }
  }

  std::size_t expected_gradient(std::size_t q) const {
    std::size_t n = 0;
    walk_requests(q, [&](std::size_t sh, std::size_t, std::span<const std::int64_t> per,
                         std::span<const std::int64_t> ids) {
      const std::size_t w = plan_.shards()[sh].width();
      if (!options_.dedup) {
        for (std::int64_t c : per) n += c != 0 ? w : 0;
      } else {
        n += ids.size() * w;
      }
    });
    return n;
  }

  template <class Update>
  void apply_sharded(std::span<const T> got, Update& update) {
    // Contributions per width group in arrival order (requester rank, shard, sample, lookup),
    // then one sum per unique row, so the result is the same on every backend.
    const std::size_t groups = tables_.num_groups();
    std::vector<std::vector<std::int64_t>> keys(groups);
    std::vector<std::vector<T>> rows(groups);
    std::size_t at = 0;
    for (std::size_t q = 0; q < world_; ++q) {
      walk_requests(q, [&](std::size_t sh, std::size_t b, std::span<const std::int64_t> per,
                           std::span<const std::int64_t> ids) {
        const std::size_t grp = tables_.block(b).group, w = plan_.shards()[sh].width();
        if (!options_.dedup) {
          std::size_t i = 0;
          for (std::int64_t n : per) {
            if (n == 0) continue;
            for (std::int64_t c = 0; c < n; ++c, ++i) {
              keys[grp].push_back(static_cast<std::int64_t>(
                  tables_.fused_row(b, static_cast<std::size_t>(ids[i]))));
              rows[grp].insert(rows[grp].end(), got.data() + at, got.data() + at + w);
            }
            at += w;
          }
        } else {
          for (std::int64_t id : ids) {
            keys[grp].push_back(
                static_cast<std::int64_t>(tables_.fused_row(b, static_cast<std::size_t>(id))));
            rows[grp].insert(rows[grp].end(), got.data() + at, got.data() + at + w);
            at += w;
          }
        }
      });
    }
    for (std::size_t grp = 0; grp < groups; ++grp) {
      const std::size_t n = keys[grp].size(), w = tables_.group_width(grp);
      if (n == 0) continue;
      std::vector<std::int64_t> unique(n);
      std::vector<std::int32_t> inverse(n), counts(n);
      const auto policy = thrust::host(owner_ws_.allocator());
      const std::size_t m =
          unique_ids(policy, std::span<const std::int64_t>(keys[grp]), std::span(unique),
                     std::span(inverse), std::span(counts), owner_ws_);
      std::vector<T> sums(m * w);
      segmented_sum(policy, owner_ws_, std::span<const T>(rows[grp]), w, std::span<T>(sums));
      for (std::size_t u = 0; u < m; ++u) {
        const auto [b, i] = locate(grp, static_cast<std::size_t>(unique[u]));
        const Shard s = block_source(b);
        update(RowGradient<T>{s.table, s.row_begin + i, s.col_begin, tables_.row(b, i),
                              std::span<const T>(sums).subspan(u * w, w)});
      }
    }
  }

  // The block of group `grp` that holds fused row `r`, and the row inside it.
  std::pair<std::size_t, std::size_t> locate(std::size_t grp, std::size_t r) const {
    // The group's blocks in order of their first row (the order they were added in).
    const std::vector<std::size_t>& blocks = group_blocks_[grp];
    const auto it = std::upper_bound(
        blocks.begin(), blocks.end(), r,
        [&](std::size_t row, std::size_t b) { return row < tables_.block(b).first_row; });
    const std::size_t b = *(it - 1);
    return {b, r - tables_.block(b).first_row};
  }

  // Dense gradients of every replicated table, concatenated, each followed by one count per row
  // (how many lookups the row had), so that the update runs on the rows some rank looked up.
  std::vector<T> replica_gradients(std::span<const T> g) const {
    std::size_t total = 0;
    for (std::size_t j = 0; j < plan_.num_tables(); ++j)
      total += replica_rows(j) * (plan_.table(j).width + 1);
    std::vector<T> dense(total, T(0));
    std::size_t base = 0;
    for (std::size_t j = 0; j < plan_.num_tables(); ++j) {
      const std::size_t rows = replica_rows(j), w = plan_.table(j).width;
      if (rows == 0) continue;
      for (std::size_t s = 0; s < samples_; ++s) {
        const T* src = g.data() + s * total_width_ + col_off_[j];
        for (std::size_t k = 0; k < hotness_; ++k) {
          const std::int64_t slot = replica_slot(j, batch_.id(j, s, k));
          if (slot < 0) continue;
          T* dst = dense.data() + base + static_cast<std::size_t>(slot) * w;
          for (std::size_t d = 0; d < w; ++d) dst[d] = dst[d] + src[d];
          dense[base + rows * w + static_cast<std::size_t>(slot)] += T(1);
        }
      }
      base += rows * (w + 1);
    }
    return dense;
  }

  template <class Update>
  void apply_replicated(std::span<const T> dense, Update& update) {
    std::size_t base = 0;
    for (std::size_t j = 0; j < plan_.num_tables(); ++j) {
      const std::size_t rows = replica_rows(j), w = plan_.table(j).width;
      if (rows == 0) continue;
      const std::size_t b = replica_block_[j];
      for (std::size_t i = 0; i < rows; ++i) {
        if (dense[base + rows * w + i] == T(0)) continue;
        update(RowGradient<T>{j, replica_row(j, i), 0, tables_.row(b, i),
                              dense.subspan(base + i * w, w)});
      }
      base += rows * (w + 1);
    }
  }

  // ---- transport --------------------------------------------------------------------------------

  template <class U>
  void exchange(std::span<const U> in, std::span<const std::size_t> send, std::span<U> out,
                std::span<const std::size_t> recv, std::size_t& sent) {
    for (std::size_t p = 0; p < world_; ++p) sent += p == me_ ? 0 : send[p];
    if (hier_) {
      hier_->template all_to_all<U>(in, send, out, recv);
      stats_.traffic += hier_->last_traffic();
    } else {
      comm_.template all_to_all<U>(in, send, out, recv);
      stats_.traffic += flat_all_to_all_traffic(send, me_, plan_.ranks_per_node());
    }
  }

  struct Entry {
    std::size_t shard;
    std::size_t sample;
    std::size_t row;
  };
  struct Class {
    std::vector<std::size_t> entries;  // indices into entries_
    std::vector<std::int64_t> keys, unique;
    std::vector<std::int32_t> inverse, counts;
    std::size_t m = 0;
    std::vector<T> rows, sums;
    DedupWorkspace<std::int64_t> workspace;
  };

  Comm& comm_;
  ShardingPlan plan_;
  ExchangeOptions options_;
  FrequentSets frequent_;
  std::vector<std::vector<std::int64_t>> slot_;
  std::vector<T> flat_;
  std::size_t me_ = 0, world_ = 0, total_width_ = 0;
  std::vector<std::size_t> col_off_;
  FusedTables<T> tables_;
  std::vector<std::size_t> shard_block_, block_shard_, block_table_, replica_block_;
  std::vector<std::vector<std::size_t>> group_blocks_;
  std::vector<std::size_t> key_base_, shard_class_, class_width_;
  std::optional<HierarchicalAllToAll<Comm>> hier_;
  ExchangeStats stats_;

  // The step between forward and backward.
  bool ctx_valid_ = false;
  SparseBatch batch_{};
  std::vector<std::int64_t> ids_;
  std::size_t samples_ = 0, hotness_ = 0;
  std::vector<Entry> entries_;
  std::vector<std::vector<std::size_t>> per_sample_;
  std::vector<std::vector<std::int64_t>> shard_ids_;
  std::vector<Class> cls_;
  std::vector<std::int64_t> req_in_;
  std::vector<std::size_t> req_in_counts_;
  DedupWorkspace<std::int64_t> owner_ws_;
};

}  // namespace strata
