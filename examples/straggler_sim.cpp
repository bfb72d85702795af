// straggler_sim: predicts what a communication schedule buys against stragglers before any GPU
// hour is spent. Simulates per-rank clocks under a delay model and a cost model, over several
// seeds, and compares the schedule with synchronous SGD under the same delays, next to the
// expected consensus distance of its replicas; or ranks hierarchies (--plan), optionally only
// those that keep the replicas as close together as a reference (--max-consensus-of).
//
//   straggler_sim --world 256 --node-size 4 --hierarchy "2:8,4:64,8:256" --steps 1000
//                 --step-ms 55 --straggler-rate 0.01 --straggler-delay-ms 1000 --seeds 10
//                 [--model-bytes B] [--intra-gbps X] [--inter-gbps Y] [--json]
//                 [--fragments F [--fragment-delay TAU]] [--wire [LEVEL=]FORMAT]
//
// Bad arguments print one line on stderr and exit with status 2.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <strata/sim/consensus.hpp>
#include <strata/sim/cost.hpp>
#include <strata/sim/delay.hpp>
#include <strata/sim/method.hpp>
#include <strata/sim/monte_carlo.hpp>
#include <strata/sim/planner.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cli.hpp"
#include "level_flags.hpp"

namespace {

using cli::usage_error;
namespace sim = strata::sim;

// The cluster of the published straggler study (see docs/stragglers.md, "The t4-resnet18
// preset"). The link numbers are bus bandwidths as nccl-tests reports them, in Gbit/s.
struct Preset {
  std::size_t node_size;
  double step_ms;
  double model_bytes;
  double intra_gbps;
  double intra_latency_us;
  double inter_gbps;
  double inter_latency_us;
  double overlap;
};

Preset t4_resnet18() {
  const sim::CostModel c = sim::CostModel::t4_resnet18();
  return {c.ranks_per_node,
          55.0,  // the study's normal step: ResNet-18, batch 32 per T4
          c.model_bytes,
          c.intra_node.bandwidth_bytes_per_s * 8e-9,
          c.intra_node.latency_s * 1e6,
          c.inter_node.bandwidth_bytes_per_s * 8e-9,
          c.inter_node.latency_s * 1e6,
          c.backward_overlap};
}

// Without a preset, communication is free (0 model bytes); giving --model-bytes alone prices it
// with the preset's links.
Preset no_preset() {
  Preset p = t4_resnet18();
  p.node_size = 1;
  p.model_bytes = 0.0;
  p.intra_latency_us = 0.0;
  p.inter_latency_us = 0.0;
  p.overlap = 0.0;
  return p;
}

struct Options {
  std::optional<std::size_t> world;
  std::optional<std::size_t> node_size;
  std::optional<std::string> hierarchy;  // "sync" or P:G,...
  std::optional<std::size_t> local_period;
  std::size_t steps = 1000;
  std::optional<double> step_ms;
  double straggler_rate = 0.01;
  double straggler_delay_ms = 1000.0;
  std::vector<std::size_t> slow_ranks;
  std::optional<double> slow_factor;
  double lognormal_sigma = 0.0;
  std::size_t warmup = 0;
  bool intra_node = false;
  bool rotate_groups = false;
  std::optional<std::size_t> fragments;
  std::optional<std::size_t> fragment_delay;
  // (level, format); no level: the last one.
  std::vector<std::pair<std::optional<std::size_t>, strata::WireFormat>> wires;
  std::optional<std::string> preset;
  std::optional<double> model_bytes;
  std::optional<double> intra_gbps;
  std::optional<double> inter_gbps;
  std::optional<double> intra_latency_us;
  std::optional<double> inter_latency_us;
  std::optional<double> overlap;
  std::size_t seeds = 10;
  std::uint64_t first_seed = 1;
  bool json = false;
  bool plan = false;
  std::optional<std::size_t> max_period;
  std::size_t max_local_period = 0;
  std::size_t max_levels = 3;
  std::size_t top = 5;
  std::optional<std::string> max_consensus_of;  // "sync", "local:P" or P:G,...
};

void print_help() {
  std::printf(
      "usage: straggler_sim --world N (--hierarchy P:G,...|sync | --local-sgd P) [options]\n"
      "       straggler_sim --world N --plan --max-period P [--max-local-period P0] [--top K]\n"
      "       straggler_sim --world N --plan --max-period P --max-consensus-of SCHEDULE\n"
      "\n"
      "Simulates per-rank clocks of a training run with stragglers over several seeds and\n"
      "compares the schedule with synchronous SGD under the same delays; prints the expected\n"
      "consensus distance of the replicas (a unit random step per rank and step, exact).\n"
      "\n"
      "schedule\n"
      "  --world N                 ranks (GPUs)\n"
      "  --hierarchy P:G,...       hierarchical SGD levels, smallest group first; 'sync' for\n"
      "                            synchronous SGD\n"
      "  --local-sgd P             local SGD: the world averages every P steps\n"
      "  --warmup W                synchronous SGD steps first (default 0)\n"
      "  --intra-node              after warm-up, all-reduce gradients in each node every step\n"
      "  --rotate-groups           shuffle the ranks of each level's groups at every averaging\n"
      "                            (simulated only); also shows the contiguous groups' result\n"
      "  --fragments F             streaming: F fragments of the model synchronise at staggered\n"
      "                            steps (--local-sgd P or a one-level --hierarchy P:N; F | P)\n"
      "  --fragment-delay TAU      ... each applied TAU steps after it starts (TAU < P/F;\n"
      "                            default 0: blocking)\n"
      "  --wire [LEVEL=]FORMAT     a level (default: the last) sends bf16, fp16 or int8 values\n"
      "                            (compressed average); repeatable\n"
      "delays\n"
      "  --step-ms T               normal compute time of a step (default 55)\n"
      "  --straggler-rate p        chance that a rank is late at a step (default 0.01)\n"
      "  --straggler-delay-ms D    how late (default 1000)\n"
      "  --slow-ranks r,r,...      ranks that are always slow ...\n"
      "  --slow-factor f           ... by this factor (default 1.5)\n"
      "  --lognormal-sigma s       log-normal step times with mean --step-ms (default 0: off)\n"
      "cost (default: free communication; --preset t4-resnet18 sets all of these)\n"
      "  --node-size R             ranks per machine (default 1)\n"
      "  --model-bytes B           bytes per all-reduce (default 0)\n"
      "  --intra-gbps X            intra-node all-reduce bus bandwidth, Gbit/s (default 48)\n"
      "  --inter-gbps Y            inter-node all-reduce bus bandwidth, Gbit/s (default 25.6)\n"
      "  --intra-latency-us A      latency per ring step inside a node (default 0)\n"
      "  --inter-latency-us A      latency per ring step between nodes (default 0)\n"
      "  --overlap F               fraction of a gradient all-reduce hidden by backward (0)\n"
      "  --preset t4-resnet18      4 x T4 per machine over PCIe, 32 Gbit/s Ethernet, ResNet-18,\n"
      "                            55 ms steps; explicit flags override it\n"
      "Monte Carlo and output\n"
      "  --steps S                 steps per run (default 1000)\n"
      "  --seeds K                 runs, with seeds --seed .. --seed+K-1 (default 10)\n"
      "  --seed S                  first seed (default 1)\n"
      "  --json                    {\"ms_per_step\":..,\"sync_ms_per_step\":..,\"speedup\":..,\n"
      "                             \"ci95\":[lo,hi],...,\"consensus\":..,\"consensus_max\":..}\n"
      "planner\n"
      "  --plan                    rank hierarchies by predicted time per step\n"
      "  --max-period P            the largest period of the global level\n"
      "  --max-local-period P0     every rank averages with some group at least every P0 steps\n"
      "  --max-levels L            levels per hierarchy (default 3)\n"
      "  --top K                   how many to show (default 5)\n"
      "  --rotate-groups           also rank every hierarchy with shuffled (rotated) groups\n"
      "  --max-consensus-of S      only schedules whose consensus distance is at most that of\n"
      "                            S: sync, local:P or P:G,... (with --warmup and --intra-node\n"
      "                            as given); ranks rotated groups too. With --json:\n"
      "                            "
      "{\"reference\":{\"hierarchy\":..,\"speedup\":..,\"consensus\":..},\n"
      "                             \"plans\":[{\"hierarchy\":..,\"rotated\":..,\"speedup\":..,\n"
      "                             \"consensus\":..,\"consensus_ratio\":..},...]}\n");
}

using cli::parse_size;

// "[LEVEL=]FORMAT": a level index (0 = the smallest group) and a wire format.
std::pair<std::optional<std::size_t>, strata::WireFormat> parse_wire_flag(std::string_view flag,
                                                                          std::string_view text) {
  const auto [level, name] = cli::split_level(flag, text);
  return {level, cli::parse_wire_name(flag, name)};
}

std::vector<std::size_t> parse_ranks(std::string_view flag, std::string_view text) {
  std::vector<std::size_t> ranks;
  std::size_t begin = 0;
  while (true) {
    const std::size_t comma = text.find(',', begin);
    const std::string_view item = text.substr(
        begin, comma == std::string_view::npos ? std::string_view::npos : comma - begin);
    ranks.push_back(parse_size(flag, item, 0, 1u << 20));
    if (comma == std::string_view::npos) break;
    begin = comma + 1;
  }
  return ranks;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--world") {
      o.world = parse_size(arg, value(), 1, 1u << 20);
    } else if (arg == "--node-size") {
      o.node_size = parse_size(arg, value(), 1, 1u << 20);
    } else if (arg == "--hierarchy") {
      o.hierarchy = std::string(value());
    } else if (arg == "--local-sgd") {
      o.local_period = parse_size(arg, value(), 1, 1'000'000);
    } else if (arg == "--steps") {
      o.steps = parse_size(arg, value(), 1, 10'000'000);
    } else if (arg == "--step-ms") {
      o.step_ms = cli::parse_real(arg, value(), 0.0, 1e6);
    } else if (arg == "--straggler-rate") {
      o.straggler_rate = cli::parse_real(arg, value(), 0.0, 1.0);
    } else if (arg == "--straggler-delay-ms") {
      o.straggler_delay_ms = cli::parse_real(arg, value(), 0.0, 1e7);
    } else if (arg == "--slow-ranks") {
      o.slow_ranks = parse_ranks(arg, value());
    } else if (arg == "--slow-factor") {
      o.slow_factor = cli::parse_real(arg, value(), 0.0, 1000.0, /*lo_open=*/true);
    } else if (arg == "--lognormal-sigma") {
      o.lognormal_sigma = cli::parse_real(arg, value(), 0.0, 5.0);
    } else if (arg == "--warmup") {
      o.warmup = parse_size(arg, value(), 0, 10'000'000);
    } else if (arg == "--intra-node") {
      o.intra_node = true;
    } else if (arg == "--rotate-groups") {
      o.rotate_groups = true;
    } else if (arg == "--fragments") {
      o.fragments = parse_size(arg, value(), 1, 1'000'000);
    } else if (arg == "--fragment-delay") {
      o.fragment_delay = parse_size(arg, value(), 0, 1'000'000);
    } else if (arg == "--wire") {
      o.wires.push_back(parse_wire_flag(arg, value()));
    } else if (arg == "--preset") {
      o.preset = std::string(value());
      if (*o.preset != "t4-resnet18") {
        throw usage_error("--preset: unknown preset \"" + *o.preset + "\"; known: t4-resnet18");
      }
    } else if (arg == "--model-bytes") {
      o.model_bytes = cli::parse_real(arg, value(), 0.0, 1e15);
    } else if (arg == "--intra-gbps") {
      o.intra_gbps = cli::parse_real(arg, value(), 0.0, 1e6, /*lo_open=*/true);
    } else if (arg == "--inter-gbps") {
      o.inter_gbps = cli::parse_real(arg, value(), 0.0, 1e6, /*lo_open=*/true);
    } else if (arg == "--intra-latency-us") {
      o.intra_latency_us = cli::parse_real(arg, value(), 0.0, 1e6);
    } else if (arg == "--inter-latency-us") {
      o.inter_latency_us = cli::parse_real(arg, value(), 0.0, 1e6);
    } else if (arg == "--overlap") {
      o.overlap = cli::parse_real(arg, value(), 0.0, 1.0);
    } else if (arg == "--seeds") {
      o.seeds = parse_size(arg, value(), 1, 100'000);
    } else if (arg == "--seed") {
      o.first_seed = cli::parse_integer(arg, value());
    } else if (arg == "--json") {
      o.json = true;
    } else if (arg == "--plan") {
      o.plan = true;
    } else if (arg == "--max-period") {
      o.max_period = parse_size(arg, value(), 1, 1'000'000);
    } else if (arg == "--max-local-period") {
      o.max_local_period = parse_size(arg, value(), 1, 1'000'000);
    } else if (arg == "--max-levels") {
      o.max_levels = parse_size(arg, value(), 1, 16);
    } else if (arg == "--top") {
      o.top = parse_size(arg, value(), 1, 1000);
    } else if (arg == "--max-consensus-of") {
      o.max_consensus_of = std::string(value());
    } else {
      throw usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
    }
  }
  if (!o.world) throw usage_error("--world is required, e.g. --world 256");
  if (o.plan) {
    if (o.hierarchy || o.local_period) {
      throw usage_error("--plan ranks hierarchies itself; drop --hierarchy and --local-sgd");
    }
    if (!o.max_period) throw usage_error("--plan needs --max-period, e.g. --max-period 8");
  } else {
    if (o.max_consensus_of) throw usage_error("--max-consensus-of only applies with --plan");
    if (o.hierarchy && o.local_period) {
      throw usage_error("give one of --hierarchy and --local-sgd, not both");
    }
    if (!o.hierarchy && !o.local_period) {
      throw usage_error("give --hierarchy P:G,... (or sync), --local-sgd P, or --plan");
    }
    if (o.max_period || o.max_local_period != 0) {
      throw usage_error("--max-period and --max-local-period only apply with --plan");
    }
  }
  if (o.warmup > o.steps) {
    throw usage_error("--warmup " + std::to_string(o.warmup) + " is longer than --steps " +
                      std::to_string(o.steps));
  }
  if (o.slow_factor && o.slow_ranks.empty()) {
    throw usage_error("--slow-factor needs --slow-ranks");
  }
  if (o.fragment_delay && !o.fragments) throw usage_error("--fragment-delay needs --fragments");
  const bool one_level = o.local_period || (o.hierarchy && *o.hierarchy != "sync" &&
                                            o.hierarchy->find(',') == std::string::npos);
  if (o.fragments && o.plan) throw usage_error("--fragments does not apply to --plan");
  if (o.fragments && !one_level) {
    throw usage_error("--fragments needs a one-level schedule: --local-sgd P or --hierarchy P:N");
  }
  if (!o.wires.empty() && (o.plan || !(o.local_period || *o.hierarchy != "sync"))) {
    throw usage_error("--wire applies to --local-sgd and --hierarchy P:G,..., not to " +
                      std::string(o.plan ? "--plan" : "--hierarchy sync"));
  }
  return o;
}

