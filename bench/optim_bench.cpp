// ShardedOptimizer's schedules, gradient buckets and the hierarchical averager on a parameter list
// shaped like BERT-large's, on the local backend and over MPI, in one run:
//
//   optim_bench [--scale 42] [--steps 7] [--warmup 1] [--buckets-mb 1,4,16] [--tensor-us 0]
//               [--bucket-steps 11] [--poll-us 50] [--avg-mb 16] [--avg-steps 10]
//               [--parts schedules,buckets,averager]
//   OMPI_MCA_mpi_yield_when_idle=1 mpirun --allow-run-as-root --oversubscribe -np 8 optim_bench
//
// The parameters: BERT-large's 391 float tensors (24 layers of attention q, k, v and output
// weights 1024x1024 with their biases, two layer norms, FFN 1024x4096 and 4096x1024 with biases;
// word, position and token-type embeddings with their layer norm; the pooler), 335M elements,
// each tensor's element count divided by --scale (at least 1 element), so that the count of
// tensors and the spread of their sizes stay BERT's. The default, 42, gives 7.98M floats (32 MB).
//
// 1. Schedules. For each world (8 and 4 ranks), update (Adam, LAMB) and schedule: replicated
//    (one all-reduce, every rank updates everything), flat (reduce-scatter, 1/W update,
//    all-gather) and hierarchical with nodes of 2 and 4: the step time of the slowest rank
//    (between barriers; median over --steps after --warmup), the bytes per rank that
//    StepReport::traffic counts (ring algorithms; mean over ranks inside and across nodes, and
//    the largest rank's cross-node bytes; replicated and flat are given nodes of 4, or 2 in a
//    world of 4, so that their bytes split too), and the update alone: the same update functor
//    run on a ShardContext of the shard's size and segments in this process with nothing else
//    running (median of 5), which is what one rank's update costs on a core of its own. Beside
//    it, the whole model's step on one rank alone (a world of 1, replicated): the update with
//    the optimizer's own passes over the parameters and no communication.
// 2. Buckets (MPI: only the MPI backend starts collectives and returns). A simulated backward
//    pass: for each tensor in ready order a fixed compute time, then grad_ready; finish_step
//    after the last. The compute is a sleep: on a GPU the backward pass runs on the device and
//    leaves the host free for the communication; here a sleep leaves the cores to the
//    collectives in the same way, where a spin would take them from the other ranks on this
//    machine. The compute starts when grad_ready returns, as a host thread that launches the
//    next kernel would. The compute per tensor (--tensor-us; 0 picks the time that makes the
//    backward pass as long as the unbucketed step without it) is the same for every bucket size.
//    Measured: the backward pass alone, the step alone (all gradients ready at once; the
//    reduction, the update and the gather of that bucket size), and the two together;
//    hidden = (backward + step alone - together) / step alone, and the same against the
//    unbucketed step alone (what buckets save in all: the overlap with the backward pass, and
//    collectives that overlap each other). Where the host spends the combined step: inside
//    grad_ready (the gradients' copies into their buckets, the buckets' starts) and inside
//    finish_step (the rest of the reduction, the update, the gather). Flat schedule, Adam.
//    Each figure is the median over --bucket-steps after --warmup. Each bucket size runs twice:
//    with a host that only calls grad_ready, and with one that also runs MPI's progress engine
//    every --poll-us while the device computes (MPI progresses a started collective only inside
//    MPI calls). Beside them, two blocking collectives over all the gradients alone: the
//    reduce-scatter, about what buckets can hide at best, and the all-gather, which none hides.
// 3. The averager: PeriodicAverager (period 1, the whole world every step) over --avg-mb MiB of
//    the same tensor shapes, with AveragerOptions::ranks_per_node 0 (one all-reduce), 2 and 4
//    (HierarchicalAllReduce); the slowest rank's time per average, median over --avg-steps.
//
// The local backend runs 8 and 4 ranks (threads) in this process. Built with MPI and started by
// mpirun, the benchmark first measures the MPI world (its size must divide by 4; a world of 4 is
// its first 4 ranks while the others wait), finalizes MPI, and then rank 0 alone runs the local
// part and the lone updates, so that the two never share the cores; rank 0 prints both, as
// markdown tables and one JSON line.
#include <strata/averaging/averager.hpp>
#include <strata/comm/hierarchical_all_reduce.hpp>
#include <strata/comm/local.hpp>
#include <strata/optim/adam.hpp>
#include <strata/optim/lamb.hpp>
#include <strata/optim/sharded_optimizer.hpp>
#ifdef STRATA_BENCH_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using strata::optim::ShardedOptimizer;
using strata::optim::ShardedOptions;
using strata::optim::ShardSchedule;

