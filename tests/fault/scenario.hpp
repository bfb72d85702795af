// One scenario of the fault campaign: a backend, a world, a hierarchy, a parameter layout and
// one fault, all drawn from one seed (the same seed always gives the same scenario); what each
// rank reports back; and the rules that judge those reports.
//
// The expectations, per rank of the scenario. F is the faulty rank; the faulty collective is the
// one the fault names (the world's broadcast of a control word, or the averaging all-reduce of
// F's group at the step's level); its members M include F; the other ranks are O.
//
//   every rank   Steps before the faulty one complete, with the serial mean. (Local backend,
//                faults other than mismatch: a rank still in an earlier step when the fault
//                fires may fail there instead, with a strata::error naming F or the timeout and
//                that step's parameters unchanged: a failed local world fails every pending
//                collective.)
//                Its outcome arrives within its bound: 2 x deadline + margin after it began the
//                faulty step (plus the stall, for a stalling F); else the scenario is a hang.
//
//   throws       F: its own injected_fault; parameters unchanged.
//                M: a strata::error (not usage_error) naming F on the local backend; on MPI and
//                   NCCL, which cannot tell who is missing, a strata::error naming the timeout
//                   (NCCL: or a peer's abort), and at least one member holds a timeout_error.
//   returns_early  F: nothing (it returned); parameters unchanged. M: as for throws.
//   stalls       F: a strata::error naming the timeout (NCCL: or a peer's abort); on MPI it may
//                   also complete (its late call meets its peers' requests, which MPI cannot
//                   cancel): counted as a late completion, with the mean. Alone in its group,
//                   F completes.
//                M: a strata::error naming the timeout (NCCL: or a peer's abort); at least one
//                   member holds a timeout_error.
//   mismatch     F and M: a strata::usage_error naming F and the rule broken; nothing written.
//                   The local backend names F by its world rank; MPI and NCCL by its rank in the
//                   collective's communicator (the only numbering they have).
//   O            mismatch: the step completes with the mean. Otherwise: completes with the mean,
//                or a strata::error naming F or the timeout (NCCL: or a peer's abort).
//
// Parameters: a rank that completes the step holds its group's serial mean; a rank that fails
// holds the parameters it had before the step (snapshot), bitwise. One exception, from
// DeviceAverager's contract: on NCCL, an averaging step that was enqueued and fails while being
// waited for (`synchronize`) leaves its tensors untrusted; they are not checked then (a change is
// counted as `untrusted_changed`), except after a mismatch, where nothing may be written.
// MPI's broadcast does not synchronise: a member that does not depend on a missing F may
// complete it, and is then judged as O.
//
// NCCL's blocking mode (drawn for half of the NCCL scenarios): a communicator connects its
// members in its first collective, a call that waits inside NCCL for every member. When a
// throwing, leaving or stalling F misses that first collective (the world's broadcast at step 0,
// or the first averaging on a level that has a communicator of its own), the members wait there
// until the watchdog ends the process: the worker must then die of SIGABRT with the watchdog's
// line naming the collective and the deadline, and no member may report an outcome. Everywhere
// else the blocking mode owes what the non-blocking mode owes.
#pragma once

#include <strata/hierarchy/level.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "../tools/random_levels.hpp"
#include "faulty_comm.hpp"

namespace fault {

enum class Backend : std::uint8_t { local, mpi, nccl };

constexpr std::string_view to_string(Backend b) noexcept {
  switch (b) {
    case Backend::local: return "local";
    case Backend::mpi: return "mpi";
    case Backend::nccl: return "nccl";
  }
  return "unknown";
}

// The collectives of one step, in the order every rank calls them.
inline constexpr int broadcast_index = 0;  // the control word, over the world, from rank 0
inline constexpr int average_index = 1;    // the averaging all-reduce, when the step averages

inline constexpr int steps_horizon = 6;  // the faulty step is one of the first six
inline constexpr std::size_t control_words = 4;
inline constexpr std::chrono::milliseconds bound_margin{1500};

struct Scenario {
  std::uint64_t seed = 0;
  Backend backend = Backend::local;
  int world = 1;
  std::vector<strata::LevelSpec> levels;
  std::size_t warmup = 0;
  bool flat = false;                 // the in-place form of `average`, else a list of tensors
  bool graphs = false;               // DeviceAverager with CUDA graphs (NCCL only)
  bool blocking = false;             // NCCL's blocking mode (NCCL only)
  std::vector<std::size_t> tensors;  // sizes; their sum is the parameter count
  int faulty = 0;
  FaultSpec fault;
  std::chrono::milliseconds timeout{250};

