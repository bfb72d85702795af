// BroadcastLoader on the local backend: one read per node and batch, every rank of the node gets
// the reader's batch, the end of the data and a failing reader reach every rank of the node.

#include <doctest/doctest.h>

#include <strata/comm/local.hpp>
#include <strata/data/broadcast_loader.hpp>

#include <atomic>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// The batch node n reads at call k: its length varies, so receivers learn it from the header.
std::vector<double> batch_of(int node, int k) {
  std::vector<double> b(static_cast<std::size_t>(3 + (node + k) % 4));
  for (std::size_t i = 0; i < b.size(); ++i)
    b[i] = 100.0 * node + 10.0 * k + static_cast<double>(i);
  return b;
}

}  // namespace

TEST_CASE("broadcast loader: one reader per node, every rank of the node gets its batch") {
  for (const int world : {1, 2, 4, 6, 8, 12}) {
    for (const int node_size : {1, 2, 3, 4}) {
      if (world % node_size != 0) continue;
      for (const int reader : {0, node_size - 1}) {
        const int nodes = world / node_size;
        std::vector<std::atomic<int>> reads_by_rank(static_cast<std::size_t>(world));
        std::vector<std::atomic<int>> reads_by_node(static_cast<std::size_t>(nodes));
        strata::LocalWorld(world).run([&](strata::LocalComm& comm) {
          strata::data::BroadcastLoader loader(comm, static_cast<std::size_t>(node_size), reader);
          const int node = comm.rank() / node_size;
          CHECK(loader.is_reader() == (comm.rank() % node_size == reader));
          for (int k = 0;; ++k) {
            auto batch = loader.next<double>([&](std::vector<double>& b) {
              ++reads_by_rank[static_cast<std::size_t>(comm.rank())];
              ++reads_by_node[static_cast<std::size_t>(node)];
              if (k == 5) return false;  // five batches, then the end of the data
              b = batch_of(node, k);
              return true;
            });
            if (!batch) {
              CHECK(k == 5);
              break;
            }
            CHECK(*batch == batch_of(node, k));
          }
          CHECK(loader.batches() == 5);
        });
        for (int r = 0; r < world; ++r) {
          // The readers read six times (five batches and the end); nobody else ever reads.
          CHECK(reads_by_rank[static_cast<std::size_t>(r)] == (r % node_size == reader ? 6 : 0));
        }
        for (int n = 0; n < nodes; ++n) CHECK(reads_by_node[static_cast<std::size_t>(n)] == 6);
      }
    }
  }
}

TEST_CASE("broadcast loader: a failing reader fails every rank of its node, which goes on") {
  strata::LocalWorld(6).run([](strata::LocalComm& comm) {
    strata::data::BroadcastLoader loader(comm, 3);
    const int node = comm.rank() / 3;
    // Node 1's reader fails on the first call; node 0's reads fine.
    std::string seen;
    try {
      auto b = loader.next<std::int64_t>([&](std::vector<std::int64_t>& out) {
        if (node == 1) throw std::runtime_error("disk read error at offset 4096");
        out = {1, 2, 3};
        return true;
      });
      CHECK(node == 0);
      CHECK(*b == std::vector<std::int64_t>{1, 2, 3});
    } catch (const strata::error& e) {
      seen = e.what();
    }
    if (node == 1) {
      CHECK(seen.find("the reader (rank 0 of the node) failed: disk read error at offset 4096") !=
            std::string::npos);
    } else {
      CHECK(seen.empty());
    }
    // The loader is still usable on both nodes.
    auto b = loader.next<float>([&](std::vector<float>& out) {
      out.assign(4, static_cast<float>(node));
      return true;
    });
    REQUIRE(b);
    CHECK(*b == std::vector<float>(4, static_cast<float>(node)));
  });
}

TEST_CASE("broadcast loader: a reader outside the node and nodes that do not divide the world") {
  strata::LocalWorld(4).run([](strata::LocalComm& comm) {
    CHECK_THROWS_AS(strata::data::BroadcastLoader(comm, 3), std::invalid_argument);
    CHECK_THROWS_AS(strata::data::BroadcastLoader(comm, 2, 2), std::invalid_argument);
  });
}

TEST_CASE("broadcast loader: over a node communicator the program split itself") {
  strata::LocalWorld(4).run([](strata::LocalComm& comm) {
    auto loader = strata::data::BroadcastLoader<strata::LocalComm>::over_node(
        strata::split_node(comm, 2), /*reader=*/1);
    CHECK(loader.is_reader() == (comm.rank() % 2 == 1));
    auto b = loader.next<std::int32_t>([&](std::vector<std::int32_t>& out) {
      out = {comm.rank()};
      return true;
    });
    CHECK((*b)[0] == comm.rank() / 2 * 2 + 1);
  });
}

TEST_CASE("broadcast loader: a reader exception without a message still fails the node") {
  strata::LocalWorld(2).run([](strata::LocalComm& comm) {
    strata::data::BroadcastLoader loader(comm, 2);
    std::string seen;
    try {
      (void)loader.next<double>([](std::vector<double>&) -> bool { throw std::runtime_error(""); });
    } catch (const strata::error& e) {
      seen = e.what();
    }
    CHECK(seen.find("failed: an exception with no message") != std::string::npos);
  });
}
