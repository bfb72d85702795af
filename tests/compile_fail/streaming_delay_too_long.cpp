// A fragment's result must be applied before the next fragment starts: delay < P/F.
// expect: static assertion failed: StaticStreamingAverager: the delay must be below P/F
#include <strata/averaging/streaming.hpp>
#include <strata/comm/local.hpp>

using H = strata::Hierarchy<strata::Level<8, 4>>;
#ifdef STRATA_COMPILE_FAIL
using S = strata::Streaming<4, 2, 0.5>;
#else
using S = strata::Streaming<4, 1, 0.5>;  // the longest delay allowed: P/F - 1
#endif

constexpr auto used = sizeof(strata::StaticStreamingAverager<H, S, strata::LocalComm>);
