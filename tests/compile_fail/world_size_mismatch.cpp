// A hierarchy sized to a world given as a type must span exactly that world.
// expect: Hierarchy: level 2 group size 64 is not the world size 128; the largest group must span the whole world
// expect: static assertion failed: Hierarchy: the last group size must equal the world size
#include <strata/hierarchy/hierarchy.hpp>

using H = strata::Hierarchy<strata::Level<2, 8>, strata::Level<4, 32>, strata::Level<8, 64>>;

#ifdef STRATA_COMPILE_FAIL
using Sized = strata::HierarchyForWorld<H, 128>;
#else
using Sized = strata::HierarchyForWorld<H, 64>;
#endif

constexpr auto used = Sized::world_size;
