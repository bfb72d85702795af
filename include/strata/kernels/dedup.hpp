#pragma once
//! \file
//! De-duplication of sparse ids and the per-id sum of gradient rows: the two kernels around an
//! embedding lookup. A batch repeats many ids; `unique_ids` finds each id once (sorted), where
//! each input position's id sits among them (the inverse map) and how often it occurs, so that
//! only unique ids are looked up or sent and the results are expanded back with the inverse map.
//! `segmented_sum` goes the other way for gradients: the rows of one id are summed into one row,
//! in input order, so that the sums are bitwise reproducible.
//!
//! Every function takes a Thrust execution policy first and runs where that policy runs, as the
//! fused kernels do: `thrust::host`, `thrust::seq` or `thrust::cpp::par` on the host,
//! `thrust::device` or `thrust::cuda::par.on(stream)` under nvcc; the spans must then be memory
//! the policy reaches. A `DedupWorkspace` owns every temporary, so a training loop that keeps one
//! allocates nothing once it has seen its largest batch. On a GPU this path is correct but its
//! sum runs one thread per unique id; `strata/kernels/dedup.cuh` holds the CUB kernels that
//! replace it on the device, with the same results bit for bit.

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <list>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <thrust/binary_search.h>
#include <thrust/copy.h>
#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/iterator/constant_iterator.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/iterator_traits.h>
#include <thrust/iterator/permutation_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/iterator/transform_output_iterator.h>
#include <thrust/reduce.h>
#include <thrust/scan.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>
#include <thrust/transform.h>

#include "strata/detail/host_device.hpp"
#include "strata/kernels/fused.hpp"

namespace strata {

namespace detail {

template <class T, class... U>
inline constexpr bool dedup_one_of = (std::same_as<T, U> || ...);

}  // namespace detail

//! Integers the de-duplication kernels take as ids and as indices (inverse map, counts):
//! `std::int32_t`, `std::int64_t`, `std::uint32_t`, `std::uint64_t`, whichever of `int`, `long`,
//! `long long` and their unsigned forms those are. Character types are not ids, and 8- and
//! 16-bit tables are too small to be worth de-duplicating on a device.
//!
//! \code
//! static_assert(strata::dedup_integer<std::int32_t> && strata::dedup_integer<std::uint64_t>);
//! static_assert(!strata::dedup_integer<std::int16_t> && !strata::dedup_integer<char32_t>);
//! static_assert(!strata::dedup_integer<const int> && !strata::dedup_integer<bool>);
//! \endcode
template <class T>
concept dedup_integer =
    detail::dedup_one_of<T, int, unsigned, long, unsigned long, long long, unsigned long long> &&
    (sizeof(T) == 4 || sizeof(T) == 8);

//! A caching allocator for the temporaries that Thrust's algorithms allocate inside a call (a
//! sort's second buffer, a scan's partial sums). Bound to a policy, as `thrust::host(scratch)`
//! or `thrust::cuda::par(scratch).on(stream)`, it keeps the blocks it hands out and hands them
//! out again, so a loop whose sizes stop growing stops allocating. Blocks are `Vector<char>`
//! (`std::vector` for host policies, `thrust::device_vector` for the device). Not thread-safe;
//! not copyable, because Thrust holds it by reference.
//!
//! \code
//! strata::ScratchAllocator<> scratch;
//! char* a = scratch.allocate(100);
//! scratch.deallocate(a, 100);
//! char* b = scratch.allocate(60);  // the free block of 100 bytes serves again
//! assert(a == b && scratch.allocations() == 1 && scratch.cached_bytes() == 100);
//! scratch.deallocate(b, 60);
//! \endcode
template <template <class...> class Vector = std::vector>
class ScratchAllocator {
 public:
  using value_type = char;

