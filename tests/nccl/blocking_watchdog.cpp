// NCCL's blocking mode on the host double: a call that waits inside NCCL past the deadline ends
// the process with a message naming the call (nothing can interrupt it), and one that returns
// in time costs nothing. One scenario per run, named by the argument; ctest matches the output:
//   init     rank 0 of 2 creates a blocking communicator, rank 1 never joins
//   split    3 ranks, rank 2 never splits: the others wait in ncclCommSplit
//   connect  2 ranks, rank 1 never makes a collective: rank 0's first one waits to connect
//   in_time  2 ranks, rank 1 joins, splits and connects late but within the deadline: exit 0
#include <strata/comm/local.hpp>
#include <strata/comm/nccl.hpp>

#include <chrono>
#include <cstdio>
#include <span>
#include <string_view>
#include <thread>
#include <vector>

#include "fake_runtime.hpp"

namespace {

using FakeNccl = strata::BasicNcclComm<fake::Runtime>;
using namespace std::chrono_literals;

strata::NcclOptions blocking(std::chrono::milliseconds timeout) {
  strata::NcclOptions o;
  o.blocking = true;
  o.timeout = timeout;
  return o;
}

int init() {
  const ncclUniqueId id = FakeNccl::unique_id();
  FakeNccl comm = FakeNccl::from_unique_id(id, 0, 2, blocking(300ms));
  std::puts("init returned although rank 1 never joined");
  return 1;
}

int split() {
  strata::LocalWorld(3).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, blocking(300ms));
    if (comm.rank() == 2) return;
    FakeNccl sub = comm.split(0, comm.rank());
    std::puts("split returned although rank 2 never split");
  });
  return 1;
}

int connect() {
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    FakeNccl comm = fake::bootstrap(host, blocking(300ms));
    if (comm.rank() == 1) return;
    std::vector<float> v(4, 1.0f);
    comm.all_reduce(std::span<float>(v), strata::ReduceOp::sum);
    std::puts("the first collective returned although rank 1 never connected");
  });
  return 1;
}

int in_time() {
  strata::LocalWorld(2).run([](strata::LocalComm& host) {
    const auto late = [&] {
      if (host.rank() == 1) std::this_thread::sleep_for(200ms);
    };
    late();
    FakeNccl comm = fake::bootstrap(host, blocking(5s));
    late();
    FakeNccl sub = comm.split(0, comm.rank());
    late();
    std::vector<float> v(4, 1.0f);
    sub.all_reduce(std::span<float>(v), strata::ReduceOp::sum);
    sub.synchronize();
    if (v[0] != 2.0f) throw std::runtime_error("wrong sum");
  });
  std::puts("in time: every blocking call returned");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view scenario = argc > 1 ? argv[1] : "";
  if (scenario == "init") return init();
  if (scenario == "split") return split();
  if (scenario == "connect") return connect();
  if (scenario == "in_time") return in_time();
  std::fprintf(stderr, "usage: %s init|split|connect|in_time\n", argv[0]);
  return 2;
}
