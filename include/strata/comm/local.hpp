#pragma once
//! \file
//! The local backend: N ranks as N threads of one process, sharing memory.
//!
//! Every collective is a rendezvous of the group's members in two barriers. At the first, each
//! member posts its buffers and every member checks that all posts agree (same operation, type,
//! counts, root); at the second, all have finished moving data, so buffers may be reused. Between
//! the two, members work in parallel directly on each other's buffers:
//!
//! | operation | work of member r (n members, c elements) | bytes read / written by r |
//! | --- | --- | --- |
//! | `all_reduce` | reduces slice r (c/n elements) over all n inputs in rank order 0..n-1, writes the result into slice r of all n outputs (reduce-scatter and all-gather in one pass) | c·s / c·s |
//! | `reduce_scatter` | reduces its block of c elements over all n inputs into its output | n·c·s / c·s |
//! | `broadcast` | copies the root's buffer into its own | c·s / c·s |
//! | `all_gather` | copies every member's input into its own output | n·c·s / n·c·s |
//! | `all_to_all` | copies block r of every member's input into its own output | total received, both ways |
//! | `barrier`, `split` | rendezvous only (split: member 0 builds all subgroups) | 0 |
//!
//! (s: bytes per element.) Sums run in a fixed rank order and each slice is reduced by exactly one
//! member, so results are identical from run to run and bitwise identical on every member.
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
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "strata/comm/communicator.hpp"
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
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
};

namespace detail::local {

enum class Kind : std::uint8_t {
  barrier,
  all_reduce,
  broadcast,
  all_gather,
  reduce_scatter,
  all_to_all,
  all_to_all_v,
  split,
};

constexpr std::string_view kind_name(Kind k) noexcept {
  switch (k) {
    case Kind::barrier: return "barrier";
    case Kind::all_reduce: return "all_reduce";
    case Kind::broadcast: return "broadcast";
    case Kind::all_gather: return "all_gather";
    case Kind::reduce_scatter: return "reduce_scatter";
    case Kind::all_to_all: return "all_to_all";
    case Kind::all_to_all_v: return "all_to_all (uneven)";
    case Kind::split: return "split";
  }
  return "collective";
}

// What one member passed to the current collective.
struct Post {
  Kind kind = Kind::barrier;
  std::string_view type;
  ReduceOp op = ReduceOp::sum;
  const void* in = nullptr;
  void* out = nullptr;
  std::size_t in_count = 0;
  std::size_t out_count = 0;
  const std::size_t* send_counts = nullptr;
  const std::size_t* recv_counts = nullptr;
  int root = 0;
  int color = 0;
  int key = 0;
  std::string invalid;  // why this member's arguments are unusable; empty when they are fine
};

struct Group;

// State shared by every rank and every group of one LocalWorld::run.
struct World {
  explicit World(int size, LocalOptions opts)
      : options(opts), left(static_cast<std::size_t>(size), false) {}

  LocalOptions options;
  std::mutex mutex;
  std::condition_variable cv;
  bool failed = false;
  int failed_rank = -1;
  std::string failure;
  std::vector<bool> left;  // per world rank: its function has returned or thrown

