#pragma once
// The steps of DeviceEmbeddingExchange as Thrust algorithms over functors: each function takes a
// Thrust execution policy first and runs where the policy runs, so the same code serves the CUDA
// stream (thrust::cuda::par_nosync(...).on(stream), from device_exchange.cuh) and the host
// double of NCCL and CUDA in the tests (thrust::host, in stream order on the fake stream).
// Nothing here returns a value to the host: counts stay in device memory and later steps read
// them, masking slots past a count, so that a step never waits for the device.

#include <cstddef>
#include <cstdint>
#include <limits>

#include <thrust/binary_search.h>
#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/scan.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>

#include "strata/detail/host_device.hpp"

namespace strata::detail::dev {

using i64 = std::int64_t;
inline constexpr i64 invalid_key = std::numeric_limits<i64>::max();
// Words at the head of every id block: [count, status, table, lookup, value, needed].
inline constexpr std::size_t header_words = 6;
inline constexpr i64 status_ok = 0, status_bad_id = 1, status_overflow = 2, status_bad_shape = 3;

// One (table, column block) of the lookups that go to owners; the lookups of a batch are these
// segments one after the other, each `samples * hotness` long, in (sample, lookup) order.
struct Segment {
  i64 table = 0;
  i64 rows = 0;
  i64 first_shard = 0;  // the table's first shard (global index)
  i64 blocks = 1;       // row blocks (row-wise, table-row-wise), else 1
  i64 column_block = 0;
  i64 member = -1;  // a hybrid table's membership map (offset in `members`), else -1
};

// Where the shards live, for the requester: the dense key of shard k's row r is
// key_base[k] + r - row_begin[k]; keys are ordered by destination rank.
struct ShardTables {
  const i64* key_base;
  const i64* row_begin;
  const i64* dest_key_start;  // world + 1 entries
  i64 world;
};

STRATA_HOST_DEVICE inline i64 row_block(i64 rows, i64 n, i64 row) {
  const i64 q = rows / n, extra = rows % n, long_rows = extra * (q + 1);
  return row < long_rows ? row / (q + 1) : extra + (row - long_rows) / q;
}

STRATA_HOST_DEVICE inline i64 dest_of(const i64* dest_key_start, i64 world, i64 key) {
  i64 lo = 0, hi = world;  // the last p with dest_key_start[p] <= key
  while (hi - lo > 1) {
    const i64 mid = (lo + hi) / 2;
    if (dest_key_start[mid] <= key) lo = mid;
    else hi = mid;
  }
  return lo;
}

// bad[x] = x for each position x of the batch (table-major, as the host path counts) whose id
// is outside its table, else "none"; a min-scan then finds the first, as the host path does.
struct BadPositions {
  const i64* ids;
  const i64* table_rows;
  i64 per_table;  // samples * hotness
  i64* bad;
  STRATA_HOST_DEVICE void operator()(i64 x) const {
    const i64 id = ids[x];
    bad[x] = id < 0 || id >= table_rows[x / per_table] ? x : invalid_key;
  }
};

// key[e] and pos[e] = e for lookup e of the sharded segments; an id outside its table gets no
// key (the status reports it).
struct MakeKeys {
  const i64* ids;
  const Segment* segments;
  const i64* members;  // membership maps of hybrid tables: the replica slot of a row, or -1
  ShardTables shards;
  i64 samples, hotness;
  i64* key;
  i64* pos;
  STRATA_HOST_DEVICE void operator()(i64 e) const {
    const i64 per = samples * hotness;
    const Segment g = segments[e / per];
    const i64 rem = e % per, s = rem / hotness, k = rem % hotness;
    const i64 id = ids[(g.table * samples + s) * hotness + k];
    pos[e] = e;
    // Outside the table (reported), or a frequent row (served by the replica): no key.
    if (id < 0 || id >= g.rows || (g.member >= 0 && members[g.member + id] >= 0)) {
      key[e] = invalid_key;
      return;
    }
    const i64 shard =
        g.first_shard + (g.blocks > 1 ? row_block(g.rows, g.blocks, id) : g.column_block);
    key[e] = shards.key_base[shard] + id - shards.row_begin[shard];
  }
};

struct Minimum {
  STRATA_HOST_DEVICE i64 operator()(i64 a, i64 b) const { return a < b ? a : b; }
};

// head[i] = 1 where sorted key i is valid and differs from the one before.
struct Heads {
  const i64* key;
  i64* head;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    head[i] = key[i] != invalid_key && (i == 0 || key[i] != key[i - 1]) ? 1 : 0;
  }
};

