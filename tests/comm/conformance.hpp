// The collective conformance suite: written once against the communicator concept and run on
// every backend. Each rank derives every peer's input from (rank, index), so the expected result
// is a plain serial loop over ranks, computed locally, independent of the code under test. Each
// (backend, world size) case runs in a doctest SUBCASE of its own, named "local, world 7", so
// that a failure names both.
#pragma once

#include <doctest/doctest.h>

#include <strata/comm/communicator.hpp>
#include <strata/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace conformance {

using strata::ReduceOp;

// "local, world 7": the name of a backend's case in a world of n ranks.
inline std::string case_name(std::string_view backend, int n) {
  return std::string(backend) + ", world " + std::to_string(n);
}

// Runs `body(n)` for each world size, each in its own SUBCASE named by `case_name`.
template <class Body>
void for_each_world(std::string_view backend, std::span<const int> sizes, Body&& body) {
  for (const int n : sizes) {
    const std::string name = case_name(backend, n);
    SUBCASE(name.c_str()) { std::invoke(body, n); }
  }
}
template <class Body>
void for_each_world(std::string_view backend, std::initializer_list<int> sizes, Body&& body) {
  for_each_world(backend, std::span<const int>(sizes.begin(), sizes.size()),
                 std::forward<Body>(body));
}

// 1, 2, ..., 16: powers of two and not, primes and not.
inline std::vector<int> sizes_up_to(int max) {
  std::vector<int> sizes(static_cast<std::size_t>(max));
  std::iota(sizes.begin(), sizes.end(), 1);
  return sizes;
}

template <class T>
T input(int rank, std::size_t i) {
  if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(std::sin(0.37 * static_cast<double>(i + 1) * (rank + 1)) * 100.0);
  } else {
    return static_cast<T>((static_cast<std::int64_t>(i) * 7919 + rank * 104729) % 2001 - 1000);
  }
}

template <class T>
T reduce_serial(int n, std::size_t i, ReduceOp op) {
  T acc = input<T>(0, i);
  for (int r = 1; r < n; ++r) {
    const T v = input<T>(r, i);
    switch (op) {
      case ReduceOp::sum:
      case ReduceOp::average: acc = acc + v; break;
      case ReduceOp::min: acc = std::min(acc, v); break;
      case ReduceOp::max: acc = std::max(acc, v); break;
    }
  }
  if (op == ReduceOp::average) acc = static_cast<T>(acc / static_cast<T>(n));
  return acc;
}

// The sum of the magnitudes the reduction adds: the scale of its rounding error.
template <class T>
double magnitude(int n, std::size_t i) {
  double m = 0;
  for (int r = 0; r < n; ++r) m += std::abs(static_cast<double>(input<T>(r, i)));
  return m;
}

// Floating-point sums may be ordered differently by a backend (MPI, NCCL): allow the rounding of
// n additions relative to the magnitudes added (the result alone may cancel to near zero).
template <class T>
bool close(T got, T expected, double scale = 1.0) {
  if constexpr (std::is_floating_point_v<T>) {
    const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
    return std::abs(static_cast<double>(got) - static_cast<double>(expected)) <=
           tol * std::max({1.0, std::abs(static_cast<double>(expected)), scale});
  } else {
    return got == expected;
  }
}

template <class T, class C>
void all_reduce(C& comm) {
  const int n = comm.size();
  for (std::size_t count :
       {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{10007}}) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::average, ReduceOp::min, ReduceOp::max}) {
      std::vector<T> in(count);
      for (std::size_t i = 0; i < count; ++i) in[i] = input<T>(comm.rank(), i);
      std::vector<T> out(count, T(-1));
      comm.all_reduce(std::span<const T>(in), std::span<T>(out), op);
      comm.all_reduce(std::span<T>(in), op);  // in place
      std::size_t bad = 0;
      for (std::size_t i = 0; i < count; ++i) {
        const T e = reduce_serial<T>(n, i, op);
        const double scale = magnitude<T>(n, i) / (op == ReduceOp::average ? n : 1);
        if (!close(out[i], e, scale) || !close(in[i], e, scale)) ++bad;
      }
      CAPTURE(count);
      CAPTURE(strata::to_string(op));
      CAPTURE(strata::type_name<T>());
      CHECK(bad == 0);
    }
  }
}