  ScratchAllocator() = default;
  ScratchAllocator(const ScratchAllocator&) = delete;
  ScratchAllocator& operator=(const ScratchAllocator&) = delete;
  ScratchAllocator(ScratchAllocator&&) noexcept = default;
  ScratchAllocator& operator=(ScratchAllocator&&) noexcept = default;

  //! The smallest free block of at least `bytes` bytes, or a new block.
  [[nodiscard]] char* allocate(std::size_t bytes) {
    if (bytes == 0) bytes = 1;  // every block needs an address of its own to be found again
    Block* best = nullptr;
    for (Block& block : blocks_) {
      if (!block.busy && block.bytes >= bytes && (best == nullptr || block.bytes < best->bytes)) {
        best = &block;
      }
    }
    if (best == nullptr) {
      // A free block too small for this request is released rather than kept: sizes in a
      // training loop only grow to their peak, so it would never be used again.
      blocks_.remove_if([bytes](const Block& b) { return !b.busy && b.bytes < bytes; });
      best = &blocks_.emplace_back(Vector<char>(bytes), bytes);
      ++allocations_;
    }
    best->busy = true;
    return thrust::raw_pointer_cast(best->storage.data());
  }

  //! Marks the block at `p` free for the next `allocate`; its memory is kept.
  void deallocate(char* p, std::size_t /*bytes*/) noexcept {
    for (Block& block : blocks_) {
      if (thrust::raw_pointer_cast(block.storage.data()) == p) {
        block.busy = false;
        return;
      }
    }
  }

  //! How many blocks have been allocated so far: constant once the loop is warm.
  [[nodiscard]] std::size_t allocations() const noexcept { return allocations_; }
  //! Bytes held in blocks, busy or free.
  [[nodiscard]] std::size_t cached_bytes() const noexcept {
    std::size_t total = 0;
    for (const Block& block : blocks_) total += block.bytes;
    return total;
  }

 private:
  struct Block {
    Block(Vector<char>&& s, std::size_t b) : storage(std::move(s)), bytes(b) {}
    Vector<char> storage;
    std::size_t bytes;
    bool busy = false;
  };
  // A list, so that a block never moves while Thrust holds a pointer into it.
  std::list<Block> blocks_;
  std::size_t allocations_ = 0;
};

//! Elements of the rows that `segmented_sum` adds: arithmetic types but `bool`, not
//! cv-qualified. Unlike the fused kernels, not `__half` or `__nv_bfloat16`: a sum of many
//! gradient rows kept in 16 bits loses most of their low bits, so such rows are summed in `float`.
//!
//! \code
//! static_assert(strata::segment_summable<float> && strata::segment_summable<std::int64_t>);
//! static_assert(!strata::segment_summable<bool> && !strata::segment_summable<const double>);
//! \endcode
template <class T>
concept segment_summable =
    std::is_arithmetic_v<T> && !std::same_as<T, bool> && std::same_as<T, std::remove_cv_t<T>>;

namespace detail {
struct DedupAccess;
}  // namespace detail

//! The temporaries of `unique_ids` and `segmented_sum`, kept from call to call, and the grouping
//! of the last batch that `unique_ids` saw: its positions sorted by id, which
//! `segmented_sum(policy, workspace, ...)` reuses instead of sorting again. Buffers are
//! `Vector<...>` and grow to the largest batch seen (or reserved), never shrink. `Vector` must
//! put them where the policy runs: `std::vector` for host policies, `thrust::device_vector` (or
//! an alias of it with the caller's allocator) for device policies, as in
//! `DedupWorkspace<std::int64_t, std::int32_t, thrust::device_vector>`; a mismatch does not
//! compile. Bind `allocator()` to the policy so that Thrust's own temporaries are reused too.
//! One workspace per policy in flight; not copyable, movable. `DeviceDedupWorkspace`
//! (`strata/kernels/dedup.cuh`) is its counterpart for the CUB kernels, with the same
//! `batch_size()` and `unique_count()`.
//!
//! \code
//! strata::DedupWorkspace<std::int64_t> workspace(/*max_ids=*/1024);
//! const std::vector<std::int64_t> ids{7, 3, 7};
//! std::vector<std::int64_t> unique(3);
//! std::vector<std::int32_t> inverse(3), counts(3);
//! for (int step = 0; step < 3; ++step) {
//!   const auto policy = thrust::host(workspace.allocator());
//!   assert(strata::unique_ids(policy, ids, unique, inverse, counts, workspace) == 2);
//! }
//! assert(workspace.batch_size() == 3 && workspace.unique_count() == 2);
//! \endcode
template <dedup_integer Id, dedup_integer Index = std::int32_t,
          template <class...> class Vector = std::vector>
class DedupWorkspace {
 public:
  using id_type = Id;
  using index_type = Index;

