// A host test double for strata::NcclRuntime: NCCL communicators whose members are threads of
// one process, and CUDA streams that are worker threads running their work in order. It lets the
// NCCL communicator's own logic (argument checks, groups, counts checking, deadlines, aborts,
// graph capture and replay) run across 1 to 16 ranks on a machine without GPUs. "Device memory"
// is host memory here.
//
// What it models of NCCL and CUDA: work is asynchronous (a call enqueues, the stream runs it
// later); a collective completes when every member's stream has reached it; sends and receives
// of a group are matched per peer pair in order; communicators are created non-blocking (ready
// once every member has joined); ncclCommAbort wakes its blocked work with an error, and peers
// blocked on an aborted member see ncclRemoteError; a captured stream records its work into a
// graph that a launch replays. Reductions add in rank order (floating-point average is NCCL's
// pre-multiplied sum).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <nccl.h>
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
  std::atomic<long> host_syncs{0};  // stream queries that found work still pending
  std::atomic<long> aborts{0};
  std::atomic<long> cancelled{0};  // work that reached a member after its abort
  void reset() {
    collectives = 0;
    groups = 0;
    graph_launches = 0;
    host_syncs = 0;
    aborts = 0;
    cancelled = 0;
  }
};
inline Stats& stats() {
  static Stats s;
  return s;
}

using Task = std::function<void()>;

// A CUDA stream: one worker thread runs the tasks in order.
struct Stream {
  std::mutex m;
  std::condition_variable cv;
  std::deque<Task> queue;
  bool busy = false;
  bool stop = false;
  std::vector<Task>* capture = nullptr;  // non-null while capturing
  // The thread that created it stands for its device: a rank's thread, in the tests.
  std::thread::id device = std::this_thread::get_id();
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
  std::vector<int> color, key;
  std::vector<std::shared_ptr<Comm>> child;
  int arrived = 0;
};

// The state every member of one communicator shares.
struct Team {
  explicit Team(int n) : size(n) {}
  int size;
  int joined = 0;
  std::mutex m;
  std::condition_variable cv;
  bool member_failed = false;  // some member aborted: peers blocked on it see ncclRemoteError
  std::map<std::uint64_t, Slot> slots;
  std::map<std::pair<int, int>, std::deque<std::shared_ptr<Message>>> mail;  // (src, dst)
  std::map<std::uint64_t, SplitSlot> splits;
};

struct Comm : std::enable_shared_from_this<Comm> {
  std::shared_ptr<Comm> self;  // the handle's reference, dropped by destroy/abort
  std::shared_ptr<Team> team;  // null while a split is pending
  int rank = -1;
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

  static ncclResult_t get_unique_id(ncclUniqueId* id) {
    if (fail_unique_id.exchange(false)) return ncclSystemError;
    static std::atomic<std::uint64_t> next{1};
    std::memset(id, 0, sizeof(*id));
    const std::uint64_t v = next++;
    std::memcpy(id->internal, &v, sizeof(v));
    return ncclSuccess;
  }
  static ncclResult_t init_rank(comm_handle* out, int size, const ncclUniqueId& id, int rank) {
    const std::string key(id.internal, sizeof(id.internal));
    std::shared_ptr<Team> team;
    {
      std::lock_guard lk(detail::registry_mutex());
      auto& slot = detail::registry()[key];
      if (!slot) slot = std::make_shared<Team>(size);
      team = slot;
    }
    std::lock_guard lk(team->m);
    if (team->size != size) return ncclInvalidArgument;
    auto c = std::make_shared<Comm>();
    c->self = c;
    c->team = team;
    c->rank = rank;
    ++team->joined;
    team->cv.notify_all();
    *out = c.get();
    return ncclInProgress;  // ready once every member has joined
  }
  static ncclResult_t split(comm_handle parent, int color, int key, comm_handle* out) {
    auto child = std::make_shared<Comm>();
    child->self = child;
    *out = child.get();
    Team& t = *parent->team;
    const std::uint64_t seq = parent->next_split++;
    std::lock_guard lk(t.m);
    SplitSlot& s = t.splits[seq];
    if (s.arrived == 0) {
      const auto n = static_cast<std::size_t>(t.size);
      s.color.resize(n);
      s.key.resize(n);
      s.child.resize(n);
    }
    const auto r = static_cast<std::size_t>(parent->rank);
    s.color[r] = color;
    s.key[r] = key;
    s.child[r] = child;
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
          const auto& ch = s.child[static_cast<std::size_t>(members[i].second)];
          std::lock_guard lc(ch->m);
          ch->rank = static_cast<int>(i);
          ch->team = team;
        }
      }
      t.splits.erase(seq);
    }
    return ncclInProgress;
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
      *state = (team && c->ready()) ? ncclSuccess : ncclInProgress;
    }
    return ncclSuccess;
  }
  static ncclResult_t user_rank(comm_handle c, int* rank) {
    *rank = c->rank;
    return ncclSuccess;
  }
  static ncclResult_t count(comm_handle c, int* size) {
    *size = c->team->size;
    return ncclSuccess;
  }
  static ncclResult_t finalize(comm_handle) { return ncclSuccess; }
  static ncclResult_t destroy(comm_handle c) {
    c->self.reset();
    return ncclSuccess;
  }
  static ncclResult_t abort(comm_handle c) {
    stats().aborts++;
    c->aborted = true;
    if (c->team) {
      std::lock_guard lk(c->team->m);
      c->team->member_failed = true;
      c->team->cv.notify_all();
    }
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

  static ncclResult_t submit(comm_handle c, Stream* s, const Part& part) {
    if (c->aborted) {
      if (detail::group().depth > 0) detail::group().failed = true;
      return ncclInvalidUsage;
    }
    if (detail::group().depth > 0) {
      detail::pending_for(c, s).collectives.push_back(part);
    } else {
      detail::Pending p{c->shared_from_this(), s, {part}, {}};
      detail::launch(std::move(p));
    }
    return ncclSuccess;
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
    for (detail::Pending& p : pending) detail::launch(std::move(p));
    return ncclSuccess;
  }

  // The CUDA part of the runtime policy (strata::cuda_runtime_policy).
  using error_type = cudaError_t;
  static constexpr error_type success = cudaSuccess;
  static constexpr error_type not_ready = cudaErrorNotReady;
  static void check(std::string_view call, int rank, error_type e) {
    strata::cuda_check(call, rank, e);
  }
  static cudaError_t set_device(int) { return cudaSuccess; }
  static cudaError_t get_device(int* device) {
    *device = 0;
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
    if (s->capturing()) return cudaErrorStreamCaptureUnsupported;
    if (s->idle()) return cudaSuccess;
    stats().host_syncs++;
    return cudaErrorNotReady;
  }
  static cudaError_t malloc(void** p, std::size_t bytes) {
    *p = std::malloc(bytes);
    return *p != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
  }
  // Like cudaFree, waits until the calling rank's device is idle: the streams its thread made
  // (bounded, so a test that leaves a stream stuck fails on its own assertions, not here).
  static cudaError_t free(void* p) {
    if (p == nullptr) return cudaSuccess;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    const std::thread::id me = std::this_thread::get_id();
    for (;;) {
      bool idle = true;
      {
        std::lock_guard lk(streams_mutex());
        for (Stream* s : streams()) idle = idle && (s->device != me || s->idle());
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
  static cudaError_t memcpy_async(void* dst, const void* src, std::size_t bytes, stream_handle s) {
    s->enqueue([dst, src, bytes] { std::memcpy(dst, src, bytes); });
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
    *g = new Graph{std::move(*s->capture)};
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

}  // namespace fake
