// A host test double for strata::NcclRuntime and strata::CudaGraphs: NCCL communicators whose
// members are threads of one process, CUDA streams that are worker threads running their work in
// order, and 16 "devices". It lets the NCCL communicator's own logic (argument checks and
// agreement, groups, deadlines, aborts, splits, device affinity, graph capture and replay) run
// across 1 to 16 ranks on a machine without GPUs. "Device memory" is host memory here.
//
// It behaves as NCCL 2.28 and the CUDA 13 runtime do wherever strata depends on them
// (docs/device.md lists each behaviour and what it leaves out):
// - work is asynchronous: a call enqueues, the stream runs it later; a collective completes when
//   every member's stream has reached it; sends and receives of a group match per peer in order;
// - non-blocking mode: creation returns at once (ready once every member has joined);
//   ncclCommSplit returns at once, the parent reports ncclInProgress until the split completes,
//   and the child's handle is written only then; collectives return ncclInProgress with more
//   than one rank, and ncclGroupEnd does too (with point-to-point work even on one rank);
//   ncclCommFinalize returns ncclInProgress; after a call returned ncclInProgress the
//   communicator reports it in progress (once) and refuses calls until ncclCommGetAsyncError
//   has said so ("Attempt to use communicator before the previous operation returned
//   ncclSuccess"); ncclCommCount and ncclCommUserRank refuse a communicator not yet ready;
// - blocking mode: creation and a split return once every member has made the call, with no
//   deadline; the first collective connects the members (its call returns once every member has
//   made its first collective); nothing returns ncclInProgress;
// - the current device is per thread; streams and allocations belong to the device current
//   when they were made; two members of one communicator on one device are refused ("Duplicate
//   GPU detected"), and so is work whose stream or buffers are on another device;
// - a copy from device memory into pageable host memory returns only once it is done (pinned
//   memory, from malloc_host, does not wait); cudaFree waits for its device;
// - a stream query during a capture invalidates the capture; ncclCommAbort wakes its blocked
//   work with an error, peers blocked on the aborted member see ncclRemoteError, a pending split
//   is abandoned, and the abort takes a moment (it joins NCCL's work);
// - reductions add in rank order in the element type; NCCL's average pre-multiplies by 1/n.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <strata/comm/nccl/bootstrap.hpp>
#include <strata/cuda/error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace fake {

// Counters the tests read to check what reached the "library".
struct Stats {
  std::atomic<long> collectives{0};  // collective executions (per member)
  std::atomic<long> groups{0};       // ncclGroupEnd calls that closed an outermost group
  std::atomic<long> graph_launches{0};
  std::atomic<long> captures{0};    // graphs instantiated
  std::atomic<long> host_syncs{0};  // stream queries that found work still pending
  std::atomic<long> aborts{0};
  std::atomic<long> cancelled{0};       // work that reached a member after its abort
  std::atomic<long> pageable_waits{0};  // copies into pageable memory that blocked the host
  std::atomic<long> in_progress{0};     // calls that returned ncclInProgress
  void reset() {
    collectives = 0;
    groups = 0;
    graph_launches = 0;
    captures = 0;
    host_syncs = 0;
    aborts = 0;
    cancelled = 0;
    pageable_waits = 0;
    in_progress = 0;
  }
};
inline Stats& stats() {
  static Stats s;
  return s;
}

using Task = std::function<void()>;

// CUDA's current device is per host thread; the double has 16 devices.
inline constexpr int device_count = 16;
inline int& current_device() {
  thread_local int device = 0;
  return device;
}

// A CUDA stream: one worker thread runs the tasks in order.
struct Stream {
  std::mutex m;
  std::condition_variable cv;
  std::deque<Task> queue;
  bool busy = false;
  bool stop = false;
  std::vector<Task>* capture = nullptr;  // non-null while capturing
  bool invalidated = false;              // an unsafe call during the capture broke it
  // A stream belongs to the device that was current when it was created.
  int device = current_device();
  std::thread worker;

  Stream() : worker([this] { loop(); }) {}
  ~Stream() {
    {
      std::lock_guard lk(m);
      stop = true;
    }
    cv.notify_all();
    worker.join();
  }
  void loop() {
    std::unique_lock lk(m);
    for (;;) {
      cv.wait(lk, [&] { return stop || !queue.empty(); });
      if (queue.empty()) return;  // stop, and nothing left
      Task t = std::move(queue.front());
      queue.pop_front();
      busy = true;
      lk.unlock();
      t();
      lk.lock();
      busy = false;
      cv.notify_all();
    }
  }
  void enqueue(Task t) {
    {
      std::lock_guard lk(m);
      if (capture != nullptr) {
        capture->push_back(std::move(t));
        return;
      }
      queue.push_back(std::move(t));
    }
    cv.notify_all();
  }
  bool idle() {
    std::lock_guard lk(m);
    return queue.empty() && !busy;
  }
  bool capturing() {
    std::lock_guard lk(m);
    return capture != nullptr;
  }
};

struct Graph {
  std::vector<Task> tasks;
};

// Every live stream: cudaFree waits for the whole device, and so does the double's free.
inline std::mutex& streams_mutex() {
  static std::mutex m;
  return m;
}
inline std::vector<Stream*>& streams() {
  static std::vector<Stream*> s;
  return s;
}

// One collective in flight: each member's part, gathered until all have arrived.
struct Part {
  int kind = 0;
  const void* in = nullptr;
  void* out = nullptr;
  std::size_t count = 0;
  ncclDataType_t type = ncclFloat32;
  ncclRedOp_t op = ncclSum;
  int root = 0;
};

