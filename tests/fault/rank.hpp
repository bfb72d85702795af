// One rank of a scenario: builds the averager over the faulty communicator, runs the steps up to
// the faulty one, and reports how that step ended (`Outcome`). Each step broadcasts a control
// word from rank 0 over the world (collective 0 of the step), then averages the parameters
// (collective 1, on the level the schedule names, when it names one). Every step starts from
// fresh parameters, so each step's result can be checked against its own serial mean.
#pragma once

#include <strata/averaging/averager.hpp>
#include <strata/error.hpp>
#include <strata/hierarchy/runtime_hierarchy.hpp>

#ifdef STRATA_FAULT_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif
#ifdef STRATA_FAULT_HAVE_NCCL
#include <strata/averaging/device_averager.hpp>
#include <strata/comm/nccl.hpp>

#include "nccl/fake_runtime.hpp"
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "faulty_comm.hpp"
#include "scenario.hpp"

namespace fault {

// Parameter i of `rank` at `step`: multiples of 1/16, exact in double, distinct per rank.
inline double value(int rank, int step, std::size_t i) {
  return 1.0 + rank + 0.125 * step + 0.0625 * static_cast<double>(i);
}

inline bool close(double got, double expected) {
  return std::abs(got - expected) <= 1e-12 * std::max(1.0, std::abs(expected));
}

inline std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

// The most derived strata exception type of the one being handled.
inline std::string error_type(const strata::error& e) {
  if (dynamic_cast<const strata::usage_error*>(&e) != nullptr) return "usage_error";
  if (dynamic_cast<const strata::timeout_error*>(&e) != nullptr) return "timeout_error";
#ifdef STRATA_FAULT_HAVE_MPI
  if (dynamic_cast<const strata::mpi_error*>(&e) != nullptr) return "mpi_error";
#endif
#ifdef STRATA_FAULT_HAVE_NCCL
  if (dynamic_cast<const strata::nccl_error*>(&e) != nullptr) return "nccl_error";
  if (dynamic_cast<const strata::cuda_error*>(&e) != nullptr) return "cuda_error";
#endif
  return "error";
}

#ifdef STRATA_FAULT_HAVE_NCCL
// "Kernels" of the DeviceAverager on the host double: the host fused kernels, run in stream
// order as tasks of the double's stream.
template <class T>
class HostStreamKernels {
 public:
  template <class Stream>
  void upload(const strata::FusedPlan<T>& plan, Stream s) {
    std::vector<strata::TensorChunk<T>> chunks(plan.chunks().begin(), plan.chunks().end());
    const std::size_t total = plan.total_elements();
    launch(s, [this, chunks = std::move(chunks), total] {
      table_ = chunks;
      total_ = total;
    });
  }
  template <class Stream>
  void pack(std::span<T> flat, Stream s) {
    launch(s, [this, flat] { strata::pack(thrust::host, table(), flat); });
  }
  template <class Stream>
  void unpack(std::span<const T> flat, strata::fused_factor_t<T> f, Stream s) {
    launch(s, [this, flat, f] { strata::unpack(thrust::host, flat, table(), f); });
  }
  template <class Stream>
  void scale(std::span<T> data, strata::fused_factor_t<T> f, Stream s) {
    launch(s, [data, f] { strata::scale(thrust::host, data, f); });
  }

