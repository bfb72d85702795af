#pragma once
// The front end every backend shares: what a member passes to a collective (a `Call`), the
// argument checks with overflow-safe arithmetic, and the cross-rank rule that turns the members'
// calls into one error that every member reports alike. Backends keep only their transport: how
// calls are exchanged, posted, polled and split.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "strata/comm/communicator.hpp"

namespace strata::detail {

enum class Collective : std::uint8_t {
  barrier,
  all_reduce,
  broadcast,
  all_gather,
  reduce_scatter,
  all_to_all,
  all_to_all_v,
  split,
};

// The operation names of every message, the same on every backend.
constexpr std::string_view collective_name(Collective c) noexcept {
  switch (c) {
    case Collective::barrier: return "barrier";
    case Collective::all_reduce: return "all_reduce";
    case Collective::broadcast: return "broadcast";
    case Collective::all_gather: return "all_gather";
    case Collective::reduce_scatter: return "reduce_scatter";
    case Collective::all_to_all: return "all_to_all";
    case Collective::all_to_all_v: return "all_to_all (uneven)";
    case Collective::split: return "split";
  }
  return "collective";
}

// A number and a name per element type, so that calls can be compared across processes. The
// NCCL headers add half and bfloat16.
template <class T>
struct element_info;
template <>
struct element_info<float> {
  static constexpr std::uint8_t code = 1;
  static constexpr std::string_view name = "float";
};
template <>
struct element_info<double> {
  static constexpr std::uint8_t code = 2;
  static constexpr std::string_view name = "double";
};
template <>
struct element_info<std::int32_t> {
  static constexpr std::uint8_t code = 3;
  static constexpr std::string_view name = "int32";
};
template <>
struct element_info<std::int64_t> {
  static constexpr std::uint8_t code = 4;
  static constexpr std::string_view name = "int64";
};
inline constexpr std::uint8_t half_code = 5;
inline constexpr std::uint8_t bfloat16_code = 6;

constexpr std::string_view element_name(std::uint8_t code) noexcept {
  switch (code) {
    case 1: return "float";
    case 2: return "double";
    case 3: return "int32";
    case 4: return "int64";
    case half_code: return "half";
    case bfloat16_code: return "bfloat16";
    default: return "no";
  }
}

// Why one member's arguments are unusable, as numbers, so that every member can build the same
// sentence from an exchanged copy.
enum class Fault : std::uint8_t {
  none,
  size_mismatch,    // a: in, b: out
  gather_size,      // a: in, b: out
  scatter_size,     // a: in, b: out
  all_to_all_size,  // a: in, b: out
  bad_root,         // a: root
  count_arity,      // a: send counts, b: receive counts
  count_too_large,  // a: count, b: peer, c: in, d: out
  counts_total,     // a: sent, b: received, c: in, d: out
  negative_color,   // a: color
  backend_limit,    // a: elements, b: the backend's limit
};

struct Problem {
  Fault fault = Fault::none;
  std::int64_t a = 0, b = 0, c = 0, d = 0;
  [[nodiscard]] explicit operator bool() const noexcept { return fault != Fault::none; }
};

inline std::int64_t as_word(std::size_t v) noexcept { return static_cast<std::int64_t>(v); }

inline std::string describe(const Problem& p, int group_size) {
  const auto s = [](std::int64_t v) { return std::to_string(v); };
  const auto u = [](std::int64_t v) { return std::to_string(static_cast<std::uint64_t>(v)); };
  const std::string n = std::to_string(group_size);
  switch (p.fault) {
    case Fault::none: return {};
    case Fault::size_mismatch: return "input has " + u(p.a) + " elements but output has " + u(p.b);
    case Fault::gather_size:
      return "output has " + u(p.b) + " elements; it needs " + u(p.a) + " x " + n;
    case Fault::scatter_size:
      return "input has " + u(p.a) + " elements; it needs " + u(p.b) + " x " + n;
    case Fault::all_to_all_size:
      return "input has " + u(p.a) + " and output " + u(p.b) +
             " elements; both must be the same multiple of " + n;
    case Fault::bad_root: return "root " + s(p.a) + " is not a rank of a group of " + n;
    case Fault::count_arity:
      return "needs one send and one receive count per member (" + n + "), got " + u(p.a) +
             " and " + u(p.b);
    case Fault::count_too_large:
      return "count " + u(p.a) + " for rank " + s(p.b) + " exceeds the buffers (" + u(p.c) +
             " and " + u(p.d) + " elements)";
    case Fault::counts_total:
      return "counts add up to " + u(p.a) + " sent and " + u(p.b) +
             " received, but the buffers hold " + u(p.c) + " and " + u(p.d);
    case Fault::negative_color: return "color " + s(p.a) + " is negative";
    case Fault::backend_limit:
      return u(p.a) + " elements exceed the backend's count limit of " + u(p.b);
  }
  return "invalid arguments";
}

// --- the argument checks: no product or sum that could wrap ------------------------------------

inline Problem check_same_size(std::size_t in, std::size_t out) {
  if (in != out) return {Fault::size_mismatch, as_word(in), as_word(out)};
  return {};
}
// out == in * n, compared by division.
inline Problem check_gather(std::size_t in, std::size_t out, std::size_t n) {
  if (out % n != 0 || out / n != in) return {Fault::gather_size, as_word(in), as_word(out)};
  return {};
}
// in == out * n, compared by division.
inline Problem check_scatter(std::size_t in, std::size_t out, std::size_t n) {
  if (in % n != 0 || in / n != out) return {Fault::scatter_size, as_word(in), as_word(out)};
  return {};
}
inline Problem check_all_to_all(std::size_t in, std::size_t out, std::size_t n) {
  if (in != out || in % n != 0) return {Fault::all_to_all_size, as_word(in), as_word(out)};
  return {};
}
inline Problem check_root(int root, int n) {
  if (root < 0 || root >= n) return {Fault::bad_root, root};
  return {};
}
inline Problem check_color(int color) {
  if (color < 0) return {Fault::negative_color, color};
  return {};
}
inline Problem check_limit(std::size_t elements, std::size_t limit) {
  if (elements > limit) return {Fault::backend_limit, as_word(elements), as_word(limit)};
  return {};
}

// Where each peer's block starts in the buffers of an uneven all-to-all.
struct UnevenLayout {
  std::vector<std::size_t> send_offsets;
  std::vector<std::size_t> recv_offsets;
};

// Each count is bounded by its buffer before it is added, so no sum can wrap and wrapped counts
// cannot pass the total check.
inline Problem check_uneven(std::span<const std::size_t> send, std::span<const std::size_t> recv,
                            std::size_t in, std::size_t out, std::size_t n,
                            UnevenLayout* layout = nullptr) {
  if (send.size() != n || recv.size() != n) {
    return {Fault::count_arity, as_word(send.size()), as_word(recv.size())};
  }
  if (layout != nullptr) {
    layout->send_offsets.assign(n, 0);
    layout->recv_offsets.assign(n, 0);
  }
  std::size_t sent = 0;
  std::size_t received = 0;
  for (std::size_t j = 0; j < n; ++j) {
    if (send[j] > in || recv[j] > out) {
      return {Fault::count_too_large, as_word(send[j] > in ? send[j] : recv[j]), as_word(j),
              as_word(in), as_word(out)};
    }
    if (layout != nullptr) {
      layout->send_offsets[j] = sent;
      layout->recv_offsets[j] = received;
    }
    // Both sums stay at most in (out) + one count bounded by in (out): no wrap.
    sent += send[j];
    received += recv[j];
    if (sent > in || received > out) break;
  }
  if (sent != in || received != out) {
    return {Fault::counts_total, as_word(sent), as_word(received), as_word(in), as_word(out)};
  }
  return {};
}

// --- a member's call, and the rule that finds the first disagreement ---------------------------

struct Call {
  Collective op = Collective::barrier;
  std::uint8_t type = 0;  // element_info<T>::code; 0 for barrier and split
  ReduceOp reduce = ReduceOp::sum;
  int root = 0;
  std::size_t in = 0;
  std::size_t out = 0;
  Problem problem;
  std::span<const std::size_t> send_counts;  // the uneven all-to-all
  std::span<const std::size_t> recv_counts;
  UnevenLayout layout;  // its offsets, when the counts are valid
};

template <class T>
Call make_call(Collective op, std::size_t in, std::size_t out, ReduceOp reduce = ReduceOp::sum,
               int root = 0) {
  Call c;
  c.op = op;
  c.type = element_info<T>::code;
  c.reduce = reduce;
  c.root = root;
  c.in = in;
  c.out = out;
  return c;
}

// A call's signature as fixed words, for backends that exchange calls with an all-gather of
// int64: the same length for every operation, so members that disagree on the operation still
// exchange well-formed messages.
inline constexpr std::size_t signature_words = 11;

inline std::array<std::int64_t, signature_words> encode(const Call& c) {
  return {static_cast<std::int64_t>(c.op),
          c.type,
          static_cast<std::int64_t>(c.reduce),
          c.root,
          as_word(c.in),
          as_word(c.out),
          static_cast<std::int64_t>(c.problem.fault),
          c.problem.a,
          c.problem.b,
          c.problem.c,
          c.problem.d};
}

inline Call decode(std::span<const std::int64_t> w) {
  Call c;
  c.op = static_cast<Collective>(w[0]);
  c.type = static_cast<std::uint8_t>(w[1]);
  c.reduce = static_cast<ReduceOp>(w[2]);
  c.root = static_cast<int>(w[3]);
  c.in = static_cast<std::size_t>(w[4]);
  c.out = static_cast<std::size_t>(w[5]);
  c.problem = {static_cast<Fault>(w[6]), w[7], w[8], w[9], w[10]};
  return c;
}

// The first disagreement among the members' calls, or nothing. Every member evaluates it on the
// same calls, so every member finds the same one and throws the same message: first a member
// whose own arguments are unusable (the lowest), then the first member whose call differs from
// member 0's. `call(m)` is member m's call, `name(m)` how messages name it ("rank 5").
template <class CallOf, class Name>
std::optional<std::string> first_disagreement(int n, CallOf&& call, Name&& name) {
  for (int m = 0; m < n; ++m) {
    if (call(m).problem) return name(m) + ": " + describe(call(m).problem, n);
  }
  const Call& first = call(0);
  for (int m = 1; m < n; ++m) {
    const Call& p = call(m);
    const std::string pair = name(0) + " and " + name(m) + " disagree: ";
    if (p.op != first.op) {
      return pair + name(0) + " called " + std::string(collective_name(first.op)) + ", " + name(m) +
             " called " + std::string(collective_name(p.op));
    }
    if (p.type != first.type) {
      return pair + name(0) + " passed " + std::string(element_name(first.type)) + " elements, " +
             name(m) + " passed " + std::string(element_name(p.type));
    }
    if (p.reduce != first.reduce) {
      return pair + name(0) + " reduces with " + std::string(to_string(first.reduce)) + ", " +
             name(m) + " with " + std::string(to_string(p.reduce));
    }
    if (p.root != first.root) {
      return pair + name(0) + " names root " + std::to_string(first.root) + ", " + name(m) +
             " names root " + std::to_string(p.root);
    }
    if (p.op != Collective::all_to_all_v && (p.in != first.in || p.out != first.out)) {
      return pair + name(0) + " passed " + std::to_string(first.in) + " elements, " + name(m) +
             " passed " + std::to_string(p.in);
    }
  }
  return std::nullopt;
}

// The uneven all-to-all's counts agree when every receiver expects from each sender what that
// sender sends it. Each receiver finds its own first mismatch from what the senders announce
// (one count per peer: an all-to-all of counts, or shared memory), and the group takes the
// lowest (receiver, then sender): three words per member, compared the same way everywhere.
struct CountMismatch {
  std::int64_t key = 0;      // receiver * n + sender; n * n when the receiver found none
  std::int64_t sends = 0;    // what the sender sends
  std::int64_t expects = 0;  // what the receiver expects
};

inline CountMismatch find_count_mismatch(int receiver, std::span<const std::size_t> announced,
                                         std::span<const std::size_t> expected) {
  const auto n = static_cast<std::int64_t>(expected.size());
  for (std::size_t j = 0; j < expected.size(); ++j) {
    if (announced[j] != expected[j]) {
      return {receiver * n + static_cast<std::int64_t>(j), as_word(announced[j]),
              as_word(expected[j])};
    }
  }
  return {n * n, 0, 0};
}

template <class Name>
std::optional<std::string> first_count_disagreement(std::span<const CountMismatch> found,
                                                    Name&& name) {
  const auto n = static_cast<std::int64_t>(found.size());
  const CountMismatch* first = nullptr;
  for (const CountMismatch& m : found) {
    if (m.key < n * n && (first == nullptr || m.key < first->key)) first = &m;
  }
  if (first == nullptr) return std::nullopt;
  const auto receiver = static_cast<int>(first->key / n);
  const auto sender = static_cast<int>(first->key % n);
  return "counts disagree: " + name(sender) + " sends " + std::to_string(first->sends) +
         " elements to " + name(receiver) + ", which expects " + std::to_string(first->expects);
}

inline std::string rank_name(int rank) { return "rank " + std::to_string(rank); }

// The agreement of a backend that has no shared memory (MPI, NCCL), built from its own
// collectives on int64 words: `gather(mine, all)` (an all-gather) and `exchange(mine, theirs)`
// (an equal all-to-all), both under the backend's deadline. Returns the message that every
// member throws, or nothing. The counts are compared only when the signatures agree, so every
// member then calls the same operation with well-formed counts.
template <class Gather, class Exchange>
std::optional<std::string> agree(const Call& mine, int rank, int n, Gather&& gather,
                                 Exchange&& exchange) {
  const auto un = static_cast<std::size_t>(n);
  const auto local = encode(mine);
  std::vector<std::int64_t> all(signature_words * un);
  gather(std::span<const std::int64_t>(local), std::span<std::int64_t>(all));
  std::vector<Call> calls(un);
  for (std::size_t m = 0; m < un; ++m) {
    calls[m] =
        decode(std::span<const std::int64_t>(all).subspan(m * signature_words, signature_words));
  }
  const auto call_of = [&](int m) -> const Call& { return calls[static_cast<std::size_t>(m)]; };
  if (auto why = first_disagreement(n, call_of, rank_name)) return why;
  if (mine.op != Collective::all_to_all_v) return std::nullopt;

  std::vector<std::int64_t> sends(un), announced(un);
  for (std::size_t j = 0; j < un; ++j) sends[j] = as_word(mine.send_counts[j]);
  exchange(std::span<const std::int64_t>(sends), std::span<std::int64_t>(announced));
  std::vector<std::size_t> from(un);
  for (std::size_t j = 0; j < un; ++j) from[j] = static_cast<std::size_t>(announced[j]);
  const CountMismatch m = find_count_mismatch(rank, from, mine.recv_counts);
  const std::array<std::int64_t, 3> words = {m.key, m.sends, m.expects};
  std::vector<std::int64_t> found_words(3 * un);
  gather(std::span<const std::int64_t>(words), std::span<std::int64_t>(found_words));
  std::vector<CountMismatch> found(un);
  for (std::size_t r = 0; r < un; ++r) {
    found[r] = {found_words[3 * r], found_words[3 * r + 1], found_words[3 * r + 2]};
  }
  return first_count_disagreement(std::span<const CountMismatch>(found), rank_name);
}

// --- the tensor-list all-reduce (all_reduce_tensors), on the backends that have one -------------

inline constexpr std::string_view tensors_name = "all_reduce_tensors";

// The first two of `tensors` that share memory, by address (empty tensors never do): in-place
// writes of one would be reads of the other, and no result would be well defined.
template <class T>
std::optional<std::pair<std::size_t, std::size_t>> overlapping_tensors(
    std::span<const std::span<T>> tensors) {
  std::vector<std::pair<std::uintptr_t, std::size_t>> by_address;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    if (!tensors[t].empty()) {
      by_address.emplace_back(reinterpret_cast<std::uintptr_t>(tensors[t].data()), t);
    }
  }
  std::sort(by_address.begin(), by_address.end());
  for (std::size_t i = 1; i < by_address.size(); ++i) {
    const auto [address, t] = by_address[i - 1];
    if (by_address[i].first - address < tensors[t].size() * sizeof(T)) {
      return std::pair{std::min(t, by_address[i].second), std::max(t, by_address[i].second)};
    }
  }
  return std::nullopt;
}