struct Slot {
  std::vector<Part> parts;
  int arrived = 0;
  int left = 0;
  bool done = false;
  ncclResult_t result = ncclSuccess;
};

struct Message {
  const void* data = nullptr;
  std::size_t count = 0;
  ncclDataType_t type = ncclFloat32;
  bool taken = false;
  ncclResult_t result = ncclSuccess;
};

struct Comm;

struct SplitSlot {
  std::vector<int> color, key, device;
  std::vector<std::shared_ptr<Comm>> child;
  std::vector<Comm**> out;  // where each member's handle goes on completion; null once abandoned
  std::vector<Comm*> parent;
  int arrived = 0;
};

// The state every member of one communicator shares.
struct Team {
  explicit Team(int n) : size(n) {}
  int size;
  int joined = 0;
  int connected = 0;  // blocking mode: members whose first collective has connected
  std::mutex m;
  std::condition_variable cv;
  bool member_failed = false;  // some member aborted: peers blocked on it see ncclRemoteError
  std::vector<int> devices;    // per member, -1 until it joined
  std::vector<Comm*> members;  // per member, for errors found once all have joined
  std::map<std::uint64_t, Slot> slots;
  std::map<std::pair<int, int>, std::deque<std::shared_ptr<Message>>> mail;  // (src, dst)
  std::map<std::uint64_t, SplitSlot> splits;
};

struct Comm : std::enable_shared_from_this<Comm> {
  std::shared_ptr<Comm> self;  // the handle's reference, dropped by destroy/abort
  std::shared_ptr<Team> team;  // null while a split is pending
  int rank = -1;
  int device = 0;          // the device current when the member joined
  bool blocking = false;   // ncclConfig_t::blocking
  bool connected = false;  // blocking mode: the first collective has connected to the peers
  // Non-blocking mode: a call returned ncclInProgress, and ncclCommGetAsyncError has not yet
  // reported the communicator ready since. NCCL refuses calls meanwhile. NCCL's thread finishes
  // the launch after Runtime::launch_latency; the state says so from the first query after that.
  std::atomic<bool> launching{false};
  std::atomic<bool> launch_seen{false};
  std::chrono::steady_clock::time_point launch_done{};
  void start_launch();
  // A split of this (parent) communicator that has not completed: NCCL reports the parent in
  // progress meanwhile, and writes the child's handle only when it completes.
  std::atomic<bool> splitting{false};
  std::atomic<bool> aborted{false};
  std::atomic<ncclResult_t> async{ncclSuccess};
  // Collectives are matched across members in the order their streams run them (NCCL's rule is
  // the order they are issued; the two agree while one stream at a time uses a communicator).
  // Counted on the stream workers, so that a replayed graph counts again.
  std::atomic<std::uint64_t> next_collective{0};
  std::uint64_t next_split = 0;
  std::mutex m;
  std::string last_error;

  void set_error(ncclResult_t rc, std::string why) {
    {
      std::lock_guard lk(m);
      last_error = std::move(why);
    }
    ncclResult_t expected = ncclSuccess;
    async.compare_exchange_strong(expected, rc);
  }
  bool ready() {
    if (!team) return false;
    std::lock_guard lk(team->m);
    return team->joined == team->size;
  }
};

namespace detail {

template <class T>
float to_float(T x) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(x);
  else return static_cast<float>(x);
}
template <class T>
T from_float(float x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half(x);
  else return __float2bfloat16(x);
}

template <class T>
T combine(T a, T b, ncclRedOp_t op) {
  if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) {
    const float x = to_float(a);
    const float y = to_float(b);
    switch (op) {
      case ncclMin: return from_float<T>(std::min(x, y));
      case ncclMax: return from_float<T>(std::max(x, y));
      default: return from_float<T>(x + y);
    }
  } else {
    switch (op) {
      case ncclMin: return std::min(a, b);
      case ncclMax: return std::max(a, b);
      default:
        if constexpr (std::is_integral_v<T>) {
          // Integer sums wrap on the device; signed overflow is undefined on the host.
          using U = std::make_unsigned_t<T>;
          return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
        } else {
          return static_cast<T>(a + b);
        }
    }
  }
}

// The reduction of element i over all parts, in rank order; average as NCCL does it.
template <class T>
T reduce_at(const std::vector<Part>& parts, std::size_t i, ncclRedOp_t op) {
  const auto n = static_cast<int>(parts.size());
  auto value = [&](int r) {
    return static_cast<const T*>(parts[static_cast<std::size_t>(r)].in)[i];
  };
  if (op == ncclAvg) {
    if constexpr (std::is_floating_point_v<T>) {
      const T inv = T(1) / static_cast<T>(n);
      T acc = value(0) * inv;
      for (int r = 1; r < n; ++r) acc += value(r) * inv;
      return acc;
    } else if constexpr (std::is_integral_v<T>) {
      T acc = value(0);
      for (int r = 1; r < n; ++r) acc = combine(acc, value(r), ncclSum);
      return static_cast<T>(acc / static_cast<T>(n));
    } else {
      const float inv = 1.0f / static_cast<float>(n);
      T acc = from_float<T>(to_float(value(0)) * inv);
      for (int r = 1; r < n; ++r) acc = from_float<T>(to_float(acc) + to_float(value(r)) * inv);
      return acc;
    }
  }
  T acc = value(0);
  for (int r = 1; r < n; ++r) acc = combine(acc, value(r), op);
  return acc;
}

