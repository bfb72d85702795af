// What NCCL's non-blocking mode costs the host per call, modelled on this machine's CPU and
// measured against the blocking mode's shape, in one run:
//
//   nccl_mode_host_bench [--benchmark_repetitions=5 ...]
//
// In non-blocking mode NCCL 2.28 answers every collective (every ncclGroupEnd that has work) by
// starting a thread that finishes the launch, and returns ncclInProgress; strata then polls
// ncclCommGetAsyncError with its Poller (64 yields, then 20 us sleeps) until the thread is done,
// and the thread is joined. In blocking mode the caller does the launch itself. Both shapes run
// here with the launch replaced by a spin of `work` microseconds (0, 5, 20, 100):
//   non_blocking/work  start a thread that spins, poll an atomic with strata's Poller, join
//   blocking/work      spin on the calling thread, with strata's watchdog armed around it
// The difference per call is the host overhead of the non-blocking mode: the thread's start and
// join, and the time between the launch's end and the poll that sees it. NCCL's real launch
// time and its GPU-side effects are measured by nccl_mode_bench on a GPU machine.
#include <benchmark/benchmark.h>
#include <strata/comm/detail/deadline.hpp>
#include <strata/comm/detail/watchdog.hpp>

#include <atomic>
#include <chrono>
#include <thread>

namespace {

void spin(std::chrono::microseconds work) {
  const auto until = std::chrono::steady_clock::now() + work;
  while (std::chrono::steady_clock::now() < until) {
  }
}

// Both shapes over the same launch lengths (microseconds), timed by the wall clock: the
// non-blocking shape's waiting thread mostly sleeps.
void launch_work(benchmark::internal::Benchmark* b) {
  b->Arg(0)->Arg(5)->Arg(20)->Arg(100)->UseRealTime()->Unit(benchmark::kMicrosecond);
}

void BM_non_blocking(benchmark::State& state) {
  const std::chrono::microseconds work(state.range(0));
  for (auto _ : state) {
    std::atomic<bool> done{false};
    std::thread launch([&] {
      spin(work);
      done.store(true, std::memory_order_release);
    });
    strata::detail::Poller poller;
    while (!done.load(std::memory_order_acquire)) poller.pause();
    launch.join();
  }
}
BENCHMARK(BM_non_blocking)->Apply(launch_work);

// strata arms its watchdog around each blocking call (comm/detail/watchdog.hpp): included.
void BM_blocking(benchmark::State& state) {
  const std::chrono::microseconds work(state.range(0));
  for (auto _ : state) {
    const auto watch = strata::detail::CallWatchdog::instance().watch(
        std::chrono::minutes(5), "all_reduce", "ncclAllReduce", 0);
    spin(work);
  }
}
BENCHMARK(BM_blocking)->Apply(launch_work);

}  // namespace

BENCHMARK_MAIN();
