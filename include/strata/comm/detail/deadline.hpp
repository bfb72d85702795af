#pragma once
// Deadlines and the polling policy of every backend: how long a collective may wait, and how a
// waiting rank spends the time between two polls of its backend.

#include <chrono>
#include <cstddef>
#include <string>
#include <thread>

namespace strata::detail {

// Generous: a rank may legitimately compute for minutes between two collectives.
inline constexpr std::chrono::milliseconds default_timeout = std::chrono::minutes(5);

class Deadline {
 public:
  // Saturates: a timeout too long to add to the clock (milliseconds::max() for "never") is a
  // deadline that never passes, not one that has passed already.
  explicit Deadline(std::chrono::milliseconds timeout)
      : timeout_(timeout), at_(saturated(timeout)) {}
  [[nodiscard]] bool passed() const { return std::chrono::steady_clock::now() >= at_; }
  [[nodiscard]] std::chrono::steady_clock::time_point at() const noexcept { return at_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  // "timed out after 500 ms": the start of every timeout message.
  [[nodiscard]] std::string expired() const {
    return "timed out after " + std::to_string(timeout_.count()) + " ms";
  }

 private:
  static std::chrono::steady_clock::time_point saturated(std::chrono::milliseconds timeout) {
    using clock = std::chrono::steady_clock;
    const clock::time_point now = clock::now();
    if (timeout <= std::chrono::milliseconds::zero()) return now;
    const auto room =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock::time_point::max() - now);
    return timeout >= room ? clock::time_point::max() : now + timeout;
  }

  std::chrono::milliseconds timeout_;
  std::chrono::steady_clock::time_point at_;
};

// Between two polls of a pending operation. The first polls only yield: most collectives on a
// quiet node complete within microseconds, and a yield keeps that latency. Past those, the wait
// sleeps briefly, so that ranks that outnumber the cores (an oversubscribed node, the local
// backend's threads) leave the cores to the ranks that still compute; a backend that progresses
// only inside its poll call (MPI) still polls every few tens of microseconds.
class Poller {
 public:
  static constexpr std::size_t yielding_polls = 64;
  static constexpr std::chrono::microseconds sleep = std::chrono::microseconds(20);

  void pause() {
    if (polls_++ < yielding_polls) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(sleep);
    }
  }

 private:
  std::size_t polls_ = 0;
};

}  // namespace strata::detail
