// The fault campaign's judge on reports written by hand: it must accept what the contract allows
// and catch each way a backend can break it, or the campaign would prove nothing.
#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <string>

#include "scenario.hpp"

namespace {

using fault::Backend;
using fault::Kind;
using fault::Mismatch;
using fault::Outcome;
using fault::Scenario;

// World of 4, hierarchy 1:2,2:4; rank 3 is faulty at step 1, whose level-0 group is ranks 2..3.
Scenario pair_scenario(Backend b, Kind k, Mismatch m = Mismatch::none) {
  Scenario s = fault::make_scenario(1, b, std::chrono::milliseconds(250));
  s.world = 4;
  s.levels = {{1, 2}, {2, 4}};
  s.warmup = 0;
  s.graphs = false;
  s.faulty = 3;
  s.fault.step = 1;
  s.fault.index = fault::average_index;
  s.fault.kind = k;
  s.fault.mismatch = m;
  return s;
}

Outcome ok() {
  Outcome o;
  o.status = "ok";
  o.step = 1;
  o.params = "averaged";
  o.control = "ok";
  o.phase = "done";
  return o;
}

Outcome failed(std::string type, std::string message) {
  Outcome o;
  o.status = "error";
  o.type = std::move(type);
  o.message = std::move(message);
  o.step = 1;
  o.params = "unchanged";
  o.control = "unchanged";
  o.phase = "average";
  return o;
}

}  // namespace

TEST_CASE("fault judge: the faulty collective's members") {
  CHECK(pair_scenario(Backend::local, Kind::throws).members() == std::vector<int>{2, 3});
  Scenario s = pair_scenario(Backend::local, Kind::throws);
  s.fault.index = fault::broadcast_index;
  CHECK(s.members() == std::vector<int>{0, 1, 2, 3});
}

TEST_CASE("fault judge: a mismatch needs a usage_error naming the faulty rank and the rule") {
  const std::string local_text =
      "rank 2 and rank 3 disagree: rank 2 reduces with sum, rank 3 with max";
  std::map<int, Outcome> reports{{0, ok()},
                                 {1, ok()},
                                 {2, failed("usage_error", local_text)},
                                 {3, failed("usage_error", local_text)}};
  reports[3].fired = true;
  const Scenario s = pair_scenario(Backend::local, Kind::mismatch, Mismatch::op);
  CHECK(!fault::judge(s, reports).failed());

  auto r = reports;
  r[2].type = "error";  // not a usage_error
  CHECK(fault::judge(s, r).wrong.size() == 1);
  r = reports;
  r[2].message = "rank 2 and rank 1 disagree: sum against max";  // names another rank
  CHECK(fault::judge(s, r).wrong.size() == 1);
  r = reports;
  r[2].message = "rank 3 is wrong";  // names no rule
  CHECK(fault::judge(s, r).wrong.size() == 1);
  r = reports;
  r[3].params = "changed";  // written although it failed
  CHECK(fault::judge(s, r).corrupted.size() == 1);
  r = reports;
  r[0].params = "wrong";  // completed with a wrong mean
  CHECK(fault::judge(s, r).corrupted.size() == 1);
  r = reports;
  r[0] = failed("usage_error", local_text);  // outside the collective, it must complete
  CHECK(fault::judge(s, r).wrong.size() == 1);
  r = reports;
  r[3].fired = false;
  CHECK(fault::judge(s, r).wrong.size() == 1);
  r = reports;
  r.erase(1);
  CHECK(fault::judge(s, r).wrong.size() == 1);

  // MPI numbers the ranks of the level's communicator: rank 3 of the world is its rank 1.
  const Scenario m = pair_scenario(Backend::mpi, Kind::mismatch, Mismatch::op);
  auto mpi = reports;
  mpi[2].message = mpi[3].message =
      "rank 0 and rank 1 disagree: rank 0 reduces with sum, rank 1 with max";
  CHECK(!fault::judge(m, mpi).failed());
  CHECK(fault::judge(m, reports).wrong.size() == 2);
}

TEST_CASE("fault judge: a stall needs the timeout named and one timeout_error, in time") {
  const Scenario s = pair_scenario(Backend::mpi, Kind::stalls);
  std::map<int, Outcome> reports{
      {0, ok()},
      {1, ok()},
      {2, failed("timeout_error", "all_reduce on rank 2: timed out after 250 ms")},
      {3, failed("mpi_error", "all_reduce on rank 1: timed out after 250 ms")}};
  reports[3].fired = true;
  reports[3].elapsed_ms = 850;
  CHECK(!fault::judge(s, reports).failed());

  auto r = reports;
  r[2].type = "mpi_error";
  CHECK(fault::judge(s, r).wrong.size() == 1);  // nobody holds a timeout_error
  r = reports;
  r[3] = ok();  // MPI: the late call met its peers' pending requests
  r[3].fired = true;
  const fault::Verdict late = fault::judge(s, r);
  CHECK(!late.failed());
  CHECK(late.late_completion);
  r = reports;
  r[2].elapsed_ms = 2 * 250 + 1500 + 1;
  CHECK(fault::judge(s, r).hang);
  r = reports;
  r[3].elapsed_ms = 600 + 2 * 250 + 1500;  // the staller's bound includes its stall
  CHECK(!fault::judge(s, r).hang);
  r = reports;
  r[1].status = "hung";
  CHECK(fault::judge(s, r).hang);
}

