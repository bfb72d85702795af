#pragma once
//! \file
//! The local backend: N ranks as N threads of one process, sharing memory.
//!
//! Every collective is a rendezvous of the group's members in two barriers. At the first, each
//! member posts its buffers and every member checks that all posts agree (same operation, type,
//! counts, root); at the second, all have finished moving data, so buffers may be reused. Between
//! the two, members work in parallel directly on each other's buffers:
//!
//! | operation | work of member r (n members, c elements of s bytes in the operation's input) | bytes read / written by r |
//! | --- | --- | --- |
//! | `all_reduce` | reduces slice r (c/n elements) over all n inputs in rank order 0..n-1, writes the result into slice r of all n outputs (reduce-scatter and all-gather in one pass) | c·s / c·s |
//! | `all_reduce_tensors` | as `all_reduce`, in place, over the concatenation of each member's tensors: slice r is read from and written to the tensors themselves through a table of where each tensor starts, with no staging buffer | c·s / c·s |
//! | `reduce_scatter` | reduces block r (c/n elements) over all n inputs, in rank order, into its output | c·s / (c/n)·s |
//! | `broadcast` | copies the root's buffer into its own | c·s / c·s |
//! | `all_gather` | copies every member's input into its own output | n·c·s / n·c·s |
//! | `all_to_all` | copies block r of every member's input into its own output | total received, both ways |
//! | `barrier`, `split` | rendezvous only (split: member 0 builds all subgroups) | 0 |
//!
//! (s: bytes per element; for `all_reduce_tensors`, c is the total of the tensors' sizes.) Sums
//! run in a fixed rank order and each slice is reduced by exactly one member, so results are
//! identical from run to run and bitwise identical on every member.
//! Writes begin only after every member has arrived and every check has passed, so a collective
//! that fails leaves every buffer as it was.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "strata/comm/communicator.hpp"
#include "strata/comm/detail/call.hpp"
#include "strata/comm/detail/deadline.hpp"
#include "strata/comm/detail/facade.hpp"
#include "strata/error.hpp"

namespace strata {

//! Settings of a `LocalWorld`.
//!
//! \code
//! strata::LocalOptions opts;
//! opts.timeout = std::chrono::milliseconds(500);  // tests that provoke timeouts
//! assert(opts.timeout.count() == 500);
//! \endcode
struct LocalOptions {
  //! How long a member waits in one collective for the others before it fails. Generous by
  //! default: a rank may legitimately compute for minutes between collectives.
  std::chrono::milliseconds timeout = detail::default_timeout;
};

namespace detail::local {

// One member's tensors in an all_reduce_tensors, described by the member itself before the
// rendezvous, so that its peers can check and walk them without touching the caller's list twice.
struct TensorList {
  const void* spans = nullptr;      // the caller's `const std::span<T>*`
  std::vector<std::size_t> starts;  // where each tensor starts in the concatenation; then the total
  std::optional<std::pair<std::size_t, std::size_t>> overlap;  // two that share memory

  [[nodiscard]] std::size_t count() const noexcept { return starts.size() - 1; }
  [[nodiscard]] std::size_t total() const noexcept { return starts.back(); }
  [[nodiscard]] std::size_t size(std::size_t t) const noexcept { return starts[t + 1] - starts[t]; }
};

// What one member passed to the current collective.
struct Post {
  const Call* call = nullptr;  // the caller's, alive until the collective's last barrier
  const void* in = nullptr;
  void* out = nullptr;
  int color = 0;
  int key = 0;
  const TensorList* tensors = nullptr;  // all_reduce_tensors only
};

// The operation's name in messages: all_reduce_tensors travels as an all-reduce call.
inline std::string_view operation_name(const Post& p) noexcept {
  return p.tensors != nullptr ? tensors_name : collective_name(p.call->op);
}

struct Group;

// State shared by every rank and every group of one LocalWorld::run.
struct World {
  explicit World(int size, LocalOptions opts)
      : options(opts), left(static_cast<std::size_t>(size), false) {}

  LocalOptions options;
  std::mutex mutex;
  std::condition_variable cv;
  bool failed = false;
  bool timed_out = false;  // the first failure was a deadline
  int failed_rank = -1;
  std::string failure;
  std::vector<bool> left;  // per world rank: its function has returned or thrown

