// A momentum of 1 never forgets a pseudo-gradient: it must not compile.
// expect: static assertion failed: NesterovOuter: the outer momentum must be in [0, 1)
#include <strata/averaging/outer.hpp>

#ifdef STRATA_COMPILE_FAIL
using O = strata::NesterovOuter<0.7, 1.0>;
#else
using O = strata::NesterovOuter<0.7, 0.0>;  // the valid control: no momentum
#endif

constexpr auto used = O::momentum;
