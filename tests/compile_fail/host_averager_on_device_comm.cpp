// A host averager packs tensors on the host: given a communicator over device memory it must not
// compile, and must name the averager to use instead.
// expect: BasicAverager: this communicator's buffers are device memory; average device tensors with DeviceAverager
#include <strata/averaging/averager.hpp>
#include <strata/comm/local.hpp>

#include <utility>

// The local backend, declared through its traits to hold device buffers (as NcclComm does), or
// not (the control).
class Backend : public strata::LocalComm {
 public:
  explicit Backend(strata::LocalComm comm) : strata::LocalComm(std::move(comm)) {}
  Backend split(int color, int key) { return Backend(strata::LocalComm::split(color, key)); }
};
static_assert(strata::communicator<Backend>);

#ifdef STRATA_COMPILE_FAIL
template <>
struct strata::communicator_traits<Backend> {
  static constexpr bool all_or_nothing = true;
  static constexpr strata::MemorySpace memory_space = strata::MemorySpace::device;
  using stream_type = void;
};
#endif

using H = strata::Hierarchy<strata::Level<1, 2>>;
void use(Backend& world) {
  strata::HierarchicalAverager<H, Backend> averager(world);
  (void)averager;
}
