// The cost model against the formula worked out by hand.
#include <doctest/doctest.h>

#include <limits>
#include <stdexcept>
#include <strata/sim/cost.hpp>

using strata::sim::CostModel;

namespace {

CostModel two_links() {
  CostModel c;
  c.model_bytes = 8e6;
  c.ranks_per_node = 4;
  c.intra_node = {4e9, 1e-5};
  c.inter_node = {1e9, 1e-4};
  c.backward_overlap = 0.5;
  return c;
}

}  // namespace

TEST_CASE("ring all-reduce: latency per step plus 2(g-1)/g of the bytes over the bandwidth") {
  const CostModel c = two_links();
  CHECK(c.allreduce_s(1) == 0.0);
  // g = 2, inside a node: 2 steps of 10 us, 8 MB over 4 GB/s.
  CHECK(c.allreduce_s(2) == doctest::Approx(2e-5 + 8e6 / 4e9));
  // g = 4, a whole node: 6 steps, 1.5 x 8 MB = 12 MB over 4 GB/s = 3 ms.
  CHECK(c.allreduce_s(4) == doctest::Approx(6e-5 + 3e-3));
  // g = 8, two nodes: 14 steps of 100 us, 1.75 x 8 MB = 14 MB over 1 GB/s = 14 ms.
  CHECK(c.allreduce_s(8) == doctest::Approx(1.4e-3 + 14e-3));
  // g = 64: 126 steps of 100 us, 2 x 63/64 x 8 MB = 15.75 MB over 1 GB/s.
  CHECK(c.allreduce_s(64) == doctest::Approx(12.6e-3 + 15.75e-3));
  CHECK(c.gradient_allreduce_s(8) == doctest::Approx(0.5 * (1.4e-3 + 14e-3)));
}

TEST_CASE("a group lies inside a node only when its size divides the node's") {
  const CostModel c = two_links();
  CHECK(c.inside_node(1));
  CHECK(c.inside_node(2));
  CHECK(c.inside_node(4));
  CHECK_FALSE(c.inside_node(3));  // contiguous groups of 3 straddle nodes of 4
  CHECK_FALSE(c.inside_node(8));
  CHECK_FALSE(c.inside_node(0));
  // A group of 3 over nodes of 4 is priced with the inter-node link: 4 steps, 4/3 x 8 MB.
  CHECK(c.allreduce_s(3) == doctest::Approx(4e-4 + 4.0 / 3 * 8e6 / 1e9));
}

TEST_CASE("the t4-resnet18 preset") {
  const CostModel c = CostModel::t4_resnet18();
  c.validate();
  CHECK(c.model_bytes == 46.8e6);
  CHECK(c.ranks_per_node == 4);
  CHECK(c.intra_node.bandwidth_bytes_per_s == 6e9);
  CHECK(c.inter_node.bandwidth_bytes_per_s == 3.2e9);
  CHECK(c.backward_overlap == 0.5);
  // 256 ranks: 510 ring steps of 25 us plus 2 x 255/256 x 46.8 MB over 3.2 GB/s.
  CHECK(c.allreduce_s(256) == doctest::Approx(510 * 25e-6 + 2.0 * 255 / 256 * 46.8e6 / 3.2e9));
}

TEST_CASE("bad cost models are refused with a message that names the field") {
  CostModel c;
  c.model_bytes = -1;
  CHECK_THROWS_WITH_AS(c.validate(),
                       "CostModel: model bytes -1 is not a finite non-negative number",
                       std::invalid_argument);
  c = CostModel{};
  c.ranks_per_node = 0;
  CHECK_THROWS_WITH_AS(c.validate(), "CostModel: ranks per node is 0", std::invalid_argument);
  c = CostModel{};
  c.inter_node.bandwidth_bytes_per_s = 0;
  CHECK_THROWS_WITH_AS(c.validate(),
                       "CostModel: inter-node bandwidth 0 bytes/s is not a finite positive number",
                       std::invalid_argument);
  c = CostModel{};
  c.intra_node.latency_s = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(c.validate(),
                       "CostModel: intra-node latency inf s is not a finite non-negative number",
                       std::invalid_argument);
  c = CostModel{};
  c.backward_overlap = 1.25;
  CHECK_THROWS_WITH_AS(c.validate(), "CostModel: backward overlap 1.25 is outside [0, 1]",
                       std::invalid_argument);
}