  // Records the first failure; later ones are consequences of it. Caller holds the mutex.
  void fail_locked(int rank, std::string why, bool timeout = false) {
    if (!failed) {
      failed = true;
      timed_out = timeout;
      failed_rank = rank;
      failure = std::move(why);
    }
    cv.notify_all();
  }
};

struct Group {
  std::shared_ptr<World> world;
  std::vector<int> members;  // world rank of each group rank
  std::uint64_t generation = 0;
  int arrived = 0;
  std::vector<bool> here;  // group rank has arrived at the current barrier
  std::vector<Post> posts;
  // split: the new group and rank of each member, filled by member 0 between the barriers.
  std::vector<std::pair<std::shared_ptr<Group>, int>> split_result;

  Group(std::shared_ptr<World> w, std::vector<int> m)
      : world(std::move(w)),
        members(std::move(m)),
        here(members.size(), false),
        posts(members.size()),
        split_result(members.size()) {}

  [[nodiscard]] int size() const noexcept { return static_cast<int>(members.size()); }
};

inline std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) {
    if (!s.empty()) s += ", ";
    s += std::to_string(r);
  }
  return s;
}

// Counts this member in at the current barrier; true when it was the last to arrive, in which
// case the barrier is complete and the waiters are woken. Caller holds the world's mutex.
inline bool arrive(Group& g, int me) {
  g.here[static_cast<std::size_t>(me)] = true;
  if (++g.arrived != g.size()) return false;
  g.arrived = 0;
  std::fill(g.here.begin(), g.here.end(), false);
  ++g.generation;
  g.world->cv.notify_all();
  return true;
}

// Waits until every member of the group has arrived. Throws strata::error when the world has
// failed, when a member it waits for has left, or at the deadline (which fails the world, so that
// every other waiter learns why). A member that throws withdraws its arrival first: the barrier
// can then never complete with a member that has gone, whose buffers may already be freed.
inline void rendezvous(Group& g, int me, std::string_view op) {
  World& w = *g.world;
  const int my_world_rank = g.members[static_cast<std::size_t>(me)];
  std::unique_lock lock(w.mutex);
  auto throw_failed = [&] {
    std::string why = w.failed_rank == my_world_rank
                          ? w.failure
                          : "rank " + std::to_string(w.failed_rank) + " failed: " + w.failure;
    if (w.timed_out) throw timeout_error(op, my_world_rank, why);
    throw error(op, my_world_rank, why);
  };
  if (w.failed) throw_failed();
  if (arrive(g, me)) return;
  const std::uint64_t generation = g.generation;
  const Deadline deadline(w.options.timeout);
  auto withdraw_and_throw = [&] {
    g.here[static_cast<std::size_t>(me)] = false;
    --g.arrived;
    throw_failed();
  };
  auto not_here = [&](auto&& keep) {
    std::vector<int> ranks;
    for (std::size_t m = 0; m < g.members.size(); ++m) {
      if (!g.here[m] && keep(g.members[m])) ranks.push_back(g.members[m]);
    }
    return ranks;
  };
  auto has_left = [&](int world_rank) { return w.left[static_cast<std::size_t>(world_rank)]; };
  while (g.generation == generation) {
    if (w.failed) withdraw_and_throw();
    // The lists are built only on the failure paths: a wake-up must stay cheap.
    bool someone_left = false;
    for (std::size_t m = 0; m < g.members.size() && !someone_left; ++m) {
      someone_left = !g.here[m] && has_left(g.members[m]);
    }
    if (someone_left) {
      w.fail_locked(my_world_rank, std::string(op) + " waited for rank(s) " +
                                       rank_list(not_here(has_left)) +
                                       ", which already returned from their function");
      withdraw_and_throw();
    }
    if (w.cv.wait_until(lock, deadline.at()) == std::cv_status::timeout &&
        g.generation == generation && !w.failed) {
      w.fail_locked(my_world_rank,
                    deadline.expired() + " in " + std::string(op) + " waiting for rank(s) " +
                        rank_list(not_here([](int) { return true; })),
                    /*timeout=*/true);
      withdraw_and_throw();
    }
  }
}

// The barrier that ends a collective. Every member has passed the first barrier and the work
// between never blocks, so every member arrives: this one neither fails nor times out. A member
// must not return (and perhaps free its buffers) while a peer still reads or writes them.
inline void complete(Group& g, int me) {
  World& w = *g.world;
  std::unique_lock lock(w.mutex);
  if (arrive(g, me)) return;
  const std::uint64_t generation = g.generation;
  w.cv.wait(lock, [&] { return g.generation != generation; });
}

