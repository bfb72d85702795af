// schedule_explain: prints which level of a hierarchy averages at each step and, given the
// parameter count, what each level sends and keeps per rank.
//
//   schedule_explain --hierarchy 2:8,4:32,8:64 [--warmup W] [--steps N] [--json]
//                    [--phase absolute|warmup-relative] [--param-bytes B] [--width COLUMNS]
//                    [--params N] [--wire [LEVEL=]FORMAT]... [--outer [LEVEL=]nesterov:LR:MU]...
//
// Bad arguments print one line on stderr and exit with status 2.
#include <strata/averaging/outer.hpp>
#include <strata/comm/compressed_average.hpp>
#include <strata/kernels/wire_codec.hpp>
#include <strata/strata.hpp>

#include "cli.hpp"
#include "level_flags.hpp"

#include <charconv>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

constexpr std::size_t max_steps = 1'000'000;
// The mean bytes per step count the averagings of one hyper-period, or of this many steps of it.
constexpr std::size_t max_counted_steps = 10'000'000;
// Parameters per rank: compressed_average_bytes counts a few bytes per parameter in 64 bits.
constexpr std::size_t max_params = 1'000'000'000'000'000;

using cli::usage_error;

struct Options {
  std::string hierarchy;
  std::size_t warmup = 0;
  std::optional<std::size_t> steps;
  std::size_t param_bytes = 0;
  std::size_t width = 64;
  bool json = false;
  bool relative = false;
  std::optional<std::size_t> params;
  // (level, setting); no level: the last one.
  std::vector<std::pair<std::optional<std::size_t>, strata::WireFormat>> wires;
  std::vector<std::pair<std::optional<std::size_t>, strata::OuterOptimizer>> outers;
};

void print_help() {
  std::printf(
      "usage: schedule_explain --hierarchy P:G[,P:G...] [--warmup W] [--steps N] [--json]\n"
      "                        [--phase absolute|warmup-relative] [--param-bytes B] [--width C]\n"
      "                        [--params N] [--wire [LEVEL=]FORMAT] [--outer "
      "[LEVEL=]nesterov:LR:MU]\n"
      "\n"
      "  --hierarchy    levels as period:group_size, smallest group first (e.g. 2:8,4:32,8:64)\n"
      "  --warmup       steps of synchronous SGD before any averaging (default 0)\n"
      "  --steps        steps to show (default: warm-up plus two hyper-periods, at least 16)\n"
      "  --json         print {\"steps\":[{\"step\":0,\"level\":2,\"group_size\":64},...]}\n"
      "  --phase        absolute: periods count from step 0 (hierarchical SGD, the default);\n"
      "                 warmup-relative: from the end of warm-up (plain local SGD)\n"
      "  --param-bytes  parameter bytes per rank: adds the bytes each level sends (ring)\n"
      "  --width        steps per timeline row (default 64)\n"
      "  --params       parameters per rank (fp32, at most 1e15): adds per level the bytes each\n"
      "                rank sends per averaging and per step (mean over a hyper-period) and the\n"
      "                memory it keeps\n"
      "  --wire         a level (default: the last; 0 = the smallest group) averages in bf16, "
      "fp16\n"
      "                or int8 (compressed average) instead of a ring all-reduce; repeatable\n"
      "  --outer        a level (default: the last) applies Nesterov with learning rate LR and\n"
      "                momentum MU to its average (keeps an anchor and a momentum); repeatable\n");
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool have_hierarchy = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--hierarchy") {
      o.hierarchy = value();
      have_hierarchy = true;
    } else if (arg == "--warmup") {
      o.warmup = cli::parse_integer(arg, value());
    } else if (arg == "--steps") {
      o.steps = cli::parse_integer(arg, value());
    } else if (arg == "--param-bytes") {
      o.param_bytes = cli::parse_integer(arg, value());
    } else if (arg == "--width") {
      o.width = cli::parse_integer(arg, value());
      if (o.width == 0) throw usage_error("--width must be positive");
    } else if (arg == "--params") {
      o.params = cli::parse_integer(arg, value(), 1, max_params);
    } else if (arg == "--wire") {
      const auto [level, text] = cli::split_level(arg, value());
      o.wires.emplace_back(level, cli::parse_wire_name(arg, text));
    } else if (arg == "--outer") {
      const auto [level, text] = cli::split_level(arg, value());
      o.outers.emplace_back(level, cli::parse_nesterov(arg, text));
    } else if (arg == "--json") {
      o.json = true;
    } else if (arg == "--phase") {
      const std::string_view p = value();
      if (p == "absolute") {
        o.relative = false;
      } else if (p == "warmup-relative") {
        o.relative = true;
      } else {
        throw usage_error("--phase must be absolute or warmup-relative, got \"" + std::string(p) +
                          "\"");
      }
    } else {
      throw usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
    }
  }
  if (!have_hierarchy) throw usage_error("--hierarchy is required, e.g. --hierarchy 2:8,4:32,8:64");
  if ((!o.wires.empty() || !o.outers.empty()) && !o.params) {
    throw usage_error("--wire and --outer need --params N, the parameters per rank");
  }
  return o;
}