constexpr std::size_t alignment_bytes = 256;  // ShardedOptions' default
constexpr std::size_t lone_reps = 5;

struct Config {
  double scale = 42;
  std::size_t steps = 7;
  std::size_t warmup = 1;
  std::vector<double> bucket_mb{1, 4, 16};
  double tensor_us = 0;
  double poll_us = 50;
  double avg_mb = 16;
  std::size_t avg_steps = 10;
  std::size_t bucket_steps = 11;  // its figures are differences of long steps: more of them
  bool schedules = true, buckets = true, averager = true;  // --parts
};

// BERT-large's parameter tensors, in model order.
std::vector<std::size_t> bert_large() {
  constexpr std::size_t h = 1024, ff = 4096, layers = 24;
  // Word, position and token-type embeddings, the embeddings' layer norm.
  std::vector<std::size_t> v{30522 * h, 512 * h, 2 * h, h, h};
  for (std::size_t l = 0; l < layers; ++l) {
    for (int k = 0; k < 4; ++k) {  // q, k, v, attention output: weight and bias
      v.push_back(h * h);
      v.push_back(h);
    }
    v.insert(v.end(), {h, h, h * ff, ff, ff * h, h, h, h});  // norm, FFN in and out, norm
  }
  v.insert(v.end(), {h * h, h});  // pooler
  return v;
}

std::vector<std::size_t> scaled(const std::vector<std::size_t>& sizes, double scale) {
  std::vector<std::size_t> out;
  out.reserve(sizes.size());
  for (std::size_t n : sizes) {
    out.push_back(std::max<std::size_t>(
        1, static_cast<std::size_t>(std::llround(static_cast<double>(n) / scale))));
  }
  return out;
}

std::size_t sum(const std::vector<std::size_t>& v) {
  std::size_t s = 0;
  for (std::size_t x : v) s += x;
  return s;
}

// Deterministic values in [-amplitude, amplitude), without a generator's cost per element.
void fill(std::span<float> v, std::uint64_t seed, float amplitude) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& f : v) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    f = amplitude * (static_cast<float>(x >> 40) / static_cast<float>(1u << 23) - 1.0f);
  }
}

// One rank's replica: the same parameters on every rank, gradients of its own.
struct Model {
  std::vector<std::vector<float>> params, grads;
  std::vector<std::span<float>> param_spans;
  std::vector<std::span<const float>> grad_spans;

  Model(const std::vector<std::size_t>& sizes, int rank, bool with_grads) {
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      params.emplace_back(sizes[t]);
      fill(params.back(), t, 0.05f);
      if (with_grads) {
        grads.emplace_back(sizes[t]);
        fill(grads.back(), 1000003 * static_cast<std::uint64_t>(rank + 1) + t, 1e-3f);
      }
    }
    for (auto& p : params) param_spans.emplace_back(p);
    for (auto& g : grads) grad_spans.emplace_back(g);
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The median over the timed steps of the slowest rank's time of `step` (between barriers).
template <strata::communicator Comm, class F>
double timed(Comm& comm, std::size_t warmup, std::size_t steps, F&& step) {
  std::vector<double> times(steps, 0.0);
  for (std::size_t i = 0; i < warmup + steps; ++i) {
    comm.barrier();
    const auto start = Clock::now();
    step();
    const double took = seconds_since(start);
    if (i >= warmup) times[i - warmup] = took;
  }
  comm.all_reduce(std::span<double>(times), strata::ReduceOp::max);
  return median(times);
}

// The median over the steps after `warmup` of the slowest rank's value.
template <strata::communicator Comm>
double slowest_median(Comm& comm, std::vector<double> v, std::size_t warmup) {
  v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(warmup));
  comm.all_reduce(std::span<double>(v), strata::ReduceOp::max);
  return median(v);
}

struct ScheduleResult {
  std::string backend{};
  int world = 0;
  std::string update{}, schedule{};
  std::size_t node = 0;  // ranks per node, for the traffic (and the hierarchical schedule)
  std::size_t shards = 0;
  double ms = 0;
  double intra_mb = 0, inter_mb = 0, inter_mb_max = 0;
  double update_ms = 0;  // filled in from the lone updates
};

