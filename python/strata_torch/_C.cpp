// strata_torch._C: strata's hierarchical averager over PyTorch's own process groups, for the
// Python package around it (strata_torch/__init__.py turns parameters and parameter groups into
// the tensor lists this takes, and keeps PyTorch's call signature).
//
// PyTorch's headers come first: pybind11's casters for tensors, process groups and stores are
// torch's own, so a ProcessGroup or Store object from torch.distributed arrives here as the C++
// object it wraps.
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupWrapper.hpp>

#include <pybind11/stl.h>

#include <strata/averaging/averager.hpp>
#include <strata/averaging/outer.hpp>
#include <strata/averaging/post_local_sgd.hpp>
#include <strata/hierarchy/runtime_hierarchy.hpp>
#include <strata/torch/comm.hpp>
#include <strata/torch/gloo.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

using Averager = strata::RuntimeHierarchicalAverager<strata::TorchComm>;
using Levels = std::vector<std::pair<std::size_t, std::size_t>>;          // (period, group size)
using OuterSpec = std::vector<std::optional<std::pair<double, double>>>;  // per level: (lr, mu)

strata::RuntimeHierarchy hierarchy_of(const Levels& levels) {
  std::vector<strata::LevelSpec> specs;
  for (const auto& [period, group] : levels) specs.push_back({period, group});
  return strata::RuntimeHierarchy(std::move(specs));
}

// The element type the averager runs on: every tensor's. One collective averages them all, so
// they share one type, and they must be host memory laid out flat.
enum class Kind { f32, f64 };

Kind kind_of(const std::vector<at::Tensor>& tensors) {
  // Nothing to average (no parameter has a gradient yet) still takes its step, in agreement
  // with the other ranks: an averaging of no elements.
  if (tensors.empty()) return Kind::f64;
  const auto type = tensors.front().scalar_type();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const std::string which = "strata_torch: tensor " + std::to_string(i);
    if (!t.device().is_cpu()) {
      throw py::type_error(which + " is on " + t.device().str() +
                           "; strata_torch averages CPU tensors (gloo process groups)");
    }
    if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble) {
      throw py::type_error(which + " is " + std::string(c10::toString(t.scalar_type())) +
                           "; strata_torch averages float32 or float64 tensors");
    }
    if (t.scalar_type() != type) {
      throw py::type_error(which + " is " + std::string(c10::toString(t.scalar_type())) +
                           " but tensor 0 is " + std::string(c10::toString(type)) +
                           "; one averaging takes tensors of one type");
    }
    if (!t.is_contiguous()) throw py::type_error(which + " is not contiguous");
    if (t.is_inference()) {
      throw py::type_error(which +
                           " is an inference tensor, which cannot be written in place "
                           "outside inference mode");
    }
  }
  return type == at::kFloat ? Kind::f32 : Kind::f64;
}

template <class T>
std::vector<std::span<T>> spans_of(const std::vector<at::Tensor>& tensors) {
  std::vector<std::span<T>> s;
  s.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    s.emplace_back(t.data_ptr<T>(), static_cast<std::size_t>(t.numel()));
  }
  return s;
}

// Tensors written through their data pointers, as an optimizer's in-place step would be: their
// version counters move, so that autograd refuses a graph that saved their old values.
void mark_written(const std::vector<at::Tensor>& tensors) {
  for (const at::Tensor& t : tensors) torch::autograd::impl::bump_version(t);
}

template <class T>
std::vector<T> vector_of(const at::Tensor& t) {
  const at::Tensor c =
      t.to(at::CPU(std::is_same_v<T, float> ? at::kFloat : at::kDouble)).contiguous();
  return std::vector<T>(c.data_ptr<T>(), c.data_ptr<T>() + c.numel());
}

template <class T>
at::Tensor tensor_of(const std::vector<T>& v) {
  at::Tensor t =
      at::empty({static_cast<std::int64_t>(v.size())},
                at::TensorOptions().dtype(std::is_same_v<T, float> ? at::kFloat : at::kDouble));
  std::copy(v.begin(), v.end(), t.data_ptr<T>());
  return t;
}

