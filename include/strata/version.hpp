#pragma once
//! \file
//! The library version.

//! strata's version as `MAJOR * 10000 + MINOR * 100 + PATCH`.
//!
//! \code
//! static_assert(STRATA_VERSION >= 100);
//! \endcode
#define STRATA_VERSION_MAJOR 0
#define STRATA_VERSION_MINOR 1
#define STRATA_VERSION_PATCH 0
#define STRATA_VERSION \
  (STRATA_VERSION_MAJOR * 10000 + STRATA_VERSION_MINOR * 100 + STRATA_VERSION_PATCH)