  // Records the first failure; later ones are consequences of it. Caller holds the mutex.
  void fail_locked(int rank, std::string why) {
    if (!failed) {
      failed = true;
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
inline void rendezvous(Group& g, int me, Kind kind) {
  World& w = *g.world;
  const int my_world_rank = g.members[static_cast<std::size_t>(me)];
  const std::string_view op = kind_name(kind);
  std::unique_lock lock(w.mutex);
  auto throw_failed = [&] {
    if (w.failed_rank == my_world_rank) throw error(op, my_world_rank, w.failure);
    throw error(op, my_world_rank,
                "rank " + std::to_string(w.failed_rank) + " failed: " + w.failure);
  };
  if (w.failed) throw_failed();
  if (arrive(g, me)) return;
  const std::uint64_t generation = g.generation;
  const auto deadline = std::chrono::steady_clock::now() + w.options.timeout;
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
    if (w.cv.wait_until(lock, deadline) == std::cv_status::timeout &&
        g.generation == generation && !w.failed) {
      w.fail_locked(my_world_rank, "timed out after " + std::to_string(w.options.timeout.count()) +
                                       " ms in " + std::string(op) + " waiting for rank(s) " +
                                       rank_list(not_here([](int) { return true; })));
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

// Reduces elements [begin, end) of every member's input, in member order, into `dests`. Works in
// cache-sized chunks so that the partial result stays in L1.
template <class T, class Combine, class Dests>
void reduce_range(const std::vector<Post>& posts, std::size_t in_offset, std::size_t begin,
                  std::size_t end, ReduceOp op, Combine combine, Dests&& dests) {
  constexpr std::size_t chunk = 2048;
  T acc[chunk];
  const std::size_t n = posts.size();
  for (std::size_t lo = begin; lo < end; lo += chunk) {
    const std::size_t len = std::min(chunk, end - lo);
    copy_bytes(acc, static_cast<const T*>(posts[0].in) + in_offset + lo, len * sizeof(T));
    for (std::size_t m = 1; m < n; ++m) {
      const T* src = static_cast<const T*>(posts[m].in) + in_offset + lo;
      blocked(len, [&](std::size_t i) { acc[i] = combine(acc[i], src[i]); });
    }
    if (op == ReduceOp::average) {
      if constexpr (std::is_floating_point_v<T>) {
        const T inv = T(1) / static_cast<T>(n);
        blocked(len, [&](std::size_t i) { acc[i] *= inv; });
      } else {
        blocked(len, [&](std::size_t i) { acc[i] /= static_cast<T>(n); });
      }
    }
    dests(lo, acc, len);
  }
}

template <class T, class Dests>
void reduce_dispatch(const std::vector<Post>& posts, std::size_t in_offset, std::size_t begin,
                     std::size_t end, ReduceOp op, Dests&& dests) {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::average:
      reduce_range<T>(posts, in_offset, begin, end, op, Sum<T>{}, dests);
      break;
    case ReduceOp::min:
      reduce_range<T>(posts, in_offset, begin, end, op, Min<T>{}, dests);
      break;
    case ReduceOp::max:
      reduce_range<T>(posts, in_offset, begin, end, op, Max<T>{}, dests);
      break;
  }
}

}  // namespace detail::local

class LocalWorld;

//! One rank's handle on a group of the local backend. Models `strata::communicator`. Cheap to
//! copy; copies refer to the same group. Every collective throws `strata::error` (naming the
//! operation, this rank and the cause) when the members disagree, when a member fails or leaves,
//! or when the world's timeout passes, and then leaves every buffer untouched.
//!
//! \code
//! strata::LocalWorld world(4);
//! world.run([](strata::LocalComm& comm) {
//!   std::vector<double> x{double(comm.rank()), 1.0};
//!   comm.all_reduce(std::span<double>(x), strata::ReduceOp::sum);
//!   assert(x[0] == 0.0 + 1 + 2 + 3 && x[1] == 4.0);
//! });
//! \endcode
class LocalComm {
 public:
  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return group_->size(); }
  //! Writes begin only after every member has arrived and every check has passed, and nothing
  //! can fail after that: a collective either completes or leaves every buffer as it was.
  static constexpr bool all_or_nothing = true;

  //! This member's rank in the whole world.
  [[nodiscard]] int world_rank() const noexcept {
    return group_->members[static_cast<std::size_t>(rank_)];
  }

  //! In place: every member ends with the reduction of all members' buffers.
  template <comm_value T>
  void all_reduce(std::span<T> buf, ReduceOp op) {
    all_reduce(std::span<const T>(buf.data(), buf.size()), buf, op);
  }

  //! Out of place: `out` (same size as `in`) receives the reduction; `in` may alias `out`.
  template <comm_value T>
  void all_reduce(std::span<const T> in, std::span<T> out, ReduceOp op) {
    using detail::local::Kind;
    if (in.size() != out.size()) {
      reject("input has " + std::to_string(in.size()) +
                                        " elements but output has " + std::to_string(out.size()));
    }
    run<T>(Kind::all_reduce, in, out, op, [&](auto& g) {
      const std::size_t n = g.posts.size();
      const std::size_t c = in.size();
      const std::size_t r = static_cast<std::size_t>(rank_);
      detail::local::reduce_dispatch<T>(
          g.posts, 0, c * r / n, c * (r + 1) / n, op,
          [&](std::size_t lo, const T* acc, std::size_t len) {
            for (std::size_t m = 0; m < n; ++m) {
              detail::local::copy_bytes(static_cast<T*>(g.posts[m].out) + lo, acc, len * sizeof(T));
            }
          });
    });
  }

  //! Every member ends with the root's buffer.
  template <comm_value T>
  void broadcast(std::span<T> buf, int root) {
    using detail::local::Kind;
    if (root < 0 || root >= size()) {
      reject("root " + std::to_string(root) + " is not a rank of a group of " +
                                       std::to_string(size()));
    }
    run<T>(Kind::broadcast, std::span<const T>(buf.data(), buf.size()), buf, ReduceOp::sum,
           [&](auto& g) {
             if (rank_ != root) {
               const auto& src = g.posts[static_cast<std::size_t>(root)];
               detail::local::copy_bytes(buf.data(), src.in, buf.size() * sizeof(T));
             }
           },
           root);
  }

  //! `out` receives every member's `in`, in rank order; `out.size() == in.size() * size()`.
  template <comm_value T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    using detail::local::Kind;
    if (out.size() != in.size() * static_cast<std::size_t>(size())) {
      reject("output has " + std::to_string(out.size()) +
                                        " elements; it needs " + std::to_string(in.size()) +
                                        " x " + std::to_string(size()));
    }
    run<T>(Kind::all_gather, in, out, ReduceOp::sum, [&](auto& g) {
      const std::size_t c = in.size();
      for (std::size_t m = 0; m < g.posts.size(); ++m) {
        detail::local::copy_bytes(out.data() + m * c, g.posts[m].in, c * sizeof(T));
      }
    });
  }

  //! Member r receives block r (of `out.size()` elements) of the reduction of all inputs;
  //! `in.size() == out.size() * size()`.
  template <comm_value T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op) {
    using detail::local::Kind;
    if (in.size() != out.size() * static_cast<std::size_t>(size())) {
      reject("input has " + std::to_string(in.size()) +
                                            " elements; it needs " + std::to_string(out.size()) +
                                            " x " + std::to_string(size()));
    }
    run<T>(Kind::reduce_scatter, in, out, op, [&](auto& g) {
      const std::size_t c = out.size();
      detail::local::reduce_dispatch<T>(
          g.posts, c * static_cast<std::size_t>(rank_), 0, c, op,
          [&](std::size_t lo, const T* acc, std::size_t len) {
            detail::local::copy_bytes(out.data() + lo, acc, len * sizeof(T));
          });
    });
  }