template <class T, class C>
void broadcast(C& comm) {
  for (int root = 0; root < comm.size(); ++root) {
    std::vector<T> buf(513);
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = input<T>(comm.rank(), i);
    comm.broadcast(std::span<T>(buf), root);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < buf.size(); ++i) bad += buf[i] != input<T>(root, i);
    CAPTURE(root);
    CHECK(bad == 0);
  }
}

template <class T, class C>
void all_gather(C& comm) {
  const auto n = static_cast<std::size_t>(comm.size());
  for (std::size_t count : {std::size_t{0}, std::size_t{3}, std::size_t{1001}}) {
    std::vector<T> in(count);
    for (std::size_t i = 0; i < count; ++i) in[i] = input<T>(comm.rank(), i);
    std::vector<T> out(count * n);
    comm.all_gather(std::span<const T>(in), std::span<T>(out));
    std::size_t bad = 0;
    for (std::size_t r = 0; r < n; ++r) {
      for (std::size_t i = 0; i < count; ++i)
        bad += out[r * count + i] != input<T>(static_cast<int>(r), i);
    }
    CAPTURE(count);
    CHECK(bad == 0);
  }
}

template <class T, class C>
void reduce_scatter(C& comm) {
  const int n = comm.size();
  const auto r = static_cast<std::size_t>(comm.rank());
  for (std::size_t block : {std::size_t{0}, std::size_t{1}, std::size_t{257}}) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::average, ReduceOp::min, ReduceOp::max}) {
      std::vector<T> in(block * static_cast<std::size_t>(n));
      for (std::size_t i = 0; i < in.size(); ++i) in[i] = input<T>(comm.rank(), i);
      std::vector<T> out(block);
      comm.reduce_scatter(std::span<const T>(in), std::span<T>(out), op);
      std::size_t bad = 0;
      for (std::size_t i = 0; i < block; ++i) {
        const double scale = magnitude<T>(n, r * block + i) / (op == ReduceOp::average ? n : 1);
        bad += !close(out[i], reduce_serial<T>(n, r * block + i, op), scale);
      }
      CAPTURE(block);
      CAPTURE(strata::to_string(op));
      CHECK(bad == 0);
    }
  }
}

template <class T, class C>
void all_to_all(C& comm) {
  const auto n = static_cast<std::size_t>(comm.size());
  const auto r = static_cast<std::size_t>(comm.rank());
  const std::size_t block = 33;
  std::vector<T> in(block * n);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = input<T>(comm.rank(), i);
  std::vector<T> out(block * n);
  comm.all_to_all(std::span<const T>(in), std::span<T>(out));
  std::size_t bad = 0;
  for (std::size_t j = 0; j < n; ++j) {
    for (std::size_t i = 0; i < block; ++i)
      bad += out[j * block + i] != input<T>(static_cast<int>(j), r * block + i);
  }
  CHECK(bad == 0);
}

// Rank s sends (s + 2d) % 5 elements to rank d: uneven, with zeros.
inline std::size_t uneven(std::size_t s, std::size_t d) { return (s + 2 * d) % 5; }