// The communicator over the caller's process group, a gloo group (or the gloo group inside
// PyTorch's debug wrapper, TORCH_DISTRIBUTED_DEBUG=DETAIL, whose checks the averager's own
// agreement replaces): its level groups are gloo groups with the same devices, under the
// communicator's deadline.
std::unique_ptr<strata::TorchComm> world_of(const c10::intrusive_ptr<c10d::ProcessGroup>& group,
                                            const c10::intrusive_ptr<c10d::Store>& store,
                                            std::optional<double> timeout_s, bool verify) {
  c10::intrusive_ptr<c10d::ProcessGroup> inner = group;
  if (auto wrapper = c10::dynamic_intrusive_pointer_cast<c10d::ProcessGroupWrapper>(group)) {
    inner = wrapper->getWrappedPg();
  }
  auto gloo = c10::dynamic_intrusive_pointer_cast<c10d::ProcessGroupGloo>(inner);
  if (!gloo) {
    throw py::type_error("strata_torch: the process group's backend is " + inner->getBackendName() +
                         "; strata_torch averages CPU tensors over gloo process groups");
  }
  strata::TorchOptions o;
  o.timeout = gloo->getOptions()->timeout;
  if (timeout_s) o.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(*timeout_s * 1e3));
  o.verify_arguments = verify;
  return std::make_unique<strata::TorchComm>(strata::gloo_comm(gloo, store, o));
}

// Every call that talks to a process group runs without the GIL: gloo's worker threads free the
// tensors of finished work under gloo's own lock, and a tensor that had a Python object needs
// the GIL to be freed, so a thread that held the GIL while it waited for gloo's lock (to enqueue
// a collective, or to stop the workers when a group is destroyed) would wait forever.
class PyAverager {
 public:
  PyAverager(const c10::intrusive_ptr<c10d::ProcessGroup>& group,
             const c10::intrusive_ptr<c10d::Store>& store, const Levels& levels, std::size_t warmup,
             const OuterSpec& outer, std::optional<double> timeout_s, bool verify) {
    strata::RuntimeHierarchy h = hierarchy_of(levels);  // std::invalid_argument: ValueError
    h.check_world_size(static_cast<std::size_t>(group->getSize()));
    strata::AveragerOptions o;
    if (!outer.empty()) {
      if (outer.size() != levels.size()) {
        throw std::invalid_argument("strata_torch: " + std::to_string(outer.size()) +
                                    " outer settings for " + std::to_string(levels.size()) +
                                    " levels");
      }
      for (const auto& level : outer) {
        strata::LevelPolicy p;
        if (level) p.outer = strata::OuterOptimizer::nesterov(level->first, level->second);
        o.levels.push_back(p);
      }
    }
    py::gil_scoped_release release;
    world_ = world_of(group, store, timeout_s, verify);
    averager_ = std::make_unique<Averager>(*world_, std::move(h), warmup, o);
  }

  PyAverager(const PyAverager&) = delete;
  PyAverager& operator=(const PyAverager&) = delete;

  // Destroying the level groups joins their gloo workers: without the GIL (class comment).
  ~PyAverager() {
    py::gil_scoped_release release;
    sync_.reset();
    averager_.reset();
    world_.reset();
  }

  std::optional<std::size_t> average(const std::vector<at::Tensor>& tensors) {
    const Kind k = kind_of(tensors);
    std::optional<std::size_t> level;
    {
      py::gil_scoped_release release;
      if (k == Kind::f32) {
        level = averager_->average(spans_of<float>(tensors));
      } else {
        level = averager_->average(spans_of<double>(tensors));
      }
    }
    if (level) mark_written(tensors);
    return level;
  }

  void begin(const std::vector<at::Tensor>& tensors) {
    const Kind k = kind_of(tensors);
    py::gil_scoped_release release;
    if (k == Kind::f32) {
      averager_->begin(spans_of<float>(tensors));
    } else {
      averager_->begin(spans_of<double>(tensors));
    }
    kind_ = k;
  }

  [[nodiscard]] std::size_t step() const { return averager_->step(); }

  [[nodiscard]] std::tuple<std::size_t, std::size_t, std::string, std::string> state() const {
    const strata::AveragerState s = averager_->state();
    return {s.step, s.warmup, s.hierarchy, s.phase};
  }

  void restore(std::size_t step, std::size_t warmup, const std::string& hierarchy,
               const std::string& phase) {
    averager_->restore(strata::AveragerState{step, warmup, hierarchy, phase});
  }

  // Per level: the anchor and the outer state, flat, as tensors (None where a level keeps none);
  // of the type begin() was given.
  [[nodiscard]] py::dict outer_state() const {
    py::dict d;
    if (!kind_) return d;
    const auto tensors = [](const auto& per_level) {
      py::list out;
      for (const auto& v : per_level) {
        out.append(v.empty() ? py::object(py::none()) : py::cast(tensor_of(v)));
      }
      return out;
    };
    const auto pack = [&](const auto& snapshot) {
      d["anchors"] = tensors(snapshot.anchors);
      d["states"] = tensors(snapshot.states);
    };
    if (*kind_ == Kind::f32) {
      pack(averager_->template outer_state<float>());
    } else {
      pack(averager_->template outer_state<double>());
    }
    return d;
  }