// Per destination p: its first unique index, its count (capped at the capacity) and the block
// header, which also carries this rank's status, the same to every peer.
struct Headers {
  const i64* dest_first_pos;  // world + 1 positions in the sorted keys
  const i64* uscan;           // inclusive scan of the heads
  const i64* bad_scan;        // inclusive min-scan of BadPositions; [positions-1] the first
  const i64* ids;
  i64 positions, samples, hotness, capacity, world;
  i64* dest_first_u;  // world + 1
  i64* send;          // world blocks of header_words + capacity
  STRATA_HOST_DEVICE i64 uniques_before(i64 position) const {
    return position == 0 ? 0 : uscan[position - 1];
  }
  STRATA_HOST_DEVICE void operator()(i64 p) const {
    const i64 first = uniques_before(dest_first_pos[p]);
    const i64 count = uniques_before(dest_first_pos[p + 1]) - first;
    dest_first_u[p] = first;
    if (p + 1 == world) dest_first_u[world] = uniques_before(dest_first_pos[world]);
    i64* h = send + p * (i64(header_words) + capacity);
    // The largest count this rank sends any peer decides overflow, the same for every block.
    i64 needed = 0;
    for (i64 q = 0; q < world; ++q) {
      const i64 c = uniques_before(dest_first_pos[q + 1]) - uniques_before(dest_first_pos[q]);
      needed = c > needed ? c : needed;
    }
    const i64 first_bad = positions == 0 ? invalid_key : bad_scan[positions - 1];
    h[0] = count < capacity ? count : capacity;
    h[1] = status_ok;
    h[2] = h[3] = h[4] = 0;
    h[5] = needed;
    if (first_bad != invalid_key) {
      const i64 per = samples * hotness;
      h[1] = status_bad_id;
      h[2] = first_bad / per;  // the table
      h[3] = first_bad % per;  // sample * hotness + lookup
      h[4] = ids[first_bad];
    } else if (needed > capacity) {
      h[1] = status_overflow;
    }
  }
};

// For each valid sorted position: the inverse map (lookup -> unique index), each unique index's
// destination and slot, the start of its run, and its id in the destination's block.
struct Scatter {
  const i64* key;
  const i64* pos;
  const i64* head;
  const i64* uscan;
  const i64* dest_first_u;
  ShardTables shards;
  i64 capacity;
  i64* inverse;
  i64* u_dest;
  i64* u_slot;
  i64* u_start;
  i64* send;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    if (key[i] == invalid_key) return;
    const i64 u = uscan[i] - 1;
    inverse[pos[i]] = u;
    if (!head[i]) return;
    const i64 p = dest_of(shards.dest_key_start, shards.world, key[i]);
    const i64 slot = u - dest_first_u[p];
    u_dest[u] = p;
    u_slot[u] = slot;
    u_start[u] = i;
    if (slot < capacity) {
      send[p * (i64(header_words) + capacity) + i64(header_words) + slot] =
          key[i] - shards.dest_key_start[p];
    }
  }
};

// The end of the last run: u_start[uniques] = the number of valid sorted keys.
struct CloseRuns {
  const i64* dest_first_pos;
  const i64* dest_first_u;
  i64 world;
  i64* u_start;
  STRATA_HOST_DEVICE void operator()(i64) const {
    u_start[dest_first_u[world]] = dest_first_pos[world];
  }
};

// out[i] = in[i] * factor: the caller's dense gradients into and out of the fused all-reduce.
template <class T>
struct ScaleCopy {
  const T* in;
  T* out;
  T factor;
  STRATA_HOST_DEVICE void operator()(i64 i) const { out[i] = in[i] * factor; }
};

