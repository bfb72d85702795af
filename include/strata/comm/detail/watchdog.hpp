#pragma once
// The deadline of a library call that cannot be interrupted: NCCL's blocking mode, where
// creation, a split, a collective that first connects to its peers and finalize wait inside the
// library for peers that may never come. No thread may abort an NCCL communicator while another
// is inside a call on it (ncclCommAbort frees it), so the only bounded outcome is the one a
// cluster scheduler already handles: the process ends, with a message naming the call. The
// non-blocking mode, which strata uses by default, polls instead and throws timeout_error.
//
// One thread per process serves every watched call; a call costs one uncontended lock to arm
// and one to disarm, and a stream of calls that return in time wakes the thread at most once
// per timeout.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "strata/comm/detail/deadline.hpp"

namespace strata::detail {

class CallWatchdog {
 public:
  // Disarms its entry when destroyed; an empty watch (the default) guards nothing.
  class Watch {
   public:
    Watch() = default;
    Watch(CallWatchdog* dog, std::uint64_t id) : dog_(dog), id_(id) {}
    Watch(Watch&& other) noexcept : dog_(std::exchange(other.dog_, nullptr)), id_(other.id_) {}
    Watch& operator=(Watch&&) = delete;
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;
    ~Watch() {
      if (dog_ != nullptr) dog_->disarm(id_);
    }

   private:
    CallWatchdog* dog_ = nullptr;
    std::uint64_t id_ = 0;
  };

  // Never destroyed: a communicator destroyed during the process's exit may still watch its
  // finalize, and the thread ends with the process.
  static CallWatchdog& instance() {
    static auto* const dog = new CallWatchdog();
    return *dog;
  }

  // `call` (the library function) made for `op` on `rank` must return within `timeout`. The
  // names must outlive the watch (string literals, as every caller passes).
  [[nodiscard]] Watch watch(std::chrono::milliseconds timeout, std::string_view op,
                            std::string_view call, int rank) {
    const Deadline deadline(timeout);
    std::lock_guard lk(m_);
    if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
    const std::uint64_t id = ++next_;
    entries_.push_back(Entry{id, deadline.at(), timeout, op, call, rank});
    // The thread is woken only when it would otherwise wake too late. A disarm never wakes it:
    // it wakes at the old target, finds nothing due and aims again, so a stream of calls that
    // return in time costs it at most one wake-up per timeout.
    if (deadline.at() < wake_at_) {
      wake_at_ = deadline.at();
      cv_.notify_one();
    }
    return Watch(this, id);
  }

  CallWatchdog(const CallWatchdog&) = delete;
  CallWatchdog& operator=(const CallWatchdog&) = delete;
  ~CallWatchdog() = delete;

 private:
  struct Entry {
    std::uint64_t id;
    std::chrono::steady_clock::time_point at;
    std::chrono::milliseconds timeout;
    std::string_view op;
    std::string_view call;
    int rank;
  };

  CallWatchdog() = default;

  void disarm(std::uint64_t id) {
    std::lock_guard lk(m_);
    std::erase_if(entries_, [id](const Entry& e) { return e.id == id; });
  }

  void loop() {
    std::unique_lock lk(m_);
    for (;;) {
      if (entries_.empty()) {
        wake_at_ = std::chrono::steady_clock::time_point::max();
        cv_.wait(lk);
        continue;
      }
      const auto first =
          std::min_element(entries_.begin(), entries_.end(),
                           [](const Entry& a, const Entry& b) { return a.at < b.at; });
      if (std::chrono::steady_clock::now() >= first->at) expire(*first);
      // A copy: the entries may change while the lock is released in the wait. A deadline that
      // saturated is time_point::max(): wait for a change instead.
      const std::chrono::steady_clock::time_point at = first->at;
      wake_at_ = at;
      if (at == std::chrono::steady_clock::time_point::max()) {
        cv_.wait(lk);
      } else {
        cv_.wait_until(lk, at);
      }
    }
  }

  [[noreturn]] static void expire(const Entry& e) {
    const std::string text =
        "strata: " + std::string(e.call) + " (" + std::string(e.op) + ", rank " +
        std::to_string(e.rank) + ") has blocked for " + std::to_string(e.timeout.count()) +
        " ms, past the communicator's deadline. A call in NCCL's blocking mode "
        "(NcclOptions::blocking) cannot be interrupted, so the process ends here; a peer that "
        "never joined is the usual cause. The non-blocking mode throws strata::timeout_error "
        "instead.\n";
    std::fputs(text.c_str(), stderr);
    std::fflush(stderr);
    std::abort();
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::vector<Entry> entries_;
  std::uint64_t next_ = 0;
  // When the thread will next look at the entries (max(): only when notified). min() until its
  // first look: a thread that has not looked yet needs no wake-up.
  std::chrono::steady_clock::time_point wake_at_ = std::chrono::steady_clock::time_point::min();
  std::thread thread_;  // started by the first watch, never joined
};

}  // namespace strata::detail
