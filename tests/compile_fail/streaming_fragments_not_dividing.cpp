// Fragments synchronise P/F steps apart: F must divide the period.
// expect: static assertion failed: StaticStreamingAverager: the fragment count F must divide the period P
#include <strata/averaging/streaming.hpp>
#include <strata/comm/local.hpp>

using H = strata::Hierarchy<strata::Level<6, 4>>;
#ifdef STRATA_COMPILE_FAIL
using S = strata::Streaming<4, 0, 1.0>;
#else
using S = strata::Streaming<3, 0, 1.0>;
#endif

// sizeof needs the complete class, and with it the checks in its body.
constexpr auto used = sizeof(strata::StaticStreamingAverager<H, S, strata::LocalComm>);