  DedupWorkspace() = default;
  //! Sized for batches of up to `max_ids` ids, so that not even the first call allocates for
  //! `unique_ids` (Thrust's temporaries excepted: they come from `allocator()`).
  explicit DedupWorkspace(std::size_t max_ids) { reserve(max_ids); }

  //! Grows the buffers of `unique_ids` to batches of `max_ids` ids. Throws
  //! `std::invalid_argument` if positions up to `max_ids` do not fit `Index`.
  void reserve(std::size_t max_ids) {
    check_fits("DedupWorkspace::reserve", max_ids);
    grow(keys_, max_ids);
    grow(order_, max_ids);
    grow(offsets_, max_ids + 1);
  }

  //! The number of ids in the last batch given to `unique_ids` (0 before the first).
  [[nodiscard]] std::size_t batch_size() const noexcept { return batch_size_; }
  //! The number of unique ids in the last batch given to `unique_ids`, when the host knows it:
  //! here always (0 before the first batch), since this path returns it; the device workspace
  //! may leave it on the device.
  [[nodiscard]] std::optional<std::size_t> unique_count() const noexcept { return unique_count_; }
  //! The allocator to bind to the policy for Thrust's own temporaries.
  [[nodiscard]] ScratchAllocator<Vector>& allocator() noexcept { return allocator_; }

 private:
  friend struct detail::DedupAccess;

  static void check_fits(const char* operation, std::size_t n) {
    if (n > static_cast<std::size_t>(std::numeric_limits<Index>::max())) {
      throw std::invalid_argument(std::string(operation) + ": " + std::to_string(n) +
                                  " exceeds the largest value of the index type, " +
                                  std::to_string(std::numeric_limits<Index>::max()));
    }
  }

  template <class V>
  static void grow(V& v, std::size_t n) {
    if (v.size() < n) {
      v = V();  // released first, so old and new never coexist
      v = V(n);
    }
  }