template <class F>
void with_type(ncclDataType_t type, F f) {
  switch (type) {
    case ncclFloat32: f(float{}); break;
    case ncclFloat64: f(double{}); break;
    case ncclInt32: f(std::int32_t{}); break;
    case ncclInt64: f(std::int64_t{}); break;
    case ncclFloat16: f(__half{}); break;
    case ncclBfloat16: f(__nv_bfloat16{}); break;
    default: std::abort();
  }
}

inline std::size_t type_size(ncclDataType_t type) {
  std::size_t s = 0;
  with_type(type, [&](auto x) { s = sizeof(x); });
  return s;
}

enum Kind { all_reduce = 1, broadcast, all_gather, reduce_scatter };

// Runs one collective once every part is in; every input is read before any output is written,
// so in-place calls are safe.
inline ncclResult_t execute(std::vector<Part>& parts) {
  const Part& p0 = parts[0];
  for (const Part& p : parts) {
    if (p.kind != p0.kind || p.count != p0.count || p.type != p0.type || p.op != p0.op ||
        p.root != p0.root) {
      return ncclInvalidUsage;  // members disagree on the call
    }
  }
  const auto n = parts.size();
  const std::size_t c = p0.count;
  with_type(p0.type, [&](auto tag) {
    using T = decltype(tag);
    switch (p0.kind) {
      case all_reduce: {
        std::vector<T> result(c);
        for (std::size_t i = 0; i < c; ++i) result[i] = reduce_at<T>(parts, i, p0.op);
        for (Part& p : parts) std::copy(result.begin(), result.end(), static_cast<T*>(p.out));
        break;
      }
      case broadcast: {
        const T* src = static_cast<const T*>(parts[static_cast<std::size_t>(p0.root)].in);
        std::vector<T> data(src, src + c);
        for (Part& p : parts) std::copy(data.begin(), data.end(), static_cast<T*>(p.out));
        break;
      }
      case all_gather: {
        std::vector<T> data(c * n);
        for (std::size_t r = 0; r < n; ++r) {
          const T* src = static_cast<const T*>(parts[r].in);
          std::copy(src, src + c, data.begin() + static_cast<std::ptrdiff_t>(r * c));
        }
        for (Part& p : parts) std::copy(data.begin(), data.end(), static_cast<T*>(p.out));
        break;
      }
      case reduce_scatter: {
        // count is the output size; member r gets the reduction of block r.
        std::vector<T> data(c * n);
        for (std::size_t i = 0; i < c * n; ++i) data[i] = reduce_at<T>(parts, i, p0.op);
        for (std::size_t r = 0; r < n; ++r) {
          std::copy(data.begin() + static_cast<std::ptrdiff_t>(r * c),
                    data.begin() + static_cast<std::ptrdiff_t>((r + 1) * c),
                    static_cast<T*>(parts[r].out));
        }
        break;
      }
      default: break;
    }
  });
  return ncclSuccess;
}

// Fails a member's pending work: the member itself was aborted, or a peer was.
inline ncclResult_t interrupted(Comm& c) {
  if (c.aborted) return ncclInvalidUsage;  // work on an aborted communicator is cancelled
  c.set_error(ncclRemoteError, "a peer aborted its communicator");
  return ncclRemoteError;
}

// Blocking mode: NCCL connects a communicator's members lazily (NCCL_RUNTIME_CONNECT=1, the
// default since 2.22), in the host call of the first collective, over the bootstrap network: the
// call returns only once the peers have made theirs. Only a peer's abort ends the wait.
inline ncclResult_t connect(Comm& c) {
  if (!c.blocking || c.connected) return ncclSuccess;
  Team& t = *c.team;
  std::unique_lock lk(t.m);
  ++t.connected;
  t.cv.notify_all();
  t.cv.wait(lk, [&] { return t.connected >= t.size || c.aborted || t.member_failed; });
  if (t.connected < t.size) {
    lk.unlock();
    return interrupted(c);
  }
  c.connected = true;
  return ncclSuccess;
}

// One member's arrival at a collective, on its stream's worker thread.
inline void collective(const std::shared_ptr<Comm>& cp, Part part) {
  Comm& c = *cp;
  if (c.aborted) {
    stats().cancelled++;
    return;
  }
  if (c.async != ncclSuccess) return;
  Team& t = *c.team;
  const std::uint64_t seq = c.next_collective++;
  std::unique_lock lk(t.m);
  Slot& s = t.slots[seq];
  if (s.parts.empty()) s.parts.resize(static_cast<std::size_t>(t.size));
  s.parts[static_cast<std::size_t>(c.rank)] = part;
  ++s.arrived;
  if (s.arrived == t.size) {
    s.result = execute(s.parts);
    s.done = true;
    t.cv.notify_all();
  } else {
    t.cv.wait(lk, [&] { return s.done || c.aborted || t.member_failed; });
  }
  if (!s.done) {
    // Withdraw: the buffers may be freed once this member gives up, so no peer may read them.
    s.parts[static_cast<std::size_t>(c.rank)] = Part{};
    --s.arrived;
    lk.unlock();
    interrupted(c);
    return;
  }
  stats().collectives++;
  const ncclResult_t result = s.result;
  if (++s.left == t.size) t.slots.erase(seq);
  lk.unlock();
  if (result != ncclSuccess) c.set_error(result, "members disagree on a collective's arguments");
}

struct P2p {
  bool send = false;
  void* data = nullptr;
  std::size_t count = 0;
  ncclDataType_t type = ncclFloat32;
  int peer = 0;
};