  [[nodiscard]] std::size_t params() const {
    std::size_t n = 0;
    for (std::size_t t : tensors) n += t;
    return n;
  }

  // The schedule rule, independently of the library: the highest level whose period divides
  // the step, once warm-up is over.
  [[nodiscard]] std::optional<std::size_t> level_at(std::size_t step) const {
    if (step < warmup) return std::nullopt;
    std::optional<std::size_t> l;
    for (std::size_t i = 0; i < levels.size(); ++i) {
      if (step % levels[i].period == 0) l = i;
    }
    return l;
  }

  // Whether the averaging all-reduce of `step` goes through the communicator's API: a
  // DeviceAverager with graphs calls it only when it captures a level's graph (the level's first
  // step); replays launch the graph.
  [[nodiscard]] bool all_reduce_called(std::size_t step) const {
    const auto level = level_at(step);
    if (!level) return false;
    if (!graphs) return true;
    for (std::size_t t = 0; t < step; ++t) {
      if (level_at(t) == level) return false;
    }
    return true;
  }

  // The world ranks of the faulty collective, in its communicator's order.
  [[nodiscard]] std::vector<int> members() const {
    std::size_t g = static_cast<std::size_t>(world);
    if (fault.index == average_index) {
      g = levels[*level_at(static_cast<std::size_t>(fault.step))].group_size;
    }
    const std::size_t first = static_cast<std::size_t>(faulty) / g * g;
    std::vector<int> m;
    for (std::size_t r = first; r < first + g; ++r) m.push_back(static_cast<int>(r));
    return m;
  }

  // Whether the faulty collective is the first on its communicator: the one that connects its
  // members in NCCL's blocking mode. With argument verification on (as the campaign runs), the
  // agreement's all-gather is that first call, made inside the same collective, and a split
  // agrees on its arguments over the parent too: the averager's construction, which splits the
  // world for every level whose group is smaller, has then connected the world before step 0.
  // A level whose group is the world uses the world's communicator.
  [[nodiscard]] bool first_on_its_communicator() const {
    if (fault.index == broadcast_index) {
      const bool splits = std::any_of(levels.begin(), levels.end(), [&](const auto& l) {
        return l.group_size != static_cast<std::size_t>(world);
      });
      return fault.step == 0 && !splits;
    }
    const auto level = level_at(static_cast<std::size_t>(fault.step));
    if (levels[*level].group_size == static_cast<std::size_t>(world)) return false;
    for (std::size_t t = 0; t < static_cast<std::size_t>(fault.step); ++t) {
      if (level_at(t) == level) return false;
    }
    return true;
  }

  // Blocking mode: the members wait inside NCCL for an F that never makes the connecting call
  // (or makes it past the deadline), and the watchdog ends the process.
  [[nodiscard]] bool watchdog_ends_it() const {
    return blocking && fault.kind != Kind::mismatch && members().size() > 1 &&
           first_on_its_communicator();
  }

  [[nodiscard]] std::string hierarchy() const {
    std::string s;
    for (const strata::LevelSpec& l : levels) {
      if (!s.empty()) s += ',';
      s += std::to_string(l.period) + ':' + std::to_string(l.group_size);
    }
    return s;
  }

  [[nodiscard]] std::string fault_text() const {
    std::string s(to_string(fault.kind));
    if (fault.kind == Kind::mismatch) s += "(" + std::string(to_string(fault.mismatch)) + ")";
    return s;
  }