  // unique_ids: the ids sorted (as sort keys), their positions in that order, and where each
  // id's run starts.
  Vector<std::make_unsigned_t<Id>> keys_;
  Vector<Index> order_;
  Vector<Index> offsets_;
  // segmented_sum from an inverse map: the same three for the inverse map's groups, kept apart
  // so that the grouping of the last unique_ids stays valid.
  Vector<std::make_unsigned_t<Index>> group_keys_;
  Vector<Index> group_order_;
  Vector<Index> group_offsets_;
  ScratchAllocator<Vector> allocator_;
  std::size_t batch_size_ = 0;
  std::size_t unique_count_ = 0;
};

namespace detail {

template <template <class...> class Vector>
inline constexpr bool host_storage =
    host_policy<typename thrust::iterator_system<typename Vector<char>::iterator>::type>;

template <class Policy, template <class...> class Vector>
inline constexpr bool storage_matches_policy = host_policy<Policy> == host_storage<Vector>;

template <class V>
auto* raw(V& v) noexcept {
  return thrust::raw_pointer_cast(v.data());
}

struct DedupAccess {
  template <class W>
  static auto& keys(W& w) noexcept {
    return w.keys_;
  }
  template <class W>
  static auto& order(W& w) noexcept {
    return w.order_;
  }
  template <class W>
  static auto& offsets(W& w) noexcept {
    return w.offsets_;
  }
  template <class W>
  static auto& group_keys(W& w) noexcept {
    return w.group_keys_;
  }
  template <class W>
  static auto& group_order(W& w) noexcept {
    return w.group_order_;
  }
  template <class W>
  static auto& group_offsets(W& w) noexcept {
    return w.group_offsets_;
  }
  template <class W>
  static void set_batch(W& w, std::size_t n, std::size_t m) noexcept {
    w.batch_size_ = n;
    w.unique_count_ = m;
  }
  template <class W>
  static void check_fits(const W&, const char* operation, std::size_t n) {
    W::check_fits(operation, n);
  }
  template <class W, class V>
  static void grow(const W&, V& v, std::size_t n) {
    W::grow(v, n);
  }
};

// Integers are sorted as unsigned keys with the sign bit flipped, a bijection that keeps their
// order: Thrust 3.0's sequential radix sort widens `int` keys to 64 bits before flipping only
// bit 31, and so sorts negative ints after the positive ones.
template <class T>
struct ToSortKey {
  using Key = std::make_unsigned_t<T>;
  STRATA_HOST_DEVICE Key operator()(T x) const {
    constexpr Key flip = std::is_signed_v<T> ? Key(Key(1) << (8 * sizeof(T) - 1)) : Key(0);
    return static_cast<Key>(static_cast<Key>(x) ^ flip);
  }
};

template <class T>
struct FromSortKey {
  using Key = std::make_unsigned_t<T>;
  STRATA_HOST_DEVICE T operator()(Key k) const {
    constexpr Key flip = std::is_signed_v<T> ? Key(Key(1) << (8 * sizeof(T) - 1)) : Key(0);
    return static_cast<T>(static_cast<Key>(k ^ flip));
  }
};

// 1 where a run of equal sorted ids starts, except at 0: its inclusive scan is the index of each
// sorted position's unique id.
template <class Key, class Index>
struct RunStart {
  const Key* keys;
  STRATA_HOST_DEVICE Index operator()(std::size_t k) const {
    return static_cast<Index>(k != 0 && keys[k] != keys[k - 1] ? 1 : 0);
  }
};

// One call per group: its rows, in `order` (input order within the group), added up. The first
// row is copied rather than added to zero, so that a lone row comes out bit for bit (-0.0 + 0.0
// would be +0.0); a group without rows sums to zero.
template <class T, class Index>
struct SumGroupRows {
  const Index* order;
  const Index* offsets;
  const T* rows;
  std::size_t width;
  T* sums;
  STRATA_HOST_DEVICE void operator()(std::size_t u) const {
    const auto begin = static_cast<std::size_t>(offsets[u]);
    const auto end = static_cast<std::size_t>(offsets[u + 1]);
    T* out = sums + u * width;
    if (begin >= end) {
      for (std::size_t c = 0; c < width; ++c) out[c] = T(0);
      return;
    }
    const T* first = rows + static_cast<std::size_t>(order[begin]) * width;
    for (std::size_t c = 0; c < width; ++c) out[c] = first[c];
    for (std::size_t k = begin + 1; k < end; ++k) {
      const T* row = rows + static_cast<std::size_t>(order[k]) * width;
      for (std::size_t c = 0; c < width; ++c) out[c] = static_cast<T>(out[c] + row[c]);
    }
  }
};

[[noreturn]] inline void dedup_size_error(const char* operation, const std::string& what) {
  throw std::invalid_argument(std::string(operation) + ": " + what);
}

// The outputs of a de-duplication of n ids: `unique` and `counts` need room for every id (the
// unique count is not known in advance), `inverse` holds one entry per id.
inline void check_dedup_outputs(const char* operation, std::size_t n, std::size_t unique,
                                std::size_t inverse, std::size_t counts) {
  if (inverse != n) {
    dedup_size_error(operation, "inverse holds " + std::to_string(inverse) +
                                    " entries but there are " + std::to_string(n) + " ids");
  }
  if (unique < n) {
    dedup_size_error(operation, "unique has room for " + std::to_string(unique) +
                                    " ids but needs room for all " + std::to_string(n));
  }
  if (counts < n) {
    dedup_size_error(operation, "counts has room for " + std::to_string(counts) +
                                    " ids but needs room for all " + std::to_string(n));
  }
}

// rows.size() == count * width, written as a division so that it cannot overflow.
inline void check_rows(const char* operation, const char* name, std::size_t size, std::size_t count,
                       std::size_t width, const char* counted) {
  if (size % width != 0 || size / width != count) {
    dedup_size_error(operation, std::string(name) + " holds " + std::to_string(size) +
                                    " elements but " + std::to_string(count) + " " + counted +
                                    " of width " + std::to_string(width) + " need " +
                                    std::to_string(count) + " * " + std::to_string(width));
  }
}

inline void check_width(const char* operation, std::size_t width) {
  if (width == 0) dedup_size_error(operation, "the row width must be positive");
}

template <class Policy, class T, class Index>
void sum_groups(const Policy& policy, const Index* order, const Index* offsets, std::size_t groups,
                const T* rows, std::size_t width, T* sums) {
  if (groups == 0) return;
  thrust::for_each_n(policy, thrust::counting_iterator<std::size_t>(0), groups,
                     SumGroupRows<T, Index>{order, offsets, rows, width, sums});
}

}  // namespace detail

//! De-duplicates a batch of ids: writes the distinct ids, ascending, to `unique[0, m)`, for each
//! position i the index of its id among them to `inverse[i]` (so `unique[inverse[i]] == ids[i]`),
//! and how often each occurs to `counts[0, m)`; returns m. Entries of `unique` and `counts` past
//! m are left alone. Ties keep input order (a stable sort of (id, position)), and the workspace
//! keeps that grouping for `segmented_sum`. `unique` and `counts` need room for every id
//! (m <= ids.size()), `inverse` exactly one entry per id; otherwise, and if the batch does not fit
//! `Index`, it throws `std::invalid_argument` before writing anything.
//!
//! Steps: copy ids and iota positions into the workspace, stable-sort positions by id, reduce
//! runs of equal ids to (id, count), scan the run starts into the inverse map (written through
//! the sorted positions), scan the counts into run offsets. Returning m means waiting for the
//! device under a device policy (Thrust's `reduce_by_key` does); `dedup.cuh` has a form that
//! does not wait.
//!
//! \code
//! strata::DedupWorkspace<std::int32_t> workspace;
//! const std::vector<std::int32_t> ids{5, 2, 5, 5, 9};
//! std::vector<std::int32_t> unique(5), inverse(5), counts(5);
//! const std::size_t m = strata::unique_ids(thrust::host, ids, unique, inverse, counts, workspace);
//! assert(m == 3 && unique[0] == 2 && unique[1] == 5 && unique[2] == 9);
//! assert((inverse == std::vector<std::int32_t>{1, 0, 1, 1, 2}));
//! assert(counts[0] == 1 && counts[1] == 3 && counts[2] == 1);
//! \endcode
template <thrust_policy Policy, dedup_integer Id, dedup_integer Index,
          template <class...> class Vector>
std::size_t unique_ids(const Policy& policy, std::type_identity_t<std::span<const Id>> ids,
                       std::type_identity_t<std::span<Id>> unique,
                       std::type_identity_t<std::span<Index>> inverse,
                       std::type_identity_t<std::span<Index>> counts,
                       DedupWorkspace<Id, Index, Vector>& workspace) {
  static_assert(detail::storage_matches_policy<Policy, Vector>,
                "unique_ids: the workspace's buffers must live where the policy runs: "
                "std::vector for host policies, thrust::device_vector for device policies");
  using Access = detail::DedupAccess;
  const std::size_t n = ids.size();
  const char* op = "unique_ids";
  detail::check_dedup_outputs(op, n, unique.size(), inverse.size(), counts.size());
  Access::check_fits(workspace, op, n);
  workspace.reserve(n);
  Access::set_batch(workspace, 0, 0);  // until this call completes, there is no valid grouping

  using Key = std::make_unsigned_t<Id>;
  Key* keys = detail::raw(Access::keys(workspace));
  Index* order = detail::raw(Access::order(workspace));
  Index* offsets = detail::raw(Access::offsets(workspace));
  std::size_t m = 0;
  if (n != 0) {
    thrust::transform(policy, ids.data(), ids.data() + n, keys, detail::ToSortKey<Id>{});
    thrust::sequence(policy, order, order + n);
    thrust::stable_sort_by_key(policy, keys, keys + n, order);
    const auto ends = thrust::reduce_by_key(
        policy, keys, keys + n, thrust::constant_iterator<Index>(1),
        thrust::make_transform_output_iterator(unique.data(), detail::FromSortKey<Id>{}),
        counts.data());
    m = static_cast<std::size_t>(ends.second - counts.data());
    const auto starts = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0),
                                                        detail::RunStart<Key, Index>{keys});
    thrust::inclusive_scan(policy, starts, starts + n,
                           thrust::make_permutation_iterator(inverse.data(), order));
    thrust::exclusive_scan(policy, counts.data(), counts.data() + m, offsets);
  }
  thrust::fill_n(policy, offsets + m, 1, static_cast<Index>(n));
  Access::set_batch(workspace, n, m);
  return m;
}

