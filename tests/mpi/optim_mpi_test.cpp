// ShardedOptimizer over MPI with real processes, whatever the world size of the launch: the flat,
// hierarchical and replicated schedules against the serial updates of serial_updates.hpp, the
// parameters bitwise identical on every process; bucket reductions started from grad_ready
// (MpiComm has started collectives); a bad gradient on one process refused on every process.
#include <doctest/doctest.h>

#include <strata/comm/mpi.hpp>
#include <strata/optim/adam.hpp>
#include <strata/optim/lamb.hpp>
#include <strata/optim/sharded_optimizer.hpp>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "../optim/serial_updates.hpp"

namespace {

namespace opt = strata::optim;
using opt::ShardSchedule;

static_assert(opt::ShardedOptimizer<double, strata::MpiComm, opt::Adam>::started_collectives);

const std::vector<std::size_t> model_sizes{100, 37, 1000, 0, 5};
constexpr std::size_t small_buckets = 64 * sizeof(double);  // four buckets
constexpr double tight_clip = 5.0;                          // the mean gradient's norm is ~25

std::size_t process_count() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return static_cast<std::size_t>(n);
}

// A process whose check fails and leaves makes the others fail within a minute, not hang.
// `verify`: MpiOptions::verify_arguments, which makes every start of a collective wait for the
// other members' agreement (the optimizer's split communicators inherit it).
strata::MpiComm world_comm(bool verify = true) {
  strata::MpiOptions options;
  options.timeout = std::chrono::minutes(1);
  options.verify_arguments = verify;
  return strata::MpiComm(MPI_COMM_WORLD, options);
}

opt::ShardedOptions options_for(ShardSchedule s, std::size_t node,
                                std::optional<double> clip = std::nullopt, bool track = false) {
  opt::ShardedOptions o;
  o.schedule = s;
  o.ranks_per_node = node;
  o.bucket_bytes = small_buckets;
  o.clip_norm = clip;
  o.track_grad_norm = track;
  return o;
}

// How many processes hold parameters that differ, bit for bit, from this one's.
std::size_t processes_that_differ(strata::MpiComm& world, const serial::Tensors& params) {
  std::vector<double> mine;
  for (const auto& t : params) mine.insert(mine.end(), t.begin(), t.end());
  const std::size_t n = process_count();
  std::vector<double> every(mine.size() * n);
  world.all_gather(std::span<const double>(mine), std::span<double>(every));
  std::size_t differ = 0;
  for (std::size_t r = 0; r < n; ++r) {
    differ +=
        std::memcmp(every.data() + r * mine.size(), mine.data(), mine.size() * sizeof(double)) != 0;
  }
  return differ;
}

struct Config {
  ShardSchedule schedule;
  std::size_t node;
  [[nodiscard]] std::string name() const {
    std::string s(opt::to_string(schedule));
    if (schedule == ShardSchedule::hierarchical) s += " (nodes of " + std::to_string(node) + ")";
    return s;
  }
};

std::vector<Config> configs(std::size_t w) {
  std::vector<Config> c{{ShardSchedule::flat, 0}, {ShardSchedule::replicated, 0}};
  for (const std::size_t g : {std::size_t{1}, std::size_t{2}, std::size_t{4}}) {
    if (w % g == 0) c.push_back({ShardSchedule::hierarchical, g});
  }
  return c;
}

template <class Update, class Ref>
void check_against_serial(strata::MpiComm& world, const Config& c, const std::string& name,
                          Update update, Ref ref, std::optional<double> clip, bool track) {
  const std::size_t w = process_count();
  const serial::Problem p{model_sizes, w, 77};
  constexpr std::uint64_t steps = 3;
  const auto e = serial::run(p, ref, steps, clip);
  const auto o = options_for(c.schedule, c.node, clip, track);
  CAPTURE(world.options().verify_arguments);
  CAPTURE(c.name());
  CAPTURE(name);
  // Marked one by one in ready order, all at once, and in an order of each process's own.
  const auto marked =
      serial::drive<double>(world, p, update, o, steps, serial::Marking::ready_order);
  const auto stepped = serial::drive<double>(world, p, update, o, steps, serial::Marking::step);
  const auto rotated = serial::drive<double>(world, p, update, o, steps, serial::Marking::rotated);
  CHECK(serial::max_error(marked.params, e.params) <= 1e-12);
  CHECK(serial::bitwise_equal(stepped.params, marked.params));
  CHECK(serial::bitwise_equal(rotated.params, marked.params));
  CHECK(processes_that_differ(world, marked.params) == 0);
  CHECK(marked.num_buckets == 4);
  const std::size_t shards = c.schedule == ShardSchedule::flat           ? w
                             : c.schedule == ShardSchedule::hierarchical ? c.node
                                                                         : 1;
  CHECK(marked.shards == shards);
  CHECK(marked.state_values == Update::state_size * marked.shard_elements);
  for (std::size_t s = 0; s < steps; ++s) {
    CAPTURE(s);
    const auto& rep = marked.reports[s];
    // Every bucket completes inside a grad_ready and is started there.
    CHECK(rep.buckets_started_early > 0);
    CHECK(rep.buckets_started_early == marked.num_buckets);
    if (clip || track) {
      CHECK(std::abs(rep.grad_norm - e.grad_norms[s]) <= 1e-12 * e.grad_norms[s]);
    } else {
      CHECK(std::isnan(rep.grad_norm));
    }
  }
}

