// A program outside strata's tree that uses it as a dependency: the core always, MPI, NCCL and
// PyTorch when the strata it was built against has them (components.cmake).
#include <strata/strata.hpp>

#include <cstdio>
#include <vector>

#ifdef STRATA_CONSUMER_MPI
int strata_consumer_mpi_version();
#endif
#ifdef STRATA_CONSUMER_NCCL
int strata_consumer_nccl_version();
#endif
#ifdef STRATA_CONSUMER_TORCH
bool strata_consumer_torch_averages();
#endif

using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>, strata::Level<8, 64>>;
static_assert(strata::Schedule<H>{}.level_at(8) == 2);

int main() {
  const auto h = strata::RuntimeHierarchy::parse(H::to_string());
  const strata::RuntimeSchedule<> s(h);
  const auto counts = s.sync_counts(64);
  std::printf("%s over 64 steps: %zu %zu %zu syncs\n", h.to_string().c_str(), counts[0], counts[1],
              counts[2]);
  bool ok = counts == std::vector<std::size_t>{16, 8, 8};
#ifdef STRATA_CONSUMER_MPI
  const int mpi = strata_consumer_mpi_version();
  std::printf("strata::mpi: MPI %d\n", mpi);
  ok = ok && mpi >= 3;  // MPI_Comm_idup and the non-blocking collectives are MPI 3
#endif
#ifdef STRATA_CONSUMER_NCCL
  const int nccl = strata_consumer_nccl_version();
  std::printf("strata::nccl: NCCL %d\n", nccl);
  ok = ok && nccl > 0;
#endif
#ifdef STRATA_CONSUMER_TORCH
  const bool torch = strata_consumer_torch_averages();
  std::printf("strata::torch: %s\n", torch ? "averages" : "fails");
  ok = ok && torch;
#endif
  return ok ? 0 : 1;
}
