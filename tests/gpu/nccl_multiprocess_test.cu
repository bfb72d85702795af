// The NCCL communicator and the device averagers across real processes on one GPU: one process
// per rank, started by mpirun, bootstrapped over MPI. NCCL refuses two ranks of one communicator
// on one GPU of one host, so each process names itself a host of its own (NCCL_HOSTID) and the
// ranks talk through NCCL's socket transport on the loopback interface, as ranks of separate
// machines would. That runs the path of a multi-node job on one GPU: the bootstrap, the network
// transport, every collective, splits, the fused kernels and graph replay of the averagers.
//
// Every rank exits 77 (skipped) when the machine has no GPU; a CUDA installation that cannot run
// fails. The job's result is the same on every rank: 0 when every rank passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <strata/averaging/cuda_averager.cuh>
#include <strata/comm/mpi.hpp>
#include <strata/comm/nccl.hpp>
#include <strata/cuda/device_buffer.hpp>
#include <strata/embedding/device_exchange.cuh>
#include <strata/embedding/exchange.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../averaging/averager_conformance.hpp"
#include "../averaging/device_rank.hpp"
#include "../comm/conformance.hpp"

// A named namespace: nvcc warns about members of unnamed ones that a concept check declares
// but nothing calls.
namespace multiprocess {

namespace ac = averager_conformance;
using namespace std::chrono_literals;

// A rank that fails and leaves makes the others fail within this, not hang.
constexpr std::chrono::milliseconds deadline = 60s;

// What every case shares, made and destroyed by main while MPI is initialised: the world over
// MPI, and the world over NCCL once per variant (creation over sockets costs more than most
// cases, and every case leaves the stream idle).
struct Job {
  strata::MpiComm host = strata::MpiComm::world({.timeout = deadline});
  std::map<bool, std::unique_ptr<strata::NcclComm>> worlds;
};
Job* the_job = nullptr;

strata::MpiComm& host() { return the_job->host; }

strata::NcclComm make_nccl(bool verify, bool blocking = false) {
  strata::NcclOptions options;
  options.device = 0;  // every rank on the one GPU
  options.timeout = deadline;
  options.verify_arguments = verify;
  options.blocking = blocking;
  return strata::nccl_bootstrap(host(), options);
}

void check(std::string_view call, int rank, cudaError_t e) { strata::cuda_check(call, rank, e); }

// --- the collective conformance suite over device memory -----------------------------------------

// `n` elements staged between the host and the device through pinned memory, on the
// communicator's stream: a copy from or to pageable memory would block the host behind the
// collectives on that stream, where no deadline could end the wait.
template <class T>
class Staging {
 public:
  Staging(std::size_t n, strata::NcclComm& comm)
      : comm_(&comm), pinned_(n, comm.rank()), device_(n, comm.rank()) {}
  Staging(std::span<const T> values, strata::NcclComm& comm) : Staging(values.size(), comm) {
    std::copy(values.begin(), values.end(), pinned_.data());
    if (!values.empty()) {
      check("cudaMemcpyAsync", comm.rank(),
            cudaMemcpyAsync(device_.data(), pinned_.data(), device_.size_bytes(),
                            cudaMemcpyHostToDevice, comm.stream()));
    }
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  [[nodiscard]] std::span<T> device() const { return device_.span(); }
  [[nodiscard]] std::span<const T> input() const { return device_.span(); }

  // The device elements back into `values`, once the stream has finished everything before.
  void download(std::span<T> values) {
    if (!values.empty()) {
      check("cudaMemcpyAsync", comm_->rank(),
            cudaMemcpyAsync(pinned_.data(), device_.data(), device_.size_bytes(),
                            cudaMemcpyDeviceToHost, comm_->stream()));
    }
    comm_->synchronize();
    std::copy(pinned_.data(), pinned_.data() + values.size(), values.begin());
  }

 private:
  strata::NcclComm* comm_;
  strata::PinnedBuffer<T> pinned_;  // declared first: freed after the device memory, whose
  strata::DeviceBuffer<T> device_;  // release waits for the work that still reads the pinned one
};

// The conformance suite reads and writes host vectors right after each call; this communicator
// gives NCCL device copies of them and hands the results back once the stream is done. A call
// that throws before it is enqueued (a usage_error) writes nothing back.
class Staged {
 public:
  explicit Staged(strata::NcclComm comm) : comm_(std::move(comm)) {}
  [[nodiscard]] int rank() const { return comm_.rank(); }
  [[nodiscard]] int size() const { return comm_.size(); }

