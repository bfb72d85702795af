// strata::nccl from a consumer: the communicator models the concept over device memory, and
// NCCL links.
#include <strata/comm/nccl.hpp>

static_assert(strata::communicator<strata::NcclComm>);
static_assert(strata::device_memory_v<strata::NcclComm>);

// ncclGetVersion needs no GPU.
int strata_consumer_nccl_version() {
  int version = 0;
  return ncclGetVersion(&version) == ncclSuccess ? version : -1;
}