struct Models {
  sim::DelayModel delays;
  sim::CostModel cost;
};

Models models(const Options& o) {
  const Preset p = o.preset ? t4_resnet18() : no_preset();
  Models m;
  m.delays.step_s = o.step_ms.value_or(p.step_ms) * 1e-3;
  m.delays.straggler_rate = o.straggler_rate;
  m.delays.straggler_delay_s = o.straggler_delay_ms * 1e-3;
  m.delays.slow_ranks = o.slow_ranks;
  m.delays.slow_factor = o.slow_factor.value_or(1.5);
  m.delays.lognormal_sigma = o.lognormal_sigma;
  m.cost.ranks_per_node = o.node_size.value_or(p.node_size);
  m.cost.model_bytes = o.model_bytes.value_or(p.model_bytes);
  m.cost.intra_node = {o.intra_gbps.value_or(p.intra_gbps) * 1e9 / 8,
                       o.intra_latency_us.value_or(p.intra_latency_us) * 1e-6};
  m.cost.inter_node = {o.inter_gbps.value_or(p.inter_gbps) * 1e9 / 8,
                       o.inter_latency_us.value_or(p.inter_latency_us) * 1e-6};
  m.cost.backward_overlap = o.overlap.value_or(p.overlap);
  return m;
}

// A schedule in the command line's words: "sync", "local:P" or a hierarchy P:G,...
sim::Method schedule_method(const Options& o, std::string_view flag, const std::string& text) {
  if (text == "sync") {
    if (o.warmup != 0) {
      throw usage_error("--warmup applies to local and hierarchical SGD, not to " +
                        std::string(flag) + " sync");
    }
    return sim::Method::synchronous(*o.world);
  }
  sim::Method m = sim::Method::synchronous(*o.world);
  if (text.starts_with("local:")) {
    const std::size_t p = parse_size(flag, std::string_view(text).substr(6), 1, 1'000'000);
    m = sim::Method::local_sgd(*o.world, p, o.warmup);
  } else {
    try {
      auto h = strata::RuntimeHierarchy::parse(text);
      h.check_world_size(*o.world);
      m = sim::Method::hierarchical(std::move(h), o.warmup);
    } catch (const std::invalid_argument& e) {
      throw usage_error(std::string(flag) + " \"" + text +
                        "\": not sync, local:P or a hierarchy P:G,... (" + e.what() + ")");
    }
  }
  return o.intra_node ? m.with_intra_node_gradients() : m;
}

