// The host embedding exchange reads ids and rows on the host: given a communicator over device
// memory it must not compile, and must name the exchange to use instead.
// expect: EmbeddingExchange: this communicator's buffers are device memory; exchange embeddings in device memory with DeviceEmbeddingExchange
#include <strata/comm/local.hpp>
#include <strata/embedding/exchange.hpp>

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

void use(Backend& world) {
  strata::EmbeddingExchange<Backend, float> exchange(world,
                                                     strata::ShardingPlan::parse("0: 10x4 row", 1));
  (void)exchange;
}