// The header of the block each sender sent this rank, side by side, for the host to read. A
// sender's problem stays until the host has read it (`check`), whatever later steps send.
struct HeaderCopy {
  const i64* recv;
  i64 block;
  i64* status;
  STRATA_HOST_DEVICE void operator()(i64 q) const {
    i64* mine = status + q * i64(header_words);
    if (mine[1] != status_ok) return;
    for (i64 w = 0; w < i64(header_words); ++w) mine[w] = recv[q * block + w];
  }
};

// A batch whose shape the exchange cannot take: no ids to anyone, and the shape in every header.
struct ShapeHeaders {
  i64 given, needed, samples, hotness, block;
  i64* send;
  STRATA_HOST_DEVICE void operator()(i64 p) const {
    i64* h = send + p * block;
    h[0] = 0;
    h[1] = status_bad_shape;
    h[2] = given;
    h[3] = needed;
    h[4] = samples;
    h[5] = hotness;
  }
};

// This rank's blocks (shards it owns) for the owner side: block b holds keys
// [key_start[b], key_start[b+1]) of this rank's key space, rows of `width[b]` at `offset[b]`.
struct OwnedBlocks {
  const i64* key_start;  // blocks + 1
  const i64* offset;     // element offset in the table buffer
  const i64* width;
  i64 blocks;
  STRATA_HOST_DEVICE i64 block_of(i64 key) const {
    i64 lo = 0, hi = blocks;
    while (hi - lo > 1) {
      const i64 mid = (lo + hi) / 2;
      if (key_start[mid] <= key) lo = mid;
      else hi = mid;
    }
    return lo;
  }
};

// Owner: slot (q, slot) of the received ids becomes a row of the response (padded to wmax).
template <class T>
struct Gather {
  const i64* recv;  // world blocks of header_words + capacity
  const T* table;
  OwnedBlocks owned;
  i64 capacity, wmax;
  T* out;  // world * capacity * wmax
  STRATA_HOST_DEVICE void operator()(i64 x) const {
    const i64 q = x / capacity, slot = x % capacity;
    const i64* block = recv + q * (i64(header_words) + capacity);
    T* o = out + x * wmax;
    if (slot >= block[0]) {
      for (i64 d = 0; d < wmax; ++d) o[d] = T(0);
      return;
    }
    const i64 key = block[header_words + slot];
    const i64 b = owned.block_of(key);
    const T* row = table + owned.offset[b] + (key - owned.key_start[b]) * owned.width[b];
    for (i64 d = 0; d < wmax; ++d) o[d] = d < owned.width[b] ? row[d] : T(0);
  }
};

// What output column c is: a column of a replicated table (at `replica` + d, row stride
// `width`) or column `dd` of segment `segment`'s shard.
struct Column {
  i64 table = 0;
  i64 replicated = 0;  // a data-parallel table: every lookup from the replica
  i64 segment = 0;     // else: the segment of the column's shard, and
  i64 dd = 0;          // the column inside that shard
  i64 replica = 0;     // the replica's offset in the table buffer (data-parallel or hybrid)
  i64 width = 0;       // the table's width, the replica's row stride
  i64 rows = 0;        // the table's rows
  i64 rd = 0;          // the column inside the table
  i64 member = -1;     // a hybrid table's membership map, else -1
};

// Requester: out[s][c] = the pooled lookups of sample s in column c, in lookup order.
template <class T>
struct Pool {
  const i64* ids;
  const Column* columns;
  const i64* members;
  const T* table;  // replicas live in the same buffer as shards
  const i64* inverse;
  const i64* u_dest;
  const i64* u_slot;
  const T* recv;  // world * capacity * wmax
  i64 samples, hotness, total_width, capacity, wmax;
  bool mean;
  T* out;
  STRATA_HOST_DEVICE void operator()(i64 x) const {
    const i64 s = x / total_width, c = x % total_width;
    const Column col = columns[c];
    T v = T(0);
    // Replicated rows first, then the exchanged ones, each in lookup order (the host path's order).
    if (col.replicated || col.member >= 0) {
      for (i64 k = 0; k < hotness; ++k) {
        const i64 id = ids[(col.table * samples + s) * hotness + k];
        if (id < 0 || id >= col.rows) continue;
        const i64 slot = col.replicated ? id : members[col.member + id];
        if (slot >= 0) v = v + table[col.replica + slot * col.width + col.rd];
      }
    }
    for (i64 k = 0; k < hotness && !col.replicated; ++k) {
      const i64 e = col.segment * samples * hotness + s * hotness + k;
      const i64 u = inverse[e];
      if (u < 0) continue;  // an invalid id: the step reports it
      const i64 slot = u_slot[u];
      if (slot >= capacity) continue;
      v = v + recv[(u_dest[u] * capacity + slot) * wmax + col.dd];
    }
    out[x] = mean && hotness != 0 ? v / T(hotness) : v;
  }
};

