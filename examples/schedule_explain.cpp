// schedule_explain: prints which level of a hierarchy averages at each step.
//
//   schedule_explain --hierarchy 2:8,4:32,8:64 [--warmup W] [--steps N] [--json]
//                    [--phase absolute|warmup-relative] [--param-bytes B] [--width COLUMNS]
//
// Bad arguments print one line on stderr and exit with status 2.
#include <strata/strata.hpp>

#include "cli.hpp"

#include <charconv>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace {

constexpr std::size_t max_steps = 1'000'000;

using cli::usage_error;

struct Options {
  std::string hierarchy;
  std::size_t warmup = 0;
  std::optional<std::size_t> steps;
  std::size_t param_bytes = 0;
  std::size_t width = 64;
  bool json = false;
  bool relative = false;
};

void print_help() {
  std::printf(
      "usage: schedule_explain --hierarchy P:G[,P:G...] [--warmup W] [--steps N] [--json]\n"
      "                        [--phase absolute|warmup-relative] [--param-bytes B] [--width C]\n"
      "\n"
      "  --hierarchy    levels as period:group_size, smallest group first (e.g. 2:8,4:32,8:64)\n"
      "  --warmup       steps of synchronous SGD before any averaging (default 0)\n"
      "  --steps        steps to show (default: warm-up plus two hyper-periods, at least 16)\n"
      "  --json         print {\"steps\":[{\"step\":0,\"level\":2,\"group_size\":64},...]}\n"
      "  --phase        absolute: periods count from step 0 (hierarchical SGD, the default);\n"
      "                 warmup-relative: from the end of warm-up (plain local SGD)\n"
      "  --param-bytes  parameter bytes per rank: adds the bytes each level sends (ring)\n"
      "  --width        steps per timeline row (default 64)\n");
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
  return o;
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
  if (o.json) {
    std::printf("%s\n", strata::format_json(s, steps).c_str());
    return;
  }
  std::printf("hierarchy %s on %zu ranks\n%s", h.to_string().c_str(), h.world_size(),
              strata::format_timeline(s, steps, o.param_bytes, o.width).c_str());
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