// memcpy that accepts the null pointers of empty spans.
inline void copy_bytes(void* dst, const void* src, std::size_t bytes) noexcept {
  if (bytes != 0) std::memcpy(dst, src, bytes);
}

template <class T>
struct Sum {
  T operator()(T a, T b) const noexcept { return a + b; }
};
template <class T>
struct Min {
  T operator()(T a, T b) const noexcept { return b < a ? b : a; }
};
template <class T>
struct Max {
  T operator()(T a, T b) const noexcept { return a < b ? b : a; }
};

// Applies `f(i)` for i in [0, n) in fixed blocks of 16 and a tail: g++ vectorises a block loop of
// constant length at -O2, while a loop of unknown length it vectorises only at -O3.
template <class F>
inline void blocked(std::size_t n, F&& f) {
  constexpr std::size_t block = 16;
  std::size_t i = 0;
  for (; i + block <= n; i += block) {
    for (std::size_t k = 0; k < block; ++k) f(i + k);
  }
  for (; i < n; ++i) f(i);
}

// The elements of one chunk [lo, lo + len) of the reduced range, cut into pieces that are
// contiguous in every member's data: piece p holds `length(p)` elements, elements
// [lo + at(p), lo + at(p) + length(p)), at `source(m, p)` in member m's input.
// A flat buffer: one piece, `offset` elements into each member's input.
template <class T>
class FlatPieces {
 public:
  FlatPieces(const std::vector<Post>& posts, std::size_t offset) noexcept
      : posts_(&posts), offset_(offset) {}

  // Starts the chunk at lo of at most `len` elements; returns its length.
  std::size_t cut(std::size_t lo, std::size_t len) noexcept {
    lo_ = lo;
    len_ = len;
    return len;
  }
  [[nodiscard]] std::size_t count() const noexcept { return 1; }
  [[nodiscard]] std::size_t at(std::size_t) const noexcept { return 0; }
  [[nodiscard]] std::size_t length(std::size_t) const noexcept { return len_; }
  [[nodiscard]] const T* source(std::size_t m, std::size_t) const noexcept {
    return static_cast<const T*>((*posts_)[m].in) + offset_ + lo_;
  }

 private:
  const std::vector<Post>* posts_;
  std::size_t offset_;
  std::size_t lo_ = 0;
  std::size_t len_ = 0;
};

// Many tensors, concatenated: a chunk is cut at the tensors' boundaries, which every member
// shares (their lists agree), so one table of pieces serves all n members. A chunk ends early
// after `max_pieces` pieces, which keeps the table small when tensors are tiny. The tensors are
// reduced in place: `target(m, p)` is `source(m, p)`, writable. Nothing here allocates: the work
// between the barriers must not fail.
template <class T>
class TensorPieces {
 public:
  // Positioned at `begin` (< the total) by a binary search of the starts.
  TensorPieces(const std::vector<Post>& posts, std::size_t begin) noexcept : posts_(&posts) {
    const std::vector<std::size_t>& starts = posts.front().tensors->starts;
    starts_ = starts.data();
    const auto after = std::upper_bound(starts.begin(), starts.end(), begin);
    tensor_ = static_cast<std::size_t>(after - starts.begin()) - 1;
    offset_ = begin - starts_[tensor_];
  }

  std::size_t cut(std::size_t, std::size_t len) noexcept {
    count_ = 0;
    std::size_t done = 0;
    // The range ends inside the tensors, so a non-empty tensor remains while done < len.
    while (done < len && count_ < max_pieces) {
      const std::size_t size = starts_[tensor_ + 1] - starts_[tensor_];
      if (offset_ == size) {  // finished, or empty
        ++tensor_;
        offset_ = 0;
        continue;
      }
      const std::size_t k = std::min(size - offset_, len - done);
      pieces_[count_++] = {tensor_, offset_, done, k};
      done += k;
      offset_ += k;
    }
    return done;
  }
  [[nodiscard]] std::size_t count() const noexcept { return count_; }
  [[nodiscard]] std::size_t at(std::size_t p) const noexcept { return pieces_[p].at; }
  [[nodiscard]] std::size_t length(std::size_t p) const noexcept { return pieces_[p].length; }
  [[nodiscard]] const T* source(std::size_t m, std::size_t p) const noexcept {
    return target(m, p);
  }
  [[nodiscard]] T* target(std::size_t m, std::size_t p) const noexcept {
    const auto* list = static_cast<const std::span<T>*>((*posts_)[m].tensors->spans);
    return list[pieces_[p].tensor].data() + pieces_[p].offset;
  }

