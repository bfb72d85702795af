// The straggler simulator against real runs, in one benchmark run.
//
//   sim_validation [--steps S] [--step-ms T] [--delay-ms D] [--rate p] [--seed K]
//
// For 16, 32 and 64 in-process ranks (the local backend, ranks as threads, 4 ranks per "node"),
// it trains nothing but runs the real communication of synchronous SGD, local SGD and
// hierarchical SGD, with each rank sleeping exactly the compute time the simulator draws for it
// (`DelayModel::step_time`: the same seed gives the same stragglers), scaled down from the
// published setting (55 ms steps, 1 s delays) so that a run takes seconds. It then simulates
// the same settings and prints measured and predicted time per step and speed-up over
// synchronous SGD, and how far apart the speed-ups are.
//
// The cost model is measured in the same run rather than assumed: the time of an all-reduce of
// the averaged buffer over a whole world of threads, after a barrier, is the latency the
// simulator charges per averaging (spread over the ring steps of the group).
#include <strata/averaging/averager.hpp>
#include <strata/comm/local.hpp>
#include <strata/sim/monte_carlo.hpp>
#include <strata/sim/simulate.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
namespace sim = strata::sim;

constexpr std::size_t param_count = 1024;  // a small model: the run measures waiting, not bytes

struct Setting {
  std::size_t steps = 120;
  double step_ms = 4.0;    // 55 ms scaled by 4/55
  double delay_ms = 72.7;  // 1 s scaled by the same factor
  double rate = 0.02;
  std::uint64_t seed = 1;
};

void sleep_s(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

// One schedule, as the simulator sees it and as the real run needs it.
struct Schedule {
  sim::Method method;
  std::optional<strata::RuntimeHierarchy> hierarchy;  // hierarchical SGD
  std::size_t local_period = 0;                       // local SGD
};

// Wall seconds of one real run of `schedule` on `world` threads, barrier to barrier.
double real_run(const Schedule& schedule, const sim::DelayModel& delays, const Setting& s) {
  const sim::Method& method = schedule.method;
  const int world = static_cast<int>(method.world_size());
  double seconds = 0;
  strata::LocalWorld(world).run([&](strata::LocalComm& comm) {
    const auto rank = static_cast<std::size_t>(comm.rank());
    std::vector<float> params(param_count, float(rank)), grads(param_count, 1.0f);
    std::optional<strata::RuntimeHierarchicalAverager<strata::LocalComm>> hier;
    std::optional<strata::PeriodicAverager<strata::LocalComm>> local;
    if (method.kind() == sim::MethodKind::hierarchical) {
      hier.emplace(comm, *schedule.hierarchy, method.warmup());
    } else if (method.kind() == sim::MethodKind::local) {
      local.emplace(comm, schedule.local_period, method.warmup());
    }
    comm.barrier();
    const auto start = Clock::now();
    for (std::size_t step = 0; step < s.steps; ++step) {
      sleep_s(delays.step_time(s.seed, rank, step));
      if (hier) {
        hier->average(std::span<float>(params));
      } else if (local) {
        local->average(std::span<float>(params));
      } else {
        comm.all_reduce(std::span<float>(grads), strata::ReduceOp::average);
      }
    }
    comm.barrier();
    if (rank == 0) seconds = std::chrono::duration<double>(Clock::now() - start).count();
  });
  return seconds;
}

// The cost of one all-reduce of the averaged buffer over `world` threads, all arriving together.
double measured_allreduce_s(int world) {
  double seconds = 0;
  constexpr int reps = 30;
  strata::LocalWorld(world).run([&](strata::LocalComm& comm) {
    std::vector<float> x(param_count, 1.0f);
    comm.barrier();
    const auto start = Clock::now();
    for (int i = 0; i < reps; ++i) comm.all_reduce(std::span<float>(x), strata::ReduceOp::average);
    if (comm.rank() == 0)
      seconds = std::chrono::duration<double>(Clock::now() - start).count() / reps;
  });
  return seconds;
}

double arg(int argc, char** argv, const char* name, double fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return std::strtod(argv[i + 1], nullptr);
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  Setting s;
  s.steps = static_cast<std::size_t>(arg(argc, argv, "--steps", double(s.steps)));
  s.step_ms = arg(argc, argv, "--step-ms", s.step_ms);
  s.delay_ms = arg(argc, argv, "--delay-ms", s.delay_ms);
  s.rate = arg(argc, argv, "--rate", s.rate);
  s.seed = static_cast<std::uint64_t>(arg(argc, argv, "--seed", double(s.seed)));

  const sim::DelayModel delays{
      .step_s = s.step_ms * 1e-3, .straggler_rate = s.rate, .straggler_delay_s = s.delay_ms * 1e-3};
  std::printf(
      "steps %zu, compute %.1f ms, stragglers %.0f%% per rank and step, +%.1f ms; seed %llu\n\n",
      s.steps, s.step_ms, 100 * s.rate, s.delay_ms, static_cast<unsigned long long>(s.seed));
  std::printf(
      "| ranks | schedule | measured ms/step | predicted ms/step | measured speed-up | "
      "predicted speed-up | speed-up difference |\n");
  std::printf("| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");

  struct Case {
    std::size_t world;
    const char* hierarchy;
  };
  const Case cases[] = {{16, "2:4,4:8,8:16"}, {32, "2:8,4:16,8:32"}, {64, "2:8,4:32,8:64"}};
  double worst = 0;
  for (const Case& c : cases) {
    const double per_collective = measured_allreduce_s(static_cast<int>(c.world));
    sim::CostModel cost;
    cost.ranks_per_node = 4;
    // Latency only: the buffer is 4 KB. One world all-reduce costs what was measured; the
    // model spreads it over the ring steps 2(g-1), so smaller groups cost proportionally less.
    const double per_step = per_collective / (2.0 * double(c.world - 1));
    cost.intra_node = {1e12, per_step};
    cost.inter_node = {1e12, per_step};
    const auto h = strata::RuntimeHierarchy::parse(c.hierarchy);
    const Schedule schedules[] = {
        {sim::Method::synchronous(c.world), std::nullopt, 0},
        {sim::Method::local_sgd(c.world, 8), std::nullopt, 8},
        {sim::Method::hierarchical(h), h, 0},
    };
    double real_sync = 0;
    double predicted_sync = 0;
    for (const Schedule& schedule : schedules) {
      const sim::Method& m = schedule.method;
      const double real = real_run(schedule, delays, s) / double(s.steps);
      const double predicted =
          sim::simulate(m, delays, cost, s.steps, s.seed).seconds / double(s.steps);
      if (m.kind() == sim::MethodKind::synchronous) {
        real_sync = real;
        predicted_sync = predicted;
      }
      const double real_up = real_sync / real;
      const double predicted_up = predicted_sync / predicted;
      const double diff = predicted_up / real_up - 1.0;
      worst = std::max(worst, std::abs(diff));
      std::printf("| %zu | %s | %.2f | %.2f | %.2fx | %.2fx | %+.1f%% |\n", c.world,
                  m.name().c_str(), real * 1e3, predicted * 1e3, real_up, predicted_up, 100 * diff);
      std::fflush(stdout);
    }
  }
  std::printf("\nlargest speed-up difference: %.1f%%\n", 100 * worst);
  return 0;
}
