#include <doctest/doctest.h>

#include <strata/hierarchy/topology.hpp>

using strata::NodeTopology;
using strata::RuntimeHierarchy;

TEST_CASE("NodeTopology maps ranks to nodes and back") {
  const NodeTopology topo(12, 4);
  CHECK(topo.num_nodes() == 3);
  for (std::size_t r = 0; r < 12; ++r) {
    CAPTURE(r);
    CHECK(topo.node_index(r) == r / 4);
    CHECK(topo.local_rank(r) == r % 4);
    CHECK(topo.rank_of(topo.node_index(r), topo.local_rank(r)) == r);
  }
}

TEST_CASE("NodeTopology rejects layouts with partial nodes") {
  CHECK_THROWS_WITH_AS(NodeTopology(10, 4),
                       "NodeTopology: world size 10 is not a multiple of 4 ranks per node",
                       std::invalid_argument);
  CHECK_THROWS_AS(NodeTopology(0, 4), std::invalid_argument);
  CHECK_THROWS_AS(NodeTopology(8, 0), std::invalid_argument);
}

TEST_CASE("node alignment: groups inside one node or made of whole nodes") {
  const NodeTopology topo(64, 4);
  CHECK(topo.aligns(1));
  CHECK(topo.aligns(2));
  CHECK(topo.aligns(4));
  CHECK(topo.aligns(8));
  CHECK(topo.aligns(64));
  CHECK_FALSE(topo.aligns(3));
  CHECK_FALSE(topo.aligns(6));
  CHECK_FALSE(topo.aligns(0));

  CHECK_NOTHROW(strata::check_node_aligned(RuntimeHierarchy::parse("1:4,2:16,4:64"), topo));
  CHECK_NOTHROW(strata::check_node_aligned(RuntimeHierarchy::parse("2:8,4:32,8:64"), topo));
  CHECK_THROWS_WITH_AS(
      strata::check_node_aligned(RuntimeHierarchy::parse("2:8,4:48"), NodeTopology(48, 6)),
      "Hierarchy: level 0 group size 8 does not fit nodes of 6 ranks; node-aligned groups lie "
      "inside one node or span whole nodes",
      std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      strata::check_node_aligned(RuntimeHierarchy::parse("2:8,4:32"), topo),
      "Hierarchy: level 1 group size 32 is not the world size 64; the largest group must span the "
      "whole world",
      std::invalid_argument);
  using H = strata::Hierarchy<strata::Level<1, 3>, strata::Level<2, 12>>;
  CHECK_NOTHROW(strata::check_node_aligned<H>(NodeTopology(12, 3)));
  CHECK_THROWS_AS(strata::check_node_aligned<H>(NodeTopology(12, 4)), std::invalid_argument);
}

TEST_CASE("the largest level that stays inside a node") {
  const auto h = RuntimeHierarchy::parse("1:2,2:4,4:16,8:64");
  CHECK(strata::largest_intra_node_level(h, NodeTopology(64, 4)) == 1);
  CHECK(strata::largest_intra_node_level(h, NodeTopology(64, 2)) == 0);
  CHECK(strata::largest_intra_node_level(h, NodeTopology(64, 1)) == 4);  // none fits
  CHECK(strata::largest_intra_node_level(h, NodeTopology(64, 64)) == 3);
}