 private:
  static constexpr std::size_t max_pieces = 64;
  struct Piece {
    std::size_t tensor, offset, at, length;
  };

  const std::vector<Post>* posts_;
  const std::size_t* starts_ = nullptr;
  std::size_t tensor_ = 0;  // where the next chunk begins
  std::size_t offset_ = 0;
  std::size_t count_ = 0;
  Piece pieces_[max_pieces];
};

// The elements a reduction holds in L1 at once: 16 KiB, which it reads from every member. Longer
// runs per member stream better from memory; n such runs must still fit in L2 until written back.
template <class T>
inline constexpr std::size_t reduce_chunk = 16384 / sizeof(T);

// Copies k <= reduce_chunk<T> elements: the bound lets the compiler inline the copy.
template <class T>
void copy_chunk(T* dst, const T* src, std::size_t k) noexcept {
  copy_bytes(dst, src, std::min(k, reduce_chunk<T>) * sizeof(T));
}

// Folds K members' elements into `a`, in member order, in one pass: a[i] = combine(...combine(
// x, s[0][i])..., s[K-1][i]) with x = a[i], or, for the first group (`Start`), a[i] =
// combine(...combine(s[0][i], s[1][i])..., s[K-1][i]). Up to four members per pass read four
// streams at once and keep the partial result in registers; each element is still combined in
// rank order, so the bits are those of one member at a time. Each block loads everything before
// it stores: the compiler may then vectorise it without knowing that `a` and `s` do not overlap.
template <std::size_t K, bool Start, class T, class Combine>
void fold(T* a, const T* const* s, std::size_t len, Combine combine) {
  constexpr std::size_t block = 16;
  const T* const s0 = s[0];
  const T* const s1 = s[K > 1 ? 1 : 0];
  const T* const s2 = s[K > 2 ? 2 : 0];
  const T* const s3 = s[K > 3 ? 3 : 0];
  const auto one = [&](std::size_t i) {
    T v = Start ? s0[i] : combine(a[i], s0[i]);
    if constexpr (K > 1) v = combine(v, s1[i]);
    if constexpr (K > 2) v = combine(v, s2[i]);
    if constexpr (K > 3) v = combine(v, s3[i]);
    return v;
  };
  std::size_t i = 0;
  for (; i + block <= len; i += block) {
    T v[block];
    for (std::size_t k = 0; k < block; ++k) v[k] = one(i + k);
    for (std::size_t k = 0; k < block; ++k) a[i + k] = v[k];
  }
  for (; i < len; ++i) a[i] = one(i);
}

template <bool Start, class T, class Combine>
void fold_group(T* a, const T* const* s, std::size_t k, std::size_t len, Combine combine) {
  switch (k) {
    case 1: fold<1, Start>(a, s, len, combine); break;
    case 2: fold<2, Start>(a, s, len, combine); break;
    case 3: fold<3, Start>(a, s, len, combine); break;
    default: fold<4, Start>(a, s, len, combine); break;
  }
}

// Reduces elements [begin, end) of every member's data (`pieces`), in member order, into
// `dests(lo, acc, len)`, which may then overwrite them. Works in chunks of `reduce_chunk<T>`
// elements, so that the partial result stays in L1 and the chunk of every member's data, read
// once, is still in L2 when written back.
template <class T, class Combine, class Pieces, class Dests>
void reduce_range(std::size_t n, std::size_t begin, std::size_t end, ReduceOp op, Combine combine,
                  Pieces& pieces, Dests&& dests) {
  T acc[reduce_chunk<T>];
  const T* group[4];
  for (std::size_t lo = begin; lo < end;) {
    const std::size_t len = pieces.cut(lo, std::min(reduce_chunk<T>, end - lo));
    for (std::size_t p = 0; p < pieces.count(); ++p) {
      T* a = acc + pieces.at(p);
      const std::size_t k = pieces.length(p);
      for (std::size_t m = 0; m < n; m += 4) {
        const std::size_t members = std::min<std::size_t>(4, n - m);
        for (std::size_t j = 0; j < members; ++j) group[j] = pieces.source(m + j, p);
        if (m == 0) {
          fold_group<true>(a, group, members, k, combine);
        } else {
          fold_group<false>(a, group, members, k, combine);
        }
      }
    }
    if (op == ReduceOp::average) {
      const AverageOf<T> average(static_cast<int>(n));
      blocked(len, [&](std::size_t i) { acc[i] = average(acc[i]); });
    }
    dests(lo, static_cast<const T*>(acc), len);
    lo += len;
  }
}