struct OverlapResult {
  double bucket_mb = 0;
  std::size_t buckets = 0, started_early = 0;
  bool polled = false;
  double backward_ms = 0, alone_ms = 0, together_ms = 0;
  double ready_ms = 0, finish_ms = 0;  // of together: inside grad_ready, inside finish_step
  double unbucketed_ms = 0;            // the step alone without buckets
  [[nodiscard]] double hidden() const { return (backward_ms + alone_ms - together_ms) / alone_ms; }
  // The same against the unbucketed step: what buckets save, overlap and smaller collectives.
  [[nodiscard]] double saved() const {
    return (backward_ms + unbucketed_ms - together_ms) / unbucketed_ms;
  }
};

struct AverageResult {
  std::string backend{};
  int world = 0;
  std::size_t node = 0;
  bool hierarchical = false;
  double ms = 0;
};

struct Results {
  std::vector<ScheduleResult> schedules;
  std::vector<OverlapResult> overlap;
  double tensor_us = 0;
  double reduce_scatter_ms = 0;  // the gradients' reduce-scatter alone: what buckets can hide
  double reduce_scatter_bytes = 0;
  double all_gather_ms = 0;  // the parameters' all-gather alone, which no bucket hides
  std::vector<AverageResult> averages;
};

template <class Update, strata::communicator Comm>
ScheduleResult run_schedule(Comm& comm, Model& m, const Config& c, Update update,
                            const char* update_name, ShardSchedule schedule, std::size_t node) {
  ShardedOptions o;
  o.schedule = schedule;
  o.ranks_per_node = node;
  ShardedOptimizer opt(comm, m.param_spans, update, o);
  strata::LinkTraffic traffic;
  ScheduleResult r{.world = comm.size(),
                   .update = update_name,
                   .schedule = std::string(strata::optim::to_string(schedule)),
                   .node = node,
                   .shards = opt.layout().shards()};
  r.ms = 1e3 * timed(comm, c.warmup, c.steps, [&] { traffic = opt.step(m.grad_spans).traffic; });
  const double mine[2] = {static_cast<double>(traffic.intra * sizeof(float)),
                          static_cast<double>(traffic.inter * sizeof(float))};
  const auto w = static_cast<std::size_t>(comm.size());
  std::vector<double> all(2 * w);
  comm.all_gather(std::span<const double>(mine), std::span<double>(all));
  for (std::size_t q = 0; q < w; ++q) {
    r.intra_mb += all[2 * q] / 1e6 / static_cast<double>(w);
    r.inter_mb += all[2 * q + 1] / 1e6 / static_cast<double>(w);
    r.inter_mb_max = std::max(r.inter_mb_max, all[2 * q + 1] / 1e6);
  }
  return r;
}

template <strata::communicator Comm>
std::vector<ScheduleResult> measure_schedules(Comm& comm, const Config& c,
                                              const std::vector<std::size_t>& sizes) {
  Model m(sizes, comm.rank(), true);
  const auto w = static_cast<std::size_t>(comm.size());
  // Replicated and flat have no nodes; nodes that make 2 of the world split their bytes.
  const std::size_t two_nodes = w / 2;
  std::vector<ScheduleResult> out;
  auto all = [&](auto update, const char* name) {
    out.push_back(run_schedule(comm, m, c, update, name, ShardSchedule::replicated, two_nodes));
    out.push_back(run_schedule(comm, m, c, update, name, ShardSchedule::flat, two_nodes));
    for (std::size_t g : {2, 4}) {
      if (g < w && w % g == 0) {
        out.push_back(run_schedule(comm, m, c, update, name, ShardSchedule::hierarchical, g));
      }
    }
  };
  all(strata::optim::Adam{}, "Adam");
  all(strata::optim::Lamb{}, "LAMB");
  return out;
}

// The simulated backward pass: the device's compute for each tensor, then its gradient is ready.
// With `poll`, the host calls it every `poll_us` while the device computes.
void backward(const std::vector<std::size_t>& order, double tensor_us,
              const std::function<void(std::size_t)>& ready, const std::function<void()>& poll,
              double poll_us) {
  const auto compute = std::chrono::nanoseconds(std::llround(tensor_us * 1e3));
  const auto slice = std::chrono::nanoseconds(std::llround(poll_us * 1e3));
  for (std::size_t t : order) {
    if (!poll) {
      std::this_thread::sleep_for(compute);
    } else {
      const auto end = Clock::now() + compute;
      for (auto now = Clock::now(); now < end; now = Clock::now()) {
        std::this_thread::sleep_for(std::min<Clock::duration>(slice, end - now));
        poll();
      }
    }
    ready(t);
  }
}