//! Sums the gradient rows of each unique id of the last `unique_ids` call on `workspace`:
//! `rows` holds one row of `width` elements per id of that batch, in batch order, and row u of
//! `sums` becomes the sum of the rows whose id is `unique[u]`, added in batch order
//! (`((r0 + r1) + r2) + ...`, the first row copied), so the result is bitwise reproducible and
//! equal to a serial loop's. Needs no sort: it reuses the workspace's grouping. Rows of `sums`
//! past the unique count are left alone. Throws `std::invalid_argument` unless `width > 0`,
//! `rows` has `batch_size() * width` elements and `sums` room for `unique_count() * width`.
//!
//! \code
//! strata::DedupWorkspace<std::int32_t> workspace;
//! const std::vector<std::int32_t> ids{4, 8, 4};
//! std::vector<std::int32_t> unique(3), inverse(3), counts(3);
//! const std::size_t m = strata::unique_ids(thrust::host, ids, unique, inverse, counts, workspace);
//! const std::vector<float> grads{1, 2, 10, 20, 100, 200};  // rows {1, 2}, {10, 20}, {100, 200}
//! std::vector<float> sums(m * 2);
//! strata::segmented_sum(thrust::host, workspace, grads, 2, std::span(sums));
//! assert((sums == std::vector<float>{101, 202, 10, 20}));  // ids 4 and 8
//! \endcode
template <thrust_policy Policy, segment_summable T, dedup_integer Id, dedup_integer Index,
          template <class...> class Vector>