template <class T, class Pieces, class Dests>
void reduce_dispatch(std::size_t n, std::size_t begin, std::size_t end, ReduceOp op, Pieces& pieces,
                     Dests&& dests) {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::average: reduce_range<T>(n, begin, end, op, Sum<T>{}, pieces, dests); break;
    case ReduceOp::min: reduce_range<T>(n, begin, end, op, Min<T>{}, pieces, dests); break;
    case ReduceOp::max: reduce_range<T>(n, begin, end, op, Max<T>{}, pieces, dests); break;
  }
}

}  // namespace detail::local

class LocalWorld;

//! One rank's handle on a group of the local backend. Models `strata::communicator`. Cheap to
//! copy; copies refer to the same group. Every collective throws a `strata::error` naming the
//! operation, this rank and the cause when it cannot complete: `strata::usage_error` when a
//! member's arguments are invalid or the members' calls disagree (every member throws the same
//! message), `strata::timeout_error` when the world's timeout passes, `strata::error` when a
//! member fails or leaves; and it then leaves every buffer untouched. The collectives, their
//! checks and messages are those of every backend (`detail::CollectiveFacade`); what is local is
//! the transport below.
//!
//! \code
//! strata::LocalWorld world(4);
//! world.run([](strata::LocalComm& comm) {
//!   std::vector<double> x{double(comm.rank()), 1.0};
//!   comm.all_reduce(std::span<double>(x), strata::ReduceOp::sum);
//!   assert(x[0] == 0.0 + 1 + 2 + 3 && x[1] == 4.0);
//! });
//! \endcode
class LocalComm : public detail::CollectiveFacade<LocalComm> {
 public:
  template <class T>
  static constexpr bool accepts = comm_value<T>;
  using stream_type = void;

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return group_->size(); }

  //! This member's rank in the whole world.
  [[nodiscard]] int world_rank() const noexcept {
    return group_->members[static_cast<std::size_t>(rank_)];
  }

  //! In place over many tensors: every member ends with the reduction of every member's tensors,
  //! element by element, as if they were concatenated (tensor lists must agree in count and sizes).
  //!
  //! The result is bitwise that of packing the tensors into one buffer, `all_reduce` on it and
  //! unpacking, without the buffer: each member reduces its slice of the concatenation straight
  //! from the members' tensors and writes it into them. Fails like every collective (a
  //! `strata::usage_error` on every member when the lists differ in count or in any tensor's
  //! size, or when one member's tensors overlap each other) and then writes nothing. Empty
  //! tensors are allowed.
  //!
  //! \code
  //! strata::LocalWorld(2).run([](strata::LocalComm& comm) {
  //!   std::vector<float> w(3, float(comm.rank())), b{float(comm.rank()) * 4};
  //!   const std::vector<std::span<float>> params{w, b};
  //!   comm.all_reduce_tensors(std::span<const std::span<float>>(params),
  //!                           strata::ReduceOp::average);
  //!   assert(w[2] == 0.5f && b[0] == 2.0f);
  //! });
  //! \endcode
  template <comm_value T>
  void all_reduce_tensors(std::span<const std::span<T>> tensors, ReduceOp op) {
    detail::local::TensorList list = describe_tensors(tensors);
    Call c = detail::make_call<T>(Collective::all_reduce, list.total(), list.total(), op);
    detail::local::Post p;
    p.call = &c;
    p.tensors = &list;
    collective(p, [&](detail::local::Group& g) { work_tensors<T>(op, g); });
  }

 private:
  friend class LocalWorld;
  friend class detail::CollectiveFacade<LocalComm>;
  using Call = detail::Call;
  using Collective = detail::Collective;

  LocalComm(std::shared_ptr<detail::local::Group> group, int rank)
      : group_(std::move(group)), rank_(rank) {}

  // --- for the facade ---------------------------------------------------------------------------
  [[nodiscard]] int error_rank() const noexcept { return world_rank(); }
  void ensure_usable(std::string_view) const noexcept {}
  // The members' calls are compared inside the rendezvous, where every member sees every post.
  void agree(const Call&) const noexcept {}

  template <class T>
  void transport(const Call& c, const T* in, T* out) {
    detail::local::Post p;
    p.call = &c;
    p.in = in;
    p.out = out;
    collective(p, [&](detail::local::Group& g) { work(c, out, g); });
  }

  void transport_barrier(const Call& c) {
    detail::local::Post p;
    p.call = &c;
    collective(p, [](detail::local::Group&) {});
  }

  LocalComm transport_split(const Call& c, int color, int key) {
    detail::local::Post p;
    p.call = &c;
    p.color = color;
    p.key = key;
    detail::local::Group& g = *group_;
    collective(p, [&](detail::local::Group&) {
      if (rank_ != 0) return;
      // Built aside and published whole, so that a failure part-way (out of memory) leaves every
      // slot empty and every member fails alike.
      std::vector<std::pair<std::shared_ptr<detail::local::Group>, int>> result(
          g.split_result.size());
      // (color) -> [(key, rank)], then one group per color.
      std::map<int, std::vector<std::pair<int, int>>> by_color;
      for (int m = 0; m < g.size(); ++m) {
        const auto& post = g.posts[static_cast<std::size_t>(m)];
        by_color[post.color].emplace_back(post.key, m);
      }
      for (auto& [col, list] : by_color) {
        std::sort(list.begin(), list.end());
        std::vector<int> world_ranks;
        for (const auto& [k, m] : list) {
          world_ranks.push_back(g.members[static_cast<std::size_t>(m)]);
        }
        auto sub = std::make_shared<detail::local::Group>(g.world, std::move(world_ranks));
        for (std::size_t i = 0; i < list.size(); ++i) {
          result[static_cast<std::size_t>(list[i].second)] = {sub, static_cast<int>(i)};
        }
      }
      g.split_result.swap(result);
    });
    // Each member takes its result and clears the slot, so that a build that failed on member 0
    // shows as an empty slot rather than a stale group.
    auto [sub, sub_rank] = std::exchange(g.split_result[static_cast<std::size_t>(rank_)], {});
    if (!sub) throw error("split", world_rank(), "member 0 could not build the sub-communicators");
    return LocalComm(std::move(sub), sub_rank);
  }

  // This member's tensors as its peers read them: where each starts in the concatenation, and
  // whether two of them share memory (then in-place writes of one would be reads of another, and
  // no result would be well defined).
  template <class T>
  static detail::local::TensorList describe_tensors(std::span<const std::span<T>> tensors) {
    detail::local::TensorList list;
    list.spans = tensors.data();
    list.starts.resize(tensors.size() + 1);
    std::size_t at = 0;
    for (std::size_t t = 0; t < tensors.size(); ++t) {
      list.starts[t] = at;
      at += tensors[t].size();  // spans of disjoint memory: no wrap, checked below
    }
    list.starts.back() = at;
    list.overlap = detail::overlapping_tensors(tensors);
    return list;
  }

  // --- the data movement, between the two barriers ---------------------------------------------
  // Member r reduces slice r of the concatenated tensors, split at the same places as a flat
  // all_reduce of the total, straight from every member's tensors into every member's tensors.
  template <class T>
  void work_tensors(ReduceOp op, detail::local::Group& g) {
    const std::size_t n = g.posts.size();
    const auto r = static_cast<std::size_t>(rank_);
    const std::size_t count = g.posts[r].tensors->total();
    const std::size_t begin = count * r / n;
    const std::size_t end = count * (r + 1) / n;
    if (begin == end) return;
    detail::local::TensorPieces<T> pieces(g.posts, begin);
    detail::local::reduce_dispatch<T>(
        n, begin, end, op, pieces, [&](std::size_t, const T* acc, std::size_t) {
          for (std::size_t m = 0; m < n; ++m) {
            for (std::size_t p = 0; p < pieces.count(); ++p) {
              detail::local::copy_chunk(pieces.target(m, p), acc + pieces.at(p), pieces.length(p));
            }
          }
        });
  }

  template <class T>
  void work(const Call& c, T* out, detail::local::Group& g) {
    using detail::local::copy_bytes;
    const std::size_t n = g.posts.size();
    const auto r = static_cast<std::size_t>(rank_);
    const auto input = [&](std::size_t m) { return static_cast<const T*>(g.posts[m].in); };
    switch (c.op) {
      case Collective::all_reduce: {
        // Reduce-scatter and all-gather in one pass: this member reduces slice r and writes it
        // into every member's output.
        const std::size_t count = c.in;
        detail::local::FlatPieces<T> pieces(g.posts, 0);
        detail::local::reduce_dispatch<T>(n, count * r / n, count * (r + 1) / n, c.reduce, pieces,
                                          [&](std::size_t lo, const T* acc, std::size_t len) {
                                            for (std::size_t m = 0; m < n; ++m) {
                                              detail::local::copy_chunk(
                                                  static_cast<T*>(g.posts[m].out) + lo, acc, len);
                                            }
                                          });
        break;
      }
      case Collective::broadcast:
        if (rank_ != c.root) {
          copy_bytes(out, input(static_cast<std::size_t>(c.root)), c.out * sizeof(T));
        }
        break;
      case Collective::all_gather:
        for (std::size_t m = 0; m < n; ++m) copy_bytes(out + m * c.in, input(m), c.in * sizeof(T));
        break;
      case Collective::reduce_scatter: {
        detail::local::FlatPieces<T> pieces(g.posts, c.out * r);
        detail::local::reduce_dispatch<T>(n, 0, c.out, c.reduce, pieces,
                                          [&](std::size_t lo, const T* acc, std::size_t len) {
                                            detail::local::copy_chunk(out + lo, acc, len);
                                          });
        break;
      }
      case Collective::all_to_all: {
        const std::size_t b = c.in / n;
        for (std::size_t j = 0; j < n; ++j)
          copy_bytes(out + j * b, input(j) + r * b, b * sizeof(T));
        break;
      }
      case Collective::all_to_all_v:
        for (std::size_t j = 0; j < n; ++j) {
          const Call& peer = *g.posts[j].call;
          copy_bytes(out + c.layout.recv_offsets[j], input(j) + peer.layout.send_offsets[r],
                     c.recv_counts[j] * sizeof(T));
        }
        break;
      case Collective::barrier:
      case Collective::split: break;
    }
  }

  // Posts this member's call. Only this member writes its slot, and only between the previous
  // collective's last barrier and this one's first, when nobody reads it.
  void post(const detail::local::Post& p) { group_->posts[static_cast<std::size_t>(rank_)] = p; }

  // The members' calls, checked by the rule every backend applies, on the posts every member
  // sees: all fail alike (and write nothing) or none does.
  [[nodiscard]] std::optional<std::string> disagreement() const {
    const auto& posts = group_->posts;
    const int n = static_cast<int>(posts.size());
    const auto name = [&](int m) {
      return detail::rank_name(group_->members[static_cast<std::size_t>(m)]);
    };
    const auto call = [&](int m) -> const Call& {
      return *posts[static_cast<std::size_t>(m)].call;
    };
    const bool tensors = std::any_of(posts.begin(), posts.end(), [](const detail::local::Post& p) {
      return p.tensors != nullptr;
    });
    if (tensors) return tensor_disagreement();
    if (auto why = detail::first_disagreement(n, call, name)) return why;
    if (call(0).op != Collective::all_to_all_v) return std::nullopt;
    std::vector<detail::CountMismatch> found(posts.size());
    std::vector<std::size_t> announced(posts.size());
    for (int receiver = 0; receiver < n; ++receiver) {
      for (int j = 0; j < n; ++j) {
        announced[static_cast<std::size_t>(j)] =
            call(j).send_counts[static_cast<std::size_t>(receiver)];
      }
      found[static_cast<std::size_t>(receiver)] =
          detail::find_count_mismatch(receiver, announced, call(receiver).recv_counts);
    }
    return detail::first_count_disagreement(std::span<const detail::CountMismatch>(found), name);
  }

  // The rule of `detail::first_disagreement` when a member called all_reduce_tensors: first a
  // member whose own arguments are unusable (the lowest), then the first member whose call
  // differs from member 0's in operation, element type, reduction, tensor count, or the size of
  // a tensor (the first that differs). The sizes are compared whole: in shared memory that costs
  // a read of each list, and no two different lists can pass.
  [[nodiscard]] std::optional<std::string> tensor_disagreement() const {
    using detail::local::operation_name;
    const auto& posts = group_->posts;
    const std::size_t n = posts.size();
    const auto name = [&](std::size_t m) { return detail::rank_name(group_->members[m]); };
    for (std::size_t m = 0; m < n; ++m) {
      const detail::local::Post& p = posts[m];
      if (p.tensors != nullptr && p.tensors->overlap) {
        return detail::tensors_overlap(name(m), *p.tensors->overlap);
      }
      if (p.call->problem) {
        return name(m) + ": " + detail::describe(p.call->problem, static_cast<int>(n));
      }
    }
    const auto signature = [&](const detail::local::Post& p) {
      return detail::TensorListSignature{operation_name(p), p.call->type, p.call->reduce,
                                         p.tensors != nullptr ? p.tensors->count() : 0};
    };
    const detail::local::Post& first = posts[0];
    for (std::size_t m = 1; m < n; ++m) {
      const detail::local::Post& p = posts[m];
      if (auto why =
              detail::tensor_list_mismatch(name(0), signature(first), name(m), signature(p))) {
        return why;
      }
      if (first.tensors == nullptr) continue;  // both called the same other collective
      const detail::local::TensorList& a = *first.tensors;
      const detail::local::TensorList& b = *p.tensors;
      for (std::size_t t = 0; t < a.count(); ++t) {
        if (a.size(t) != b.size(t)) {
          return detail::tensor_size_mismatch(name(0), name(m), t, a.size(t), b.size(t));
        }
      }
    }
    return std::nullopt;
  }

  // Two barriers around the work. The second is a completion barrier that every member reaches,
  // also after a failed check, so that no member posts its next collective, or frees its
  // buffers, while a peer still reads this one's posts. A failure of the world during the work
  // is reported by the next collective: this one has completed.
  template <class Work>
  void collective(const detail::local::Post& p, Work&& work) {
    post(p);
    detail::local::Group& g = *group_;
    const std::string_view op = detail::local::operation_name(p);
    detail::local::rendezvous(g, rank_, op);
    std::optional<std::string> problem;
    std::exception_ptr failed;
    try {
      problem = disagreement();
      if (!problem) work(g);
    } catch (...) {
      failed = std::current_exception();  // out of memory in split's bookkeeping, say
    }
    detail::local::complete(g, rank_);
    if (failed) std::rethrow_exception(failed);
    if (problem) throw usage_error(op, world_rank(), *problem);
  }

  std::shared_ptr<detail::local::Group> group_;
  int rank_;
};

