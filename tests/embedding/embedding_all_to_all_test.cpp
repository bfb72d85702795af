// HierarchicalAllToAll against the flat world.all_to_all and against the expected result written
// out from the counts, on worlds 1 to 16 and every node size that divides them, with uneven
// counts, zero counts and a rank that neither sends nor receives; and the link traffic of both
// exchanges counted by hand.
#include <doctest/doctest.h>

#include <strata/comm/local.hpp>
#include <strata/embedding/hierarchical_all_to_all.hpp>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// C[src][dst]: uneven, zero about a third of the time, and nothing to or from rank `empty`.
std::vector<std::vector<std::size_t>> counts(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const std::size_t empty = n > 1 ? n / 2 : n;
  std::vector<std::vector<std::size_t>> c(n, std::vector<std::size_t>(n, 0));
  for (std::size_t s = 0; s < n; ++s)
    for (std::size_t d = 0; d < n; ++d)
      c[s][d] = (s == empty || d == empty || rng() % 3 == 0) ? 0 : 1 + rng() % 5;
  return c;
}

// Element i of what `src` sends in total: distinct across the world.
template <class T>
T value(std::size_t src, std::size_t i) {
  if constexpr (std::is_floating_point_v<T>)
    return static_cast<T>(src) * 1000.0 + 0.5 * static_cast<double>(i);
  else return static_cast<T>(src * 1000 + i) * (src % 2 == 0 ? 1 : -1);
}

struct Outcome {
  std::size_t mismatches = 0;  // against the expected result and against the flat exchange
  strata::LinkTraffic hier{};
  strata::LinkTraffic flat{};
};

template <class T>
Outcome exchange(strata::LocalComm& world, strata::HierarchicalAllToAll<strata::LocalComm>& a2a,
                 const std::vector<std::vector<std::size_t>>& c) {
  const auto n = static_cast<std::size_t>(world.size());
  const auto me = static_cast<std::size_t>(world.rank());
  std::vector<std::size_t> send(n), recv(n);
  std::size_t in_total = 0, out_total = 0;
  for (std::size_t p = 0; p < n; ++p) {
    send[p] = c[me][p];
    recv[p] = c[p][me];
    in_total += send[p];
    out_total += recv[p];
  }
  std::vector<T> in(in_total);
  for (std::size_t i = 0; i < in_total; ++i) in[i] = value<T>(me, i);
  // Expected: from each source in rank order, its block for this rank.
  std::vector<T> want;
  for (std::size_t s = 0; s < n; ++s) {
    std::size_t from = 0;
    for (std::size_t d = 0; d < me; ++d) from += c[s][d];
    for (std::size_t i = 0; i < c[s][me]; ++i) want.push_back(value<T>(s, from + i));
  }
  std::vector<T> hier(out_total, T(-7)), flat(out_total, T(-9));
  a2a.template all_to_all<T>(in, send, hier, recv);
  world.all_to_all(std::span<const T>(in), std::span<const std::size_t>(send), std::span<T>(flat),
                   std::span<const std::size_t>(recv));
  Outcome o;
  for (std::size_t i = 0; i < out_total; ++i)
    o.mismatches += (hier[i] != want[i]) + (hier[i] != flat[i]);
  o.hier = a2a.last_traffic();
  o.flat = strata::flat_all_to_all_traffic(send, me, a2a.ranks_per_node());
  return o;
}

// The traffic of rank r in the two steps, counted from the matrix: step 1 sends local peer l'
// everything for the ranks of local index l'; step 2 sends node m what the node has for (m, l).
strata::LinkTraffic hand_hierarchical(const std::vector<std::vector<std::size_t>>& c, std::size_t r,
                                      std::size_t g) {
  const std::size_t n = c.size(), nodes = n / g, node = r / g, l = r % g;
  strata::LinkTraffic t;
  for (std::size_t lp = 0; lp < g; ++lp) {
    if (lp == l) continue;
    std::size_t x = 0;
    for (std::size_t m = 0; m < nodes; ++m) x += c[r][m * g + lp];
    t.intra += x;
    t.intra_messages += x != 0;
  }
  for (std::size_t m = 0; m < nodes; ++m) {
    if (m == node) continue;
    std::size_t x = 0;
    for (std::size_t lq = 0; lq < g; ++lq) x += c[node * g + lq][m * g + l];
    t.inter += x;
    t.inter_messages += x != 0;
  }
  return t;
}

strata::LinkTraffic hand_flat(const std::vector<std::vector<std::size_t>>& c, std::size_t r,
                              std::size_t g) {
  strata::LinkTraffic t;
  for (std::size_t p = 0; p < c.size(); ++p) {
    if (p == r || c[r][p] == 0) continue;
    if (p / g == r / g) t.intra += c[r][p], ++t.intra_messages;
    else t.inter += c[r][p], ++t.inter_messages;
  }
  return t;
}