  template <class T>
  void all_reduce(std::span<T> buf, strata::ReduceOp op) {
    Staging<T> d{std::span<const T>(buf), comm_};
    comm_.all_reduce(d.device(), op);
    d.download(buf);
  }
  template <class T>
  void all_reduce(std::span<const T> in, std::span<T> out, strata::ReduceOp op) {
    Staging<T> a(in, comm_);
    Staging<T> b(out.size(), comm_);
    comm_.all_reduce(a.input(), b.device(), op);
    b.download(out);
  }
  template <class T>
  void broadcast(std::span<T> buf, int root) {
    Staging<T> d{std::span<const T>(buf), comm_};
    comm_.broadcast(d.device(), root);
    d.download(buf);
  }
  template <class T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    Staging<T> a(in, comm_);
    Staging<T> b(out.size(), comm_);
    comm_.all_gather(a.input(), b.device());
    b.download(out);
  }
  template <class T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, strata::ReduceOp op) {
    Staging<T> a(in, comm_);
    Staging<T> b(out.size(), comm_);
    comm_.reduce_scatter(a.input(), b.device(), op);
    b.download(out);
  }
  template <class T>
  void all_to_all(std::span<const T> in, std::span<T> out) {
    Staging<T> a(in, comm_);
    Staging<T> b(out.size(), comm_);
    comm_.all_to_all(a.input(), b.device());
    b.download(out);
  }
  template <class T>
  void all_to_all(std::span<const T> in, std::span<const std::size_t> send, std::span<T> out,
                  std::span<const std::size_t> recv) {
    Staging<T> a(in, comm_);
    Staging<T> b(out.size(), comm_);
    comm_.all_to_all(a.input(), send, b.device(), recv);
    b.download(out);
  }
  void barrier() { comm_.barrier(); }
  Staged split(int color, int key) { return Staged(comm_.split(color, key)); }

 private:
  strata::NcclComm comm_;
};
static_assert(strata::communicator<Staged>);

// --- the averager conformance suite on the device -------------------------------------------------

// One rank of averager_conformance.hpp's harness: `DeviceAverager` with CUDA's kernels over the
// real NCCL, and the test's own exchanges over MPI.
template <bool Graphs>
using NcclRank = averager_harness::DeviceRank<strata::NcclComm, strata::CudaFusedKernels,
                                              strata::CudaGraphs, Graphs, strata::MpiComm>;

strata::NcclComm& shared_world(bool verify) {
  auto& w = the_job->worlds[verify];
  if (!w) w = std::make_unique<strata::NcclComm>(make_nccl(verify));
  return *w;
}

template <bool Graphs, bool Verify = false>
struct GpuHarness {
  static constexpr std::string_view name =
      Graphs ? (Verify ? "nccl on one GPU with graphs, verify on" : "nccl on one GPU with graphs")
             : (Verify ? "nccl on one GPU, verify on" : "nccl on one GPU");
  using Rank = NcclRank<Graphs>;
  static std::vector<int> world_sizes() { return {host().size()}; }
  template <class F>
  static void run(int n, F&& f) {
    REQUIRE(host().size() == n);
    Rank r(shared_world(Verify), host());
    f(r);
  }
};

using Nccl = GpuHarness<false>;
using NcclGraphs = GpuHarness<true>;
using NcclVerify = GpuHarness<false, true>;

