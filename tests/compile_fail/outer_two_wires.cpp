// A level sends in one format: two wire formats on one level must not compile.
// expect: static assertion failed: LevelWith: at most one wire format per level
#include <strata/averaging/outer.hpp>

#ifdef STRATA_COMPILE_FAIL
using L = strata::LevelWith<strata::Level<2, 8>, strata::Wire<strata::WireFormat::int8>,
                            strata::Wire<strata::WireFormat::fp16>>;
#else
using L = strata::LevelWith<strata::Level<2, 8>, strata::Wire<strata::WireFormat::int8>>;
#endif

constexpr auto used = L::group_size;
