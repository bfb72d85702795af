// strata::torch from a consumer: a communicator over a one-rank gloo process group averages.
#include <strata/torch/comm.hpp>
#include <strata/torch/gloo.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <span>
#include <vector>

static_assert(strata::communicator<strata::TorchComm>);

bool strata_consumer_torch_averages() {
  auto store = c10::make_intrusive<c10d::HashStore>();
  auto group = strata::make_gloo_group(store, 0, 1, std::chrono::seconds(30));
  strata::TorchComm comm = strata::gloo_comm(group, store);
  std::vector<double> v{1.0, 2.0};
  comm.all_reduce(std::span<double>(v), strata::ReduceOp::average);
  return v == std::vector<double>{1.0, 2.0} && comm.size() == 1;
}
