#pragma once
//! \file
//! Every host-only module of strata. CUDA modules (`.cuh`) are included on their own.

#include "strata/error.hpp"
#include "strata/hierarchy/hierarchy.hpp"
#include "strata/hierarchy/level.hpp"
#include "strata/hierarchy/runtime_hierarchy.hpp"
#include "strata/hierarchy/topology.hpp"
#include "strata/schedule/phase.hpp"
#include "strata/schedule/schedule.hpp"
#include "strata/schedule/timeline.hpp"
#include "strata/schedule/wire.hpp"
#include "strata/version.hpp"