  //! Equal blocks: member r sends block j of `in` to member j and receives member j's block r
  //! into block j of `out`. Both sizes must be equal and a multiple of `size()`.
  template <comm_value T>
  void all_to_all(std::span<const T> in, std::span<T> out) {
    using detail::local::Kind;
    const auto n = static_cast<std::size_t>(size());
    if (in.size() != out.size() || in.size() % n != 0) {
      reject("input has " + std::to_string(in.size()) +
                                        " and output " + std::to_string(out.size()) +
                                        " elements; both must be the same multiple of " +
                                        std::to_string(n));
    }
    run<T>(Kind::all_to_all, in, out, ReduceOp::sum, [&](auto& g) {
      const std::size_t b = in.size() / n;
      const auto r = static_cast<std::size_t>(rank_);
      for (std::size_t j = 0; j < n; ++j) {
        detail::local::copy_bytes(out.data() + j * b, static_cast<const T*>(g.posts[j].in) + r * b,
                    b * sizeof(T));
      }
    });
  }

  //! Uneven blocks: `send_counts[j]` elements of `in` (consecutive, in peer order) go to member j;
  //! `recv_counts[j]` elements arrive from member j, in peer order. Every member's
  //! `recv_counts[j]` must equal member j's `send_counts[r]`; otherwise every member throws,
  //! naming the first disagreeing pair, and nothing is written.
  template <comm_value T>
  void all_to_all(std::span<const T> in, std::span<const std::size_t> send_counts,
                  std::span<T> out, std::span<const std::size_t> recv_counts) {
    using detail::local::Kind;
    const auto n = static_cast<std::size_t>(size());
    if (send_counts.size() != n || recv_counts.size() != n) {
      reject("needs one send and one receive count per member (" +
                                          std::to_string(n) + "), got " +
                                          std::to_string(send_counts.size()) + " and " +
                                          std::to_string(recv_counts.size()));
    }
    std::size_t sent = 0;
    std::size_t received = 0;
    for (std::size_t j = 0; j < n && invalid_.empty(); ++j) {
      sent += send_counts[j];
      received += recv_counts[j];
    }
    if (invalid_.empty() && (sent != in.size() || received != out.size())) {
      reject("counts add up to " + std::to_string(sent) + " sent and " +
                      std::to_string(received) + " received, but the buffers hold " +
                      std::to_string(in.size()) + " and " + std::to_string(out.size()));
    }
    run<T>(
        Kind::all_to_all_v, in, out, ReduceOp::sum,
        [&](auto& g) {
          const auto r = static_cast<std::size_t>(rank_);
          std::size_t at = 0;
          for (std::size_t j = 0; j < n; ++j) {
            const auto& peer = g.posts[j];
            std::size_t from = 0;
            for (std::size_t k = 0; k < r; ++k) from += peer.send_counts[k];
            detail::local::copy_bytes(out.data() + at, static_cast<const T*>(peer.in) + from,
                        recv_counts[j] * sizeof(T));
            at += recv_counts[j];
          }
        },
        0, send_counts.data(), recv_counts.data());
  }