sim::Method method(const Options& o) {
  sim::Method m = sim::Method::synchronous(*o.world);
  if (o.local_period) {
    m = sim::Method::local_sgd(*o.world, *o.local_period, o.warmup);
  } else if (*o.hierarchy != "sync") {
    auto h = strata::RuntimeHierarchy::parse(*o.hierarchy);
    h.check_world_size(*o.world);
    m = sim::Method::hierarchical(std::move(h), o.warmup);
  } else if (o.warmup != 0) {
    throw usage_error("--warmup applies to local and hierarchical SGD, not to --hierarchy sync");
  }
  if (o.intra_node) m = m.with_intra_node_gradients();
  if (o.rotate_groups) m = m.with_groups(sim::GroupAssignment::shuffled);
  if (o.fragments) {
    try {
      m = m.with_streaming(*o.fragments, o.fragment_delay.value_or(0));
    } catch (const std::invalid_argument& e) {
      throw usage_error(std::string("--fragments: ") + e.what());
    }
  }
  std::vector<bool> wired(m.levels().size(), false);
  for (const auto& [level, format] : o.wires) {
    const std::size_t l = level.value_or(m.levels().size() - 1);
    if (l >= m.levels().size()) {
      throw usage_error("--wire: level " + std::to_string(l) + " is beyond the schedule's " +
                        std::to_string(m.levels().size()) + " levels (0.." +
                        std::to_string(m.levels().size() - 1) + ")");
    }
    if (wired[l]) throw usage_error("--wire: level " + std::to_string(l) + " is given twice");
    wired[l] = true;
    m = m.with_wire(l, format);
  }
  return m;
}

