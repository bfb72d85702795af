// hsgd_trace: a deterministic hierarchical-SGD workload that other implementations can run too,
// for cross-checking to the last bits.
//
//   hsgd_trace --world N --hierarchy "P:G,..." [--warmup W] --steps S --dim D [--seed K]
//              [--lr LR] [--out FILE]
//              [--outer [LEVEL=]nesterov:LR:MU]... [--wire [LEVEL=]bf16|fp16|int8]...
//              [--fragments F [--delay TAU] [--mix ALPHA]]
//   mpirun -np N hsgd_trace --backend mpi --hierarchy ... (world size and rank from MPI; rank 0
//              gathers every rank's vector and writes the file)
//
// In float64 on every rank: p[i] = cos(0.01*(i+1)*(K+1)); at each step t = 0..S-1:
// g[i] = sin(0.001*(i+1)*(rank+1)*(t+1)), p[i] -= lr*g[i], then one hierarchical averaging call
// (AbsolutePhase, PyTorch's HierarchicalModelAverager). Writes
// {"ranks":[{"rank":0,"final":[...D numbers...]},...]} with 17 significant digits.
//
// --outer and --wire set a level's LevelPolicy (LEVEL: the 0-based level index, smallest group
// first; none: the top level): an outer Nesterov step on the level's pseudo-gradient, and the
// format its averages are sent in. --fragments switches to streaming (StreamingAverager over a
// one-level hierarchy P:N, with level 0's outer optimizer and wire): F fragments, each result
// mixed in TAU steps later with weight ALPHA (defaults 0 and 1). With any of these, the
// gradients are averaged over the world during warm-up (t < W) before the update, as post-local
// SGD does, so that every rank leaves warm-up with the same parameters; without them the trace
// is the plain one above.
//
// Built with -ffp-contract=off, so that no fused multiply-add changes the last bits.
#include <strata/averaging/averager.hpp>
#include <strata/averaging/outer.hpp>
#include <strata/averaging/streaming.hpp>
#include <strata/comm/local.hpp>
#ifdef STRATA_EXAMPLES_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif

#include "cli.hpp"
#include "level_flags.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using cli::usage_error;

// One --outer or --wire: the level it names (none: the top level) and what follows "LEVEL=".
struct LevelSetting {
  std::optional<std::size_t> level;
  std::string value;
};

struct Options {
  int world = 0;
  bool mpi = false;
  std::string hierarchy;
  std::size_t warmup = 0;
  std::size_t steps = 0;
  std::size_t dim = 0;
  std::size_t seed = 0;
  double lr = 0.05;
  std::string out = "-";
  std::vector<LevelSetting> outer;
  std::vector<LevelSetting> wire;
  std::optional<std::size_t> fragments;
  std::optional<std::size_t> delay;
  std::optional<double> mix;
};

// "[LEVEL=]VALUE": a leading run of digits followed by '=' names the level.
LevelSetting parse_level_setting(std::string_view flag, std::string_view text) {
  const auto [level, rest] = cli::split_level(flag, text);
  return {level, std::string(rest)};
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool have[4] = {false, false, false, false};  // world, hierarchy, steps, dim
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--backend") {
      const std::string_view b = value();
      if (b == "mpi") {
#ifdef STRATA_EXAMPLES_HAVE_MPI
        o.mpi = true;
#else
        throw usage_error("--backend mpi: this build has no MPI");
#endif
      } else if (b != "local") {
        throw usage_error("--backend must be local or mpi, got \"" + std::string(b) + "\"");
      }
    } else if (arg == "--world") {
      o.world = static_cast<int>(cli::parse_integer(arg, value(), 1, 1024));
      have[0] = true;
    } else if (arg == "--hierarchy") {
      o.hierarchy = value();
      have[1] = true;
    } else if (arg == "--warmup") {
      o.warmup = cli::parse_integer(arg, value());
    } else if (arg == "--steps") {
      o.steps = cli::parse_integer(arg, value(), 0, 10'000'000);
      have[2] = true;
    } else if (arg == "--dim") {
      o.dim = cli::parse_integer(arg, value(), 0, 100'000'000);
      have[3] = true;
    } else if (arg == "--seed") {
      o.seed = cli::parse_integer(arg, value());
    } else if (arg == "--lr") {
      o.lr = cli::parse_real(arg, value(), -1e6, 1e6);
    } else if (arg == "--out") {
      o.out = value();
    } else if (arg == "--outer") {
      o.outer.push_back(parse_level_setting(arg, value()));
    } else if (arg == "--wire") {
      o.wire.push_back(parse_level_setting(arg, value()));
    } else if (arg == "--fragments") {
      o.fragments = cli::parse_size(arg, value(), 1, 100'000'000);
    } else if (arg == "--delay") {
      o.delay = cli::parse_size(arg, value(), 0, 100'000'000);
    } else if (arg == "--mix") {
      o.mix = cli::parse_real(arg, value(), -1e6, 1e6);
    } else {
      throw usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
    }
  }
  const char* names[4] = {"--world", "--hierarchy", "--steps", "--dim"};
  for (int k = o.mpi ? 1 : 0; k < 4; ++k) {  // under MPI the world size comes from MPI
    if (!have[k]) throw usage_error(std::string(names[k]) + " is required");
  }
  if ((o.delay || o.mix) && !o.fragments) {
    throw usage_error("--delay and --mix are streaming settings: they need --fragments");
  }
  return o;
}

