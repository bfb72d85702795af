// Streaming fragments synchronise over the world on one period: a hierarchy of two levels has
// no meaning for them.
// expect: static assertion failed: StaticStreamingAverager: streaming fragments need a one-level hierarchy P:N
#include <strata/averaging/streaming.hpp>
#include <strata/comm/local.hpp>

#ifdef STRATA_COMPILE_FAIL
using H = strata::Hierarchy<strata::Level<2, 2>, strata::Level<8, 4>>;
#else
using H = strata::Hierarchy<strata::Level<8, 4>>;
#endif
using S = strata::Streaming<4, 1, 0.5>;

constexpr auto used = sizeof(strata::StaticStreamingAverager<H, S, strata::LocalComm>);