// Compile-time hierarchies (Level<period, group size>) for the process counts the job runs with.
using H2 = strata::Hierarchy<strata::Level<2, 1>, strata::Level<3, 2>>;
using H3 = strata::Hierarchy<strata::Level<1, 1>, strata::Level<4, 3>>;
using H4 = strata::Hierarchy<strata::Level<1, 2>, strata::Level<3, 4>>;

// --- the named CUDA averagers on 16-bit floats ----------------------------------------------------

// Small integers, so that every sum of a group is exact in float.
float value(int rank, std::size_t step, std::size_t tensor, std::size_t i) {
  return static_cast<float>((rank + 1) * static_cast<int>(1 + (i + 3 * tensor + step) % 5));
}

// Whether `got` is element i of its group's mean. float is summed (exactly) and scaled by 1/g in
// float, which the model repeats bit for bit. 16-bit floats are averaged by NCCL itself (ncclAvg
// scales each input by 1/g in T, then sums in T, in an order of its own): within the rounding of
// those g + 1 steps of the exact mean, and far from the mean of any other group, whose members'
// values differ by a factor (rank + 1).
template <class T>
bool is_mean(T got, int rank, std::size_t g, std::size_t step, std::size_t tensor, std::size_t i) {
  const auto first = static_cast<int>(static_cast<std::size_t>(rank) / g * g);
  float sum = 0;
  for (int m = first; m < first + static_cast<int>(g); ++m) sum += value(m, step, tensor, i);
  if constexpr (std::is_same_v<T, float>) {
    return got == sum * static_cast<float>(1.0 / static_cast<double>(g));
  } else {
    const double epsilon = std::is_same_v<T, __half> ? 0x1p-10 : 0x1p-7;
    const double mean = static_cast<double>(sum) / static_cast<double>(g);
    return std::abs(static_cast<double>(static_cast<float>(got)) - mean) <=
           static_cast<double>(g + 1) * epsilon * std::max(1.0, mean);
  }
}

// `steps` steps of `avg` on tensors of several sizes (one over several chunks): fresh values
// before each step, then every element against the serial mean of its group at the level the
// schedule rule gives.
template <class T, class Avg>
void named_averager(Avg& avg, strata::NcclComm& comm, std::span<const strata::LevelSpec> levels,
                    std::size_t warmup, std::size_t origin, std::size_t steps) {
  const std::size_t sizes[] = {1, 3, 4097, 70001};
  std::vector<strata::DeviceBuffer<T>> buffers;
  std::vector<std::span<T>> spans;
  for (const std::size_t n : sizes) {
    buffers.emplace_back(n, comm.rank());
    spans.push_back(buffers.back().span());
  }
  std::size_t averaged = 0;
  for (std::size_t step = 0; step < steps; ++step) {
    CAPTURE(step);
    std::vector<std::vector<T>> mine;
    for (std::size_t t = 0; t < spans.size(); ++t) {
      mine.emplace_back(spans[t].size());
      for (std::size_t i = 0; i < mine[t].size(); ++i)
        mine[t][i] = static_cast<T>(value(comm.rank(), step, t, i));
      check("cudaMemcpyAsync", comm.rank(),
            cudaMemcpyAsync(spans[t].data(), mine[t].data(), spans[t].size_bytes(),
                            cudaMemcpyHostToDevice, comm.stream()));
    }
    const std::optional<std::size_t> level = avg.average(spans, comm.stream());
    avg.synchronize();  // under the deadline: a copy to pageable memory would wait without one
    for (std::size_t t = 0; t < spans.size(); ++t) {
      check("cudaMemcpyAsync", comm.rank(),
            cudaMemcpyAsync(mine[t].data(), spans[t].data(), spans[t].size_bytes(),
                            cudaMemcpyDeviceToHost, comm.stream()));
    }
    comm.synchronize();
    const auto expected = ac::expected_level(levels, warmup, step, origin);
    REQUIRE(level == expected);
    const std::size_t g = level ? levels[*level].group_size : 1;
    averaged += level.has_value();
    std::size_t bad = 0;
    for (std::size_t t = 0; t < spans.size(); ++t) {
      for (std::size_t i = 0; i < mine[t].size(); ++i) {
        bad += !is_mean(mine[t][i], comm.rank(), g, step, t, i);
      }
    }
    CHECK(bad == 0);
  }
  CHECK(averaged > 0);
}