// What members compare of a tensor-list call before its sizes.
struct TensorListSignature {
  std::string_view op;  // tensors_name, or the collective a member called instead
  std::uint8_t type = 0;
  ReduceOp reduce = ReduceOp::sum;
  std::size_t count = 0;
};

// The words every backend uses for a tensor-list call that cannot run.
inline std::string tensors_overlap(const std::string& member,
                                   std::pair<std::size_t, std::size_t> t) {
  return member + ": tensors " + std::to_string(t.first) + " and " + std::to_string(t.second) +
         " overlap";
}

// Where member b's call differs from member a's before the sizes (operation, element type,
// reduction, tensor count), if it does.
inline std::optional<std::string> tensor_list_mismatch(const std::string& a_name,
                                                       const TensorListSignature& a,
                                                       const std::string& b_name,
                                                       const TensorListSignature& b) {
  const std::string pair = a_name + " and " + b_name + " disagree: ";
  if (a.op != b.op) {
    return pair + a_name + " called " + std::string(a.op) + ", " + b_name + " called " +
           std::string(b.op);
  }
  if (a.type != b.type) {
    return pair + a_name + " passed " + std::string(element_name(a.type)) + " elements, " + b_name +
           " passed " + std::string(element_name(b.type));
  }
  if (a.reduce != b.reduce) {
    return pair + a_name + " reduces with " + std::string(to_string(a.reduce)) + ", " + b_name +
           " with " + std::string(to_string(b.reduce));
  }
  if (a.count != b.count) {
    return pair + a_name + " passed " + std::to_string(a.count) + " tensors, " + b_name +
           " passed " + std::to_string(b.count);
  }
  return std::nullopt;
}

inline std::string tensor_size_mismatch(const std::string& a_name, const std::string& b_name,
                                        std::size_t tensor, std::size_t a_size,
                                        std::size_t b_size) {
  return a_name + " and " + b_name + " disagree: tensor " + std::to_string(tensor) + " has " +
         std::to_string(a_size) + " elements on " + a_name + ", " + std::to_string(b_size) +
         " on " + b_name;
}

// The average of n members from their sum, with the rounding of the local and MPI backends:
// times 1/n for floating point, the truncated quotient for integers.
template <class T>
class AverageOf {
 public:
  explicit AverageOf(int n) noexcept : n_(static_cast<T>(n)), inv_(T(1) / static_cast<T>(n)) {}
  T operator()(T sum) const noexcept {
    if constexpr (std::is_floating_point_v<T>) {
      return sum * inv_;
    } else {
      return sum / n_;
    }
  }

 private:
  T n_;
  T inv_;
};

}  // namespace strata::detail