void segmented_sum(const Policy& policy, const DedupWorkspace<Id, Index, Vector>& workspace,
                   std::type_identity_t<std::span<const T>> rows, std::size_t width,
                   std::span<T> sums) {
  static_assert(detail::storage_matches_policy<Policy, Vector>,
                "segmented_sum: the workspace's buffers must live where the policy runs: "
                "std::vector for host policies, thrust::device_vector for device policies");
  using Access = detail::DedupAccess;
  const char* op = "segmented_sum";
  detail::check_width(op, width);
  const std::size_t m = *workspace.unique_count();
  detail::check_rows(op, "rows", rows.size(), workspace.batch_size(), width, "ids");
  if (sums.size() / width < m) {
    detail::dedup_size_error(op, "sums has room for " + std::to_string(sums.size() / width) +
                                     " rows of width " + std::to_string(width) + " but there are " +
                                     std::to_string(m) + " unique ids");
  }
  detail::sum_groups(policy, detail::raw(Access::order(workspace)),
                     detail::raw(Access::offsets(workspace)), m, rows.data(), width, sums.data());
}

//! Sums gradient rows by an inverse map: row u of `sums` (`sums.size() / width` rows) becomes
//! the sum of the rows i with `inverse[i] == u`, added in input order with the first row copied,
//! or zero if there are none. For an inverse map that did not just come from `unique_ids` on
//! this workspace (one received from another rank, or one of several tables); it sorts the map
//! (steps: copy, iota, stable sort by group, binary search of each group's start, then one
//! call per group), and leaves the workspace's `unique_ids` grouping alone. Every `inverse[i]`
//! must lie in [0, number of rows of sums); rows with other values are not summed. Throws
//! `std::invalid_argument` unless `width > 0`, `rows` has `inverse.size() * width` elements,
//! `sums` a whole number of rows, and both counts fit `Index`.
//!
//! \code
//! strata::DedupWorkspace<std::int64_t> workspace;
//! const std::vector<std::int32_t> inverse{1, 0, 1};
//! const std::vector<double> grads{1, 2, 4};  // width 1
//! std::vector<double> sums(3);               // group 2 receives no row
//! strata::segmented_sum(thrust::host, inverse, grads, 1, std::span(sums), workspace);
//! assert((sums == std::vector<double>{2, 5, 0}));
//! \endcode
template <thrust_policy Policy, segment_summable T, dedup_integer Id, dedup_integer Index,
          template <class...> class Vector>