// The level a --outer or --wire names, checked against the hierarchy and against earlier ones.
std::size_t setting_level(const char* flag, const LevelSetting& s, std::size_t levels,
                          std::vector<bool>& seen) {
  const std::size_t l = s.level.value_or(levels - 1);
  if (l >= levels) {
    throw usage_error(std::string(flag) + ": level " + std::to_string(l) +
                      " is out of range: the hierarchy's levels are 0.." +
                      std::to_string(levels - 1));
  }
  if (seen[l]) {
    throw usage_error(std::string(flag) + ": level " + std::to_string(l) + " is given twice");
  }
  seen[l] = true;
  return l;
}

// The levels' policies from --outer and --wire; empty when neither was given, so that the
// averager runs its plain path.
std::vector<strata::LevelPolicy> level_policies(const Options& o,
                                                const strata::RuntimeHierarchy& h) {
  if (o.outer.empty() && o.wire.empty()) return {};
  const std::size_t levels = h.num_levels();
  std::vector<strata::LevelPolicy> policies(levels);
  std::vector<bool> seen(levels, false);
  for (const LevelSetting& s : o.outer) {
    policies[setting_level("--outer", s, levels, seen)].outer =
        cli::parse_nesterov("--outer", s.value);
  }
  seen.assign(levels, false);
  for (const LevelSetting& s : o.wire) {
    policies[setting_level("--wire", s, levels, seen)].wire =
        cli::parse_wire_name("--wire", s.value);
  }
  return policies;
}

// The workload's settings beyond the options: the levels' policies and the streaming settings.
struct Plan {
  std::vector<strata::LevelPolicy> policies;
  std::optional<strata::StreamingOptions> streaming;

  // Warm-up averages the gradients when an averager keeps anchors.
  [[nodiscard]] bool anchored() const {
    if (streaming) return true;
    for (const strata::LevelPolicy& p : policies) {
      if (p.keeps_anchor()) return true;
    }
    return false;
  }
};

Plan make_plan(const Options& o, const strata::RuntimeHierarchy& h) {
  Plan plan{level_policies(o, h), std::nullopt};
  if (o.fragments) {
    if (h.num_levels() != 1) {
      throw usage_error("--fragments: streaming fragments need a one-level hierarchy P:N, got " +
                        std::to_string(h.num_levels()) + " levels");
    }
    plan.streaming =
        strata::StreamingOptions{*o.fragments, o.delay.value_or(0), o.mix.value_or(1.0)};
    plan.streaming->check(h.level(0).period);
  }
  return plan;
}

// The steps of one rank, with whichever averager the plan names.
template <strata::communicator Comm, class Averager>
std::vector<double> train(Comm& comm, const Options& o, bool anchored, Averager& averager) {
  const double rank = comm.rank();
  std::vector<double> p(o.dim);
  for (std::size_t i = 0; i < o.dim; ++i) {
    p[i] = std::cos(0.01 * static_cast<double>(i + 1) * static_cast<double>(o.seed + 1));
  }
  if (anchored) averager.begin(std::span<double>(p));
  std::vector<double> g(o.dim);
  for (std::size_t t = 0; t < o.steps; ++t) {
    for (std::size_t i = 0; i < o.dim; ++i) {
      g[i] = std::sin(0.001 * static_cast<double>(i + 1) * (rank + 1) * static_cast<double>(t + 1));
    }
    if (anchored && t < o.warmup) comm.all_reduce(std::span<double>(g), strata::ReduceOp::average);
    for (std::size_t i = 0; i < o.dim; ++i) p[i] = p[i] - o.lr * g[i];
    averager.average(std::span<double>(p));
  }
  return p;
}