template <class Hier, class T>
void hierarchical(bool graphs) {
  strata::NcclComm& world = shared_world(false);
  if (static_cast<std::size_t>(world.size()) != Hier::levels.back().group_size) return;
  const std::size_t warmup = 1;
  strata::CudaHierarchicalAverager<Hier> avg(world, warmup, {.use_graphs = graphs});
  named_averager<T>(avg, world, Hier::levels, warmup, 0, 9);
  CHECK(avg.graphs() == (graphs ? Hier::levels.size() : 0u));
}

template <class T>
void periodic(bool graphs) {
  strata::NcclComm& world = shared_world(false);
  const std::size_t period = 2;
  const std::size_t warmup = 1;
  strata::CudaPeriodicAverager<> avg(world, period, warmup, {.use_graphs = graphs});
  const strata::LevelSpec levels[] = {{period, static_cast<std::size_t>(world.size())}};
  named_averager<T>(avg, world, levels, warmup, /*origin=*/warmup, 7);
  CHECK(avg.graphs() == (graphs ? 1u : 0u));
}

}  // namespace multiprocess

using namespace multiprocess;

TEST_CASE("nccl on one GPU: the collective conformance suite, one process per rank") {
  conformance::for_each_world("nccl on one GPU", {host().size()}, [](int) {
    Staged comm(make_nccl(/*verify=*/false));
    CHECK(comm.size() == host().size());
    CHECK(comm.rank() == host().rank());
    conformance::run_collectives(comm);
  });
  // With verify_arguments, one rank's bad arguments fail every rank alike.
  conformance::for_each_world("nccl on one GPU, verify on", {host().size()}, [](int) {
    Staged comm(make_nccl(/*verify=*/true));
    conformance::bad_arguments_fail_every_member(comm);
  });
  // NCCL's blocking mode: the same results, splits included, with every call returning done.
  conformance::for_each_world("nccl on one GPU, blocking mode", {host().size()}, [](int) {
    Staged comm(make_nccl(/*verify=*/true, /*blocking=*/true));
    conformance::run_all(comm);
  });
}

TEST_CASE("averagers on one GPU: the serial mean on random hierarchies") {
  ac::random_hierarchies<Nccl>(/*seed=*/7, /*trials=*/1);
  ac::random_hierarchies<NcclGraphs, float>(/*seed=*/8, /*trials=*/1);
}

TEST_CASE("averagers on one GPU: a failed averaging leaves the parameters and the step") {
  ac::failed_averaging<NcclVerify>();
}

TEST_CASE("averagers on one GPU: a restored averager continues the same schedule") {
  ac::restore<NcclGraphs>();
}

TEST_CASE("averagers on one GPU: the hierarchy is checked against the world size") {
  ac::world_size_check<Nccl>();
}

TEST_CASE("averagers on one GPU: a warm-up-relative period counts from the end of warm-up") {
  ac::warmup_relative<NcclGraphs>();
}

TEST_CASE("averagers on one GPU: compile-time hierarchies average like their run-time twins") {
  ac::compile_time_hierarchy<Nccl, H2>();
  ac::compile_time_hierarchy<Nccl, H3>();
  ac::compile_time_hierarchy<NcclGraphs, H4>();
}

// Each world runs the hierarchy of its size; graphs on and off alternate to keep the job short.
TEST_CASE("averagers on one GPU: CudaHierarchicalAverager and CudaPeriodicAverager, 16 bits") {
  hierarchical<H2, __half>(/*graphs=*/true);
  hierarchical<H2, __nv_bfloat16>(/*graphs=*/false);
  hierarchical<H3, __half>(/*graphs=*/false);
  hierarchical<H3, __nv_bfloat16>(/*graphs=*/true);
  hierarchical<H4, __half>(/*graphs=*/true);
  hierarchical<H4, __nv_bfloat16>(/*graphs=*/false);
  periodic<__half>(/*graphs=*/false);
  periodic<__nv_bfloat16>(/*graphs=*/true);
  periodic<float>(/*graphs=*/true);
}