double ms(double s) { return s * 1e3; }

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

void print_header(const Options& o, const Models& m) {
  const sim::DelayModel& d = m.delays;
  const sim::CostModel& c = m.cost;
  std::printf("%zu ranks (%zu per node), %zu steps, seeds %llu..%llu\n", *o.world, c.ranks_per_node,
              o.steps, static_cast<unsigned long long>(o.first_seed),
              static_cast<unsigned long long>(o.first_seed + o.seeds - 1));
  std::printf("delays: step %.4g ms; each rank, each step: %.4g%% chance of +%.4g ms", ms(d.step_s),
              100 * d.straggler_rate, ms(d.straggler_delay_s));
  if (!d.slow_ranks.empty()) {
    std::printf("; ranks");
    for (std::size_t i = 0; i < d.slow_ranks.size(); ++i) {
      std::printf("%s%zu", i ? "," : " ", d.slow_ranks[i]);
    }
    std::printf(" always %.4gx slower", d.slow_factor);
  }
  if (d.lognormal_sigma > 0) std::printf("; log-normal step times, sigma %.4g", d.lognormal_sigma);
  std::printf(
      "\ncost: model %.4g MB; intra-node %.4g Gbit/s, %.4g us/step; inter-node %.4g "
      "Gbit/s, %.4g us/step; backward overlap %.4g%%\n\n",
      c.model_bytes * 1e-6, c.intra_node.bandwidth_bytes_per_s * 8e-9, c.intra_node.latency_s * 1e6,
      c.inter_node.bandwidth_bytes_per_s * 8e-9, c.inter_node.latency_s * 1e6,
      100 * c.backward_overlap);
}