// Takes back the sends a member posted and no peer has taken, before its buffers can go.
inline void withdraw(Team& t, int rank, const std::vector<std::shared_ptr<Message>>& posted) {
  for (auto& [key, box] : t.mail) {
    if (key.first != rank) continue;
    std::erase_if(box, [&](const std::shared_ptr<Message>& m) {
      return !m->taken && std::find(posted.begin(), posted.end(), m) != posted.end();
    });
  }
}

// One member's sends and receives of one group: post every send, take every receive, then wait
// until the peers have taken the sends (the send buffers must live until then).
inline void point_to_point(const std::shared_ptr<Comm>& cp, const std::vector<P2p>& ops) {
  Comm& c = *cp;
  if (c.aborted) {
    stats().cancelled++;
    return;
  }
  if (c.async != ncclSuccess) return;
  Team& t = *c.team;
  std::vector<std::shared_ptr<Message>> posted;
  std::unique_lock lk(t.m);
  for (const P2p& op : ops) {
    if (!op.send) continue;
    auto msg = std::make_shared<Message>();
    msg->data = op.data;
    msg->count = op.count;
    msg->type = op.type;
    t.mail[{c.rank, op.peer}].push_back(msg);
    posted.push_back(msg);
  }
  t.cv.notify_all();
  for (const P2p& op : ops) {
    if (op.send) continue;
    auto& box = t.mail[{op.peer, c.rank}];
    t.cv.wait(lk, [&] { return !box.empty() || c.aborted || t.member_failed; });
    if (box.empty()) {
      withdraw(t, c.rank, posted);
      lk.unlock();
      interrupted(c);
      return;
    }
    std::shared_ptr<Message> msg = box.front();
    box.pop_front();
    if (msg->count != op.count || msg->type != op.type) {
      msg->result = ncclInvalidUsage;
      msg->taken = true;
      t.cv.notify_all();
      lk.unlock();
      c.set_error(ncclInvalidUsage, "a receive does not match its send");
      return;
    }
    std::memcpy(op.data, msg->data, op.count * type_size(op.type));
    msg->taken = true;
    t.cv.notify_all();
  }
  for (const auto& msg : posted) {
    t.cv.wait(lk, [&] { return msg->taken || c.aborted || t.member_failed; });
    if (!msg->taken) {
      withdraw(t, c.rank, posted);
      lk.unlock();
      interrupted(c);
      return;
    }
    if (msg->result != ncclSuccess) {
      lk.unlock();
      c.set_error(msg->result, "a send does not match its receive");
      return;
    }
  }
}

// What a thread has called between ncclGroupStart and ncclGroupEnd, per (communicator, stream).
struct Pending {
  std::shared_ptr<Comm> comm;
  Stream* stream = nullptr;
  std::vector<Part> collectives;
  std::vector<P2p> p2p;
};
struct GroupState {
  int depth = 0;
  bool failed = false;  // a call inside the group failed: NCCL cancels the whole group
  std::vector<Pending> pending;
};
inline GroupState& group() {
  thread_local GroupState g;
  return g;
}

inline Pending& pending_for(Comm* c, Stream* s) {
  auto& list = group().pending;
  for (Pending& p : list) {
    if (p.comm.get() == c && p.stream == s) return p;
  }
  list.push_back(Pending{c->shared_from_this(), s, {}, {}});
  return list.back();
}

inline void launch(Pending p) {
  p.stream->enqueue([p] {
    for (const Part& part : p.collectives) collective(p.comm, part);
    if (!p.p2p.empty()) point_to_point(p.comm, p.p2p);
  });
}

// Device allocations, with their device: NCCL buffers must be on the communicator's device, and
// a copy into host memory that is neither one of these nor pinned is a copy to pageable memory.
struct Allocation {
  std::size_t bytes = 0;
  int device = 0;
  std::uint64_t id = 0;  // unique in the process, as CUDA's buffer ids are
};
inline std::map<const void*, Allocation>& allocations() {
  static std::map<const void*, Allocation> a;
  return a;
}
// The device of the allocation holding p, or -1 for host memory (the second with
// streams_mutex() held).
inline int device_of(const void* p);
inline int device_of_locked(const void* p);

inline std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
inline std::map<std::string, std::shared_ptr<Team>>& registry() {
  static std::map<std::string, std::shared_ptr<Team>> r;
  return r;
}

}  // namespace detail

// The runtime policy: the same members as strata::NcclRuntime.
struct Runtime {
  using comm_handle = Comm*;
  using stream_handle = Stream*;

  // Set by a test to make the next get_unique_id fail (rank 0 of a bootstrap).
  static inline std::atomic<bool> fail_unique_id{false};
  // How long NCCL's own thread takes to finish a launch that returned ncclInProgress (0: done by
  // the first query after the call). A test lengthens it to catch a caller that does not wait.
  static inline std::atomic<std::chrono::microseconds::rep> launch_latency_us{0};
  // Fault injection, not NCCL behaviour (NCCL never throws): when set to k > 0, the calling
  // thread's k-th collective from now throws std::bad_alloc before NCCL sees it, as an
  // exception in the caller's code between two enqueues of a group would.
  static int& throw_at_collective() {
    thread_local int k = 0;
    return k;
  }