template <strata::communicator Comm>
void measure_overlap(Comm& comm, const Config& c, const std::vector<std::size_t>& sizes,
                     const std::function<void()>& poll, Results& out) {
  Model m(sizes, comm.rank(), true);
  std::vector<double> buckets{0};
  buckets.insert(buckets.end(), c.bucket_mb.begin(), c.bucket_mb.end());
  out.tensor_us = c.tensor_us;
  std::vector<std::size_t> order;
  const std::function<void()> none;
  {
    const std::size_t w = static_cast<std::size_t>(comm.size()), n = (sum(sizes) + w - 1) / w;
    std::vector<float> flat(n * w, 1.0f), shard(n);
    out.reduce_scatter_bytes = static_cast<double>(flat.size() * sizeof(float));
    out.reduce_scatter_ms = 1e3 * timed(comm, c.warmup, c.bucket_steps, [&] {
                              comm.reduce_scatter(std::span<const float>(flat),
                                                  std::span<float>(shard), strata::ReduceOp::sum);
                            });
    out.all_gather_ms = 1e3 * timed(comm, c.warmup, c.bucket_steps, [&] {
                          comm.all_gather(std::span<const float>(shard), std::span<float>(flat));
                        });
  }
  for (const double mb : buckets) {
    ShardedOptions o;
    o.schedule = ShardSchedule::flat;
    o.bucket_bytes = static_cast<std::size_t>(mb * (1 << 20));
    ShardedOptimizer opt(comm, m.param_spans, strata::optim::Adam{}, o);
    order.assign(opt.layout().ready_order().begin(), opt.layout().ready_order().end());
    OverlapResult r{.bucket_mb = mb, .buckets = opt.layout().num_buckets()};
    r.alone_ms = 1e3 * timed(comm, c.warmup, c.bucket_steps, [&] { opt.step(m.grad_spans); });
    if (out.tensor_us <= 0) out.tensor_us = 1e3 * r.alone_ms / static_cast<double>(sizes.size());
    for (const bool polled : {false, true}) {
      if (polled && !poll) continue;
      r.polled = polled;
      // Where the host spends the step: inside grad_ready (copies, starting buckets) and
      // inside finish_step, each the slowest rank's.
      std::vector<double> in_ready, in_finish;
      r.together_ms = 1e3 * timed(comm, c.warmup, c.bucket_steps, [&] {
                        double ready_s = 0;
                        backward(
                            order, out.tensor_us,
                            [&](std::size_t t) {
                              const auto start = Clock::now();
                              opt.grad_ready(t, m.grad_spans[t]);
                              ready_s += seconds_since(start);
                            },
                            polled ? poll : none, c.poll_us);
                        const auto start = Clock::now();
                        r.started_early = opt.finish_step().buckets_started_early;
                        in_finish.push_back(seconds_since(start));
                        in_ready.push_back(ready_s);
                      });
      r.ready_ms = 1e3 * slowest_median(comm, in_ready, c.warmup);
      r.finish_ms = 1e3 * slowest_median(comm, in_finish, c.warmup);
      out.overlap.push_back(r);
    }
  }
  for (const bool polled : {false, true}) {
    if (polled && !poll) continue;
    const double ms =
        1e3 * timed(comm, c.warmup, c.bucket_steps, [&] {
          backward(
              order, out.tensor_us, [](std::size_t) {}, polled ? poll : none, c.poll_us);
        });
    for (OverlapResult& r : out.overlap) {
      if (r.polled == polled) r.backward_ms = ms;
      r.unbucketed_ms = out.overlap.front().alone_ms;
    }
  }
}

template <strata::communicator Comm>
std::vector<AverageResult> measure_averages(Comm& comm, const Config& c,
                                            const std::vector<std::size_t>& sizes) {
  Model m(sizes, comm.rank(), false);
  const auto w = static_cast<std::size_t>(comm.size());
  std::vector<AverageResult> out;
  for (std::size_t g : {0, 2, 4}) {
    if (g != 0 && (g >= w || w % g != 0)) continue;
    strata::PeriodicAverager<Comm> avg(comm, 1, 0, strata::AveragerOptions{.ranks_per_node = g});
    AverageResult r{.world = comm.size(), .node = g, .hierarchical = avg.hierarchical(0)};
    r.ms = 1e3 * timed(comm, 2, c.avg_steps, [&] { avg.average(m.param_spans); });
    out.push_back(r);
  }
  return out;
}

