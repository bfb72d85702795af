#pragma once
// Buffers handed over for good to a collective that failed while still in flight.

#include <mutex>
#include <utility>
#include <vector>

namespace strata::detail {

// After a failure that may leave a backend still writing into a buffer (an MPI request that
// timed out stays pending and is abandoned, not waited for), the buffer must outlive the
// process: freeing or reusing it could let the backend write into memory that belongs to
// something else by then. It is moved here and never freed; its owner gets an empty vector.
template <class T>
void keep_forever(std::vector<T>& buffer) {
  static std::mutex mutex;
  static auto* const kept = new std::vector<std::vector<T>>();  // never freed
  const std::lock_guard<std::mutex> lock(mutex);
  kept->push_back(std::move(buffer));
  buffer = {};
}

}  // namespace strata::detail