void every_schedule(bool verify) {
  auto world = world_comm(verify);
  const std::size_t w = process_count();
  for (const Config& c : configs(w)) {
    check_against_serial(world, c, "adam, weight decay", opt::Adam{.lr = 0.01, .weight_decay = 0.1},
                         serial::AdamRef{.lr = 0.01, .weight_decay = 0.1}, std::nullopt, false);
    check_against_serial(world, c, "lamb, weight decay, clipped",
                         opt::Lamb{.lr = 0.01, .weight_decay = 0.1},
                         serial::LambRef{.lr = 0.01, .weight_decay = 0.1}, tight_clip, true);
  }
}

}  // namespace

// With the default options every start of a collective first agrees with the other members (a
// wait); the hierarchical schedule starts collectives on two communicators, the node's and the
// one across nodes, and every process must reach those waits in one order.
TEST_CASE("sharded optimizer: every schedule against the serial Adam and LAMB (mpi)") {
  every_schedule(true);
}

TEST_CASE("sharded optimizer: every schedule, starts without argument agreement (mpi)") {
  every_schedule(false);
}

namespace {

void bad_gradient(bool verify) {
  auto world = world_comm(verify);
  const std::size_t w = process_count();
  const auto me = static_cast<std::size_t>(world.rank());
  const serial::Problem p{model_sizes, w, 78};
  const auto e = serial::run(p, serial::AdamRef{.lr = 0.01}, 2, std::nullopt);
  std::vector<Config> cs{{ShardSchedule::flat, 0}};
  if (w % 2 == 0) cs.push_back({ShardSchedule::hierarchical, 2});
  for (const Config& c : cs) {
    for (const bool twice : {false, true}) {
      CAPTURE(verify);
      CAPTURE(c.name());
      CAPTURE(twice);
      auto params = serial::initial_params(p);
      const auto sp = serial::spans(params);
      opt::ShardedOptimizer x(world, sp, opt::Adam{.lr = 0.01}, options_for(c.schedule, c.node));
      x.step(serial::rank_grads<double>(p, 1, me));
      const auto before = params;
      const std::vector<double> state(x.state_values().begin(), x.state_values().end());
      auto grads = serial::rank_grads<double>(p, 2, me);
      const bool faulty = me == w - 1;
      std::string what;
      try {
        if (twice) {
          // Tensor 2 (a bucket of its own) marked twice, while earlier buckets are in flight.
          for (std::size_t t : x.layout().ready_order()) {
            x.grad_ready(t, grads[t]);
            if (faulty && t == 2) x.grad_ready(t, grads[t]);
          }
          x.finish_step();
        } else {
          if (faulty) grads[2].resize(999);
          x.step(grads);
        }
        FAIL("no error");
      } catch (const strata::usage_error& err) {
        what = err.what();
      }
      CAPTURE(what);
      CHECK(what.find("rank " + std::to_string(w - 1)) != std::string::npos);
      CHECK(serial::bitwise_equal(params, before));
      CHECK(std::vector<double>(x.state_values().begin(), x.state_values().end()) == state);
      CHECK(x.steps_taken() == 1);
      // The optimizer is usable afterwards.
      x.step(serial::rank_grads<double>(p, 2, me));
      CHECK(serial::max_error(params, e.params) <= 1e-12);
    }
  }
}

}  // namespace

TEST_CASE("sharded optimizer: a bad gradient on one process fails on every process (mpi)") {
  bad_gradient(false);
  bad_gradient(true);
}