// One rank's run of the workload; returns its final parameters.
template <strata::communicator Comm>
std::vector<double> run_rank(Comm& comm, const Options& o, const strata::RuntimeHierarchy& h,
                             const Plan& plan) {
  if (plan.streaming) {
    const strata::LevelPolicy level0 =
        plan.policies.empty() ? strata::LevelPolicy{} : plan.policies[0];
    strata::StreamingAverager<Comm> averager(comm, h.level(0).period, *plan.streaming, o.warmup,
                                             level0.outer, level0.wire);
    return train(comm, o, true, averager);
  }
  strata::RuntimeHierarchicalAverager<Comm> averager(
      comm, h, o.warmup, strata::AveragerOptions{.levels = plan.policies});
  return train(comm, o, plan.anchored(), averager);
}

void write_json(std::FILE* f, const std::vector<std::vector<double>>& finals) {
  std::fputs("{\"ranks\":[", f);
  for (std::size_t r = 0; r < finals.size(); ++r) {
    std::fprintf(f, "%s{\"rank\":%zu,\"final\":[", r == 0 ? "" : ",", r);
    for (std::size_t i = 0; i < finals[r].size(); ++i) {
      std::fprintf(f, "%s%.17g", i == 0 ? "" : ",", finals[r][i]);
    }
    std::fputs("]}", f);
  }
  std::fputs("]}\n", f);
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    std::printf(
        "usage: hsgd_trace --world N --hierarchy P:G[,P:G...] --steps S --dim D\n"
        "                  [--warmup W] [--seed K] [--lr LR] [--out FILE] [--backend local|mpi]\n"
        "                  [--outer [LEVEL=]nesterov:LR:MU]... [--wire [LEVEL=]bf16|fp16|int8]...\n"
        "                  [--fragments F [--delay TAU] [--mix ALPHA]]\n"
        "With --backend mpi (under mpirun) the world size and ranks come from MPI.\n"
        "Runs the deterministic hierarchical-SGD trace on N in-process ranks and writes\n"
        "{\"ranks\":[{\"rank\":0,\"final\":[...]},...]} to FILE (default: standard output).\n"
        "--outer: a Nesterov outer step (learning rate LR > 0, momentum MU in [0, 1)) on\n"
        "  level LEVEL (0-based, smallest group first; default: the top level); repeatable,\n"
        "  once per level.\n"
        "--wire: the format level LEVEL sends its averages in; repeatable, once per level.\n"
        "--fragments: streaming over a one-level hierarchy P:N: F fragments (F divides P),\n"
        "  each result mixed in TAU steps later (TAU < P/F, default 0) with weight ALPHA\n"
        "  (0 < ALPHA <= 1, default 1); level 0's --outer and --wire apply.\n"
        "With --outer, a compressed --wire or --fragments, the gradients are averaged over the\n"
        "world during warm-up.\n");
    return 0;
  }
  return cli::run("hsgd_trace", [&] {
    Options o = parse_args(argc, argv);
    const auto h = strata::RuntimeHierarchy::parse(o.hierarchy);
    const Plan plan = make_plan(o, h);
    std::vector<std::vector<double>> finals;
    if (o.mpi) {
#ifdef STRATA_EXAMPLES_HAVE_MPI
      strata::MpiEnvironment env(argc, argv);
      auto comm = strata::MpiComm::world();
      if (o.world != 0 && o.world != comm.size()) {
        throw usage_error("--world " + std::to_string(o.world) + " but MPI runs " +
                          std::to_string(comm.size()) + " processes");
      }
      o.world = comm.size();
      h.check_world_size(static_cast<std::size_t>(o.world));
      const std::vector<double> mine = run_rank(comm, o, h, plan);
      std::vector<double> all(mine.size() * static_cast<std::size_t>(o.world));
      comm.all_gather(std::span<const double>(mine), std::span<double>(all));
      if (comm.rank() != 0) return 0;
      for (int r = 0; r < o.world; ++r) {
        const auto first =
            all.begin() + static_cast<std::ptrdiff_t>(mine.size() * static_cast<std::size_t>(r));
        finals.emplace_back(first, first + static_cast<std::ptrdiff_t>(mine.size()));
      }
#endif
    } else {
      h.check_world_size(static_cast<std::size_t>(o.world));
      finals.resize(static_cast<std::size_t>(o.world));
      strata::LocalWorld(o.world).run([&](strata::LocalComm& comm) {
        finals[static_cast<std::size_t>(comm.rank())] = run_rank(comm, o, h, plan);
      });
    }
    std::FILE* f = o.out == "-" ? stdout : std::fopen(o.out.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "hsgd_trace: cannot write %s: %s\n", o.out.c_str(),
                   std::strerror(errno));
      return 1;
    }
    write_json(f, finals);
    if (f != stdout && std::fclose(f) != 0) {
      std::fprintf(stderr, "hsgd_trace: cannot write %s\n", o.out.c_str());
      return 1;
    }
    return 0;
  });
}