// One rank's update on its own: the functor on a shard of `shards`, nothing else running.
template <class Update>
double lone_update_ms(const std::vector<std::size_t>& sizes, std::size_t shards, Update update) {
  const strata::optim::ShardLayout layout(sizes, shards, 0, alignment_bytes / sizeof(float), 0);
  const std::size_t n = layout.shard_elements();
  std::vector<float> params(n), grads(n), new_params(n), state(Update::state_size * n, 0.0f),
      new_state(state.size(), 0.0f), scratch(n);
  fill(params, 1, 0.05f);
  fill(grads, 2, 1e-3f);
  std::vector<double> partials(Update::norm_slots * sizes.size()), times;
  for (std::size_t rep = 0; rep < lone_reps + 1; ++rep) {
    std::fill(partials.begin(), partials.end(), 0.0);
    const strata::optim::ShardContext<float> ctx{.params = params,
                                                 .grads = grads,
                                                 .new_params = new_params,
                                                 .state = state,
                                                 .new_state = new_state,
                                                 .scratch = scratch,
                                                 .segments = layout.segments(),
                                                 .num_tensors = sizes.size(),
                                                 .step = rep + 1};
    const auto start = Clock::now();
    update.compute(ctx, std::span<double>(partials));
    update.apply(ctx, std::span<const double>(partials));
    if (rep > 0) times.push_back(seconds_since(start));  // the first touches the pages
    state.swap(new_state);
  }
  return 1e3 * median(times);
}

// The whole step on one rank with no other (a world of 1, replicated): the update and the
// optimizer's own passes over the parameters, without communication.
template <class Update>
double one_rank_step_ms(const Config& c, const std::vector<std::size_t>& sizes, Update update) {
  double ms = 0;
  strata::LocalWorld(1).run([&](strata::LocalComm& comm) {
    Model m(sizes, 0, true);
    ShardedOptions o;
    o.schedule = ShardSchedule::replicated;
    ShardedOptimizer opt(comm, m.param_spans, update, o);
    ms = 1e3 * timed(comm, c.warmup, c.steps, [&] { opt.step(m.grad_spans); });
  });
  return ms;
}

void add_lone_updates(std::vector<ScheduleResult>& rows, const std::vector<std::size_t>& sizes) {
  struct Known {
    std::string update;
    std::size_t shards;
    double ms;
  };
  std::vector<Known> known;
  for (ScheduleResult& r : rows) {
    auto it = std::find_if(known.begin(), known.end(), [&](const Known& k) {
      return k.update == r.update && k.shards == r.shards;
    });
    if (it == known.end()) {
      const double ms = r.update == "Adam" ? lone_update_ms(sizes, r.shards, strata::optim::Adam{})
                                           : lone_update_ms(sizes, r.shards, strata::optim::Lamb{});
      it = known.insert(known.end(), Known{r.update, r.shards, ms});
    }
    r.update_ms = it->ms;
  }
}

