// Only outer optimizers and wire formats go into LevelWith: anything else must not compile, and
// the message names what is allowed.
// expect: static assertion failed: LevelWith: a policy must be an outer optimizer (NesterovOuter, CustomOuter) or a wire format (Wire<...>)
#include <strata/averaging/outer.hpp>

#ifdef STRATA_COMPILE_FAIL
using L = strata::LevelWith<strata::Level<2, 8>, strata::NesterovOuter<0.7, 0.9>, double>;
#else
using L = strata::LevelWith<strata::Level<2, 8>, strata::NesterovOuter<0.7, 0.9>>;
#endif

constexpr auto used = L::period;