// Requester, backward: the gradient of unique index u (its lookups' upstream gradients, summed
// in lookup order), into its destination's block.
template <class T>
struct SumUnique {
  const i64* u_start;
  const i64* u_dest;
  const i64* u_slot;
  const i64* pos;
  const i64* dest_first_u;  // [world] = number of unique indices
  const Segment* segments;
  const i64* seg_col;  // first output column of each segment's shard
  const i64* seg_width;
  const T* grad;
  T scale;
  i64 samples, hotness, total_width, capacity, wmax, world;
  T* send;  // world * capacity * wmax
  STRATA_HOST_DEVICE void operator()(i64 u) const {
    if (u >= dest_first_u[world]) return;
    const i64 slot = u_slot[u];
    if (slot >= capacity) return;
    T* o = send + (u_dest[u] * capacity + slot) * wmax;
    const i64 per = samples * hotness;
    const i64 first = pos[u_start[u]] / per;  // every lookup of u is in one segment
    const i64 w = seg_width[first], col0 = seg_col[first];
    for (i64 d = 0; d < wmax; ++d) o[d] = T(0);
    for (i64 i = u_start[u]; i < u_start[u + 1]; ++i) {
      const i64 s = (pos[i] % per) / hotness;
      const T* g = grad + s * total_width + col0;
      for (i64 d = 0; d < w; ++d) o[d] = o[d] + g[d] * scale;
    }
  }
};

// Owner, backward: one key per received gradient slot (its row in this rank's key space, or
// invalid past the sender's count), in arrival order.
struct OwnerKeys {
  const i64* recv;  // the forward's received id blocks
  i64 capacity;
  i64* key;
  i64* pos;
  STRATA_HOST_DEVICE void operator()(i64 x) const {
    const i64 q = x / capacity, slot = x % capacity;
    const i64* block = recv + q * (i64(header_words) + capacity);
    key[x] = slot < block[0] ? block[header_words + slot] : invalid_key;
    pos[x] = x;
  }
};

// 1 when any rank's block header reports a problem: then no row is updated anywhere.
struct AnyProblem {
  const i64* recv;
  i64 capacity, world;
  i64* flag;
  STRATA_HOST_DEVICE void operator()(i64) const {
    i64 f = 0;
    for (i64 q = 0; q < world; ++q) f |= recv[q * (i64(header_words) + capacity) + 1] != 0;
    *flag = f;
  }
};

// Owner, backward: for each sorted run of one row, sum the gradients in arrival order and hand
// the row and the sum to the update.
template <class T, class Update>
struct ApplyRuns {
  const i64* key;
  const i64* pos;
  const i64* head;
  const i64* flag;
  const T* recv;  // world * capacity * wmax
  OwnedBlocks owned;
  const i64* block_table;
  const i64* block_row_begin;
  const i64* block_col_begin;
  i64 n, wmax;
  T* table;
  T* sums;  // n * wmax scratch
  Update update;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    if (*flag != 0 || key[i] == invalid_key || !head[i]) return;
    const i64 b = owned.block_of(key[i]);
    const i64 w = owned.width[b], row = key[i] - owned.key_start[b];
    T* sum = sums + i * wmax;
    for (i64 d = 0; d < w; ++d) sum[d] = T(0);
    for (i64 r = i; r < n && key[r] == key[i]; ++r) {
      const T* g = recv + pos[r] * wmax;
      for (i64 d = 0; d < w; ++d) sum[d] = sum[d] + g[d];
    }
    update(block_table[b], block_row_begin[b] + row, block_col_begin[b],
           table + owned.offset[b] + row * w, static_cast<const T*>(sum), w);
  }
};

