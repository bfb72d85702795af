// The communicator front end that every backend shares: its argument checks, its cross-rank
// rule and its encoding, tested directly. Expected values are written out by hand.
#include <doctest/doctest.h>

#include <strata/comm/detail/call.hpp>
#include <strata/comm/detail/deadline.hpp>
#include <strata/comm/local.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

namespace {

using strata::detail::Call;
using strata::detail::Collective;
using strata::detail::Fault;

constexpr std::size_t max = std::numeric_limits<std::size_t>::max();

}  // namespace

TEST_CASE("front end: size checks compare by division, so products that wrap are rejected") {
  // A multiplication in*n == out would accept these: (2^63) * 2 wraps to 0.
  const std::size_t half = max / 2 + 1;
  CHECK(strata::detail::check_gather(half, 0, 2).fault == Fault::gather_size);
  CHECK(strata::detail::check_scatter(0, half, 2).fault == Fault::scatter_size);
  CHECK(!strata::detail::check_gather(3, 12, 4));
  CHECK(!strata::detail::check_scatter(12, 3, 4));
  CHECK(strata::detail::check_all_to_all(12, 12, 5).fault == Fault::all_to_all_size);
  CHECK(strata::detail::check_root(-1, 4).fault == Fault::bad_root);
  CHECK(strata::detail::check_color(-3).fault == Fault::negative_color);
}

TEST_CASE("front end: uneven counts are bounded before they are summed") {
  // max + 3 wraps to 2: an unchecked sum would match the 2-element buffers.
  const std::vector<std::size_t> huge{max, 3};
  const std::vector<std::size_t> ok{1, 1};
  const strata::detail::Problem p = strata::detail::check_uneven(huge, ok, 2, 2, 2);
  CHECK(p.fault == Fault::count_too_large);
  CHECK(strata::detail::describe(p, 2) ==
        "count " + std::to_string(max) + " for rank 0 exceeds the buffers (2 and 2 elements)");
  strata::detail::UnevenLayout layout;
  const std::vector<std::size_t> send{2, 0, 3}, recv{1, 1, 1};
  CHECK(!strata::detail::check_uneven(send, recv, 5, 3, 3, &layout));
  CHECK(layout.send_offsets == std::vector<std::size_t>{0, 2, 2});
  CHECK(layout.recv_offsets == std::vector<std::size_t>{0, 1, 2});
  CHECK(strata::detail::check_uneven(send, recv, 6, 3, 3).fault == Fault::counts_total);
  CHECK(strata::detail::check_uneven(send, std::span<const std::size_t>(recv).first(2), 5, 3, 3)
            .fault == Fault::count_arity);
}

TEST_CASE("front end: the first disagreement is the same whatever member evaluates it") {
  std::vector<Call> calls(4, strata::detail::make_call<float>(Collective::all_reduce, 8, 8));
  const auto call = [&](int m) -> const Call& { return calls[static_cast<std::size_t>(m)]; };
  CHECK(!strata::detail::first_disagreement(4, call, strata::detail::rank_name));
  calls[3].in = calls[3].out = 7;
  calls[2].reduce = strata::ReduceOp::max;
  // Member 2 differs first (lowest member), in its reduction.
  CHECK(*strata::detail::first_disagreement(4, call, strata::detail::rank_name) ==
        "rank 0 and rank 2 disagree: rank 0 reduces with sum, rank 2 with max");
  // A member's own invalid arguments come before any disagreement.
  calls[3].problem = strata::detail::check_same_size(8, 7);
  CHECK(*strata::detail::first_disagreement(4, call, strata::detail::rank_name) ==
        "rank 3: input has 8 elements but output has 7");
}