void print_schedules(const std::vector<ScheduleResult>& rows) {
  std::printf(
      "| backend | world | update | schedule | nodes of | shards | step ms | update ms (lone) | "
      "intra MB/rank | inter MB/rank | inter MB, busiest rank | step/replicated |\n");
  std::printf(
      "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  const ScheduleResult* base = nullptr;
  for (const ScheduleResult& r : rows) {
    if (r.schedule == "replicated") base = &r;
    std::printf("| %s | %d | %s | %s | %zu | %zu | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
                r.backend.c_str(), r.world, r.update.c_str(), r.schedule.c_str(), r.node, r.shards,
                r.ms, r.update_ms, r.intra_mb, r.inter_mb, r.inter_mb_max, r.ms / base->ms);
  }
  std::printf("\n");
}

void print_overlap(const char* backend, const Results& r, double poll_us) {
  std::printf(
      "Buckets, %s, flat schedule, Adam, %.0f us of simulated compute per tensor (a sleep: on a "
      "GPU the backward pass runs on the device and leaves the host free, and a sleep leaves "
      "these cores to the collectives in the same way). host: idle, the host only calls "
      "grad_ready between tensors; polls, it also runs MPI's progress engine every %.0f us "
      "(MPI_Iprobe) while the device computes. Blocking collectives over all %.1f MB alone: "
      "the gradients' reduce-scatter %.1f ms, the parameters' all-gather %.1f ms.\n\n",
      backend, r.tensor_us, poll_us, r.reduce_scatter_bytes / 1e6, r.reduce_scatter_ms,
      r.all_gather_ms);
  std::printf(
      "| bucket MiB | buckets | started early | host | backward alone ms | step alone ms | "
      "backward + step ms | in grad_ready ms | in finish_step ms | sum of the two ms | hidden | "
      "saved vs unbucketed |\n");
  std::printf(
      "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const OverlapResult& o : r.overlap) {
    std::printf("| %g | %zu | %zu | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f |\n",
                o.bucket_mb, o.buckets, o.started_early, o.polled ? "polls" : "idle", o.backward_ms,
                o.alone_ms, o.together_ms, o.ready_ms, o.finish_ms, o.backward_ms + o.alone_ms,
                o.hidden(), o.saved());
  }
  std::printf("\n");
}

void print_averages(const std::vector<AverageResult>& rows, double mb) {
  std::printf("PeriodicAverager (period 1), %.1f MiB of float parameters:\n\n", mb);
  std::printf(
      "| backend | world | ranks_per_node | hierarchical | ms/average | /one all-reduce |\n");
  std::printf("| --- | ---: | ---: | --- | ---: | ---: |\n");
  const AverageResult* base = nullptr;
  for (const AverageResult& r : rows) {
    if (r.node == 0) base = &r;
    std::printf("| %s | %d | %zu | %s | %.2f | %.2f |\n", r.backend.c_str(), r.world, r.node,
                r.hierarchical ? "yes" : "no", r.ms, r.ms / base->ms);
  }
  std::printf("\n");
}

std::string json(const std::vector<ScheduleResult>& schedules, double one_rank_adam,
                 double one_rank_lamb, const Results& mpi, double poll_us,
                 const std::vector<AverageResult>& averages, std::size_t tensors,
                 std::size_t elements, double avg_mb) {
  std::string s = "{\"bench\":\"optim_bench\",\"tensors\":" + std::to_string(tensors) +
                  ",\"elements\":" + std::to_string(elements) + ",\"schedules\":[";
  char buf[512];
  for (std::size_t i = 0; i < schedules.size(); ++i) {
    const ScheduleResult& r = schedules[i];
    std::snprintf(buf, sizeof buf,
                  "%s{\"backend\":\"%s\",\"world\":%d,\"update\":\"%s\",\"schedule\":\"%s\","
                  "\"ranks_per_node\":%zu,\"shards\":%zu,\"step_ms\":%.3f,\"update_ms\":%.3f,"
                  "\"intra_mb\":%.4f,\"inter_mb\":%.4f,\"inter_mb_max\":%.4f}",
                  i ? "," : "", r.backend.c_str(), r.world, r.update.c_str(), r.schedule.c_str(),
                  r.node, r.shards, r.ms, r.update_ms, r.intra_mb, r.inter_mb, r.inter_mb_max);
    s += buf;
  }
  std::snprintf(buf, sizeof buf, "],\"one_rank_step_ms\":{\"Adam\":%.3f,\"LAMB\":%.3f}",
                one_rank_adam, one_rank_lamb);
  s += buf;
  const std::vector<OverlapResult>& overlap = mpi.overlap;
  std::snprintf(buf, sizeof buf,
                ",\"buckets\":{\"backend\":\"MPI\",\"schedule\":\"flat\",\"update\":\"Adam\","
                "\"tensor_us\":%.1f,\"poll_us\":%.1f,\"reduce_scatter_ms\":%.3f,"
                "\"all_gather_ms\":%.3f,\"runs\":[",
                mpi.tensor_us, poll_us, mpi.reduce_scatter_ms, mpi.all_gather_ms);
  s += buf;
  for (std::size_t i = 0; i < overlap.size(); ++i) {
    const OverlapResult& o = overlap[i];
    std::snprintf(buf, sizeof buf,
                  "%s{\"bucket_mib\":%g,\"buckets\":%zu,\"started_early\":%zu,\"polled\":%s,"
                  "\"backward_ms\":%.3f,"
                  "\"alone_ms\":%.3f,\"together_ms\":%.3f,\"in_grad_ready_ms\":%.3f,"
                  "\"in_finish_step_ms\":%.3f,\"hidden\":%.4f,\"saved_vs_unbucketed\":%.4f}",
                  i ? "," : "", o.bucket_mb, o.buckets, o.started_early,
                  o.polled ? "true" : "false", o.backward_ms, o.alone_ms, o.together_ms, o.ready_ms,
                  o.finish_ms, o.hidden(), o.saved());
    s += buf;
  }
  std::snprintf(buf, sizeof buf, "]},\"averager\":{\"mib\":%.3f,\"runs\":[", avg_mb);
  s += buf;
  for (std::size_t i = 0; i < averages.size(); ++i) {
    const AverageResult& a = averages[i];
    std::snprintf(buf, sizeof buf,
                  "%s{\"backend\":\"%s\",\"world\":%d,\"ranks_per_node\":%zu,\"hierarchical\":%s,"
                  "\"ms\":%.3f}",
                  i ? "," : "", a.backend.c_str(), a.world, a.node,
                  a.hierarchical ? "true" : "false", a.ms);
    s += buf;
  }
  return s + "]}}";
}

const char* flag_value(int argc, char** argv, const char* name) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  }
  return nullptr;
}