TEST_CASE("fault judge: a rank that throws, on the local backend, is named by its peers") {
  const Scenario s = pair_scenario(Backend::local, Kind::throws);
  std::map<int, Outcome> reports{
      {0, ok()},
      {1, failed("error", "all_reduce on rank 1: rank 3 failed: injected fault")},
      {2, failed("error", "all_reduce on rank 2: rank 3 failed: injected fault")},
      {3, ok()}};
  reports[3].status = "injected";
  reports[3].params = "unchanged";
  reports[3].fired = true;
  CHECK(!fault::judge(s, reports).failed());

  auto r = reports;
  r[2].message = "rank 13 failed";  // another rank
  CHECK(fault::judge(s, r).wrong.size() == 1);
  r = reports;
  r[2].type = "std";  // not a strata::error
  CHECK(fault::judge(s, r).wrong.size() == 1);
  r = reports;
  r[3].status = "left";  // not its own exception
  CHECK(fault::judge(s, r).wrong.size() == 1);
  r = reports;
  r[0] = failed("error", "broadcast on rank 0: rank 3 failed: injected fault");
  r[0].step = 0;  // caught in an earlier step by the failed world
  CHECK(!fault::judge(s, r).failed());
  r[0].params = "changed";
  CHECK(fault::judge(s, r).corrupted.size() == 1);
}

TEST_CASE("fault judge: rank lists and causes in messages") {
  CHECK(fault::names_rank("waited for rank(s) 1, 13, which already returned", 13));
  CHECK(fault::names_rank("rank 3 failed", 3));
  CHECK(!fault::names_rank("rank 13 failed", 3));
  CHECK(!fault::names_rank("rank 31 failed", 3));
  CHECK(!fault::names_rank("ranks 3", 3));
  CHECK(fault::names_timeout("Timed out after 250 ms"));
  CHECK(fault::names_timeout("the stream did not finish within 250 ms"));
  CHECK(!fault::names_timeout("rank 3 failed"));
}

TEST_CASE("fault judge: NCCL's blocking mode, where a missed connection ends the process") {
  // Rank 3 throws at step 1, the first averaging on level 0 (ranks 2..3, a communicator of its
  // own): in blocking mode rank 2 waits in the connecting call until the watchdog ends the
  // process.
  Scenario s = pair_scenario(Backend::nccl, Kind::throws);
  s.blocking = true;
  REQUIRE(s.first_on_its_communicator());
  REQUIRE(s.watchdog_ends_it());
  const std::string line =
      "strata: ncclAllGather (all_reduce, rank 0) has blocked for 250 ms, past the "
      "communicator's deadline. ...\n";
  std::map<int, Outcome> reports{{0, ok()}, {1, ok()}, {3, failed("std", "injected fault")}};
  reports[3].status = "injected";
  CHECK(!fault::judge_watchdog(s, true, line, reports).failed());
  // Not killed by the watchdog's abort, or no line naming the collective and the deadline.
  CHECK(fault::judge_watchdog(s, false, line, reports).wrong.size() == 1);
  CHECK(fault::judge_watchdog(s, true, "", reports).wrong.size() == 1);
  CHECK(fault::judge_watchdog(
            s, true, "strata: ncclBroadcast (broadcast, rank 0) has blocked for 250 ms", reports)
            .wrong.size() == 1);
  // A member past the connection its peer never made.
  auto r = reports;
  r[2] = failed("timeout_error", "synchronize on rank 0: timed out after 250 ms");
  CHECK(fault::judge_watchdog(s, true, line, r).wrong.size() == 1);
  // An earlier step's wrong mean still counts.
  r = reports;
  r[0].problems.push_back("corrupted: step 0: wrong mean");
  CHECK(fault::judge_watchdog(s, true, line, r).corrupted.size() == 1);

  // Elsewhere the blocking mode owes what the non-blocking mode owes.
  Scenario later = s;
  later.fault.step = 3;  // level 0 averaged at step 1 already: connected
  CHECK(!later.watchdog_ends_it());
  Scenario mismatch = s;
  mismatch.fault.kind = Kind::mismatch;  // every member makes the connecting call
  CHECK(!mismatch.watchdog_ends_it());
  Scenario non_blocking = s;
  non_blocking.blocking = false;
  CHECK(!non_blocking.watchdog_ends_it());
  // The world's broadcast: the averager's split agreed over the world before step 0.
  Scenario broadcast = s;
  broadcast.fault.index = fault::broadcast_index;
  broadcast.fault.step = 0;
  CHECK(!broadcast.first_on_its_communicator());
  broadcast.levels = {{2, 4}};
  CHECK(broadcast.first_on_its_communicator());
  CHECK(broadcast.watchdog_ends_it());
}
