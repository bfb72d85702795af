// HierarchicalAllReduce on the local backend, worlds 1 to 16 with every node size that divides
// them: the all-reduce against a serial reduction over the ranks (doubles and floats to rounding,
// integers exactly), bitwise identical on every rank; the sharded steps on their own; the
// topology check; and the traffic formulas against numbers worked by hand.
#include <doctest/doctest.h>

#include <strata/comm/hierarchical_all_reduce.hpp>
#include <strata/comm/link_traffic.hpp>
#include <strata/comm/local.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using strata::HierarchicalAllReduce;
using strata::LinkTraffic;
using strata::LocalComm;
using strata::NodeTopology;
using strata::ReduceOp;

constexpr ReduceOp all_ops[] = {ReduceOp::sum, ReduceOp::average, ReduceOp::min, ReduceOp::max};
constexpr std::size_t all_sizes[] = {0, 1, 7, 1000};

// Rank r's element i: doubles and floats of both signs with a fractional part, integers of
// both signs (so that the truncated average rounds toward zero on both sides).
template <class T>
T value(std::size_t rank, std::size_t i, std::size_t salt) {
  const std::uint64_t h = (rank + 1) * 0x9e3779b97f4a7c15ull ^ (i + 7) * 0xbf58476d1ce4e5b9ull ^
                          salt * 0x94d049bb133111ebull;
  const std::uint64_t x = (h ^ (h >> 29)) * 0xd6e8feb86659fd93ull;
  const auto k = static_cast<std::int64_t>((x >> 20) % 20001) - 10000;
  if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(static_cast<double>(k) / 97.0 + 0.001 * static_cast<double>(rank));
  } else if constexpr (sizeof(T) == 4) {
    return static_cast<T>(k * 101 + static_cast<std::int64_t>(rank));  // sums of 16 fit
  } else {
    return static_cast<T>(k * 1000003 + static_cast<std::int64_t>(rank));
  }
}

// The reduction over ranks 0..w-1 of element i in double (floats) or exactly (integers); and the
// scale of the sum, for the floating tolerance.
template <class T>
struct Expected {
  double value = 0;  // floating types
  std::int64_t exact = 0;
  double scale = 0;
};

template <class T>
Expected<T> serial(std::size_t w, std::size_t i, ReduceOp op, std::size_t salt) {
  Expected<T> e;
  if constexpr (std::is_floating_point_v<T>) {
    double acc = static_cast<double>(value<T>(0, i, salt));
    e.scale = std::abs(acc);
    for (std::size_t r = 1; r < w; ++r) {
      const double v = static_cast<double>(value<T>(r, i, salt));
      e.scale += std::abs(v);
      switch (op) {
        case ReduceOp::sum:
        case ReduceOp::average: acc += v; break;
        case ReduceOp::min: acc = std::min(acc, v); break;
        case ReduceOp::max: acc = std::max(acc, v); break;
      }
    }
    if (op == ReduceOp::average) {
      acc /= static_cast<double>(w);
      e.scale /= static_cast<double>(w);
    }
    e.value = acc;
  } else {
    std::int64_t acc = value<T>(0, i, salt);
    for (std::size_t r = 1; r < w; ++r) {
      const std::int64_t v = value<T>(r, i, salt);
      switch (op) {
        case ReduceOp::sum:
        case ReduceOp::average: acc += v; break;
        case ReduceOp::min: acc = std::min(acc, v); break;
        case ReduceOp::max: acc = std::max(acc, v); break;
      }
    }
    if (op == ReduceOp::average) acc /= static_cast<std::int64_t>(w);  // truncates toward zero
    e.exact = acc;
  }
  return e;
}

template <class T>
bool matches(T got, const Expected<T>& e) {
  if constexpr (std::is_same_v<T, double>) {
    return std::abs(got - e.value) <= 1e-12 * std::max(1.0, e.scale);
  } else if constexpr (std::is_same_v<T, float>) {
    // The ranks' floats summed in float, in another association than the serial sum.
    return std::abs(static_cast<double>(got) - e.value) <= 1e-5 * std::max(1.0, e.scale);
  } else {
    return static_cast<std::int64_t>(got) == e.exact;
  }
}

template <class T>
void append_bytes(std::vector<unsigned char>& out, const std::vector<T>& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  out.insert(out.end(), p, p + v.size() * sizeof(T));
}

