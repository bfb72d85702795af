#pragma once
//! \file
//! Every host-only module of strata. CUDA modules (`.cuh`) are included on their own.

#include "strata/averaging/averager.hpp"
#include "strata/averaging/post_local_sgd.hpp"
#include "strata/comm/communicator.hpp"
#include "strata/comm/groups.hpp"
#include "strata/comm/level_comms.hpp"
#include "strata/comm/local.hpp"
#include "strata/error.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/hierarchy/level.hpp"
#include "strata/hierarchy/runtime_hierarchy.hpp"
#include "strata/hierarchy/topology.hpp"
#include "strata/kernels/arena.hpp"
#include "strata/kernels/fused.hpp"
#include "strata/schedule/phase.hpp"
#include "strata/schedule/schedule.hpp"
#include "strata/schedule/timeline.hpp"
#include "strata/schedule/wire.hpp"
#include "strata/version.hpp"