  //! Returns when every member has called it.
  void barrier() {
    detail::local::Post p;
    p.kind = detail::local::Kind::barrier;
    collective(p, [](auto&) {});
  }

  //! Collective: members that pass the same `color` (>= 0) form a new communicator, ranked by
  //! `key`, then by their rank here.
  LocalComm split(int color, int key) {
    using detail::local::Kind;
    if (color < 0) reject("color " + std::to_string(color) + " is negative");
    detail::local::Post p;
    p.kind = Kind::split;
    p.color = color;
    p.key = key;
    detail::local::Group& g = *group_;
    collective(p, [&](detail::local::Group&) {
      if (rank_ != 0) return;
      // (color) -> [(key, rank)], then one group per color.
      std::map<int, std::vector<std::pair<int, int>>> by_color;
      for (int m = 0; m < g.size(); ++m) {
        const auto& post = g.posts[static_cast<std::size_t>(m)];
        by_color[post.color].emplace_back(post.key, m);
      }
      for (auto& [c, list] : by_color) {
        std::sort(list.begin(), list.end());
        std::vector<int> world_ranks;
        for (const auto& [k, m] : list) world_ranks.push_back(g.members[static_cast<std::size_t>(m)]);
        auto sub = std::make_shared<detail::local::Group>(g.world, std::move(world_ranks));
        for (std::size_t i = 0; i < list.size(); ++i) {
          g.split_result[static_cast<std::size_t>(list[i].second)] = {sub, static_cast<int>(i)};
        }
      }
    });
    // Each member takes its result and clears the slot, so that a build that failed on member 0
    // shows as an empty slot rather than a stale group.
    auto [sub, sub_rank] = std::exchange(g.split_result[static_cast<std::size_t>(rank_)], {});
    if (!sub) throw error("split", world_rank(), "member 0 could not build the sub-communicators");
    return LocalComm(std::move(sub), sub_rank);
  }

 private:
  friend class LocalWorld;
  LocalComm(std::shared_ptr<detail::local::Group> group, int rank)
      : group_(std::move(group)), rank_(rank) {}

  // Records that this member's arguments are unusable. The collective still takes place, so
  // that every member learns it at once and fails alike, instead of waiting for a member that
  // threw on its own.
  void reject(std::string why) {
    if (invalid_.empty()) invalid_ = std::move(why);
  }

  // Posts this member's arguments. Only this member writes its slot, and only between the
  // previous collective's last barrier and this one's first, when nobody reads it.
  void exchange(const detail::local::Post& p) { group_->posts[static_cast<std::size_t>(rank_)] = p; }