int run_estimate(const Options& o, const Models& m) {
  const sim::Method meth = method(o);
  const sim::MonteCarlo mc{o.steps, o.seeds, o.first_seed};
  const auto t0 = std::chrono::steady_clock::now();
  const sim::Estimate e = sim::estimate(meth, m.delays, m.cost, mc);
  const auto t1 = std::chrono::steady_clock::now();
  // The model takes the method's own streaming fragments and delay, with a full mix.
  const sim::Consensus spread =
      sim::consensus(meth, o.steps, {.ranks_per_node = m.cost.ranks_per_node});
  std::optional<sim::Estimate> contiguous;
  if (o.rotate_groups) {
    contiguous =
        sim::estimate(meth.with_groups(sim::GroupAssignment::contiguous), m.delays, m.cost, mc);
  }
  const double per_step = 1.0 / static_cast<double>(o.steps);
  if (o.json) {
    std::printf(
        "{\"ms_per_step\":%.6g,\"sync_ms_per_step\":%.6g,\"speedup\":%.6g,"
        "\"ci95\":[%.6g,%.6g],\"method\":%s,\"world\":%zu,\"steps\":%zu,\"seeds\":%zu,"
        "\"sync_ci95\":[%.6g,%.6g],\"speedup_per_seed_ci95\":[%.6g,%.6g]",
        ms(e.seconds_per_step.mean), ms(e.sync_seconds_per_step.mean), e.speedup(),
        ms(e.seconds_per_step.ci95.lo), ms(e.seconds_per_step.ci95.hi),
        json_string(e.method).c_str(), *o.world, o.steps, o.seeds,
        ms(e.sync_seconds_per_step.ci95.lo), ms(e.sync_seconds_per_step.ci95.hi),
        e.speedup_per_seed.ci95.lo, e.speedup_per_seed.ci95.hi);
    if (contiguous) {
      std::printf(",\"contiguous_ms_per_step\":%.6g,\"contiguous_ci95\":[%.6g,%.6g]",
                  ms(contiguous->seconds_per_step.mean), ms(contiguous->seconds_per_step.ci95.lo),
                  ms(contiguous->seconds_per_step.ci95.hi));
    }
    std::printf(",\"syncs\":[");
    for (std::size_t i = 0; i < e.syncs.size(); ++i) {
      const sim::SyncStats& s = e.syncs[i];
      std::printf(
          "%s{\"sync\":%s,\"group_size\":%zu,\"count\":%zu,\"wait_ms_per_step\":%.6g,"
          "\"comm_ms_per_step\":%.6g}",
          i ? "," : "", json_string(s.label()).c_str(), s.group_size, s.count,
          ms(s.wait_s) * per_step, ms(s.comm_s) * per_step);
    }
    std::printf("],\"consensus\":%.6g,\"consensus_max\":%.6g}\n", spread.mean, spread.max);
    return 0;
  }
  print_header(o, m);
  const auto row = [&](const std::string& name, const sim::Summary& t, double speedup,
                       const sim::Summary* paired) {
    std::printf("%-48s %9.2f  [%9.2f, %9.2f]  %6.2fx", name.c_str(), ms(t.mean), ms(t.ci95.lo),
                ms(t.ci95.hi), speedup);
    if (paired) std::printf("  [%.2f, %.2f]", paired->ci95.lo, paired->ci95.hi);
    std::printf("\n");
  };
  std::printf("%-48s %9s  %-22s  %7s  %s\n", "method", "ms/step", "95% CI (Student t)", "speed-up",
              "95% CI");
  row("synchronous SGD", e.sync_seconds_per_step, 1.0, nullptr);
  if (contiguous) {
    row(contiguous->method, contiguous->seconds_per_step, contiguous->speedup(),
        &contiguous->speedup_per_seed);
  }
  row(e.method, e.seconds_per_step, e.speedup(), &e.speedup_per_seed);
  std::printf("\nper rank and step (ms), %s:\n", e.method.c_str());
  std::printf("  %-30s %8s %10s %14s\n", "collective", "count", "waiting", "communicating");
  for (const sim::SyncStats& s : e.syncs) {
    std::printf("  %-30s %8zu %10.3f %14.3f\n", s.label().c_str(), s.count, ms(s.wait_s) * per_step,
                ms(s.comm_s) * per_step);
  }
  std::printf(
      "\nexpected consensus distance (mean squared distance of the replicas from their mean, per\n"
      "coordinate, for a unit random step per rank and step): %.4g on average, %.4g at most\n",
      spread.mean, spread.max);
  std::printf("\nsimulated %zu runs of %zu ranks x %zu steps in %.0f ms\n",
              meth.kind() == sim::MethodKind::synchronous ? o.seeds : 2 * o.seeds, *o.world,
              o.steps, std::chrono::duration<double, std::milli>(t1 - t0).count());
  return 0;
}