// Every size and op for one element type on this rank; the results' bytes go to `bytes`.
template <class T>
std::size_t all_reduce_mismatches(HierarchicalAllReduce<LocalComm>& hier, std::size_t rank,
                                  std::size_t w, std::vector<unsigned char>& bytes) {
  std::size_t bad = 0;
  std::size_t salt = 0;
  for (const std::size_t n : all_sizes) {
    for (const ReduceOp op : all_ops) {
      ++salt;
      std::vector<T> buf(n);
      for (std::size_t i = 0; i < n; ++i) buf[i] = value<T>(rank, i, salt);
      hier.all_reduce(std::span<T>(buf), op);
      for (std::size_t i = 0; i < n; ++i) bad += !matches(buf[i], serial<T>(w, i, op, salt));
      append_bytes(bytes, buf);
    }
  }
  return bad;
}

// reduce_scatter then all_gather of G*L elements: the shard of the local index, then the node's
// shards in local order.
template <class T>
std::size_t sharded_mismatches(HierarchicalAllReduce<LocalComm>& hier, std::size_t rank,
                               std::size_t w, std::size_t g, std::vector<unsigned char>& shards) {
  std::size_t bad = 0;
  const std::size_t local = rank % g, node = rank / g;
  std::size_t salt = 100;
  for (const std::size_t l : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{250}}) {
    for (const ReduceOp op : all_ops) {
      ++salt;
      std::vector<T> in(g * l), out(l);
      for (std::size_t i = 0; i < in.size(); ++i) in[i] = value<T>(rank, i, salt);
      hier.reduce_scatter(std::span<const T>(in), std::span<T>(out), op);
      for (std::size_t i = 0; i < l; ++i)
        bad += !matches(out[i], serial<T>(w, local * l + i, op, salt));
      append_bytes(shards, out);

      // Each rank's shard is a function of its rank, so the gathered node is known exactly.
      std::vector<T> mine(l), node_all(g * l);
      for (std::size_t i = 0; i < l; ++i) mine[i] = value<T>(rank, i, salt + 1000);
      hier.all_gather(std::span<const T>(mine), std::span<T>(node_all));
      for (std::size_t j = 0; j < g; ++j) {
        for (std::size_t i = 0; i < l; ++i) {
          bad += node_all[j * l + i] != value<T>(node * g + j, i, salt + 1000);
        }
      }
    }
  }
  return bad;
}

std::vector<std::size_t> divisors(std::size_t w) {
  std::vector<std::size_t> d;
  for (std::size_t g = 1; g <= w; ++g) {
    if (w % g == 0) d.push_back(g);
  }
  return d;
}

bool same_traffic(const LinkTraffic& a, const LinkTraffic& b) {
  return a.intra == b.intra && a.inter == b.inter && a.intra_messages == b.intra_messages &&
         a.inter_messages == b.inter_messages;
}

}  // namespace

namespace {

// The all-reduce on worlds [first, last], every node size that divides them.
void check_all_reduce(std::size_t first, std::size_t last) {
  for (std::size_t w = first; w <= last; ++w) {
    for (const std::size_t g : divisors(w)) {
      CAPTURE(w);
      CAPTURE(g);
      std::vector<std::size_t> bad(w, 0);
      std::vector<std::vector<unsigned char>> bytes(w);
      std::vector<int> sizes_ok(w, 0);
      strata::LocalWorld(static_cast<int>(w)).run([&](LocalComm& world) {
        const auto r = static_cast<std::size_t>(world.rank());
        HierarchicalAllReduce<LocalComm> hier(world, NodeTopology(w, g));
        sizes_ok[r] = hier.node().size() == static_cast<int>(g) &&
                      hier.node().rank() == static_cast<int>(r % g) &&
                      hier.across().size() == static_cast<int>(w / g) &&
                      hier.across().rank() == static_cast<int>(r / g) &&
                      hier.topology().world_size() == w && hier.topology().ranks_per_node() == g;
        bad[r] += all_reduce_mismatches<double>(hier, r, w, bytes[r]);
        bad[r] += all_reduce_mismatches<float>(hier, r, w, bytes[r]);
        bad[r] += all_reduce_mismatches<std::int64_t>(hier, r, w, bytes[r]);
        // 32-bit integers on the small worlds only: the same path as 64-bit ones.
        if (w <= 4) bad[r] += all_reduce_mismatches<std::int32_t>(hier, r, w, bytes[r]);
      });
      for (std::size_t r = 0; r < w; ++r) {
        CAPTURE(r);
        CHECK(sizes_ok[r] == 1);
        CHECK(bad[r] == 0);
        CHECK(bytes[r] == bytes[0]);  // bitwise identical on every rank
      }
    }
  }
}

}  // namespace

