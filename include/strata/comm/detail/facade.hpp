#pragma once
// The public collectives of every backend, written once (CUB's split of facade and dispatch is
// the model): each entry point describes the call, checks the caller's arguments, lets the
// backend make sure the members agree, and hands the call to the backend's transport.
//
// A backend `B : CollectiveFacade<B>` provides, for the facade only (it befriends it):
//   template <class T> static constexpr bool accepts;   the element types it moves
//   using stream_type;                                  void, or the type of the extra argument
//                                                       every collective then also takes
//   int error_rank() const;                             the rank its errors name
//   void ensure_usable(std::string_view op);            throws when it can no longer be used
//   void agree(const Call&);                            throws usage_error on every member when
//                                                       the calls are invalid or disagree
//   void transport(const Call&, const T* in, T* out, Stream...);   moves the data
//   void transport_barrier(const Call&);  B transport_split(const Call&, int color, int key);
// and, to use agree_by_exchange, gather_words(op, mine, all) (an all-gather of int64 words) and
// exchange_words(op, mine, theirs) (an all-to-all of one int64 per peer) under its deadline;
// and optionally `void check_limits(Call&)` for limits of its own (MPI's int counts).

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "strata/comm/communicator.hpp"
#include "strata/comm/detail/call.hpp"
#include "strata/error.hpp"

namespace strata::detail {

// The optional trailing stream argument: none, or one of the backend's stream type.
template <class B, class... S>
concept stream_arguments = sizeof...(S) == 0 ||
                           (sizeof...(S) == 1 && !std::is_void_v<typename B::stream_type> &&
                            (std::convertible_to<S, typename B::stream_type> && ...));

// Read through a variable template: nvcc evaluates a member of the backend named directly in a
// requires-clause while the backend is still incomplete.
template <class B, class T>
inline constexpr bool facade_accepts = B::template accepts<T>;

template <class Derived>
class CollectiveFacade {
 public:
  //! In place: every member ends with the reduction of all members' buffers.
  template <class T, class... S>
  requires(facade_accepts<Derived, T>&& stream_arguments<Derived, S...>) void all_reduce(
      std::span<T> buf, ReduceOp op, S... s) {
    Call c = make_call<T>(Collective::all_reduce, buf.size(), buf.size(), op);
    dispatch(c, static_cast<const T*>(buf.data()), buf.data(), s...);
  }

  //! Out of place: `out` (same size as `in`) receives the reduction; `in` may alias `out`.
  template <class T, class... S>
  requires(facade_accepts<Derived, T>&& stream_arguments<Derived, S...>) void all_reduce(
      std::span<const T> in, std::span<T> out, ReduceOp op, S... s) {
    Call c = make_call<T>(Collective::all_reduce, in.size(), out.size(), op);
    c.problem = check_same_size(in.size(), out.size());
    dispatch(c, in.data(), out.data(), s...);
  }

  //! Every member ends with the root's buffer.
  template <class T, class... S>
  requires(facade_accepts<Derived, T>&& stream_arguments<Derived, S...>) void broadcast(
      std::span<T> buf, int root, S... s) {
    Call c = make_call<T>(Collective::broadcast, buf.size(), buf.size(), ReduceOp::sum, root);
    c.problem = check_root(root, self().size());
    dispatch(c, static_cast<const T*>(buf.data()), buf.data(), s...);
  }

  //! `out` receives every member's `in`, in rank order; `out.size() == in.size() * size()`.
  template <class T, class... S>
  requires(facade_accepts<Derived, T>&& stream_arguments<Derived, S...>) void all_gather(
      std::span<const T> in, std::span<T> out, S... s) {
    Call c = make_call<T>(Collective::all_gather, in.size(), out.size());
    c.problem = check_gather(in.size(), out.size(), group());
    dispatch(c, in.data(), out.data(), s...);
  }