// --- the embedding exchange: the device path against the host path over MPI -------------------

TEST_CASE("embedding exchange on one GPU: the device path gives the host path's results") {
  const std::size_t world = static_cast<std::size_t>(host().size());
  const auto plan = strata::ShardingPlan::parse(
      "0: 20000x32 table; 1: 3000x32 column:" + std::to_string(world) +
          "; 2: 500x16 row; 3: 2x16 row; 4: 300x16 table-row; 5: 100x8 dp; 6: 4000x16 hybrid/64",
      world, world % 2 == 0 ? 2 : 1);
  const std::size_t r = static_cast<std::size_t>(host().rank());
  const std::size_t samples = 64 + 37 * r, hotness = 2;
  strata::NcclComm nccl = make_nccl(/*verify=*/false);
  strata::DeviceExchangeOptions opt;
  opt.pooling = strata::Pooling::mean;
  opt.max_samples = 64 + 37 * world;
  opt.max_hotness = hotness;
  // The 64 smallest rows of table 6 replicated (the ids below favour small rows).
  strata::FrequentSets frequent;
  frequent.rows.resize(plan.num_tables());
  for (std::int64_t row = 0; row < 64; ++row) frequent.rows[6].push_back(row);
  strata::CudaEmbeddingExchange<strata::NcclComm, double> dev(nccl, plan, opt, frequent);
  strata::EmbeddingExchange<strata::MpiComm, double> ref(
      host(), plan, {strata::Pooling::mean, true, false}, frequent);
  const auto init = [](std::size_t j, std::size_t i, std::size_t d) {
    return std::cos(0.001 * double(i + 1) * double(d + 1) + 0.1 * double(j + 1));
  };
  dev.initialize(init);
  ref.initialize(init);
  const auto close = [](double a, double b) {
    return std::fabs(a - b) <= 1e-12 * std::max(1.0, std::fabs(b));
  };
  const std::size_t width = ref.output_width();
  for (std::size_t step = 0; step < 3; ++step) {
    std::vector<std::int64_t> ids;
    for (std::size_t j = 0; j < plan.num_tables(); ++j)
      for (std::size_t x = 0; x < samples * hotness; ++x) {
        const std::uint64_t h =
            (x + 1 + 1000 * r + step * 7919 + j * 104729) * 0x9E3779B97F4A7C15ull;
        ids.push_back(std::int64_t((h >> 20) % plan.table(j).rows >> ((h >> 9) % 8)));
      }
    std::vector<double> out(samples * width), grad(samples * width);
    for (std::size_t i = 0; i < grad.size(); ++i) grad[i] = std::sin(0.001 * double(i + step + r));
    ref.forward({ids, plan.num_tables(), samples, hotness}, out);
    Staging<std::int64_t> d_ids(std::span<const std::int64_t>(ids), nccl);
    Staging<double> d_grad(std::span<const double>(grad), nccl);
    Staging<double> d_out(out.size(), nccl);
    dev.forward(d_ids.input(), samples, hotness, d_out.device(), nccl.stream());
    // Dense gradients in the same all-reduce on both paths.
    std::vector<double> dense(1000, double(r + step));
    Staging<double> d_dense(std::span<const double>(dense), nccl);
    const std::vector<std::span<double>> dense_spans{std::span<double>(dense)};
    ref.backward(grad, strata::Sgd{0.05}, dense_spans);
    dev.backward(std::span<const double>(d_grad.device()), strata::DeviceSgd<double>{0.05},
                 d_dense.device(), nccl.stream());
    std::vector<double> dense_back(dense.size());
    d_dense.download(dense_back);
    bool dense_ok = true;
    for (std::size_t i = 0; i < dense.size(); ++i)
      dense_ok = dense_ok && close(dense_back[i], dense[i]);
    CHECK_MESSAGE(dense_ok, "dense gradients averaged in the fused all-reduce, step " << step);
    std::vector<double> got(out.size());
    d_out.download(got);
    bool ok = true;
    for (std::size_t i = 0; i < out.size(); ++i) ok = ok && close(got[i], out[i]);
    CHECK_MESSAGE(ok, "forward of step " << step);
  }
  for (std::size_t j = 0; j < plan.num_tables(); ++j) {
    const auto want = ref.gather_table(j, 0);
    const auto mine = dev.local_table(j);
    std::vector<double> all(mine.size() * world);
    host().all_gather(std::span<const double>(mine), std::span<double>(all));
    if (r != 0) continue;
    bool ok = true;
    for (std::size_t i = 0; i < want.size(); ++i) {
      const bool frequent_row = j == 6 && i / plan.table(j).width < 64;
      if (plan.replicated(j) || frequent_row) {
        for (std::size_t q = 0; q < world; ++q) ok = ok && close(all[q * mine.size() + i], want[i]);
      } else {
        double v = 0;
        for (std::size_t q = 0; q < world; ++q) v += all[q * mine.size() + i];
        ok = ok && close(v, want[i]);
      }
    }
    CHECK_MESSAGE(ok, "table " << j << " after the updates");
  }
}

