// An outer learning rate of 0 would never leave the anchor: it must not compile.
// expect: static assertion failed: NesterovOuter: the outer learning rate must be above 0
#include <strata/averaging/outer.hpp>

#ifdef STRATA_COMPILE_FAIL
using O = strata::NesterovOuter<0.0, 0.9>;
#else
using O = strata::NesterovOuter<0.7, 0.9>;
#endif

constexpr auto used = O::lr;