  // The members must agree on what they are doing. Every member checks the same posts against
  // member 0's and builds the same message, so all of them fail alike (and write nothing) or
  // none does. Returns the disagreement, empty when there is none.
  [[nodiscard]] std::string disagreement() const {
    const auto& posts = group_->posts;
    const auto& first = posts[0];
    const auto name = [&](std::size_t m) { return "rank " + std::to_string(group_->members[m]); };
    for (std::size_t m = 0; m < posts.size(); ++m) {
      if (!posts[m].invalid.empty()) return name(m) + ": " + posts[m].invalid;
    }
    for (std::size_t m = 1; m < posts.size(); ++m) {
      const auto& p = posts[m];
      const std::string pair = name(0) + " and " + name(m) + " disagree: ";
      if (p.kind != first.kind) {
        return pair + name(0) + " called " + std::string(detail::local::kind_name(first.kind)) +
               ", " + name(m) + " called " + std::string(detail::local::kind_name(p.kind));
      }
      if (p.type != first.type) {
        return pair + name(0) + " passed " + std::string(first.type) + " elements, " + name(m) +
               " passed " + std::string(p.type);
      }
      if (p.op != first.op) {
        return pair + name(0) + " reduces with " + std::string(to_string(first.op)) + ", " +
               name(m) + " with " + std::string(to_string(p.op));
      }
      if (p.root != first.root) {
        return pair + name(0) + " names root " + std::to_string(first.root) + ", " + name(m) +
               " names root " + std::to_string(p.root);
      }
      if (p.kind != detail::local::Kind::all_to_all_v &&
          (p.in_count != first.in_count || p.out_count != first.out_count)) {
        return pair + name(0) + " passed " + std::to_string(first.in_count) + " elements, " +
               name(m) + " passed " + std::to_string(p.in_count);
      }
    }
    if (first.kind == detail::local::Kind::all_to_all_v) {
      for (std::size_t i = 0; i < posts.size(); ++i) {
        for (std::size_t j = 0; j < posts.size(); ++j) {
          if (posts[i].recv_counts[j] != posts[j].send_counts[i]) {
            return "counts disagree: " + name(j) + " sends " +
                   std::to_string(posts[j].send_counts[i]) + " elements to " + name(i) +
                   ", which expects " + std::to_string(posts[i].recv_counts[j]);
          }
        }
      }
    }
    return {};
  }

  // Two barriers around the work. The second is a completion barrier that every member reaches,
  // also after a failed check, so that no member posts its next collective, or frees its
  // buffers, while a peer still reads this one's posts. A failure of the world during the work
  // is reported by the next collective: this one has completed.
  template <class Work>
  void collective(detail::local::Post p, Work&& work) {
    p.invalid = std::exchange(invalid_, {});
    exchange(p);
    detail::local::Group& g = *group_;
    detail::local::rendezvous(g, rank_, p.kind);
    std::string problem;
    std::exception_ptr failed;
    try {
      problem = disagreement();
      if (problem.empty()) work(g);
    } catch (...) {
      failed = std::current_exception();  // out of memory in split's bookkeeping, say
    }
    detail::local::complete(g, rank_);
    if (failed) std::rethrow_exception(failed);
    if (!problem.empty()) throw error(detail::local::kind_name(p.kind), world_rank(), problem);
  }

  template <comm_value T, class Work>
  void run(detail::local::Kind kind, std::span<const T> in, std::span<T> out, ReduceOp op,
           Work&& work, int root = 0, const std::size_t* send_counts = nullptr,
           const std::size_t* recv_counts = nullptr) {
    detail::local::Post p;
    p.kind = kind;
    p.type = type_name<T>();
    p.op = op;
    p.in = in.data();
    p.out = out.data();
    p.in_count = in.size();
    p.out_count = out.size();
    p.root = root;
    p.send_counts = send_counts;
    p.recv_counts = recv_counts;
    collective(p, std::forward<Work>(work));
  }

  std::shared_ptr<detail::local::Group> group_;
  int rank_;
  std::string invalid_;  // set by reject(), posted and cleared by the next collective
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
    if (size <= 0) throw std::invalid_argument("LocalWorld: size must be positive, got " + std::to_string(size));
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