TEST_CASE("hierarchical all-reduce: the serial reduction on worlds 1-8, every node size") {
  check_all_reduce(1, 8);
}

TEST_CASE("hierarchical all-reduce: the serial reduction on worlds 9-12, every node size") {
  check_all_reduce(9, 12);
}

TEST_CASE("hierarchical all-reduce: the serial reduction on worlds 13-16, every node size") {
  check_all_reduce(13, 16);
}

TEST_CASE("hierarchical all-reduce: reduce_scatter and all_gather on their own") {
  for (std::size_t w = 1; w <= 16; ++w) {
    for (const std::size_t g : divisors(w)) {
      CAPTURE(w);
      CAPTURE(g);
      std::vector<std::size_t> bad(w, 0);
      std::vector<std::vector<unsigned char>> shards(w);
      strata::LocalWorld(static_cast<int>(w)).run([&](LocalComm& world) {
        const auto r = static_cast<std::size_t>(world.rank());
        HierarchicalAllReduce<LocalComm> hier(world, NodeTopology(w, g));
        bad[r] += sharded_mismatches<double>(hier, r, w, g, shards[r]);
        bad[r] += sharded_mismatches<std::int64_t>(hier, r, w, g, shards[r]);
      });
      for (std::size_t r = 0; r < w; ++r) {
        CAPTURE(r);
        CHECK(bad[r] == 0);
        // The ranks with one local index hold the same shard, bit for bit.
        CHECK(shards[r] == shards[r % g]);
      }
    }
  }
}

TEST_CASE("hierarchical all-reduce: the float average rounds like the flat one's scaling") {
  // Sums of small integers are exact in any association, so the hierarchical and the flat
  // average must agree bit for bit.
  strata::LocalWorld(12).run([](LocalComm& world) {
    HierarchicalAllReduce<LocalComm> hier(world, NodeTopology(12, 4));
    std::vector<float> a(37), b(37);
    for (std::size_t i = 0; i < a.size(); ++i)
      a[i] = b[i] = static_cast<float>((i * 7 + world.rank()) % 11);
    hier.all_reduce(std::span<float>(a), ReduceOp::average);
    world.all_reduce(std::span<float>(b), ReduceOp::average);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  });
}

TEST_CASE("hierarchical all-reduce: a topology of another world size fails on every rank") {
  for (const int w : {1, 2, 4, 6}) {
    CAPTURE(w);
    std::vector<std::string> caught(static_cast<std::size_t>(w));
    strata::LocalWorld(w).run([&](LocalComm& world) {
      const auto r = static_cast<std::size_t>(world.rank());
      try {
        HierarchicalAllReduce<LocalComm> hier(world,
                                              NodeTopology(static_cast<std::size_t>(2 * w), 2));
        caught[r] = "no error";
      } catch (const strata::usage_error& e) {
        caught[r] = e.what();
      } catch (const std::exception& e) {
        caught[r] = std::string("wrong type: ") + e.what();
      }
      // Nothing was split or started: the world is still usable, and a right topology works.
      HierarchicalAllReduce<LocalComm> good(world, NodeTopology(static_cast<std::size_t>(w), 1));
      std::vector<double> one{1.0};
      good.all_reduce(std::span<double>(one), ReduceOp::sum);
      CHECK(one[0] == static_cast<double>(w));
    });
    for (int r = 0; r < w; ++r) {
      CAPTURE(r);
      CHECK(caught[static_cast<std::size_t>(r)] ==
            "strata: HierarchicalAllReduce on rank " + std::to_string(r) +
                ": the topology describes " + std::to_string(2 * w) + " ranks (" +
                std::to_string(w) + " nodes of 2), the communicator has " + std::to_string(w));
    }
  }
}

TEST_CASE("hierarchical all-reduce: a bad shard size fails on the node and writes nothing") {
  // reduce_scatter needs G*L elements in; a wrong count fails on every rank of the node (the
  // communicator's usage_error), and an all_reduce right after still works.
  strata::LocalWorld(4).run([](LocalComm& world) {
    HierarchicalAllReduce<LocalComm> hier(world, NodeTopology(4, 2));
    std::vector<double> in(5, 1.0), out(2, -1.0);
    CHECK_THROWS_AS(
        hier.reduce_scatter(std::span<const double>(in), std::span<double>(out), ReduceOp::sum),
        strata::usage_error);
    CHECK(out == std::vector<double>{-1.0, -1.0});
    std::vector<double> v{1.0, 2.0, 3.0};
    hier.all_reduce(std::span<double>(v), ReduceOp::sum);
    CHECK(v == std::vector<double>{4.0, 8.0, 12.0});
  });
}