  static ncclResult_t get_unique_id(ncclUniqueId* id) {
    if (fail_unique_id.exchange(false)) return ncclSystemError;
    static std::atomic<std::uint64_t> next{1};
    std::memset(id, 0, sizeof(*id));
    const std::uint64_t v = next++;
    std::memcpy(id->internal, &v, sizeof(v));
    return ncclSuccess;
  }
  // Non-blocking: returns at once, ready once every member has joined. Blocking: returns once
  // every member has joined (no deadline: NCCL waits for ever).
  static ncclResult_t init_rank(comm_handle* out, int size, const ncclUniqueId& id, int rank,
                                bool blocking) {
    const std::string key(id.internal, sizeof(id.internal));
    std::shared_ptr<Team> team;
    {
      std::lock_guard lk(detail::registry_mutex());
      auto& slot = detail::registry()[key];
      if (!slot) slot = std::make_shared<Team>(size);
      team = slot;
    }
    std::unique_lock lk(team->m);
    if (team->size != size) return ncclInvalidArgument;
    auto c = std::make_shared<Comm>();
    c->self = c;
    c->team = team;
    c->rank = rank;
    c->device = current_device();
    c->blocking = blocking;
    if (team->devices.empty()) {
      team->devices.assign(static_cast<std::size_t>(size), -1);
      team->members.assign(static_cast<std::size_t>(size), nullptr);
    }
    team->devices[static_cast<std::size_t>(rank)] = c->device;
    team->members[static_cast<std::size_t>(rank)] = c.get();
    ++team->joined;
    if (team->joined == team->size) refuse_duplicate_devices(*team);
    team->cv.notify_all();
    *out = c.get();
    if (!blocking) {
      stats().in_progress++;
      return ncclInProgress;  // ready once every member has joined
    }
    team->cv.wait(lk, [&] { return team->joined == team->size; });
    return c->async.load();  // "Duplicate GPU" and the like fail the call itself
  }
  // As NCCL 2.28: with a non-blocking parent the call returns at once, the parent reports
  // ncclInProgress until the split is complete, and only then is the new handle written to
  // `*out` (by whichever member completes the split, on its thread: NCCL's own thread). With a
  // blocking parent the call returns once the split is complete. The child takes `blocking`
  // from its own configuration.
  static ncclResult_t split(comm_handle parent, int color, int key, comm_handle* out,
                            bool blocking) {
    if (parent == nullptr || out == nullptr || parent->aborted) return ncclInvalidArgument;
    if (!parent->ready()) return ncclInvalidUsage;
    if (const ncclResult_t rc = refuse_while_launching(parent); rc != ncclSuccess) return rc;
    auto child = std::make_shared<Comm>();
    child->self = child;
    child->device = parent->device;  // NCCL makes the child on the parent's device
    child->blocking = blocking;
    Team& t = *parent->team;
    const std::uint64_t seq = parent->next_split++;
    std::unique_lock lk(t.m);
    SplitSlot& s = t.splits[seq];
    if (s.arrived == 0) {
      const auto n = static_cast<std::size_t>(t.size);
      s.color.resize(n);
      s.key.resize(n);
      s.device.resize(n);
      s.child.resize(n);
      s.out.assign(n, nullptr);
      s.parent.assign(n, nullptr);
    }
    const auto r = static_cast<std::size_t>(parent->rank);
    s.color[r] = color;
    s.key[r] = key;
    s.device[r] = child->device;
    s.child[r] = child;
    s.out[r] = out;
    s.parent[r] = parent;
    parent->splitting = true;
    if (++s.arrived == t.size) {
      // Every member is in: one new team per color, ordered by key, then by parent rank.
      std::map<int, std::vector<std::pair<int, int>>> by_color;
      for (int m = 0; m < t.size; ++m) {
        by_color[s.color[static_cast<std::size_t>(m)]].emplace_back(
            s.key[static_cast<std::size_t>(m)], m);
      }
      for (auto& [col, members] : by_color) {
        std::sort(members.begin(), members.end());
        auto team = std::make_shared<Team>(static_cast<int>(members.size()));
        team->joined = team->size;
        for (std::size_t i = 0; i < members.size(); ++i) {
          const auto m = static_cast<std::size_t>(members[i].second);
          const auto& ch = s.child[m];
          std::lock_guard lc(ch->m);
          ch->rank = static_cast<int>(i);
          ch->team = team;
          team->devices.push_back(s.device[m]);
          team->members.push_back(ch.get());
        }
        refuse_duplicate_devices(*team);
      }
      for (std::size_t m = 0; m < s.out.size(); ++m) {
        if (s.out[m] != nullptr) *s.out[m] = s.child[m].get();  // abandoned by an abort: no write
        s.parent[m]->splitting = false;
      }
      t.splits.erase(seq);
      t.cv.notify_all();
    } else if (parent->blocking) {
      t.cv.wait(lk, [&] { return *out == child.get() || parent->aborted || t.member_failed; });
      if (*out != child.get()) return ncclRemoteError;
    }
    return ncclSuccess;
  }
  static ncclResult_t async_error(comm_handle c, ncclResult_t* state) {
    if (c == nullptr || state == nullptr) return ncclInvalidArgument;
    const ncclResult_t a = c->async;
    if (a != ncclSuccess) {
      *state = a;
    } else {
      std::shared_ptr<Team> team;
      {
        std::lock_guard lk(c->m);
        team = c->team;
      }
      *state = (team && c->ready() && !c->splitting) ? ncclSuccess : ncclInProgress;
      // A launch that returned ncclInProgress is reported in progress at least once, and until
      // NCCL's thread is done with it.
      if (*state == ncclSuccess && c->launching) {
        const bool first = !c->launch_seen.exchange(true);
        if (first || std::chrono::steady_clock::now() < c->launch_done) {
          *state = ncclInProgress;
        } else {
          c->launching = false;
        }
      }
    }
    return ncclSuccess;
  }
  // Before the communicator is ready NCCL refuses to answer.
  static ncclResult_t user_rank(comm_handle c, int* rank) {
    if (c == nullptr || !c->ready()) return ncclInvalidArgument;
    *rank = c->rank;
    return ncclSuccess;
  }
  static ncclResult_t count(comm_handle c, int* size) {
    if (c == nullptr || !c->ready()) return ncclInvalidArgument;
    *size = c->team->size;
    return ncclSuccess;
  }
  // Non-blocking: the finalize continues in the background; the state says when it is done.
  // Blocking: done on return (strata has waited for the stream before).
  static ncclResult_t finalize(comm_handle c) {
    if (c == nullptr) return ncclInvalidArgument;
    if (c->blocking) return ncclSuccess;
    c->start_launch();
    stats().in_progress++;
    return ncclInProgress;
  }
  static ncclResult_t destroy(comm_handle c) {
    c->self.reset();
    return ncclSuccess;
  }
  // An abort joins NCCL's own work on the communicator, so it takes a while; a split still in
  // progress is abandoned: its handle is never written.
  static ncclResult_t abort(comm_handle c) {
    if (c == nullptr) return ncclInvalidArgument;
    stats().aborts++;
    c->aborted = true;
    if (c->team) {
      std::lock_guard lk(c->team->m);
      c->team->member_failed = true;
      for (auto& [seq, slot] : c->team->splits) {
        const auto r = static_cast<std::size_t>(c->rank);
        if (c->rank >= 0 && r < slot.out.size() && slot.parent[r] == c) {
          slot.out[r] = nullptr;
          if (slot.child[r]) slot.child[r]->self.reset();  // nobody will ever hold the handle
        }
      }
      c->team->cv.notify_all();
    }
    c->splitting = false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    c->self.reset();
    return ncclSuccess;
  }
  static std::string error_string(ncclResult_t code, comm_handle c) {
    std::string s = ncclGetErrorString(code);
    if (c != nullptr) {
      std::lock_guard lk(c->m);
      if (!c->last_error.empty()) s += " (" + c->last_error + ")";
    }
    return s;
  }