  [[nodiscard]] std::string describe() const {
    std::string s = "seed=" + std::to_string(seed) + " backend=" + std::string(to_string(backend)) +
                    " world=" + std::to_string(world) + " hierarchy=" + hierarchy() +
                    " warmup=" + std::to_string(warmup) + " form=" + (flat ? "flat" : "tensors");
    if (backend == Backend::nccl) {
      s += graphs ? " graphs=yes" : " graphs=no";
      s += blocking ? " mode=blocking" : " mode=non-blocking";
    }
    s += " params=" + std::to_string(params()) + " fault=" + fault_text() +
         " rank=" + std::to_string(faulty) + " step=" + std::to_string(fault.step) + " collective=";
    const auto m = members();
    if (fault.index == broadcast_index) {
      s += "broadcast(world)";
    } else {
      s += "all_reduce(level " + std::to_string(*level_at(static_cast<std::size_t>(fault.step))) +
           ", ranks " + std::to_string(m.front()) + ".." + std::to_string(m.back()) + ")";
    }
    return s;
  }
};

// splitmix64: decorrelates consecutive seeds.
constexpr std::uint64_t mix(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A chain of divisors of n ending at n, with strictly increasing periods.
inline std::vector<strata::LevelSpec> random_levels(std::mt19937_64& rng, std::size_t n) {
  return test_tools::random_levels(rng, n, 3);
}

// The scenario of `seed` on `backend`: a function of both alone, so that a run of one seed
// replays what a campaign drew for it.
inline Scenario make_scenario(std::uint64_t seed, Backend backend,
                              std::chrono::milliseconds timeout) {
  std::mt19937_64 rng(mix(seed));
  Scenario s;
  s.seed = seed;
  s.backend = backend;
  s.timeout = timeout;
  // MPI runs processes on a small machine: moderate worlds.
  s.world =
      backend == Backend::mpi ? 2 + static_cast<int>(rng() % 7) : 1 + static_cast<int>(rng() % 16);
  s.levels = random_levels(rng, static_cast<std::size_t>(s.world));
  s.warmup = rng() % 3;
  s.flat = rng() % 2 == 0;
  s.graphs = backend == Backend::nccl && rng() % 2 == 0;
  const std::size_t params = 1 + rng() % 48;
  const std::size_t pieces = std::min<std::size_t>(params, 1 + rng() % 3);
  std::size_t left = params;
  for (std::size_t i = 0; i + 1 < pieces; ++i) {
    const std::size_t t = 1 + rng() % (left - (pieces - 1 - i));
    s.tensors.push_back(t);
    left -= t;
  }
  s.tensors.push_back(left);

  std::vector<int> averaging;
  for (int t = 0; t < steps_horizon; ++t) {
    if (s.all_reduce_called(static_cast<std::size_t>(t))) averaging.push_back(t);
  }
  if (!averaging.empty() && rng() % 4 != 0) {
    s.fault.index = average_index;
    s.fault.step = averaging[rng() % averaging.size()];
  } else {
    s.fault.index = broadcast_index;
    s.fault.step = static_cast<int>(rng() % steps_horizon);
  }
  s.faulty = static_cast<int>(rng() % static_cast<std::uint64_t>(s.world));
  s.fault.kind = static_cast<Kind>(rng() % 4);
  s.fault.stall = 2 * timeout + std::chrono::milliseconds(100);
  if (s.fault.kind == Kind::mismatch) {
    const bool alone = s.members().size() == 1;
    // Alone in its collective, a rank can only pass arguments that are invalid on their own.
    std::vector<Mismatch> choices;
    if (s.fault.index == average_index) {
      choices = alone ? std::vector{Mismatch::io_size}
                      : std::vector{Mismatch::count, Mismatch::io_size, Mismatch::op,
                                    Mismatch::type, Mismatch::kind};
    } else {
      choices = alone ? std::vector{Mismatch::root_invalid}
                      : std::vector{Mismatch::count, Mismatch::root, Mismatch::root_invalid,
                                    Mismatch::type, Mismatch::kind};
    }
    s.fault.mismatch = choices[rng() % choices.size()];
  }
  // Drawn last, so that the draws above stay those of every earlier campaign.
  s.blocking = backend == Backend::nccl && rng() % 2 == 0;
  return s;
}

// What one rank reports: how its faulty step ended, and anything wrong before it.
struct Outcome {
  // ok, error (a strata::error or another exception), injected, left; none (no report) and
  // hung (no report within the time limit) are set by the campaign
  std::string status = "none";
  // the most derived of usage_error, timeout_error, mpi_error, nccl_error, cuda_error, error;
  // "std" for another std::exception, "unknown" for anything else
  std::string type;
  std::string message;
  std::string phase;  // setup, broadcast, broadcast_wait, average, average_wait
  int step = -1;
  long elapsed_ms = 0;
  std::string params;   // averaged or wrong (completed); unchanged or changed (failed)
  std::string control;  // the control word: ok / wrong (completed); unchanged / written (failed)
  bool fired = false;   // the faulty rank injected its fault
  std::vector<std::string> problems;  // "corrupted: ..." or "wrong: ..." before the faulty step

  [[nodiscard]] bool is_strata_error() const {
    return status == "error" && type != "std" && type != "unknown";
  }
};

// The judgement of one scenario.
struct Verdict {
  bool hang = false;
  bool killed = false;
  std::vector<std::string> hangs, wrong, corrupted;
  bool untrusted_changed = false;
  bool late_completion = false;
  long max_ms = 0;

  [[nodiscard]] bool failed() const { return hang || !wrong.empty() || !corrupted.empty(); }
};

// Whether `text` contains any of the '|'-separated words of `words`, ignoring case.
inline bool mentions(std::string_view text, std::string_view words) {
  const auto lower = [](char c) {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  };
  std::string t(text);
  for (char& c : t) c = lower(c);
  while (!words.empty()) {
    const std::size_t bar = words.find('|');
    std::string w(words.substr(0, bar));
    for (char& c : w) c = lower(c);
    if (!w.empty() && t.find(w) != std::string::npos) return true;
    if (bar == std::string_view::npos) break;
    words.remove_prefix(bar + 1);
  }
  return false;
}

inline bool names_timeout(const std::string& m) {
  return mentions(m,
                  "timed out|time-out|timeout|deadline|did not finish within|not complete after");
}
inline bool names_abort(const std::string& m) { return mentions(m, "asynchronous|remote|abort"); }

// Whether `m` names `rank`: "rank 3", or a list after "rank(s) ", as in "rank(s) 1, 3".
inline bool names_rank(std::string_view m, int rank) {
  for (std::size_t at = m.find("rank"); at != std::string_view::npos; at = m.find("rank", at + 1)) {
    std::size_t i = at + 4;
    if (m.substr(i, 3) == "(s)") i += 3;
    if (i >= m.size() || m[i] != ' ') continue;
    ++i;
    for (;;) {
      const std::size_t begin = i;
      long n = 0;
      while (i < m.size() && m[i] >= '0' && m[i] <= '9') n = n * 10 + (m[i++] - '0');
      if (i == begin) break;
      if (n == rank) return true;
      if (m.substr(i, 2) != ", ") break;
      i += 2;
    }
  }
  return false;
}

inline const char* rule_pattern(Mismatch m) {
  switch (m) {
    case Mismatch::count:
    case Mismatch::io_size: return "element|count|size";
    case Mismatch::op: return "sum|average|min|max|reduc";
    case Mismatch::type: return "float|double|int32|int64|type";
    case Mismatch::kind: return "broadcast|all_reduce|all-reduce|collective|operation|called";
    case Mismatch::root:
    case Mismatch::root_invalid: return "root";
    case Mismatch::none: break;
  }
  return "";
}

inline std::string quote(const Outcome& o) {
  std::string s = o.status;
  if (!o.type.empty()) s += " " + o.type;
  if (!o.phase.empty()) s += " in " + o.phase;
  if (!o.message.empty()) s += " \"" + o.message + "\"";
  return s;
}

// Judges the reports of every rank against the expectations above.
inline Verdict judge(const Scenario& s, const std::map<int, Outcome>& outcomes) {
  Verdict v;
  const std::vector<int> members = s.members();
  const auto is_member = [&](int r) {
    return std::find(members.begin(), members.end(), r) != members.end();
  };
  const int comm_rank = s.faulty - members.front();  // F's rank in the faulty collective
  const bool alone = members.size() == 1;
  const Kind kind = s.fault.kind;
  const bool local = s.backend == Backend::local;
  const bool nccl = s.backend == Backend::nccl;
  const bool mpi = s.backend == Backend::mpi;
  // A member may complete an MPI broadcast without a missing F.
  const bool loose = mpi && s.fault.index == broadcast_index && kind != Kind::mismatch;
  bool any_timeout_error = false;
  bool member_timed_out = false;
  std::vector<int> missing;

  for (int r = 0; r < s.world; ++r) {
    const std::string who = "rank " + std::to_string(r) + ": ";
    const auto it = outcomes.find(r);
    if (it == outcomes.end() || it->second.status == "none") {
      missing.push_back(r);
      continue;
    }
    const Outcome& o = it->second;
    if (o.status == "hung") {
      v.hang = true;
      v.hangs.push_back(who + "no outcome within the time limit");
      continue;
    }
    for (const std::string& p : o.problems) {
      (p.starts_with("corrupted") ? v.corrupted : v.wrong).push_back(who + p);
    }
    if (o.step != s.fault.step) {
      // The local backend fails every pending collective of the world once a rank fails or
      // leaves: a rank still in an earlier step fails there, for the same cause.
      const bool caught_early = local && kind != Kind::mismatch && o.step >= 0 &&
                                o.step < s.fault.step && o.is_strata_error() &&
                                o.type != "usage_error" &&
                                (names_rank(o.message, s.faulty) || names_timeout(o.message));
      if (!caught_early) {
        v.wrong.push_back(who + "ended at step " + std::to_string(o.step) + " (" + quote(o) +
                          "), not at the faulty step " + std::to_string(s.fault.step));
      } else if (o.params != "unchanged") {
        v.corrupted.push_back(who + "failed at step " + std::to_string(o.step) +
                              " but its parameters changed");
      }
      continue;
    }
    v.max_ms = std::max(v.max_ms, o.elapsed_ms);
    const auto stall =
        r == s.faulty && kind == Kind::stalls ? s.fault.stall : std::chrono::milliseconds(0);
    const auto bound = stall + 2 * s.timeout + bound_margin;
    if (o.elapsed_ms > bound.count()) {
      v.hang = true;
      v.hangs.push_back(who + "took " + std::to_string(o.elapsed_ms) + " ms, bound " +
                        std::to_string(bound.count()) + " ms");
    }
    if (r == s.faulty && !o.fired) {
      v.wrong.push_back(who +
                        "the fault never fired (the campaign's model of the collectives "
                        "is wrong)");
    }

    // Parameters and control word: the completed hold the mean, the failed their snapshot.
    const bool untrusted = nccl && o.phase == "average_wait" && kind != Kind::mismatch;
    auto check_data = [&] {
      if (o.status == "ok") {
        if (o.params != "averaged") v.corrupted.push_back(who + "completed with wrong parameters");
        if (o.control != "ok") v.corrupted.push_back(who + "completed with a wrong control word");
      } else if (untrusted) {
        if (o.params != "unchanged") v.untrusted_changed = true;
      } else {
        if (o.params != "unchanged") {
          v.corrupted.push_back(who + "failed (" + o.status + ") but its parameters changed");
        }
        if (kind == Kind::mismatch && o.phase == "broadcast" && o.control != "unchanged") {
          v.corrupted.push_back(who +
                                "failed a mismatched broadcast but its control word was "
                                "written");
        }
      }
    };
    check_data();

    auto expect = [&](bool ok, const std::string& what) {
      if (!ok) v.wrong.push_back(who + "expected " + what + ", got " + quote(o));
    };
    // A strata::error that names the loss of a peer the backend can see.
    auto peer_cause = [&](const Outcome& x) {
      if (!x.is_strata_error() || x.type == "usage_error") return false;
      if (local) return names_rank(x.message, s.faulty) || names_timeout(x.message);
      return names_timeout(x.message) || (nccl && names_abort(x.message));
    };
    auto timeout_cause = [&](const Outcome& x) {
      return x.is_strata_error() && x.type != "usage_error" &&
             (names_timeout(x.message) || (nccl && names_abort(x.message)));
    };
    auto usage_cause = [&](const Outcome& x) {
      return x.status == "error" && x.type == "usage_error" &&
             names_rank(x.message, local ? s.faulty : comm_rank) &&
             mentions(x.message, rule_pattern(s.fault.mismatch));
    };

    if (o.type == "timeout_error" && is_member(r)) any_timeout_error = true;

    if (r == s.faulty) {
      switch (kind) {
        case Kind::throws: expect(o.status == "injected", "its own injected_fault"); break;
        case Kind::returns_early:
          expect(o.status == "left", "to hold nothing (it returned early)");
          break;
        case Kind::stalls:
          if (alone) {
            expect(o.status == "ok", "to complete (nobody waited for it)");
          } else if (mpi && o.status == "ok") {
            v.late_completion = true;
          } else {
            expect(timeout_cause(o), "a strata::error naming the timeout");
          }
          break;
        case Kind::mismatch:
          expect(usage_cause(o), "a strata::usage_error naming rank " + std::to_string(s.faulty) +
                                     " and the " + std::string(to_string(s.fault.mismatch)) +
                                     " rule");
          break;
      }
    } else if (is_member(r) && !(loose && o.status == "ok") &&
               !(loose && o.phase != "broadcast" && o.phase != "broadcast_wait")) {
      switch (kind) {
        case Kind::throws:
        case Kind::returns_early:
          member_timed_out = member_timed_out || !local;
          if (local) {
            expect(
                o.is_strata_error() && o.type != "usage_error" && names_rank(o.message, s.faulty),
                "a strata::error naming rank " + std::to_string(s.faulty));
          } else {
            expect(timeout_cause(o), "a strata::error naming the timeout");
          }
          break;
        case Kind::stalls:
          member_timed_out = true;
          expect(timeout_cause(o), "a strata::error naming the timeout");
          break;
        case Kind::mismatch:
          expect(usage_cause(o), "a strata::usage_error naming rank " + std::to_string(s.faulty) +
                                     " and the " + std::string(to_string(s.fault.mismatch)) +
                                     " rule");
          break;
      }
    } else {
      // Outside the faulty collective (or past an MPI broadcast that did not need F).
      if (kind == Kind::mismatch) {
        expect(o.status == "ok", "to complete the step");
      } else {
        expect(o.status == "ok" || peer_cause(o), "to complete, or a strata::error naming rank " +
                                                      std::to_string(s.faulty) + " or the timeout");
      }
    }
  }
  if (!missing.empty()) {
    std::string list;
    for (int r : missing) list += (list.empty() ? "" : " ") + std::to_string(r);
    v.wrong.insert(v.wrong.begin(), "no outcome from rank(s) " + list + " (the process died)");
  }
  if (member_timed_out && !any_timeout_error && v.wrong.empty()) {
    v.wrong.push_back("no member of the faulty collective holds a strata::timeout_error");
  } else if (member_timed_out && !any_timeout_error) {
    v.wrong.push_back("and no member holds a strata::timeout_error");
  }
  return v;
}

// The judgement of a scenario that the watchdog must end (`Scenario::watchdog_ends_it`): how
// the worker process ended (`died_of_abort`: of SIGABRT) and its log, and what ranks reported
// before it ended. Steps before the faulty one still complete with the mean; no member other
// than F gets past the connecting call.
inline Verdict judge_watchdog(const Scenario& s, bool died_of_abort, const std::string& log,
                              const std::map<int, Outcome>& outcomes) {
  Verdict v;
  const std::string op = s.fault.index == broadcast_index ? "broadcast" : "all_reduce";
  const std::string line = "has blocked for " + std::to_string(s.timeout.count()) +
                           " ms, past the communicator's deadline";
  if (!died_of_abort) v.wrong.push_back("the worker did not die of the watchdog's SIGABRT");
  const std::size_t at = log.find("strata: ");
  if (at == std::string::npos || log.find(line, at) == std::string::npos ||
      log.find("(" + op + ", rank ", at) == std::string::npos) {
    v.wrong.push_back("the log holds no watchdog line naming " + op + " and the deadline (" + line +
                      ")");
  }
  const std::vector<int> members = s.members();
  for (const auto& [r, o] : outcomes) {
    const std::string who = "rank " + std::to_string(r) + ": ";
    for (const std::string& p : o.problems) {
      (p.starts_with("corrupted") ? v.corrupted : v.wrong).push_back(who + p);
    }
    const bool member = std::find(members.begin(), members.end(), r) != members.end();
    if (member && r != s.faulty && o.step == s.fault.step) {
      v.wrong.push_back(who + "reported " + quote(o) +
                        " from a collective whose connection its peer never made");
    }
    if (o.status == "ok" && o.params != "averaged") {
      v.corrupted.push_back(who + "completed with wrong parameters");
    }
  }
  return v;
}

}  // namespace fault