  //! Member r receives block r (of `out.size()` elements) of the reduction of all inputs;
  //! `in.size() == out.size() * size()`.
  template <class T, class... S>
  requires(facade_accepts<Derived, T>&& stream_arguments<Derived, S...>) void reduce_scatter(
      std::span<const T> in, std::span<T> out, ReduceOp op, S... s) {
    Call c = make_call<T>(Collective::reduce_scatter, in.size(), out.size(), op);
    c.problem = check_scatter(in.size(), out.size(), group());
    dispatch(c, in.data(), out.data(), s...);
  }

  //! Equal blocks: member r sends block j of `in` to member j and receives member j's block r
  //! into block j of `out`. Both sizes must be equal and a multiple of `size()`.
  template <class T, class... S>
  requires(facade_accepts<Derived, T>&& stream_arguments<Derived, S...>) void all_to_all(
      std::span<const T> in, std::span<T> out, S... s) {
    Call c = make_call<T>(Collective::all_to_all, in.size(), out.size());
    c.problem = check_all_to_all(in.size(), out.size(), group());
    dispatch(c, in.data(), out.data(), s...);
  }

  //! Uneven blocks: `send_counts[j]` elements of `in` (consecutive, in peer order) go to member
  //! j; `recv_counts[j]` elements arrive from member j, in peer order. Every member's
  //! `recv_counts[j]` must equal member j's `send_counts[r]`.
  template <class T, class... S>
  requires(facade_accepts<Derived, T>&& stream_arguments<Derived, S...>) void all_to_all(
      std::span<const T> in, std::span<const std::size_t> send_counts, std::span<T> out,
      std::span<const std::size_t> recv_counts, S... s) {
    Call c = make_call<T>(Collective::all_to_all_v, in.size(), out.size());
    c.send_counts = send_counts;
    c.recv_counts = recv_counts;
    c.problem = check_uneven(send_counts, recv_counts, in.size(), out.size(), group(), &c.layout);
    dispatch(c, in.data(), out.data(), s...);
  }

  //! Returns when every member has called it.
  void barrier() {
    Call c;
    c.op = Collective::barrier;
    prepare(c);
    self().transport_barrier(c);
  }

  //! Collective: members that pass the same `color` (>= 0) form a new communicator, ranked by
  //! `key`, then by their rank here.
  Derived split(int color, int key) {
    Call c;
    c.op = Collective::split;
    c.problem = check_color(color);
    prepare(c);
    return self().transport_split(c, color, key);
  }

 protected:
  // The agreement of a backend without shared memory: exchanges the calls over its own
  // collectives on int64 words (`gather_words`, `exchange_words`) when `enabled`; otherwise it
  // can only report this member's own invalid arguments, on this member.
  void agree_by_exchange(const Call& c, bool enabled) {
    Derived& d = self();
    if (!enabled) {
      if (c.problem) fail(c, rank_name(d.rank()) + ": " + describe(c.problem, d.size()));
      return;
    }
    auto why = agree(
        c, d.rank(), d.size(),
        [&](std::span<const std::int64_t> mine, std::span<std::int64_t> all) {
          d.gather_words(collective_name(c.op), mine, all);
        },
        [&](std::span<const std::int64_t> mine, std::span<std::int64_t> theirs) {
          d.exchange_words(collective_name(c.op), mine, theirs);
        });
    if (why) fail(c, *why);
  }

  [[noreturn]] void fail(const Call& c, const std::string& why) {
    throw usage_error(collective_name(c.op), self().error_rank(), why);
  }

 private:
  Derived& self() noexcept { return static_cast<Derived&>(*this); }
  std::size_t group() noexcept { return static_cast<std::size_t>(self().size()); }

  void prepare(Call& c) {
    Derived& d = self();
    d.ensure_usable(collective_name(c.op));
    if constexpr (requires { d.check_limits(c); }) {
      if (!c.problem) d.check_limits(c);
    }
    d.agree(c);
  }

  template <class T, class... S>
  void dispatch(Call& c, const T* in, T* out, S... s) {
    prepare(c);
    self().transport(c, in, out, s...);
  }
};

}  // namespace strata::detail
