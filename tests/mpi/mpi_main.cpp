// doctest under MPI: every process runs the suite; the job fails when any process fails.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <strata/comm/mpi.hpp>

int main(int argc, char** argv) {
  strata::MpiEnvironment env(argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  doctest::Context context(argc, argv);
  context.setOption("no-version", true);
  context.setOption("no-colors", true);
  if (rank != 0) context.setOption("minimal", true);  // one report per job, failures from all
  const int failed = context.run();
  // Every process learns whether any failed, so that all exit alike.
  int any = failed != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any;
}