bool same(const strata::LinkTraffic& a, const strata::LinkTraffic& b) {
  return a.intra == b.intra && a.inter == b.inter && a.intra_messages == b.intra_messages &&
         a.inter_messages == b.inter_messages;
}

}  // namespace

TEST_CASE("flat_all_to_all_traffic: counted by hand") {
  const std::vector<std::size_t> c{1, 2, 3, 4};
  const auto t = strata::flat_all_to_all_traffic(c, 0, 2);
  CHECK(t.intra == 2);
  CHECK(t.intra_messages == 1);
  CHECK(t.inter == 7);
  CHECK(t.inter_messages == 2);
  // Zero counts are no message; sends to itself count nowhere.
  const std::vector<std::size_t> z{5, 0, 0, 6, 0, 7};
  const auto u = strata::flat_all_to_all_traffic(z, 3, 3);
  CHECK(u.intra == 7);
  CHECK(u.intra_messages == 1);
  CHECK(u.inter == 5);
  CHECK(u.inter_messages == 1);
  strata::LinkTraffic sum = t;
  sum += u;
  CHECK(sum.intra == 9);
  CHECK(sum.inter_messages == 3);
}

TEST_CASE("HierarchicalAllToAll equals the flat all_to_all on worlds 1 to 16, every node size") {
  for (int n = 1; n <= 16; ++n) {
    const auto un = static_cast<std::size_t>(n);
    std::vector<std::size_t> sizes;
    for (std::size_t g = 1; g <= un; ++g)
      if (un % g == 0) sizes.push_back(g);
    // Per node size and rank: double, then int64, each with counts of its own.
    std::vector<std::vector<Outcome>> dbl(sizes.size(), std::vector<Outcome>(un));
    std::vector<std::vector<Outcome>> i64(sizes.size(), std::vector<Outcome>(un));
    strata::LocalWorld(n).run([&](strata::LocalComm& world) {
      const auto me = static_cast<std::size_t>(world.rank());
      for (std::size_t k = 0; k < sizes.size(); ++k) {
        strata::HierarchicalAllToAll<strata::LocalComm> a2a(world, sizes[k]);
        dbl[k][me] = exchange<double>(world, a2a, counts(un, 100 + k));
        i64[k][me] = exchange<std::int64_t>(world, a2a, counts(un, 200 + k));
      }
    });
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      const std::size_t g = sizes[k], nodes = un / g;
      for (int type = 0; type < 2; ++type) {
        const auto c = counts(un, (type == 0 ? 100 : 200) + k);
        const auto& got = type == 0 ? dbl[k] : i64[k];
        std::size_t hier_inter = 0, flat_inter = 0;
        for (std::size_t r = 0; r < un; ++r) {
          CAPTURE(n);
          CAPTURE(g);
          CAPTURE(type);
          CAPTURE(r);
          CHECK(got[r].mismatches == 0);
          CHECK(same(got[r].hier, hand_hierarchical(c, r, g)));
          CHECK(same(got[r].flat, hand_flat(c, r, g)));
          CHECK(got[r].hier.inter_messages <= nodes - 1);
          hier_inter += got[r].hier.inter;
          flat_inter += got[r].flat.inter;
        }
        CAPTURE(n);
        CAPTURE(g);
        CHECK(hier_inter == flat_inter);
      }
    }
  }
}

TEST_CASE("HierarchicalAllToAll: counts of the wrong number or sum are refused before sending") {
  std::vector<std::string> messages(4);
  std::mutex m;
  strata::LocalWorld(4).run([&](strata::LocalComm& world) {
    strata::HierarchicalAllToAll<strata::LocalComm> a2a(world, 2);
    CHECK(a2a.world_size() == 4);
    CHECK(a2a.ranks_per_node() == 2);
    const std::vector<std::size_t> three(3, 1), four(4, 1);
    std::vector<double> in(3), out(4);
    try {
      a2a.all_to_all<double>(in, three, out, four);
    } catch (const std::invalid_argument& e) {
      const std::lock_guard lock(m);
      messages[static_cast<std::size_t>(world.rank())] = e.what();
    }
    // Still usable: every rank one element to every rank.
    std::vector<double> in4{1, 2, 3, 4}, out4(4);
    a2a.all_to_all<double>(in4, four, out4, four);
    CHECK(out4 == std::vector<double>(4, static_cast<double>(world.rank() + 1)));
  });
  for (const auto& msg : messages)
    CHECK(msg == "HierarchicalAllToAll: needs 4 counts each way, got 3 and 4");
}

TEST_CASE("HierarchicalAllToAll: a node size that does not divide the world is refused") {
  std::vector<std::string> messages(6);
  strata::LocalWorld(6).run([&](strata::LocalComm& world) {
    try {
      strata::HierarchicalAllToAll<strata::LocalComm> a2a(world, 4);
    } catch (const std::invalid_argument& e) {
      messages[static_cast<std::size_t>(world.rank())] = e.what();
    }
  });
  for (const auto& msg : messages)
    CHECK(msg == "split_node: world size 6 is not a positive multiple of 4 ranks per node");
}