  // NCCL checks that the communicator is ready before it takes a call (ncclCommEnsureReady):
  // a call made before ncclCommGetAsyncError reported the previous one complete is refused.
  static ncclResult_t refuse_while_launching(comm_handle c) {
    if (!c->launching) return ncclSuccess;
    std::lock_guard lk(c->m);
    c->last_error =
        "Attempt to use communicator before the previous operation returned ncclSuccess";
    return ncclInvalidArgument;
  }

  static ncclResult_t submit(comm_handle c, Stream* s, const Part& part) {
    if (int& k = throw_at_collective(); k > 0 && --k == 0) throw std::bad_alloc();
    if (c->aborted) {
      if (detail::group().depth > 0) detail::group().failed = true;
      return ncclInvalidUsage;
    }
    if (const ncclResult_t rc = refuse_while_launching(c); rc != ncclSuccess) {
      if (detail::group().depth > 0) detail::group().failed = true;
      return rc;
    }
    if (const ncclResult_t rc = check_devices(c, s, part.in, part.out); rc != ncclSuccess) {
      if (detail::group().depth > 0) detail::group().failed = true;
      return rc;
    }
    if (detail::group().depth > 0) {
      detail::pending_for(c, s).collectives.push_back(part);
      return ncclSuccess;
    }
    if (const ncclResult_t rc = detail::connect(*c); rc != ncclSuccess) return rc;
    detail::Pending p{c->shared_from_this(), s, {part}, {}};
    detail::launch(std::move(p));
    // Non-blocking NCCL returns in progress while it enqueues for more than one rank.
    if (c->blocking || c->team->size == 1) return ncclSuccess;
    c->start_launch();
    stats().in_progress++;
    return ncclInProgress;
  }
  static ncclResult_t all_reduce(const void* in, void* out, std::size_t count, ncclDataType_t type,
                                 ncclRedOp_t op, comm_handle c, stream_handle s) {
    return submit(c, s, Part{detail::all_reduce, in, out, count, type, op, 0});
  }
  static ncclResult_t broadcast(const void* in, void* out, std::size_t count, ncclDataType_t type,
                                int root, comm_handle c, stream_handle s) {
    return submit(c, s, Part{detail::broadcast, in, out, count, type, ncclSum, root});
  }
  static ncclResult_t all_gather(const void* in, void* out, std::size_t count, ncclDataType_t type,
                                 comm_handle c, stream_handle s) {
    return submit(c, s, Part{detail::all_gather, in, out, count, type, ncclSum, 0});
  }
  static ncclResult_t reduce_scatter(const void* in, void* out, std::size_t count,
                                     ncclDataType_t type, ncclRedOp_t op, comm_handle c,
                                     stream_handle s) {
    return submit(c, s, Part{detail::reduce_scatter, in, out, count, type, op, 0});
  }
  static ncclResult_t p2p(bool send, const void* data, std::size_t count, ncclDataType_t type,
                          int peer, comm_handle c, stream_handle s) {
    if (detail::group().depth == 0) return ncclInvalidUsage;  // strata always groups them
    if (c->aborted || peer < 0 || peer >= c->team->size) {
      detail::group().failed = true;
      return c->aborted ? ncclInvalidUsage : ncclInvalidArgument;
    }
    if (const ncclResult_t rc = refuse_while_launching(c); rc != ncclSuccess) {
      detail::group().failed = true;
      return rc;
    }
    if (const ncclResult_t rc = check_devices(c, s, data, data); rc != ncclSuccess) {
      detail::group().failed = true;
      return rc;
    }
    detail::pending_for(c, s).p2p.push_back(
        detail::P2p{send, const_cast<void*>(data), count, type, peer});
    return ncclSuccess;
  }
  static ncclResult_t send(const void* data, std::size_t count, ncclDataType_t type, int peer,
                           comm_handle c, stream_handle s) {
    return p2p(true, data, count, type, peer, c, s);
  }
  static ncclResult_t recv(void* data, std::size_t count, ncclDataType_t type, int peer,
                           comm_handle c, stream_handle s) {
    return p2p(false, data, count, type, peer, c, s);
  }
  static ncclResult_t group_start() {
    ++detail::group().depth;
    return ncclSuccess;
  }
  static ncclResult_t group_end() {
    detail::GroupState& g = detail::group();
    if (g.depth == 0) return ncclInvalidUsage;
    if (--g.depth > 0) return ncclSuccess;
    std::vector<detail::Pending> pending = std::move(g.pending);
    g.pending.clear();
    if (std::exchange(g.failed, false)) return ncclInvalidUsage;  // nothing of it is launched
    for (const detail::Pending& p : pending) {
      if (p.comm->aborted) return ncclInvalidUsage;  // aborted inside the group: misuse
    }
    stats().groups++;
    for (const detail::Pending& p : pending) {
      if (p.collectives.empty()) continue;
      if (const ncclResult_t rc = detail::connect(*p.comm); rc != ncclSuccess) return rc;
    }
    // Non-blocking NCCL returns in progress from a group with point-to-point work (even on one
    // rank) or with collectives of more than one rank; each of those communicators reports in
    // progress until the launch is seen complete.
    bool in_progress = false;
    for (const detail::Pending& p : pending) {
      if (p.comm->blocking || (p.p2p.empty() && p.comm->team->size == 1)) continue;
      in_progress = true;
      p.comm->start_launch();
    }
    for (detail::Pending& p : pending) detail::launch(std::move(p));
    if (!in_progress) return ncclSuccess;
    stats().in_progress++;
    return ncclInProgress;
  }