void segmented_sum(const Policy& policy, std::type_identity_t<std::span<const Index>> inverse,
                   std::type_identity_t<std::span<const T>> rows, std::size_t width,
                   std::span<T> sums, DedupWorkspace<Id, Index, Vector>& workspace) {
  static_assert(detail::storage_matches_policy<Policy, Vector>,
                "segmented_sum: the workspace's buffers must live where the policy runs: "
                "std::vector for host policies, thrust::device_vector for device policies");
  using Access = detail::DedupAccess;
  const char* op = "segmented_sum";
  detail::check_width(op, width);
  const std::size_t n = inverse.size();
  detail::check_rows(op, "rows", rows.size(), n, width, "inverse entries");
  if (sums.size() % width != 0) {
    detail::dedup_size_error(op, "sums holds " + std::to_string(sums.size()) +
                                     " elements, not a whole number of rows of width " +
                                     std::to_string(width));
  }
  const std::size_t m = sums.size() / width;
  Access::check_fits(workspace, op, n);
  Access::check_fits(workspace, op, m + 1);  // the group starts 0..m are counted in Index
  auto& keys_v = Access::group_keys(workspace);
  auto& order_v = Access::group_order(workspace);
  auto& offsets_v = Access::group_offsets(workspace);
  Access::grow(workspace, keys_v, n);
  Access::grow(workspace, order_v, n);
  Access::grow(workspace, offsets_v, m + 1);
  auto* keys = detail::raw(keys_v);
  Index* order = detail::raw(order_v);
  Index* offsets = detail::raw(offsets_v);
  if (n != 0) {
    thrust::transform(policy, inverse.data(), inverse.data() + n, keys, detail::ToSortKey<Index>{});
    thrust::sequence(policy, order, order + n);
    thrust::stable_sort_by_key(policy, keys, keys + n, order);
  }
  const auto groups = thrust::make_transform_iterator(thrust::counting_iterator<Index>(0),
                                                      detail::ToSortKey<Index>{});
  thrust::lower_bound(policy, keys, keys + n, groups, groups + (m + 1), offsets);
  detail::sum_groups(policy, order, offsets, m, rows.data(), width, sums.data());
}

}  // namespace strata
