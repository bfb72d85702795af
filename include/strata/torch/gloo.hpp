#pragma once
//! \file
//! `TorchComm` over PyTorch's gloo process groups: the group factory its splits use, and a
//! communicator that takes its deadline from the group's own timeout.

#ifndef USE_C10D_GLOO
#error \
    "strata/torch/gloo.hpp: PyTorch's gloo process group needs USE_C10D_GLOO and gloo's headers (the strata::torch target defines it when they are found)"
#endif

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <chrono>
#include <string>
#include <utility>

#include "strata/torch/comm.hpp"

namespace strata {

//! Creates gloo process groups with `options` (devices, timeout, worker threads): the splits of
//! a communicator over a gloo group use the parent's own options.
//!
//! \code
//! auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(30));
//! strata::TorchGroupFactory factory = strata::gloo_group_factory(options);
//! assert(factory != nullptr);
//! \endcode
inline TorchGroupFactory gloo_group_factory(
    c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> options) {
  return [options = std::move(options)](const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                        int size) -> c10::intrusive_ptr<c10d::ProcessGroup> {
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
  };
}

//! A gloo process group of `size` ranks over `store`, on the interface that `hostname` resolves
//! to (loopback by default: ranks on one machine), with `timeout` for its own operations.
//! Collective: every rank calls it with the same store, size and timeout.
inline c10::intrusive_ptr<c10d::ProcessGroupGloo> make_gloo_group(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
    std::chrono::milliseconds timeout, const std::string& hostname = "127.0.0.1") {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
}

//! A `TorchComm` over a gloo process group, with `options`: its splits are gloo groups with the
//! group's devices and worker threads and `options.timeout` as their own timeout (their set-up
//! and their operations), rendezvousing through `store`, the store the group was created with.
//! Collective over the group.
inline TorchComm gloo_comm(const c10::intrusive_ptr<c10d::ProcessGroupGloo>& group,
                           c10::intrusive_ptr<c10d::Store> store, TorchOptions options) {
  const auto parent = group->getOptions();
  auto children = c10d::ProcessGroupGloo::Options::create(options.timeout);
  children->devices = parent->devices;
  children->threads = parent->threads;
  return TorchComm(group, std::move(store), gloo_group_factory(children), options);
}

//! A `TorchComm` over a gloo process group whose deadline is the group's own timeout, as are its
//! splits'. Collective over the group.
//!
//! \code
//! #include <torch/csrc/distributed/c10d/HashStore.hpp>
//! auto store = c10::make_intrusive<c10d::HashStore>();
//! auto group = strata::make_gloo_group(store, 0, 1, std::chrono::seconds(10));
//! strata::TorchComm comm = strata::gloo_comm(group, store);
//! assert(comm.size() == 1 && comm.options().timeout == std::chrono::seconds(10));
//! \endcode
inline TorchComm gloo_comm(const c10::intrusive_ptr<c10d::ProcessGroupGloo>& group,
                           c10::intrusive_ptr<c10d::Store> store, bool verify_arguments = true) {
  TorchOptions o;
  o.timeout = group->getOptions()->timeout;
  o.verify_arguments = verify_arguments;
  return gloo_comm(group, std::move(store), o);
}

}  // namespace strata