double flag(int argc, char** argv, const char* name, double fallback) {
  const char* v = flag_value(argc, argv, name);
  return v ? std::strtod(v, nullptr) : fallback;
}

std::vector<double> list_flag(int argc, char** argv, const char* name,
                              std::vector<double> fallback) {
  const char* v = flag_value(argc, argv, name);
  if (!v) return fallback;
  std::vector<double> out;
  for (const char* p = v; *p != '\0';) {
    char* end = nullptr;
    const double x = std::strtod(p, &end);
    if (end == p) break;
    if (x > 0) out.push_back(x);
    p = *end == ',' ? end + 1 : end;
  }
  return out;
}

[[maybe_unused]] bool under_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
         std::getenv("PMIX_RANK") != nullptr;
}

void tag(std::vector<ScheduleResult>& rows, const char* backend) {
  for (auto& r : rows) r.backend = backend;
}
void tag(std::vector<AverageResult>& rows, const char* backend) {
  for (auto& r : rows) r.backend = backend;
}

}  // namespace

int main(int argc, char** argv) {
  const auto begin = Clock::now();
  Config c;
  c.scale = std::max(1.0, flag(argc, argv, "--scale", c.scale));
  c.steps = std::max<std::size_t>(1, static_cast<std::size_t>(flag(argc, argv, "--steps", 7)));
  c.warmup = static_cast<std::size_t>(flag(argc, argv, "--warmup", 1));
  c.bucket_mb = list_flag(argc, argv, "--buckets-mb", c.bucket_mb);
  c.tensor_us = flag(argc, argv, "--tensor-us", 0);
  c.poll_us = std::max(1.0, flag(argc, argv, "--poll-us", c.poll_us));
  c.avg_mb = std::max(0.001, flag(argc, argv, "--avg-mb", c.avg_mb));
  c.avg_steps =
      std::max<std::size_t>(1, static_cast<std::size_t>(flag(argc, argv, "--avg-steps", 10)));
  c.bucket_steps =
      std::max<std::size_t>(1, static_cast<std::size_t>(flag(argc, argv, "--bucket-steps", 11)));
  if (const char* parts = flag_value(argc, argv, "--parts")) {
    c.schedules = std::strstr(parts, "schedules") != nullptr;
    c.buckets = std::strstr(parts, "buckets") != nullptr;
    c.averager = std::strstr(parts, "averager") != nullptr;
  }

  const std::vector<std::size_t> bert = bert_large();
  const std::vector<std::size_t> sizes = scaled(bert, c.scale);
  const double avg_scale = static_cast<double>(sum(bert)) * sizeof(float) / (c.avg_mb * (1 << 20));
  const std::vector<std::size_t> avg_sizes = scaled(bert, avg_scale);

  Results mpi;
  int mpi_world = 0;
  bool mpi_ran = false;
#ifdef STRATA_BENCH_HAVE_MPI
  if (under_mpirun()) {
    strata::MpiEnvironment env(argc, argv);
    {
      auto comm = strata::MpiComm::world();
      mpi_world = comm.size();
      if (mpi_world % 4 != 0) {
        if (comm.rank() == 0) {
          std::fprintf(stderr, "optim_bench: the MPI world (%d) must divide by 4\n", mpi_world);
        }
        return 2;
      }
      if (c.schedules) mpi.schedules = measure_schedules(comm, c, sizes);
      // MPI's progress engine runs only inside MPI calls; a probe on the world (where strata sends
      // nothing: its communicators are duplicates) is the cheapest call that runs it.
      const std::function<void()> poll = [] {
        int flag = 0;
        MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE);
      };
      if (c.buckets) measure_overlap(comm, c, sizes, poll, mpi);
      if (c.averager) mpi.averages = measure_averages(comm, c, avg_sizes);
      if (c.schedules && mpi_world > 4) {
        auto four = comm.split(comm.rank() < 4 ? 0 : 1, comm.rank());
        if (comm.rank() < 4) {
          auto rows = measure_schedules(four, c, sizes);
          mpi.schedules.insert(mpi.schedules.end(), rows.begin(), rows.end());
        }
        comm.barrier();
      }
      if (comm.rank() != 0) return 0;
    }
    mpi_ran = true;
    tag(mpi.schedules, "MPI");
    tag(mpi.averages, "MPI");
  }