  // NCCL refuses two members of one communicator on one device, and work whose stream or
  // buffers belong to another device than the communicator's.
  static void refuse_duplicate_devices(Team& t) {
    for (std::size_t a = 0; a < t.devices.size(); ++a) {
      for (std::size_t b = a + 1; b < t.devices.size(); ++b) {
        if (t.devices[a] != t.devices[b]) continue;
        for (Comm* m : t.members) {
          if (m == nullptr) continue;
          m->set_error(ncclInvalidUsage, "Duplicate GPU detected: rank " + std::to_string(a) +
                                             " and rank " + std::to_string(b) +
                                             " both on CUDA device " +
                                             std::to_string(t.devices[a]));
        }
        return;
      }
    }
  }
  static ncclResult_t check_devices(comm_handle c, Stream* s, const void* in, const void* out) {
    const int din = detail::device_of(in);
    const int dout = detail::device_of(out);
    std::string why;
    if (s != nullptr && s->device != c->device) {
      why = "the stream belongs to device " + std::to_string(s->device);
    } else if (din >= 0 && din != c->device) {
      why = "the input is on device " + std::to_string(din);
    } else if (dout >= 0 && dout != c->device) {
      why = "the output is on device " + std::to_string(dout);
    }
    if (why.empty()) return ncclSuccess;
    std::lock_guard lk(c->m);
    c->last_error = why + ", the communicator on device " + std::to_string(c->device);
    return ncclInvalidArgument;
  }

