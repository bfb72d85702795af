#pragma once
// The steps of DeviceShardedOptimizer as functors for thrust::for_each over a counting iterator:
// each runs where the Thrust policy runs, so the same code serves a CUDA stream
// (thrust::cuda::par_nosync.on(stream), from device_sharded_optimizer.cuh) and the host double of
// NCCL and CUDA in the tests (thrust::host, in stream order on the fake stream). Nothing here
// returns a value to the host: the step's agreement, norms, clipping factor and hyper-parameters
// live in a `StepInfo` in device memory, and every later step reads them there.
//
// The per-element arithmetic is the host updates' own (strata/optim/detail/update_math.hpp and
// the same expressions as sgd.hpp and lamb.hpp), so that where the host double runs these functors
// with the host compiler the results are the host optimizer's, bit for bit.

#include <cstddef>
#include <cstdint>

#include "strata/detail/host_device.hpp"
#include "strata/optim/detail/update_math.hpp"

namespace strata::optim::detail::dev {

using i64 = std::int64_t;

// Status codes of one rank's input in one step, as they travel in the control all-reduce; 0 is
// a clean step.
inline constexpr i64 problem_none = 0, problem_size = 1, problem_index = 2, problem_twice = 3,
                     problem_never = 4, problem_count = 5;
// Doubles per rank in the control buffer: the code and two numbers that describe it.
inline constexpr std::size_t status_words = 3;

// What the device decides in a step, read by the kernels after the agreement and by the host on
// request (grad_norm, report, check, state).
template <class T>
struct StepInfo {
  double grad_norm = 0.0;    // NaN when neither clipping nor tracking asked for it
  double clip_factor = 1.0;  // the factor the gradients are scaled by
  i64 ok = 1;                // 1 when no rank had a problem in this step: the step commits
  std::uint64_t steps = 0;   // committed steps
  // The first problem since the host last read it (`check`): code, rank, two numbers.
  i64 problem[4] = {0, 0, 0, 0};
  AdamStep<T> adam{};  // this step's hyper-parameters (Adam, LAMB)
};

// A piece of a tensor in this rank's shard (ShardSegment), with the tensor's device pointer
// already advanced to the piece.
template <class T>
struct SegmentRef {
  i64 offset = 0;  // in the shard
  i64 length = 0;
  i64 tensor = 0;
  T* param = nullptr;
};

// A non-empty tensor in the flat (bucketed) buffer.
template <class T>
struct TensorRef {
  i64 offset = 0;  // in the flat buffer
  i64 length = 0;
  T* param = nullptr;
};

// One thread of a squared-norm reduction: `count` elements from `begin`, `stride` apart.
struct Lane {
  i64 begin = 0;
  i64 count = 0;
  i64 stride = 1;
};

// A range whose squared norm is the sum of `lanes` lanes from `first_lane`, in lane order,
// written to `out` of the destination.
struct Range {
  i64 first_lane = 0;
  i64 lanes = 0;
  i64 out = 0;
};

// The entry of `refs` (n entries sorted by offset) whose [offset, offset + length) holds `i`, or
// -1 when none does (padding).
template <class Ref>
STRATA_HOST_DEVICE inline i64 find_ref(const Ref* refs, i64 n, i64 i) {
  i64 lo = 0, hi = n;
  while (hi - lo > 1) {
    const i64 mid = (lo + hi) / 2;
    if (refs[mid].offset <= i) lo = mid;
    else hi = mid;
  }
  if (n == 0 || refs[lo].offset > i || i >= refs[lo].offset + refs[lo].length) return -1;
  return lo;
}

// torch's Adam hyper-parameters for step t, computed where the step number lives (on the
// device): the same expressions as adam_step in update_math.hpp.
template <class T>
STRATA_HOST_DEVICE inline AdamStep<T> adam_step_at(double lr, double beta1, double beta2,
                                                   double eps, double weight_decay,
                                                   std::uint64_t t) {
  using std::pow;
  using std::sqrt;
  const double bc1 = 1.0 - pow(beta1, static_cast<double>(t));
  const double bc2 = 1.0 - pow(beta2, static_cast<double>(t));
  return {static_cast<T>(beta1),       static_cast<T>(beta2), static_cast<T>(1.0 - beta1),
          static_cast<T>(1.0 - beta2), static_cast<T>(eps),   static_cast<T>(weight_decay),
          static_cast<T>(lr / bc1),    static_cast<T>(bc1),   static_cast<T>(bc2),
          static_cast<T>(sqrt(bc2))};
}

// x[i] *= factor: the world sum of the gradients to their mean.
template <class T>
struct Scale {
  T* x;
  T factor;
  STRATA_HOST_DEVICE void operator()(i64 i) const { x[i] *= factor; }
};

// x[i] *= the step's clipping factor, as the host scales by static_cast<T>(factor).
template <class T>
struct Clip {
  T* x;
  const StepInfo<T>* info;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    const T f = static_cast<T>(info->clip_factor);
    x[i] *= f;
  }
};