  void load_outer_state(const std::vector<std::optional<at::Tensor>>& anchors,
                        const std::vector<std::optional<at::Tensor>>& states, std::size_t elements,
                        bool single) {
    const auto load = [&](auto zero) {
      using T = decltype(zero);
      const auto vectors = [](const std::vector<std::optional<at::Tensor>>& per_level) {
        std::vector<std::vector<T>> out;
        for (const auto& t : per_level) out.push_back(t ? vector_of<T>(*t) : std::vector<T>{});
        return out;
      };
      averager_->load_outer_state(strata::OuterSnapshot<T>{vectors(anchors), vectors(states)},
                                  elements);
    };
    if (single) {
      load(0.0f);
      kind_ = Kind::f32;
    } else {
      load(0.0);
      kind_ = Kind::f64;
    }
  }

  // The level that averages at each step of [start, start + count), if any.
  [[nodiscard]] std::vector<std::optional<std::size_t>> schedule(std::size_t start,
                                                                 std::size_t count) const {
    std::vector<std::optional<std::size_t>> out;
    out.reserve(count);
    for (std::size_t s = start; s < start + count; ++s) {
      out.push_back(averager_->schedule().level_at(s));
    }
    return out;
  }

  // The post-local SGD gradient synchronisation over this averager's world and warm-up.
  // Collective (it creates the node groups): without the GIL, see the class comment.
  void make_gradient_sync(int ranks_per_node) {
    py::gil_scoped_release release;
    sync_ = std::make_unique<strata::PostLocalGradientSync<Averager>>(*averager_, *world_,
                                                                      ranks_per_node, true);
  }

  // Averages one flat gradient buffer (a DDP bucket) as the current step requires; returns
  // "world", "node" or "none".
  std::string sync_gradients(const at::Tensor& buffer) {
    if (!sync_) throw std::logic_error("strata_torch: no gradient sync was made");
    const std::vector<at::Tensor> one{buffer};
    const Kind k = kind_of(one);
    strata::GradientSync done;
    {
      py::gil_scoped_release release;
      if (k == Kind::f32) {
        done = sync_->sync(spans_of<float>(one));
      } else {
        done = sync_->sync(spans_of<double>(one));
      }
    }
    switch (done) {
      case strata::GradientSync::world: return "world";
      case strata::GradientSync::node: return "node";
      case strata::GradientSync::none: break;
    }
    return "none";
  }

  [[nodiscard]] int rank() const { return world_->rank(); }
  [[nodiscard]] int size() const { return world_->size(); }

 private:
  // The averager holds a reference to the world: declared first, destroyed last.
  std::unique_ptr<strata::TorchComm> world_;
  std::unique_ptr<Averager> averager_;
  std::unique_ptr<strata::PostLocalGradientSync<Averager>> sync_;
  std::optional<Kind> kind_;
};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "strata's hierarchical averager over PyTorch process groups (use strata_torch)";

  // Most specific last: pybind11 tries the most recently registered translator first.
  static py::exception<strata::error> error(m, "Error", PyExc_RuntimeError);
  static py::exception<strata::usage_error> usage(m, "UsageError", error.ptr());
  static py::exception<strata::timeout_error> timeout(m, "CollectiveTimeout", error.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const strata::timeout_error& e) {
      timeout(e.what());
    } catch (const strata::usage_error& e) {
      usage(e.what());
    } catch (const strata::error& e) {
      error(e.what());
    }
  });

  m.def(
      "check_hierarchy",
      [](const Levels& levels, std::size_t world_size) {
        hierarchy_of(levels).check_world_size(world_size);
      },
      py::arg("levels"), py::arg("world_size"),
      "Raises ValueError unless the levels (period, group size), smallest group first, form a "
      "hierarchy of world_size ranks.");

  py::class_<PyAverager>(m, "Averager")
      .def(py::init<const c10::intrusive_ptr<c10d::ProcessGroup>&,
                    const c10::intrusive_ptr<c10d::Store>&, const Levels&, std::size_t,
                    const OuterSpec&, std::optional<double>, bool>(),
           py::arg("group"), py::arg("store"), py::arg("levels"), py::arg("warmup"),
           py::arg("outer"), py::arg("timeout"), py::arg("verify"))
      .def("average", &PyAverager::average)
      .def("begin", &PyAverager::begin)
      .def_property_readonly("step", &PyAverager::step)
      .def("state", &PyAverager::state)
      .def("restore", &PyAverager::restore)
      .def("outer_state", &PyAverager::outer_state)
      .def("load_outer_state", &PyAverager::load_outer_state)
      .def("schedule", &PyAverager::schedule)
      .def("make_gradient_sync", &PyAverager::make_gradient_sync)
      .def("sync_gradients", &PyAverager::sync_gradients)
      .def_property_readonly("rank", &PyAverager::rank)
      .def_property_readonly("size", &PyAverager::size);
}