  // The CUDA part of the runtime policy (strata::cuda_runtime_policy).
  using error_type = cudaError_t;
  static constexpr error_type success = cudaSuccess;
  static constexpr error_type not_ready = cudaErrorNotReady;
  static void check(std::string_view call, int rank, error_type e) {
    strata::cuda_check(call, rank, e);
  }
  static cudaError_t set_device(int device) {
    if (device < 0 || device >= device_count) return cudaErrorInvalidDevice;
    current_device() = device;
    return cudaSuccess;
  }
  static cudaError_t get_device(int* device) {
    *device = current_device();
    return cudaSuccess;
  }
  static cudaError_t buffer_id(const void* p, std::uint64_t* id) {
    std::lock_guard lk(streams_mutex());
    auto& a = detail::allocations();
    auto it = a.upper_bound(p);
    if (it == a.begin()) return cudaErrorInvalidValue;
    --it;
    if (static_cast<const char*>(p) >= static_cast<const char*>(it->first) + it->second.bytes) {
      return cudaErrorInvalidValue;
    }
    *id = it->second.id;
    return cudaSuccess;
  }
  static cudaError_t stream_create(stream_handle* s) {
    *s = new Stream();
    std::lock_guard lk(streams_mutex());
    streams().push_back(*s);
    return cudaSuccess;
  }
  static cudaError_t stream_destroy(stream_handle s) {
    {
      std::lock_guard lk(streams_mutex());
      std::erase(streams(), s);
    }
    delete s;
    return cudaSuccess;
  }
  static cudaError_t stream_query(stream_handle s) {
    if (s->capturing()) {
      // An unsafe call during a capture invalidates it, as CUDA does.
      std::lock_guard lk(s->m);
      s->invalidated = true;
      return cudaErrorStreamCaptureUnsupported;
    }
    if (s->idle()) return cudaSuccess;
    stats().host_syncs++;
    return cudaErrorNotReady;
  }
  static cudaError_t malloc(void** p, std::size_t bytes) {
    *p = std::malloc(bytes == 0 ? 1 : bytes);
    if (*p == nullptr) return cudaErrorMemoryAllocation;
    static std::uint64_t next_id = 1;
    std::lock_guard lk(streams_mutex());
    detail::allocations()[*p] = {bytes, current_device(), next_id++};
    return cudaSuccess;
  }
  // Like cudaFree, waits until the calling rank's device is idle: the streams its thread made
  // (bounded, so a test that leaves a stream stuck fails on its own assertions, not here).
  static cudaError_t free(void* p) {
    if (p == nullptr) return cudaSuccess;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    int device = current_device();
    {
      std::lock_guard lk(streams_mutex());
      auto it = detail::allocations().find(p);
      if (it == detail::allocations().end()) return cudaErrorInvalidValue;
      device = it->second.device;
      detail::allocations().erase(it);
    }
    for (;;) {
      bool idle = true;
      {
        std::lock_guard lk(streams_mutex());
        for (Stream* s : streams()) idle = idle && (s->device != device || s->idle());
      }
      if (idle || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::yield();
    }
    std::free(p);
    return cudaSuccess;
  }
  // Pinned host memory is host memory here; the double remembers which blocks are pinned.
  static cudaError_t malloc_host(void** p, std::size_t bytes) {
    *p = std::malloc(bytes);
    if (*p == nullptr) return cudaErrorMemoryAllocation;
    std::lock_guard lk(streams_mutex());
    pinned().push_back(*p);
    return cudaSuccess;
  }
  static cudaError_t free_host(void* p) {
    if (p == nullptr) return cudaSuccess;
    {
      std::lock_guard lk(streams_mutex());
      std::erase(pinned(), p);
    }
    std::free(p);
    return cudaSuccess;
  }
  static std::vector<void*>& pinned() {
    static std::vector<void*> blocks;
    return blocks;
  }
  // A copy into pageable host memory returns only once it is done, behind everything enqueued
  // before it, with no deadline: CUDA stages it through a pinned buffer of its own.
  static cudaError_t memcpy_async(void* dst, const void* src, std::size_t bytes, stream_handle s) {
    bool pageable = false;
    {
      std::lock_guard lk(streams_mutex());
      pageable = detail::device_of_locked(dst) < 0 &&
                 std::find(pinned().begin(), pinned().end(), dst) == pinned().end() &&
                 detail::device_of_locked(src) >= 0;
    }
    if (!pageable || s->capturing()) {
      s->enqueue([dst, src, bytes] { std::memcpy(dst, src, bytes); });
      return cudaSuccess;
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    s->enqueue([dst, src, bytes, done] {
      std::memcpy(dst, src, bytes);
      *done = true;
    });
    stats().pageable_waits++;
    while (!*done) std::this_thread::yield();
    return cudaSuccess;
  }
  // For test "kernels": host work that runs in stream order, as a kernel launch would.
  static void launch_host(stream_handle s, Task t) { s->enqueue(std::move(t)); }
};

// The graph policy of the device averager (strata::graph_policy) over the double's streams: a
// captured stream records its work, and a launch replays it in stream order.
struct Graphs {
  using error_type = cudaError_t;
  using stream_handle = Stream*;
  using graph_handle = Graph*;
  static constexpr error_type success = cudaSuccess;
  static void check(std::string_view call, int rank, error_type e) {
    strata::cuda_check(call, rank, e);
  }

  static cudaError_t begin_capture(stream_handle s) {
    std::lock_guard lk(s->m);
    if (s->capture != nullptr) return cudaErrorIllegalState;
    s->capture = new std::vector<Task>();
    return cudaSuccess;
  }
  static cudaError_t end_capture(stream_handle s, graph_handle* g) {
    std::lock_guard lk(s->m);
    if (s->capture == nullptr) return cudaErrorIllegalState;
    if (std::exchange(s->invalidated, false)) {
      delete s->capture;
      s->capture = nullptr;
      return cudaErrorStreamCaptureInvalidated;
    }
    *g = new Graph{std::move(*s->capture)};
    stats().captures++;
    delete s->capture;
    s->capture = nullptr;
    return cudaSuccess;
  }
  static cudaError_t launch(graph_handle g, stream_handle s) {
    stats().graph_launches++;
    for (const Task& t : g->tasks) s->enqueue(t);
    return cudaSuccess;
  }
  static cudaError_t destroy(graph_handle g) {
    delete g;
    return cudaSuccess;
  }
};

inline void Comm::start_launch() {
  launch_seen = false;
  launch_done = std::chrono::steady_clock::now() +
                std::chrono::microseconds(Runtime::launch_latency_us.load());
  launching = true;
}

// Rank r of a test world on device r, as NCCL requires one device per member.
template <class Host>
strata::BasicNcclComm<Runtime> bootstrap(Host& host, strata::NcclOptions options) {
  if (options.device < 0) options.device = host.rank() % device_count;
  return strata::nccl_bootstrap<Runtime>(host, options);
}

namespace detail {
inline int device_of_locked(const void* p) {
  auto& a = allocations();
  auto it = a.upper_bound(p);
  if (it == a.begin()) return -1;
  --it;
  const auto* base = static_cast<const char*>(it->first);
  const auto* q = static_cast<const char*>(p);
  return q < base + std::max<std::size_t>(it->second.bytes, 1) ? it->second.device : -1;
}
inline int device_of(const void* p) {
  std::lock_guard lk(streams_mutex());
  return device_of_locked(p);
}
}  // namespace detail

}  // namespace fake