// The shard's parameters from the tensors; padding is zero.
template <class T>
struct GatherShard {
  const SegmentRef<T>* segments;
  i64 count;
  T* shard;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    const i64 s = find_ref(segments, count, i);
    shard[i] = s < 0 ? T(0) : segments[s].param[i - segments[s].offset];
  }
};

// Lane l's sum of squares (in double, in element order from 0.0) of `a`, and of `b` when given.
template <class T>
struct SquareLanes {
  const T* a;
  const T* b;
  const Lane* lanes;
  double* out_a;
  double* out_b;
  STRATA_HOST_DEVICE void operator()(i64 l) const {
    const Lane lane = lanes[l];
    double sa = 0.0, sb = 0.0;
    for (i64 k = 0; k < lane.count; ++k) {
      const i64 i = lane.begin + k * lane.stride;
      sa += static_cast<double>(a[i]) * static_cast<double>(a[i]);
      if (b != nullptr) sb += static_cast<double>(b[i]) * static_cast<double>(b[i]);
    }
    out_a[l] = sa;
    if (b != nullptr) out_b[l] = sb;
  }
};

// Range r's sums: its lanes in order from 0.0, into dest_a[out * stride] (and dest_b).
struct SumRanges {
  const Range* ranges;
  const double* lanes_a;
  const double* lanes_b;
  double* dest_a;
  double* dest_b;
  i64 stride;
  STRATA_HOST_DEVICE void operator()(i64 r) const {
    const Range g = ranges[r];
    double sa = 0.0, sb = 0.0;
    for (i64 l = g.first_lane; l < g.first_lane + g.lanes; ++l) {
      sa += lanes_a[l];
      if (lanes_b != nullptr) sb += lanes_b[l];
    }
    dest_a[g.out * stride] = sa;
    if (dest_b != nullptr) dest_b[g.out * stride] = sb;
  }
};

// This rank's status in its slots of the control buffer (every other slot zero, so that the sum
// over the ranks is every rank's status side by side).
struct WriteStatus {
  double* slots;  // world * status_words
  i64 rank;
  double code, first, second;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    double v = 0.0;
    if (i / i64(status_words) == rank) {
      const i64 k = i % i64(status_words);
      v = k == 0 ? code : k == 1 ? first : second;
    }
    slots[i] = v;
  }
};

// After the control all-reduce: whether the step commits, the first problem (kept until the host
// reads it), the global norm and clipping factor, and the step's Adam hyper-parameters.
template <class T>
struct Agree {
  const double* control;  // [0] the squared norm, then world * status_words
  i64 world;
  bool norm_wanted, clip, adam;
  double clip_norm, nan;
  double lr, beta1, beta2, eps, weight_decay;
  StepInfo<T>* info;
  STRATA_HOST_DEVICE void operator()(i64) const {
    const double* slots = control + 1;
    i64 first = -1;
    for (i64 r = 0; r < world && first < 0; ++r) {
      if (slots[r * i64(status_words)] != 0.0) first = r;
    }
    info->ok = first < 0 ? 1 : 0;
    if (first >= 0 && info->problem[0] == problem_none) {
      const double* s = slots + first * i64(status_words);
      info->problem[0] = static_cast<i64>(s[0]);
      info->problem[1] = first;
      info->problem[2] = static_cast<i64>(s[1]);
      info->problem[3] = static_cast<i64>(s[2]);
    }
    using std::sqrt;
    info->grad_norm = norm_wanted ? sqrt(control[0]) : nan;
    double f = 1.0;
    if (clip) {
      const double c = clip_norm / (info->grad_norm + 1e-6);
      f = c < 1.0 ? c : 1.0;  // std::min(1.0, c), as the host computes it
    }
    info->clip_factor = f;
    if (adam) info->adam = adam_step_at<T>(lr, beta1, beta2, eps, weight_decay, info->steps + 1);
  }
};