// The reference in the planner's words: "sync", or its levels P:G,... (local SGD of period P is
// the one level P:N).
std::string reference_text(const sim::PlanRequest& r) {
  const sim::Method& m = *r.max_consensus_of;
  if (m.kind() == sim::MethodKind::synchronous) return "sync";
  std::string s;
  for (const strata::LevelSpec& l : m.levels()) {
    if (!s.empty()) s += ',';
    s += std::to_string(l.period) + ':' + std::to_string(l.group_size);
  }
  return s;
}

std::string json_ratio(double x, double of) {
  if (of == 0.0) return x == 0.0 ? "1" : "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x / of);
  return buf;
}

int run_plan(const Options& o, const Models& m) {
  sim::PlanRequest r;
  r.world = *o.world;
  r.max_period = *o.max_period;
  r.max_local_period = o.max_local_period;
  r.max_levels = o.max_levels;
  r.top = o.top;
  r.warmup = o.warmup;
  r.intra_node = o.intra_node;
  r.mc = {o.steps, o.seeds, o.first_seed};
  r.rotated = o.rotate_groups || o.max_consensus_of.has_value();
  if (o.max_consensus_of) {
    r.max_consensus_of = schedule_method(o, "--max-consensus-of", *o.max_consensus_of);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const sim::Plan p = sim::plan(r, m.delays, m.cost);
  const double took_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double sync = p.reference        ? p.reference->estimate.sync_seconds_per_step.mean
                      : p.ranked.empty() ? 0.0
                                         : p.ranked.front().estimate.sync_seconds_per_step.mean;
  const double bound = p.reference ? p.reference->consensus.mean : 0.0;
  const auto rotated = [](const sim::Candidate& c) {
    return c.groups == sim::GroupAssignment::shuffled;
  };
  if (o.json) {
    const auto entry = [&](const sim::Candidate& c) {
      const sim::Estimate& e = c.estimate;
      std::printf(
          "{\"hierarchy\":\"%s\",\"rotated\":%s,\"ms_per_step\":%.6g,\"ci95\":[%.6g,%.6g],"
          "\"speedup\":%.6g,\"speedup_ci95\":[%.6g,%.6g],\"consensus\":%.6g,"
          "\"consensus_max\":%.6g",
          c.hierarchy.to_string().c_str(), rotated(c) ? "true" : "false",
          ms(e.seconds_per_step.mean), ms(e.seconds_per_step.ci95.lo),
          ms(e.seconds_per_step.ci95.hi), e.speedup(), e.speedup_per_seed.ci95.lo,
          e.speedup_per_seed.ci95.hi, c.consensus.mean, c.consensus.max);
      if (p.reference) {
        std::printf(",\"consensus_ratio\":%s", json_ratio(c.consensus.mean, bound).c_str());
      }
      std::printf("}");
    };
    if (p.reference) {
      const sim::Estimate& e = p.reference->estimate;
      std::printf(
          "{\"reference\":{\"hierarchy\":%s,\"method\":%s,\"ms_per_step\":%.6g,"
          "\"ci95\":[%.6g,%.6g],\"speedup\":%.6g,\"speedup_ci95\":[%.6g,%.6g],"
          "\"consensus\":%.6g,\"consensus_max\":%.6g},",
          json_string(reference_text(r)).c_str(), json_string(p.reference->method).c_str(),
          ms(e.seconds_per_step.mean), ms(e.seconds_per_step.ci95.lo),
          ms(e.seconds_per_step.ci95.hi), e.speedup(), e.speedup_per_seed.ci95.lo,
          e.speedup_per_seed.ci95.hi, p.reference->consensus.mean, p.reference->consensus.max);
      std::printf(
          "\"sync_ms_per_step\":%.6g,\"candidates\":%zu,\"within_bound\":%zu,\"refined\":%zu,"
          "\"plans\":[",
          ms(sync), p.candidates, p.within_bound, p.refined);
    } else {
      std::printf("{\"sync_ms_per_step\":%.6g,\"candidates\":%zu,\"refined\":%zu,\"ranked\":[",
                  ms(sync), p.candidates, p.refined);
    }
    for (std::size_t i = 0; i < p.ranked.size(); ++i) {
      if (i != 0) std::printf(",");
      entry(p.ranked[i]);
    }
    std::printf("]}\n");
    return 0;
  }
  print_header(o, m);
  std::printf("%zu schedules with global period <= %zu", p.candidates, *o.max_period);
  if (o.max_local_period != 0) std::printf(" and smallest-level period <= %zu", o.max_local_period);
  std::printf(", at most %zu levels%s", o.max_levels,
              r.rotated ? ", contiguous and rotated groups" : "");
  if (p.reference) {
    std::printf(";\n%zu of them no farther apart than %s (consensus distance %.4g)", p.within_bound,
                p.reference->method.c_str(), bound);
  }
  std::printf(
      "; the best %zu of a %zu-seed screen re-estimated with %zu seeds, in %.1f s\n"
      "synchronous SGD: %.2f ms/step\n",
      p.refined, std::min<std::size_t>(2, o.seeds), o.seeds, took_s, ms(sync));
  if (p.reference) {
    const sim::Estimate& e = p.reference->estimate;
    std::printf("reference %s: %.2f ms/step, %.2fx, consensus distance %.4g\n",
                reference_text(r).c_str(), ms(e.seconds_per_step.mean), e.speedup(), bound);
  }
  std::printf("\n%4s  %-28s %7s %9s  %-22s  %8s  %9s", "rank", "hierarchy", "groups", "ms/step",
              "95% CI (Student t)", "speed-up", "consensus");
  if (p.reference) std::printf("  %6s  %s", "ratio", "vs reference");
  std::printf("\n");
  for (std::size_t i = 0; i < p.ranked.size(); ++i) {
    const sim::Candidate& c = p.ranked[i];
    const sim::Estimate& e = c.estimate;
    std::printf("%4zu  %-28s %7s %9.2f  [%9.2f, %9.2f]  %7.2fx  %9.4g", i + 1,
                c.hierarchy.to_string().c_str(), rotated(c) ? "rotated" : "fixed",
                ms(e.seconds_per_step.mean), ms(e.seconds_per_step.ci95.lo),
                ms(e.seconds_per_step.ci95.hi), e.speedup(), c.consensus.mean);
    if (p.reference) {
      std::printf("  %6.3f  %.2fx faster", bound == 0.0 ? 1.0 : c.consensus.mean / bound,
                  p.reference->estimate.seconds_per_step.mean / e.seconds_per_step.mean);
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    print_help();
    return 0;
  }
  return cli::run("straggler_sim", [&] {
    const Options o = parse_args(argc, argv);
    const Models m = models(o);
    return o.plan ? run_plan(o, m) : run_estimate(o, m);
  });
}
