// Cost of asking the schedule, per step and per run. Compared in one run: the compile-time
// schedule, the run-time schedule, and the naive loop over every step that sync_counts avoids.
#include <benchmark/benchmark.h>
#include <strata/schedule/schedule.hpp>

#include <vector>

namespace {

using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>, strata::Level<8, 64>>;

void BM_level_at_compile_time(benchmark::State& state) {
  const strata::Schedule<H> s(3);
  std::size_t step = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(s.level_at(step++));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_level_at_compile_time);

void BM_level_at_run_time(benchmark::State& state) {
  const strata::RuntimeSchedule<> s(strata::RuntimeHierarchy::parse("2:8,4:32,8:64"), 3);
  std::size_t step = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(s.level_at(step++));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_level_at_run_time);

void BM_sync_counts(benchmark::State& state) {
  const strata::RuntimeSchedule<> s(strata::RuntimeHierarchy::parse("3:8,4:32,5:64,7:128"), 3);
  const auto steps = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    benchmark::DoNotOptimize(s.sync_counts(steps));
  }
}
BENCHMARK(BM_sync_counts)->Arg(1'000)->Arg(1'000'000);

void BM_sync_counts_naive_loop(benchmark::State& state) {
  const strata::RuntimeSchedule<> s(strata::RuntimeHierarchy::parse("3:8,4:32,5:64,7:128"), 3);
  const auto steps = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    std::vector<std::size_t> c(s.num_levels());
    for (std::size_t step = 0; step < steps; ++step) {
      if (const auto l = s.level_at(step)) ++c[*l];
    }
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_sync_counts_naive_loop)->Arg(1'000)->Arg(1'000'000);

}  // namespace

BENCHMARK_MAIN();