#endif
  // MPI is finalized here: the other processes have gone, and the local ranks get the cores.
  Results local;
  for (int world : {8, 4}) {
    strata::LocalWorld(world).run([&](strata::LocalComm& comm) {
      Results r;
      if (c.schedules) r.schedules = measure_schedules(comm, c, sizes);
      if (c.averager && world == 8) r.averages = measure_averages(comm, c, avg_sizes);
      if (comm.rank() != 0) return;
      local.schedules.insert(local.schedules.end(), r.schedules.begin(), r.schedules.end());
      local.averages.insert(local.averages.end(), r.averages.begin(), r.averages.end());
    });
  }
  tag(local.schedules, "local");
  tag(local.averages, "local");

  std::vector<ScheduleResult> schedules = local.schedules;
  schedules.insert(schedules.end(), mpi.schedules.begin(), mpi.schedules.end());
  add_lone_updates(schedules, sizes);
  double one_rank_adam = 0, one_rank_lamb = 0;
  if (c.schedules) {
    one_rank_adam = one_rank_step_ms(c, sizes, strata::optim::Adam{});
    one_rank_lamb = one_rank_step_ms(c, sizes, strata::optim::Lamb{});
  }
  std::vector<AverageResult> averages = local.averages;
  averages.insert(averages.end(), mpi.averages.begin(), mpi.averages.end());

  const double avg_bytes = static_cast<double>(sum(avg_sizes) * sizeof(float));
  std::printf(
      "BERT-large's %zu tensors (%zu elements) scaled by 1/%g: %zu float elements (%.1f MB), "
      "largest tensor %zu, smallest %zu; median of %zu steps after %zu (buckets: %zu), slowest "
      "rank\n\n",
      bert.size(), sum(bert), c.scale, sum(sizes), 4e-6 * static_cast<double>(sum(sizes)),
      *std::max_element(sizes.begin(), sizes.end()), *std::min_element(sizes.begin(), sizes.end()),
      c.steps, c.warmup, c.bucket_steps);
  if (c.schedules) {
    std::printf(
        "Schedules (bytes: StepReport::traffic x 4, ring algorithms; replicated and flat with "
        "nodes "
        "of half the world; update: the functor alone on one shard, one rank on an idle machine):"
        "\n\n");
    print_schedules(schedules);
    std::printf(
        "The whole model on one rank alone (a world of 1, replicated; the optimizer's passes and "
        "the update, no communication): Adam %.1f ms, LAMB %.1f ms per step; the update functors "
        "alone on it: Adam %.1f ms, LAMB %.1f ms.\n\n",
        one_rank_adam, one_rank_lamb, lone_update_ms(sizes, 1, strata::optim::Adam{}),
        lone_update_ms(sizes, 1, strata::optim::Lamb{}));
  }
  if (!c.buckets) {
  } else if (mpi_ran) {
    print_overlap("MPI", mpi, c.poll_us);
  } else {
#ifdef STRATA_BENCH_HAVE_MPI
    std::printf("Buckets and MPI: start under mpirun (e.g. mpirun -np 8) for the MPI figures\n\n");
#else
    std::printf("Buckets and MPI: this build has no MPI\n\n");
#endif
  }
  if (c.averager) print_averages(averages, avg_bytes / (1 << 20));
  std::printf("%s\n", json(schedules, one_rank_adam, one_rank_lamb, mpi, c.poll_us, averages,
                           sizes.size(), sum(sizes), avg_bytes / (1 << 20))
                          .c_str());
  (void)mpi_world;
  std::printf("whole run: %.0f s\n", seconds_since(begin));
  return 0;
}