TEST_CASE("embedding exchange on one GPU: a bad id on one rank is the same error everywhere") {
  const std::size_t world = static_cast<std::size_t>(host().size());
  const auto plan = strata::ShardingPlan::parse("0: 100x8 row; 1: 50x4 table; 2: 10x4 dp", world);
  strata::NcclComm nccl = make_nccl(/*verify=*/false);
  strata::DeviceExchangeOptions opt;
  opt.max_samples = 4;
  strata::CudaEmbeddingExchange<strata::NcclComm, double> dev(nccl, plan, opt);
  std::vector<std::int64_t> ids(3 * 4, 1);
  if (host().rank() == host().size() - 1) ids[5] = 77;  // table 1, lookup 1
  Staging<std::int64_t> d_ids(std::span<const std::int64_t>(ids), nccl);
  Staging<double> d_out(4 * dev.output_width(), nccl);
  std::string what;
  try {
    dev.forward(d_ids.input(), 4, 1, d_out.device(), nccl.stream());
  } catch (const strata::usage_error& e) {
    what = e.cause();
  }
  CHECK(what == "rank " + std::to_string(world - 1) +
                    ": table 1, lookup 1: id 77 is outside the table's 50 rows");
}

int main(int argc, char** argv) {
  strata::MpiEnvironment env(argc, argv);
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // Before any NCCL call: a host of its own per process, reached over the loopback interface.
  const std::string host_id = "strata-gpu-test-rank-" + std::to_string(rank);
  setenv("NCCL_HOSTID", host_id.c_str(), 1);
  setenv("NCCL_SOCKET_IFNAME", "lo", 0);
  setenv("NCCL_IB_DISABLE", "1", 0);

  // 0: a device, 1: none (skip), 2: CUDA cannot run. Every rank acts on the worst.
  int state = 0;
  try {
    state = strata::cuda_device_present() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    state = 2;
  }
  MPI_Allreduce(MPI_IN_PLACE, &state, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (state == 1) {
    if (rank == 0) std::printf("skipped: no CUDA device\n");
    return 77;
  }
  if (state == 2) return 1;

  doctest::Context context(argc, argv);
  context.setOption("no-version", true);
  context.setOption("no-colors", true);
  if (rank != 0) context.setOption("minimal", true);  // one report per job, failures from all
  int failed = 0;
  try {
    Job job;
    the_job = &job;
    failed = context.run();
    the_job = nullptr;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    failed = 1;
  }
  int any = failed != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any == 0) {
    std::printf(
        "%d processes on one GPU: every collective and averager agrees with the serial "
        "model\n",
        size);
  }
  return any;
}
