// A streaming mix of 0 would never move the parameters: it must not compile.
// expect: static assertion failed: Streaming: the mix must be in (0, 1]
#include <strata/averaging/streaming.hpp>

#ifdef STRATA_COMPILE_FAIL
using S = strata::Streaming<4, 1, 0.0>;
#else
using S = strata::Streaming<4, 1, 0.5>;  // the valid control
#endif

// Naming a static member instantiates the class, and with it the check.
constexpr auto used = S::fragments;