template <class T, class C>
void all_to_all_uneven(C& comm) {
  const auto n = static_cast<std::size_t>(comm.size());
  const auto r = static_cast<std::size_t>(comm.rank());
  std::vector<std::size_t> send(n), recv(n);
  for (std::size_t j = 0; j < n; ++j) {
    send[j] = uneven(r, j);
    recv[j] = uneven(j, r);
  }
  std::vector<T> in(std::accumulate(send.begin(), send.end(), std::size_t{0}));
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = input<T>(comm.rank(), i);
  std::vector<T> out(std::accumulate(recv.begin(), recv.end(), std::size_t{0}), T(-7));
  comm.all_to_all(std::span<const T>(in), std::span<const std::size_t>(send), std::span<T>(out),
                  std::span<const std::size_t>(recv));
  std::size_t bad = 0;
  std::size_t at = 0;
  for (std::size_t j = 0; j < n; ++j) {
    std::size_t from = 0;  // where rank j's block for rank r starts in j's input
    for (std::size_t k = 0; k < r; ++k) from += uneven(j, k);
    for (std::size_t i = 0; i < recv[j]; ++i)
      bad += out[at + i] != input<T>(static_cast<int>(j), from + i);
    at += recv[j];
  }
  CHECK(bad == 0);
}

// Calls `call`, which must throw strata::usage_error for `operation` reported by `rank` with
// exactly `cause`: the same words on every member, since each member checks the same text.
template <class Call>
void expect_usage_error(int rank, std::string_view operation, const std::string& cause,
                        Call&& call) {
  std::string what = "no error";
  try {
    call();
  } catch (const strata::usage_error& e) {
    what = e.what();
    CHECK(e.operation() == operation);
    CHECK(e.cause() == cause);
    CHECK(e.rank() == rank);
  } catch (const std::exception& e) {
    what = std::string("not a usage_error: ") + e.what();
  }
  CAPTURE(what);
  CHECK(what != "no error");
  CHECK(what.find(cause) != std::string::npos);
}

template <class C>
void uneven_counts_that_disagree_fail_everywhere(C& comm) {
  const auto n = static_cast<std::size_t>(comm.size());
  if (n < 2) return;
  const auto r = static_cast<std::size_t>(comm.rank());
  std::vector<std::size_t> send(n, 1), recv(n, 1);
  if (r == 1) recv[0] = 2;  // rank 0 sends 1 element to rank 1, which expects 2
  std::vector<double> in(n, 1.0);
  std::vector<double> out(std::accumulate(recv.begin(), recv.end(), std::size_t{0}), -1.0);
  const std::vector<double> before = out;
  expect_usage_error(comm.rank(), "all_to_all (uneven)",
                     "counts disagree: rank 0 sends 1 elements to rank 1, which expects 2", [&] {
                       comm.all_to_all(std::span<const double>(in),
                                       std::span<const std::size_t>(send), std::span<double>(out),
                                       std::span<const std::size_t>(recv));
                     });
  CHECK(out == before);  // nothing written
}

// After a usage error the communicator works as before: an all-reduce of every rank's rank + 1.
template <class C>
void still_usable(C& comm) {
  const int n = comm.size();
  std::vector<std::int64_t> x(3, comm.rank() + 1);
  comm.all_reduce(std::span<std::int64_t>(x), ReduceOp::sum);
  for (const std::int64_t v : x) CHECK(v == std::int64_t{n} * (n + 1) / 2);
}