// Each level's policy from the --wire and --outer flags.
std::vector<strata::LevelPolicy> level_policies(const Options& o,
                                                const strata::RuntimeHierarchy& h) {
  const std::size_t n = h.num_levels();
  std::vector<strata::LevelPolicy> out(n);
  std::vector<bool> wired(n, false);
  std::vector<bool> outered(n, false);
  const auto level_of = [&](std::string_view flag, std::optional<std::size_t> level,
                            std::vector<bool>& seen) {
    const std::size_t l = level.value_or(n - 1);
    if (l >= n) {
      throw usage_error(std::string(flag) + ": level " + std::to_string(l) +
                        " is beyond the hierarchy's levels 0.." + std::to_string(n - 1));
    }
    if (seen[l]) {
      throw usage_error(std::string(flag) + ": level " + std::to_string(l) + " is given twice");
    }
    seen[l] = true;
    return l;
  };
  for (const auto& [level, wire] : o.wires) out[level_of("--wire", level, wired)].wire = wire;
  for (const auto& [level, outer] : o.outers) {
    out[level_of("--outer", level, outered)].outer = outer;
  }
  return out;
}

// "512 B", "6.144 kB", "7.875 MB", "1.2 GB".
std::string bytes_text(double b) {
  char buf[32];
  if (b < 1e3) {
    std::snprintf(buf, sizeof buf, "%.4g B", b);
  } else if (b < 1e6) {
    std::snprintf(buf, sizeof buf, "%.4g kB", b / 1e3);
  } else if (b < 1e9) {
    std::snprintf(buf, sizeof buf, "%.4g MB", b / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.4g GB", b / 1e9);
  }
  return buf;
}

// What one level costs each rank: the bytes of one averaging (and of a native ring all-reduce
// of the same values), its mean bytes per step, and the memory it keeps.
struct LevelCost {
  double sent = 0.0;
  double ring = 0.0;
  double per_step = 0.0;
  double anchor = 0.0;
  double momentum = 0.0;
};

std::vector<LevelCost> level_costs(const strata::RuntimeHierarchy& h,
                                   const std::vector<strata::LevelPolicy>& policies,
                                   std::size_t params, std::size_t counted) {
  // Warm-up 0: the steady-state pattern, whatever the phase.
  const auto counts = strata::RuntimeSchedule<strata::AbsolutePhase>(h, 0).sync_counts(counted);
  const double fp32 = 4.0 * static_cast<double>(params);
  std::vector<LevelCost> out(h.num_levels());
  for (std::size_t l = 0; l < out.size(); ++l) {
    const std::size_t g = h.level(l).group_size;
    const strata::LevelPolicy& p = policies[l];
    LevelCost& c = out[l];
    c.ring = strata::RingAllReduce::bytes_per_rank(fp32, g);
    c.sent = p.wire == strata::WireFormat::native
                 ? c.ring
                 : static_cast<double>(strata::compressed_average_bytes(p.wire, params, g));
    c.per_step = c.sent * static_cast<double>(counts[l]) / static_cast<double>(counted);
    if (p.keeps_anchor()) c.anchor = fp32;
    if (p.outer) c.momentum = fp32 * static_cast<double>(p.outer->state_per_element());
  }
  return out;
}

std::string kept_text(const LevelCost& c) {
  if (c.anchor == 0.0) return "-";
  return bytes_text(c.anchor + c.momentum) +
         (c.momentum != 0.0 ? " (anchor + momentum)" : " (anchor)");
}

std::string format_costs(const Options& o, const strata::RuntimeHierarchy& h,
                         const std::vector<strata::LevelPolicy>& policies,
                         const std::vector<LevelCost>& costs, std::size_t counted) {
  std::string out = "\nper rank, " + std::to_string(*o.params) + " parameters (fp32), mean over ";
  out += counted == h.hyper_period()
             ? "a hyper-period of " + std::to_string(counted) + " steps:\n"
             : "the first " + std::to_string(counted) + " steps of a hyper-period of " +
                   std::to_string(h.hyper_period()) + ":\n";
  char line[256];
  std::snprintf(line, sizeof line, "  %-6s %-7s %-7s %-20s %-14s %-14s %-14s %s\n", "level",
                "group", "wire", "outer", "per averaging", "as fp32 ring", "per step", "kept");
  out += line;
  double total = 0.0;
  double kept = 0.0;
  for (std::size_t l = costs.size(); l-- > 0;) {
    const LevelCost& c = costs[l];
    const strata::LevelPolicy& p = policies[l];
    std::snprintf(line, sizeof line, "  %-6zu %-7zu %-7s %-20s %-14s %-14s %-14s %s\n", l,
                  h.level(l).group_size, std::string(strata::wire_name(p.wire)).c_str(),
                  p.outer ? p.outer->name().c_str() : "-", bytes_text(c.sent).c_str(),
                  bytes_text(c.ring).c_str(), bytes_text(c.per_step).c_str(), kept_text(c).c_str());
    out += line;
    total += c.per_step;
    kept += c.anchor + c.momentum;
  }
  std::snprintf(line, sizeof line, "  %-6s %-7s %-7s %-20s %-14s %-14s %-14s %s\n", "all", "", "",
                "", "", "", bytes_text(total).c_str(),
                kept == 0.0 ? "-" : bytes_text(kept).c_str());
  out += line;
  return out;
}

// The same as JSON members: "params":N,"hyper_period":H,"counted_steps":C,"levels":[...].
std::string json_costs(const Options& o, const strata::RuntimeHierarchy& h,
                       const std::vector<strata::LevelPolicy>& policies,
                       const std::vector<LevelCost>& costs, std::size_t counted) {
  std::string out = "\"params\":" + std::to_string(*o.params) +
                    ",\"hyper_period\":" + std::to_string(h.hyper_period()) +
                    ",\"counted_steps\":" + std::to_string(counted) + ",\"levels\":[";
  char buf[512];
  for (std::size_t l = 0; l < costs.size(); ++l) {
    const LevelCost& c = costs[l];
    const strata::LevelPolicy& p = policies[l];
    const std::string outer = p.outer ? "\"" + p.outer->name() + "\"" : "null";
    std::snprintf(buf, sizeof buf,
                  "%s{\"level\":%zu,\"group_size\":%zu,\"period\":%zu,\"wire\":\"%s\","
                  "\"outer\":%s,\"bytes_per_averaging\":%.17g,\"ring_bytes_per_averaging\":%.17g,"
                  "\"mean_bytes_per_step\":%.17g,\"anchor_bytes\":%.17g,\"momentum_bytes\":%.17g}",
                  l == 0 ? "" : ",", l, h.level(l).group_size, h.level(l).period,
                  std::string(strata::wire_name(p.wire)).c_str(), outer.c_str(), c.sent, c.ring,
                  c.per_step, c.anchor, c.momentum);
    out += buf;
  }
  return out + "]";
}

template <strata::phase_policy Phase>
void explain(const Options& o, const strata::RuntimeHierarchy& h) {
  const strata::RuntimeSchedule<Phase> s(h, o.warmup);
  std::size_t steps = 0;
  if (o.steps) {
    steps = *o.steps;
  } else {
    steps = std::max<std::size_t>(16, o.warmup + 2 * std::min(h.hyper_period(), max_steps));
    steps = std::min(steps, max_steps);
  }
  if (steps > max_steps) {
    throw usage_error("--steps " + std::to_string(steps) + " is more than the " +
                      std::to_string(max_steps) + " steps this tool prints");
  }
  std::vector<strata::LevelPolicy> policies;
  std::vector<LevelCost> costs;
  const std::size_t counted = std::min(h.hyper_period(), max_counted_steps);
  if (o.params) {
    policies = level_policies(o, h);
    costs = level_costs(h, policies, *o.params, counted);
  }
  if (o.json) {
    std::string json = strata::format_json(s, steps);
    if (o.params) {
      json.pop_back();  // the closing brace
      json += "," + json_costs(o, h, policies, costs, counted) + "}";
    }
    std::printf("%s\n", json.c_str());
    return;
  }
  std::printf("hierarchy %s on %zu ranks\n%s", h.to_string().c_str(), h.world_size(),
              strata::format_timeline(s, steps, o.param_bytes, o.width).c_str());
  if (o.params) std::printf("%s", format_costs(o, h, policies, costs, counted).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    print_help();
    return 0;
  }
  return cli::run("schedule_explain", [&] {
    const Options o = parse_args(argc, argv);
    const auto h = strata::RuntimeHierarchy::parse(o.hierarchy);
    if (o.relative) {
      explain<strata::WarmupRelativePhase>(o, h);
    } else {
      explain<strata::AbsolutePhase>(o, h);
    }
    return 0;
  });
}