//! The local backend's collectives either complete or leave every buffer as it was: writes begin
//! only after every member has arrived and every check has passed, and nothing can fail after
//! that.
template <>
struct communicator_traits<LocalComm> {
  static constexpr bool all_or_nothing = true;
  static constexpr MemorySpace memory_space = MemorySpace::host;
  using stream_type = void;
};

//! N ranks as N threads of this process: the embedded default backend, for demos, tests and
//! users' own unit tests of distributed code.
//!
//! \code
//! strata::LocalWorld world(3);
//! std::vector<int> seen(3);
//! world.run([&](strata::LocalComm& comm) { seen[comm.rank()] = comm.size(); });
//! assert((seen == std::vector<int>{3, 3, 3}));
//! \endcode
class LocalWorld {
 public:
  explicit LocalWorld(int size, LocalOptions options = {}) : size_(size), options_(options) {
    if (size <= 0)
      throw std::invalid_argument("LocalWorld: size must be positive, got " + std::to_string(size));
  }

  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] const LocalOptions& options() const noexcept { return options_; }

  //! Calls `f(comm)` once per rank, each on its own thread, and waits for all of them. When any
  //! rank throws, its peers' pending and later collectives fail too, and `run` rethrows the
  //! exception that caused it all (not the peers' consequences).
  template <class F>
  requires std::invocable<F&, LocalComm&>
  void run(F&& f) {
    auto world = std::make_shared<detail::local::World>(size_, options_);
    std::vector<int> all(static_cast<std::size_t>(size_));
    for (int r = 0; r < size_; ++r) all[static_cast<std::size_t>(r)] = r;
    auto group = std::make_shared<detail::local::Group>(world, std::move(all));

    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(size_));
    auto body = [&](int r) {
      LocalComm comm(group, r);
      try {
        std::invoke(f, comm);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
        std::lock_guard lock(world->mutex);
        world->fail_locked(r, e.what());
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
        std::lock_guard lock(world->mutex);
        world->fail_locked(r, "a non-standard exception");
      }
      std::lock_guard lock(world->mutex);
      world->left[static_cast<std::size_t>(r)] = true;
      world->cv.notify_all();
    };
    std::vector<std::thread> threads;
    threads.reserve(static_cast<std::size_t>(size_));
    for (int r = 1; r < size_; ++r) threads.emplace_back(body, r);
    body(0);  // rank 0 on the caller's thread: one thread fewer, and a debugger shows it first
    for (auto& t : threads) t.join();

    if (world->failed) {
      const auto root = static_cast<std::size_t>(world->failed_rank);
      if (root < errors.size() && errors[root]) std::rethrow_exception(errors[root]);
      for (const auto& e : errors) {
        if (e) std::rethrow_exception(e);
      }
    }
  }

 private:
  int size_;
  LocalOptions options_;
};

static_assert(communicator<LocalComm>);

}  // namespace strata
