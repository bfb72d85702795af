// strata::mpi from a consumer: the communicator models the concept, and MPI links.
#include <strata/comm/mpi.hpp>

static_assert(strata::communicator<strata::MpiComm>);
static_assert(!strata::device_memory_v<strata::MpiComm>);

// MPI_Get_version may be called before MPI_Init.
int strata_consumer_mpi_version() {
  int version = 0;
  int subversion = 0;
  MPI_Get_version(&version, &subversion);
  return version;
}