// p -= lr * (g + weight_decay * p), as strata::optim::Sgd.
template <class T>
struct SgdStep {
  T* params;
  const T* grads;
  const StepInfo<T>* info;
  T lr, weight_decay;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    if (info->ok == 0) return;
    const T p = params[i];
    params[i] = p - lr * (grads[i] + weight_decay * p);
  }
};

template <class T>
struct AdamStepElement {
  T* params;
  const T* grads;
  T* m;
  T* v;
  const StepInfo<T>* info;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    if (info->ok == 0) return;
    adam_element(info->adam, params[i], grads[i], m[i], v[i]);
  }
};

// LAMB's first phase: moments and the direction u into `scratch`.
template <class T>
struct LambDirection {
  const T* params;
  const T* grads;
  T* m;
  T* v;
  T* scratch;
  const StepInfo<T>* info;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    if (info->ok == 0) return;
    scratch[i] = lamb_direction(info->adam, params[i], grads[i], m[i], v[i]);
  }
};

// LAMB's step of each segment's tensor, static_cast<T>(lr * trust ratio), from the norms summed
// over the ranks.
template <class T>
struct LambRatios {
  const SegmentRef<T>* segments;
  const double* norms;  // tensor-major, two slots
  double lr;
  T* steps;
  STRATA_HOST_DEVICE void operator()(i64 s) const {
    const i64 t = segments[s].tensor;
    steps[s] = static_cast<T>(lr * trust_ratio(norms[t * 2], norms[t * 2 + 1]));
  }
};

template <class T>
struct LambApply {
  const SegmentRef<T>* segments;
  i64 count;
  const T* steps;
  const T* scratch;
  T* params;
  const StepInfo<T>* info;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    if (info->ok == 0) return;
    const i64 s = find_ref(segments, count, i);
    if (s < 0) return;
    params[i] = params[i] - steps[s] * scratch[i];
  }
};

// A caller's element-wise update: `update(step, p, g, state, stride)`, state value k of the
// element at state[k * stride].
template <class T, class U>
struct UserStep {
  U update;
  T* params;
  const T* grads;
  T* state;
  i64 stride;
  const StepInfo<T>* info;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    if (info->ok == 0) return;
    update(info->steps + 1, params[i], grads[i], state + i, static_cast<std::size_t>(stride));
  }
};

// The new parameters (flat layout) into the tensors, when the step commits.
template <class T>
struct CopyBack {
  const TensorRef<T>* tensors;
  i64 count;
  const T* flat;
  const StepInfo<T>* info;
  STRATA_HOST_DEVICE void operator()(i64 i) const {
    if (info->ok == 0) return;
    const i64 t = find_ref(tensors, count, i);
    if (t >= 0) tensors[t].param[i - tensors[t].offset] = flat[i];
  }
};

template <class T>
struct Commit {
  StepInfo<T>* info;
  STRATA_HOST_DEVICE void operator()(i64) const {
    if (info->ok != 0) ++info->steps;
  }
};

// The host has read the problem: forget it, in stream order.
template <class T>
struct ClearProblem {
  StepInfo<T>* info;
  STRATA_HOST_DEVICE void operator()(i64) const {
    for (int k = 0; k < 4; ++k) info->problem[k] = 0;
  }
};

// load(): the restored step count.
template <class T>
struct SetSteps {
  StepInfo<T>* info;
  std::uint64_t steps;
  STRATA_HOST_DEVICE void operator()(i64) const { info->steps = steps; }
};

}  // namespace strata::optim::detail::dev