 private:
  template <class Stream, class F>
  static void launch(Stream s, F f) {
    s->enqueue(std::move(f));
  }
  strata::ChunkTable<T> table() const { return {table_.data(), table_.size(), total_}; }
  std::vector<strata::TensorChunk<T>> table_;
  std::size_t total_ = 0;
};
#endif

// Sets an option that the backend may not have yet (argument verification): on where it exists.
template <class Options>
void verify_arguments(Options& o) {
  if constexpr (requires { o.verify_arguments = true; }) o.verify_arguments = true;
}

// Waits, within a bound, until the device communicator's stream has run everything queued:
// work enqueued before a fault may still touch the parameters.
template <class Comm>
void drain(Comm& world) {
#ifdef STRATA_FAULT_HAVE_NCCL
  if constexpr (Comm::is_device) {
    using Runtime = typename Comm::runtime_type;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (Runtime::stream_query(world.stream()) == cudaErrorNotReady &&
           std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return;
  }
#endif
  (void)world;
}

template <class Comm>
auto make_averager(Comm& world, const Scenario& s) {
  if constexpr (Comm::is_device) {
#ifdef STRATA_FAULT_HAVE_NCCL
    // The device communicator is NCCL's host double: so are its graphs.
    using Avg = strata::DeviceAverager<strata::RuntimeSchedule<strata::AbsolutePhase>, Comm,
                                       HostStreamKernels, fake::Graphs>;
    strata::DeviceAveragerOptions opts;
    opts.use_graphs = s.graphs;
    return std::make_unique<Avg>(world,
                                 strata::RuntimeSchedule<strata::AbsolutePhase>(
                                     strata::RuntimeHierarchy(s.levels), s.warmup),
                                 opts);
#endif
  } else {
    return std::make_unique<strata::RuntimeHierarchicalAverager<Comm>>(
        world, strata::RuntimeHierarchy(s.levels), s.warmup);
  }
}

// Runs this rank's part of scenario `s` on `world` (whose rank is the world rank) and reports.
// An injected_fault is reported and also handed back in `injected`, for the local backend, where
// it must leave the rank's function as a failing rank's exception would.
template <class Comm>
Outcome run_rank(Comm& world, const Scenario& s, std::exception_ptr& injected) {
  using clock = std::chrono::steady_clock;
  constexpr bool device = Comm::is_device;
  Outcome o;
  const int r = world.rank();
  std::vector<double> store(s.params());
  std::vector<std::span<double>> tensors;
  for (std::size_t at = 0; const std::size_t t : s.tensors) {
    tensors.emplace_back(store.data() + at, t);
    at += t;
  }
  std::vector<double> snapshot, expected;
  std::vector<std::int64_t> control(control_words);
  auto start = clock::now();

  auto finish = [&](std::string status) {
    o.elapsed_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start).count();
    o.status = std::move(status);
    o.fired = world.faults().fired();
  };
  // After a failure: what the failed step left in the parameters and the control word.
  auto failed_state = [&] {
    drain(world);
    o.params = store == snapshot ? "unchanged" : "changed";
    bool untouched = true;
    for (std::int64_t c : control) untouched = untouched && c == (r == 0 ? o.step : -1);
    o.control = untouched ? "unchanged" : "written";
  };
  auto record = [&](auto&& handler) {
    try {
      throw;
    } catch (const leave_early&) {
      finish("left");
    } catch (const injected_fault& e) {
      finish("injected");
      o.type = "std";
      o.message = one_line(e.what());
      injected = std::current_exception();
    } catch (const strata::error& e) {
      finish("error");
      o.type = error_type(e);
      o.message = one_line(e.what());
    } catch (const std::exception& e) {
      finish("error");
      o.type = "std";
      o.message = one_line(e.what());
    } catch (...) {
      finish("error");
      o.type = "unknown";
    }
    handler();
  };

  o.phase = "setup";
  decltype(make_averager(world, s)) avg;
  try {
    avg = make_averager(world, s);
  } catch (...) {
    record([] {});
    return o;
  }

  try {
    for (int step = 0; step <= s.fault.step; ++step) {
      const bool last = step == s.fault.step;
      world.faults().begin_step(step);
      if (last) start = clock::now();
      o.step = step;
      const auto level = s.level_at(static_cast<std::size_t>(step));
      for (std::size_t i = 0; i < store.size(); ++i) store[i] = value(r, step, i);
      snapshot = store;
      expected = store;
      if (level) {
        // The serial mean of this rank's group, in rank order.
        const std::size_t g = s.levels[*level].group_size;
        const std::size_t first = static_cast<std::size_t>(r) / g * g;
        for (std::size_t i = 0; i < store.size(); ++i) {
          double sum = 0;
          for (std::size_t m = first; m < first + g; ++m) {
            sum += value(static_cast<int>(m), step, i);
          }
          expected[i] = sum / static_cast<double>(g);
        }
      }
      std::fill(control.begin(), control.end(), r == 0 ? step : -1);

      o.phase = "broadcast";
      world.broadcast(std::span<std::int64_t>(control), 0);
      if constexpr (device) {
        o.phase = "broadcast_wait";
        world.synchronize();
      }
      bool control_ok = true;
      for (std::int64_t c : control) control_ok = control_ok && c == step;

      o.phase = "average";
      std::optional<std::size_t> ran;
      if constexpr (device) {
        ran = s.flat ? avg->average(std::span<double>(store), world.stream())
                     : avg->average(tensors, world.stream());
        o.phase = "average_wait";
        avg->synchronize();
      } else {
        ran = s.flat ? avg->average(std::span<double>(store)) : avg->average(tensors);
      }
      bool params_ok = true;
      for (std::size_t i = 0; i < store.size(); ++i) {
        params_ok = params_ok && close(store[i], expected[i]);
      }
      const std::string at = "step " + std::to_string(step) + ": ";
      if (ran != level) o.problems.push_back("wrong: " + at + "the averager ran another level");
      if (!last) {
        if (!control_ok) o.problems.push_back("corrupted: " + at + "wrong control word");
        if (!params_ok) o.problems.push_back("corrupted: " + at + "wrong mean");
        continue;
      }
      o.phase = "done";
      finish("ok");
      o.params = params_ok ? "averaged" : "wrong";
      o.control = control_ok ? "ok" : "wrong";
    }
  } catch (...) {
    record(failed_state);
  }
  return o;
}

// --- reports on disk ------------------------------------------------------------------------
// One file per rank, "key=value" lines, written whole and renamed into place so that a reader
// never sees half of one.

inline void write_outcome(const std::string& dir, int rank, const Outcome& o) {
  const std::string path = dir + "/rank." + std::to_string(rank);
  {
    std::ofstream f(path + ".tmp");
    f << "status=" << o.status << '\n'
      << "type=" << o.type << '\n'
      << "phase=" << o.phase << '\n'
      << "step=" << o.step << '\n'
      << "elapsed_ms=" << o.elapsed_ms << '\n'
      << "params=" << o.params << '\n'
      << "control=" << o.control << '\n'
      << "fired=" << (o.fired ? 1 : 0) << '\n'
      << "message=" << one_line(o.message) << '\n';
    for (const std::string& p : o.problems) f << "problem=" << one_line(p) << '\n';
  }
  std::rename((path + ".tmp").c_str(), path.c_str());
}

inline std::optional<Outcome> read_outcome(const std::string& dir, int rank) {
  std::ifstream f(dir + "/rank." + std::to_string(rank));
  if (!f) return std::nullopt;
  Outcome o;
  std::string line;
  while (std::getline(f, line)) {
    const std::size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = line.substr(0, eq);
    const std::string val = line.substr(eq + 1);
    if (key == "status") o.status = val;
    else if (key == "type") o.type = val;
    else if (key == "phase") o.phase = val;
    else if (key == "step") o.step = std::stoi(val);
    else if (key == "elapsed_ms") o.elapsed_ms = std::stol(val);
    else if (key == "params") o.params = val;
    else if (key == "control") o.control = val;
    else if (key == "fired") o.fired = val == "1";
    else if (key == "message") o.message = val;
    else if (key == "problem") o.problems.push_back(val);
  }
  return o;
}

inline void write_hang_marker(const std::string& name, const std::string& text) {
  std::ofstream(name) << text << '\n';
}

// The fault of world rank `rank` in scenario `s`: the faulty rank's, or none.
inline std::shared_ptr<RankFaults> faults_of(const Scenario& s, int rank) {
  return rank == s.faulty ? std::make_shared<RankFaults>(s.fault) : std::make_shared<RankFaults>();
}

}  // namespace fault