// Replicated tables, backward: the dense gradient of every replica (rows, then one count per
// row), from this rank's lookups in lookup order. One thread per (replica row slot, column):
// deterministic without atomics.
struct ReplicaSegment {
  i64 table = 0;
  i64 rows = 0;  // replica rows (slots)
  i64 width = 0;
  i64 column = 0;   // first output column
  i64 dense = 0;    // offset in the dense buffer (rows * width values, then rows counts)
  i64 replica = 0;  // offset of the replica in the table buffer
  i64 table_rows = 0;
  i64 member = -1;    // a hybrid table's membership map (row -> slot), else -1 (slot = row)
  i64 slot_row = -1;  // a hybrid table's rows by slot (offset in `slot_rows`), else -1
};

// Replicated tables, backward, from this rank's lookups sorted by (replica, row) with a stable
// sort: key[x] = row_start[g] + id for lookup x of replica segment g (x in (segment, sample,
// lookup) order), invalid for an id outside the table.
struct ReplicaKeys {
  const i64* ids;
  const ReplicaSegment* segs;
  const i64* row_start;
  const i64* members;
  i64 samples, hotness;
  i64* key;
  i64* pos;
  STRATA_HOST_DEVICE void operator()(i64 x) const {
    const i64 per = samples * hotness;
    const ReplicaSegment sg = segs[x / per];
    const i64 id = ids[sg.table * per + x % per];
    i64 slot = -1;
    if (id >= 0 && id < sg.table_rows) slot = sg.member >= 0 ? members[sg.member + id] : id;
    key[x] = slot >= 0 ? row_start[x / per] + slot : invalid_key;
    pos[x] = x;
  }
};

// For each run of one replica row: the sum of its lookups' gradients in lookup order, and the
// run's length as the row's count, into the dense buffer (zero elsewhere).
template <class T>
struct ReplicaRuns {
  const i64* key;
  const i64* pos;
  const ReplicaSegment* segs;
  const i64* row_start;
  i64 nsegs, n, samples, hotness, total_width;
  const T* grad;
  T scale;
  T* dense;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    if (key[i] == invalid_key || (i > 0 && key[i - 1] == key[i])) return;
    i64 g = 0;
    while (g + 1 < nsegs && row_start[g + 1] <= key[i]) ++g;
    const ReplicaSegment sg = segs[g];
    const i64 row = key[i] - row_start[g], per = samples * hotness;
    T* o = dense + sg.dense + row * sg.width;
    T count = T(0);
    for (i64 r = i; r < n && key[r] == key[i]; ++r) {
      const i64 s = (pos[r] % per) / hotness;
      const T* gs = grad + s * total_width + sg.column;
      for (i64 d = 0; d < sg.width; ++d) o[d] = o[d] + gs[d] * scale;
      count = count + T(1);
    }
    dense[sg.dense + sg.rows * sg.width + row] = count;
  }
};

template <class T, class Update>
struct ReplicaApply {
  const ReplicaSegment* segs;
  const i64* row_start;
  const i64* slot_rows;
  i64 nsegs;
  const T* dense;
  const i64* flag;
  T* table;
  Update update;
  STRATA_HOST_DEVICE void operator()(i64 x) const {
    if (*flag != 0) return;
    i64 g = 0;
    while (g + 1 < nsegs && row_start[g + 1] <= x) ++g;
    const ReplicaSegment sg = segs[g];
    const i64 row = x - row_start[g];
    if (dense[sg.dense + sg.rows * sg.width + row] == T(0)) return;
    update(sg.table, sg.slot_row >= 0 ? slot_rows[sg.slot_row + row] : row, i64(0),
           table + sg.replica + row * sg.width, dense + sg.dense + row * sg.width, sg.width);
  }
};

}  // namespace strata::detail::dev
