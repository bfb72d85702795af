// The averager harness of the host backends (averager_conformance.hpp): `BasicAverager` over the
// backend's communicator, tensors in host vectors (apart) or in a `ParameterArena` (together,
// averaged in place through the arena overload), and the test's own exchanges on the same
// communicator. `LocalHarness` runs it on the local backend; the MPI suite runs it over MPI.
#pragma once

#include <strata/averaging/averager.hpp>
#include <strata/comm/local.hpp>
#include <strata/kernels/arena.hpp>

#include <algorithm>
#include <cstddef>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "../comm/conformance.hpp"

namespace averager_harness {

template <class T>
using HostParams = std::vector<std::vector<T>>;

// Tensors in separate host vectors.
template <class T>
struct HostApart {
  std::vector<std::vector<T>> data;
  std::vector<std::span<T>> spans;
};

// Tensors allocated in one arena, which the in-place path averages whole (padding included).
template <class T>
struct HostTogether {
  strata::ParameterArena<T> arena;
  std::vector<std::span<T>> spans;
  [[nodiscard]] std::size_t elements() const noexcept { return arena.used(); }
};

template <class Comm>
class HostRank {
 public:
  explicit HostRank(Comm& comm) : comm_(&comm) {}

  [[nodiscard]] int rank() const { return comm_->rank(); }
  [[nodiscard]] int size() const { return comm_->size(); }
  [[nodiscard]] Comm& comm() { return *comm_; }

  template <class S>
  strata::BasicAverager<S, Comm> averager(S schedule) {
    return strata::BasicAverager<S, Comm>(*comm_, std::move(schedule));
  }

  template <class T>
  HostApart<T> separate(const HostParams<T>& p) {
    HostApart<T> b{p, {}};
    for (auto& t : b.data) b.spans.emplace_back(t);
    return b;
  }

  template <class T>
  HostTogether<T> packed(const HostParams<T>& p) {
    // Room for every tensor and the padding that aligns each to 64 bytes.
    std::size_t room = 0;
    for (const auto& t : p) room += t.size() + 64 / sizeof(T);
    HostTogether<T> b{strata::ParameterArena<T>(room), {}};
    for (const auto& t : p) b.spans.push_back(b.arena.allocate(t.size()));
    write(b, p);
    return b;
  }

  template <class B, class T>
  void write(B& b, const HostParams<T>& p) {
    for (std::size_t t = 0; t < p.size(); ++t)
      std::copy(p[t].begin(), p[t].end(), b.spans[t].begin());
  }

  template <class B>
  auto read(const B& b) {
    using T = typename decltype(b.spans)::value_type::value_type;
    HostParams<T> p;
    for (const std::span<T> t : b.spans) p.emplace_back(t.begin(), t.end());
    return p;
  }

  template <class A, class T>
  std::optional<std::size_t> average(A& avg, HostApart<T>& b) {
    return avg.average(b.spans);
  }
  template <class A, class T>
  std::optional<std::size_t> average(A& avg, HostTogether<T>& b) {
    return avg.average(b.arena);
  }

  template <class T>
  std::vector<T> gather(std::span<const T> mine) {
    std::vector<T> all(mine.size() * static_cast<std::size_t>(size()));
    comm_->all_gather(mine, std::span<T>(all));
    return all;
  }

 private:
  Comm* comm_;
};

// The local backend: ranks are threads of a LocalWorld, worlds of 1 to 16.
struct LocalHarness {
  static constexpr std::string_view name = "local";
  using Rank = HostRank<strata::LocalComm>;
  static std::vector<int> world_sizes() { return conformance::sizes_up_to(16); }
  template <class F>
  static void run(int n, F&& f) {
    strata::LocalWorld(n).run([&](strata::LocalComm& comm) {
      Rank r(comm);
      f(r);
    });
  }
};

}  // namespace averager_harness