TEST_CASE("hierarchical all-reduce: traffic by link, worked by hand") {
  // W = 8 in nodes of 4, 800 elements. Hierarchical: reduce-scatter and all-gather in the node
  // send 3/4 of 800 each (600 + 600, 3 + 3 messages); the 200-element shard's all-reduce over 2
  // nodes sends 2 * 1/2 * 200 = 200 in 2 messages.
  const NodeTopology eight(8, 4);
  const LinkTraffic h = strata::hierarchical_all_reduce_traffic(800, eight);
  CHECK(same_traffic(h, {.intra = 1200, .inter = 200, .intra_messages = 6, .inter_messages = 2}));
  // Flat ring over 8: every rank sends 2 * 7/8 * 800 = 1400 in 14 messages; the last rank of
  // each node sends to the next node.
  for (std::size_t r = 0; r < 8; ++r) {
    CAPTURE(r);
    const LinkTraffic f = strata::flat_all_reduce_traffic(800, eight, r);
    if (r == 3 || r == 7) {
      CHECK(
          same_traffic(f, {.intra = 0, .inter = 1400, .intra_messages = 0, .inter_messages = 14}));
    } else {
      CHECK(
          same_traffic(f, {.intra = 1400, .inter = 0, .intra_messages = 14, .inter_messages = 0}));
    }
  }
  // Across the 4 ranks of a node together, the hierarchical schedule sends 4 * 200 = 800 between
  // nodes; the flat ring's node edge carries 1400.
  CHECK(4 * h.inter == 800);

  // A length that is not a multiple of G is padded: 801 -> shards of 201.
  CHECK(same_traffic(strata::hierarchical_all_reduce_traffic(801, eight),
                     {.intra = 1206, .inter = 201, .intra_messages = 6, .inter_messages = 2}));
  // One node: everything inside it, for both schedules.
  const NodeTopology one_node(8, 8);
  CHECK(same_traffic(strata::hierarchical_all_reduce_traffic(800, one_node),
                     {.intra = 1400, .inter = 0, .intra_messages = 14, .inter_messages = 0}));
  CHECK(same_traffic(strata::flat_all_reduce_traffic(800, one_node, 7),
                     {.intra = 1400, .inter = 0, .intra_messages = 14, .inter_messages = 0}));
  // One rank per node: the hierarchical schedule is the flat ring, all of it between nodes.
  const NodeTopology singles(8, 1);
  CHECK(same_traffic(strata::hierarchical_all_reduce_traffic(800, singles),
                     {.intra = 0, .inter = 1400, .intra_messages = 0, .inter_messages = 14}));
  CHECK(same_traffic(strata::flat_all_reduce_traffic(800, singles, 2),
                     {.intra = 0, .inter = 1400, .intra_messages = 0, .inter_messages = 14}));
  // A world of one sends nothing.
  const NodeTopology alone(1, 1);
  CHECK(same_traffic(strata::hierarchical_all_reduce_traffic(800, alone), {}));
  CHECK(same_traffic(strata::flat_all_reduce_traffic(800, alone, 0), {}));
  // W = 12 in nodes of 3, 1200 elements: 2 * 2 * 400 = 1600 inside, 2 * 3/4 * 400 = 600 across.
  CHECK(same_traffic(strata::hierarchical_all_reduce_traffic(1200, NodeTopology(12, 3)),
                     {.intra = 1600, .inter = 600, .intra_messages = 4, .inter_messages = 6}));

  LinkTraffic sum = h;
  sum += strata::flat_all_reduce_traffic(800, eight, 0);
  CHECK(
      same_traffic(sum, {.intra = 2600, .inter = 200, .intra_messages = 20, .inter_messages = 2}));

  strata::LocalWorld(8).run([](LocalComm& world) {
    HierarchicalAllReduce<LocalComm> hier(world, NodeTopology(8, 4));
    CHECK(same_traffic(hier.traffic(800),
                       strata::hierarchical_all_reduce_traffic(800, NodeTopology(8, 4))));
  });
}
