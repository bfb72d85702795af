#pragma once
//! \file
//! The NCCL backend (target `strata::nccl`): its errors (`nccl/error.hpp`), its runtime policy
//! (`nccl/runtime.hpp`), the communicator (`nccl/communicator.hpp`) and its bootstrap over a host
//! communicator (`nccl/bootstrap.hpp`). Host code: it builds with g++ against the CUDA and NCCL
//! headers.
//!
//! \code
//! static_assert(strata::communicator<strata::NcclComm>);
//! \endcode

#include "strata/comm/nccl/bootstrap.hpp"
#include "strata/comm/nccl/communicator.hpp"
#include "strata/comm/nccl/error.hpp"
#include "strata/comm/nccl/runtime.hpp"
