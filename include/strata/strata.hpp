#pragma once
//! \file
//! Every public header of strata that needs nothing beyond the `strata::strata` target: no CUDA
//! toolkit, no MPI, no NCCL. Headers that do are included on their own, with the target that
//! provides what they need: `strata/comm/mpi.hpp` (`strata::mpi`); `strata/comm/nccl.hpp` and
//! the headers of `strata/comm/nccl/` (`strata::nccl`); the headers of `strata/cuda/`,
//! `strata/averaging/cuda_graphs.hpp` and `strata/averaging/device_averager.hpp` (`strata::cuda`:
//! g++ compiles them against the CUDA runtime's headers); and every `.cuh` (nvcc).

#include "strata/averaging/averager.hpp"
#include "strata/averaging/clock.hpp"
#include "strata/averaging/post_local_sgd.hpp"
#include "strata/comm/communicator.hpp"
#include "strata/comm/communicator_traits.hpp"
#include "strata/comm/groups.hpp"
#include "strata/comm/level_comms.hpp"
#include "strata/comm/local.hpp"
#include "strata/embedding/balancer.hpp"
#include "strata/embedding/batch.hpp"
#include "strata/embedding/exchange.hpp"
#include "strata/embedding/fused_tables.hpp"
#include "strata/embedding/hierarchical_all_to_all.hpp"
#include "strata/embedding/placement.hpp"
#include "strata/embedding/plan.hpp"
#include "strata/embedding/sharding.hpp"
#include "strata/embedding/table.hpp"
#include "strata/error.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/hierarchy/level.hpp"
#include "strata/hierarchy/runtime_hierarchy.hpp"
#include "strata/hierarchy/topology.hpp"
#include "strata/kernels/arena.hpp"
#include "strata/kernels/dedup.hpp"
#include "strata/kernels/fused.hpp"
#include "strata/schedule/phase.hpp"
#include "strata/schedule/schedule.hpp"
#include "strata/schedule/timeline.hpp"
#include "strata/schedule/wire.hpp"
#include "strata/sim/cost.hpp"
#include "strata/sim/delay.hpp"
#include "strata/sim/method.hpp"
#include "strata/sim/monte_carlo.hpp"
#include "strata/sim/planner.hpp"
#include "strata/sim/simulate.hpp"
#include "strata/sim/statistics.hpp"
#include "strata/version.hpp"
