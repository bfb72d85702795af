// A level applies one outer step: two outer optimizers on one level must not compile.
// expect: static assertion failed: LevelWith: at most one outer optimizer per level
#include <strata/averaging/outer.hpp>

#ifdef STRATA_COMPILE_FAIL
using L =
    strata::LevelWith<strata::Level<2, 8>, strata::NesterovOuter<0.7, 0.9>,
                      strata::Wire<strata::WireFormat::bf16>, strata::NesterovOuter<1.0, 0.0>>;
#else
using L = strata::LevelWith<strata::Level<2, 8>, strata::NesterovOuter<0.7, 0.9>,
                            strata::Wire<strata::WireFormat::bf16>>;
#endif

constexpr auto used = L::period;