TEST_CASE("front end: a call survives its encoding into words") {
  Call c = strata::detail::make_call<std::int64_t>(Collective::reduce_scatter, 12, 3,
                                                   strata::ReduceOp::average, 2);
  c.problem = strata::detail::check_scatter(12, 4, 4);
  const auto words = strata::detail::encode(c);
  const Call d = strata::detail::decode(words);
  CHECK(d.op == c.op);
  CHECK(d.type == c.type);
  CHECK(d.reduce == c.reduce);
  CHECK(d.root == 2);
  CHECK(d.in == 12);
  CHECK(d.out == 3);
  CHECK(strata::detail::describe(d.problem, 4) == "input has 12 elements; it needs 4 x 4");
}

TEST_CASE("front end: count disagreements name the lowest receiver, then the sender") {
  // Three members; receiver 2 expects 5 from sender 1, which sends 4; receiver 1 expects 9 from
  // sender 0, which sends 1: receiver 1 comes first.
  std::vector<strata::detail::CountMismatch> found(3);
  const std::vector<std::size_t> from_r1{1, 1, 1}, exp_r1{9, 1, 1};
  const std::vector<std::size_t> from_r2{1, 4, 1}, exp_r2{1, 5, 1};
  const std::vector<std::size_t> ones{1, 1, 1};
  found[0] = strata::detail::find_count_mismatch(0, ones, ones);
  found[1] = strata::detail::find_count_mismatch(1, from_r1, exp_r1);
  found[2] = strata::detail::find_count_mismatch(2, from_r2, exp_r2);
  CHECK(*strata::detail::first_count_disagreement(
            std::span<const strata::detail::CountMismatch>(found), strata::detail::rank_name) ==
        "counts disagree: rank 0 sends 1 elements to rank 1, which expects 9");
}

TEST_CASE("local backend: uneven counts that wrap around are rejected on every member") {
  strata::LocalWorld(2).run([](strata::LocalComm& comm) {
    std::vector<float> a(2, 1.0f), b(2, 7.0f);
    const std::vector<std::size_t> huge{max, 3};
    const std::vector<std::size_t> ok{1, 1};
    const bool me = comm.rank() == 1;
    const std::string expected =
        "rank 1: count " + std::to_string(max) + " for rank 0 exceeds the buffers";
    CHECK_THROWS_WITH_AS(
        comm.all_to_all(std::span<const float>(a), std::span<const std::size_t>(me ? huge : ok),
                        std::span<float>(b), std::span<const std::size_t>(ok)),
        doctest::Contains(expected.c_str()), strata::usage_error);
    CHECK(b == std::vector<float>{7.0f, 7.0f});
  });
}

TEST_CASE("front end: one deadline default and one polling policy for every backend") {
  // The backends' options take their default from the one constant (MPI's and NCCL's suites
  // check theirs); the local backend's here.
  CHECK(strata::LocalOptions{}.timeout == strata::detail::default_timeout);
  CHECK(strata::detail::default_timeout == std::chrono::minutes(5));
  // The first polls only yield; later ones sleep, so that waiting ranks leave oversubscribed
  // cores to the ranks that still compute. sleep_for never returns early, so the lower bound
  // holds on any machine.
  strata::detail::Poller poller;
  for (std::size_t i = 0; i < strata::detail::Poller::yielding_polls; ++i) poller.pause();
  const auto start = std::chrono::steady_clock::now();
  poller.pause();
  CHECK(std::chrono::steady_clock::now() - start >= strata::detail::Poller::sleep);
}

TEST_CASE("front end: a deadline says how long it waited") {
  const strata::detail::Deadline d(std::chrono::milliseconds(0));
  CHECK(d.passed());
  CHECK(d.expired() == "timed out after 0 ms");
}

TEST_CASE("front end: a timeout too long for the clock never passes") {
  // milliseconds::max() added to the clock overflows; it must mean "never", not "at once".
  const strata::detail::Deadline never(std::chrono::milliseconds::max());
  CHECK(!never.passed());
  strata::LocalOptions options;
  options.timeout = std::chrono::milliseconds::max();
  strata::LocalWorld(2).run([](strata::LocalComm& comm) { comm.barrier(); });
  strata::LocalWorld(2, options).run([](strata::LocalComm& comm) { comm.barrier(); });
}
