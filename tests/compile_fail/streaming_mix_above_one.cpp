// A streaming mix above 1 overshoots the synchronised value: it must not compile.
// expect: static assertion failed: Streaming: the mix must be in (0, 1]
#include <strata/averaging/streaming.hpp>

#ifdef STRATA_COMPILE_FAIL
using S = strata::Streaming<4, 1, 1.5>;
#else
using S = strata::Streaming<4, 1, 1.0>;  // the valid control: the largest mix
#endif

constexpr auto used = S::mix;