// One member's bad arguments fail every member alike: each throws strata::usage_error with the
// same cause, which names that member (the last one), and nothing is written; the communicator
// stays usable. Invalid arguments of one member come first, then calls that are valid on their
// own but disagree.
template <class C>
void bad_arguments_fail_every_member(C& comm) {
  const int n = comm.size();
  const int me = comm.rank();
  const int bad = n - 1;
  const std::string who = "rank " + std::to_string(bad);
  const bool mine = me == bad;
  {
    std::vector<double> in(8, 1.0), out(mine ? 9 : 8, -1.0);
    expect_usage_error(
        comm.rank(), "all_reduce", who + ": input has 8 elements but output has 9", [&] {
          comm.all_reduce(std::span<const double>(in), std::span<double>(out), ReduceOp::sum);
        });
    CHECK(std::count(out.begin(), out.end(), -1.0) == static_cast<std::ptrdiff_t>(out.size()));
  }
  {
    std::vector<std::int32_t> buf(5, me);
    expect_usage_error(
        comm.rank(), "broadcast",
        who + ": root " + std::to_string(n) + " is not a rank of a group of " + std::to_string(n),
        [&] { comm.broadcast(std::span<std::int32_t>(buf), mine ? n : 0); });
    CHECK(std::count(buf.begin(), buf.end(), me) == 5);
  }
  {
    const auto group = static_cast<std::size_t>(n);
    std::vector<float> in(2, 1.0f), out(mine ? 2 * group + 1 : 2 * group, -1.0f);
    expect_usage_error(comm.rank(), "all_gather",
                       who + ": output has " + std::to_string(2 * group + 1) +
                           " elements; it needs 2 x " + std::to_string(n),
                       [&] { comm.all_gather(std::span<const float>(in), std::span<float>(out)); });
    CHECK(std::count(out.begin(), out.end(), -1.0f) == static_cast<std::ptrdiff_t>(out.size()));
  }
  still_usable(comm);
  if (n < 2) return;  // alone, calls cannot disagree
  {
    std::vector<double> x(mine ? 5 : 4, 2.0);
    expect_usage_error(
        comm.rank(), "all_reduce",
        "rank 0 and " + who + " disagree: rank 0 passed 4 elements, " + who + " passed 5",
        [&] { comm.all_reduce(std::span<double>(x), ReduceOp::sum); });
    CHECK(std::count(x.begin(), x.end(), 2.0) == static_cast<std::ptrdiff_t>(x.size()));
  }
  {
    std::vector<std::int64_t> x(4, me);
    expect_usage_error(
        comm.rank(), "all_reduce",
        "rank 0 and " + who + " disagree: rank 0 reduces with sum, " + who + " with max",
        [&] { comm.all_reduce(std::span<std::int64_t>(x), mine ? ReduceOp::max : ReduceOp::sum); });
    CHECK(std::count(x.begin(), x.end(), me) == 4);
  }
  still_usable(comm);
}

template <class C>
void split(C& comm) {
  const int n = comm.size();
  const int color = comm.rank() % 3;
  // Reverse order inside each color: key decreases with rank.
  C sub = comm.split(color, -comm.rank());
  int members = 0;
  for (int r = 0; r < n; ++r) members += (r % 3 == color);
  CHECK(sub.size() == members);
  int higher = 0;  // same-color ranks above me come first
  for (int r = comm.rank() + 1; r < n; ++r) higher += (r % 3 == color);
  CHECK(sub.rank() == higher);
  // A collective on the sub-communicator sums exactly its members.
  std::vector<std::int64_t> x{comm.rank()};
  sub.all_reduce(std::span<std::int64_t>(x), ReduceOp::sum);
  std::int64_t expected = 0;
  for (int r = 0; r < n; ++r) expected += (r % 3 == color) ? r : 0;
  CHECK(x[0] == expected);
  // Splits nest.
  C single = sub.split(sub.rank(), 0);
  CHECK(single.size() == 1);
  CHECK(single.rank() == 0);
  single.barrier();
  comm.barrier();
}

// Every collective, on every element type the backends share, against the serial reference.
template <class C>
void run_collectives(C& comm) {
  all_reduce<float>(comm);
  all_reduce<double>(comm);
  all_reduce<std::int32_t>(comm);
  all_reduce<std::int64_t>(comm);
  broadcast<double>(comm);
  broadcast<std::int32_t>(comm);
  all_gather<float>(comm);
  all_gather<std::int64_t>(comm);
  reduce_scatter<double>(comm);
  reduce_scatter<std::int32_t>(comm);
  all_to_all<double>(comm);
  all_to_all<std::int64_t>(comm);
  all_to_all_uneven<float>(comm);
  all_to_all_uneven<std::int32_t>(comm);
  uneven_counts_that_disagree_fail_everywhere(comm);
  split(comm);
  comm.barrier();
}

// The collectives, then the cross-rank agreement on bad arguments: for backends that check
// every call across ranks (local; MPI and NCCL with verify_arguments).
template <class C>
void run_all(C& comm) {
  run_collectives(comm);
  bad_arguments_fail_every_member(comm);
  comm.barrier();
}

}  // namespace conformance
