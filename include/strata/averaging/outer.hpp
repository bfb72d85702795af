#pragma once
//! \file
//! Outer optimizers and wire formats per level: what a level does with its group's mean beyond
//! replacing the parameters by it (DiLoCo's Nesterov step on the pseudo-gradient), and in what
//! format it sends what it averages.

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/mp11/algorithm.hpp>
#include <boost/mp11/list.hpp>

#include "strata/hierarchy/level.hpp"
#include "strata/kernels/wire_codec.hpp"
#include "strata/schedule/schedule.hpp"

namespace strata {

//! A user's outer step: called with the new parameters to write, the level's anchor a, the
//! pseudo-gradient d = a - mean(p) and the level's state (`state_per_element` values per
//! parameter, zero at the start), for float and for double spans of one fragment of the
//! parameters at a time.
//!
//! \code
//! // p = a - d / 2, no state
//! auto half_step = [](auto p, auto a, auto d, auto) {
//!   for (std::size_t i = 0; i < p.size(); ++i) p[i] = a[i] - d[i] / 2;
//! };
//! static_assert(strata::outer_step<decltype(half_step)>);
//! \endcode
template <class F>
concept outer_step =
    std::copy_constructible<F> && std::invocable<const F&, std::span<float>, std::span<const float>,
                                                 std::span<const float>, std::span<float>> &&
    std::invocable<const F&, std::span<double>, std::span<const double>, std::span<const double>,
                   std::span<double>>;

//! The run-time form of an outer optimizer. `nesterov(lr, momentum)`: with m the level's momentum,
//! `m = momentum*m + d`, `p = a - lr*(d + momentum*m)`; `nesterov(1, 0)` is plain averaging, up
//! to rounding. `custom` wraps an `outer_step`.
//!
//! \code
//! const auto o = strata::OuterOptimizer::nesterov(0.7, 0.9);
//! assert(o.state_per_element() == 1 && o.name() == "nesterov:0.7:0.9");
//! std::vector<double> p(1), m(1, 0.0);
//! const std::vector<double> a{1.0}, d{0.5};
//! o.apply(std::span<double>(p), std::span<const double>(a), std::span<const double>(d),
//!         std::span<double>(m));
//! assert(m[0] == 0.5 && std::abs(p[0] - (1.0 - 0.7 * (0.5 + 0.9 * 0.5))) < 1e-15);
//! \endcode
class OuterOptimizer {
 public:
  [[nodiscard]] static OuterOptimizer nesterov(double lr, double momentum) {
    if (!(std::isfinite(lr) && lr > 0.0)) {
      throw std::invalid_argument(
          "OuterOptimizer: the outer learning rate must be finite and "
          "above 0, got " +
          number(lr));
    }
    if (!(momentum >= 0.0 && momentum < 1.0)) {
      throw std::invalid_argument("OuterOptimizer: the outer momentum must be in [0, 1), got " +
                                  number(momentum));
    }
    OuterOptimizer o;
    o.lr_ = lr;
    o.momentum_ = momentum;
    o.state_ = 1;
    o.name_ = "nesterov:" + number(lr) + ":" + number(momentum);
    return o;
  }

  template <outer_step F>
  [[nodiscard]] static OuterOptimizer custom(F f, std::size_t state_per_element, std::string name) {
    OuterOptimizer o;
    o.state_ = state_per_element;
    o.name_ = std::move(name);
    o.float_ = [f](std::span<float> p, std::span<const float> a, std::span<const float> d,
                   std::span<float> s) { f(p, a, d, s); };
    o.double_ = [f](std::span<double> p, std::span<const double> a, std::span<const double> d,
                    std::span<double> s) { f(p, a, d, s); };
    return o;
  }

  //! State values kept per parameter (Nesterov: its momentum, 1).
  [[nodiscard]] std::size_t state_per_element() const noexcept { return state_; }
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] bool is_nesterov() const noexcept { return !float_; }
  [[nodiscard]] double lr() const noexcept { return lr_; }
  [[nodiscard]] double momentum() const noexcept { return momentum_; }

  //! Writes the new parameters of `p.size()` elements; `state` holds `state_per_element()`
  //! values per element, element-major (state[i * k + j]).
  template <class T>
  void apply(std::span<T> p, std::span<const T> a, std::span<const T> d, std::span<T> state) const {
    if (float_) {
      if constexpr (std::is_same_v<T, float>) {
        float_(p, a, d, state);
      } else {
        double_(p, a, d, state);
      }
      return;
    }
    const T lr = static_cast<T>(lr_);
    const T mu = static_cast<T>(momentum_);
    for (std::size_t i = 0; i < p.size(); ++i) {
      state[i] = mu * state[i] + d[i];
      p[i] = a[i] - lr * (d[i] + mu * state[i]);
    }
  }

 private:
  OuterOptimizer() = default;

  // The shortest text that reads back as x: 0.7, not 0.69999999999999996.
  static std::string number(double x) {
    char buf[32];
    for (int digits = 1; digits <= 17; ++digits) {
      std::snprintf(buf, sizeof buf, "%.*g", digits, x);
      if (std::strtod(buf, nullptr) == x) break;
    }
    return buf;
  }

  double lr_ = 1.0;
  double momentum_ = 0.0;
  std::size_t state_ = 0;
  std::string name_;
  std::function<void(std::span<float>, std::span<const float>, std::span<const float>,
                     std::span<float>)>
      float_;
  std::function<void(std::span<double>, std::span<const double>, std::span<const double>,
                     std::span<double>)>
      double_;
};

//! What one level does at an averaging, beyond the plain mean: an outer optimizer (none: plain
//! averaging, no anchor kept) and a wire format. A level with either keeps an anchor of the
//! parameters (one copy); Nesterov adds its momentum (a second copy).
//!
//! \code
//! const strata::LevelPolicy p{.outer = strata::OuterOptimizer::nesterov(0.7, 0.9),
//!                             .wire = strata::WireFormat::int8};
//! assert(p.keeps_anchor());
//! assert(!strata::LevelPolicy{}.keeps_anchor());
//! \endcode
struct LevelPolicy {
  std::optional<OuterOptimizer> outer{};
  WireFormat wire = WireFormat::native;

  //! An outer optimizer, or a compressed wire (which sends a - p, so needs a).
  [[nodiscard]] bool keeps_anchor() const noexcept {
    return outer.has_value() || wire != WireFormat::native;
  }
};

//! Compile-time Nesterov outer optimizer: `NesterovOuter<0.7, 0.9>` is DiLoCo's.
//!
//! \code
//! using Diloco = strata::NesterovOuter<0.7, 0.9>;
//! assert(Diloco::runtime().lr() == 0.7);
//! \endcode
template <double Lr, double Momentum>
struct NesterovOuter {
  static_assert(Lr > 0.0, "NesterovOuter: the outer learning rate must be above 0");
  static_assert(Momentum >= 0.0 && Momentum < 1.0,
                "NesterovOuter: the outer momentum must be in [0, 1)");
  static constexpr double lr = Lr;
  static constexpr double momentum = Momentum;
  [[nodiscard]] static OuterOptimizer runtime() { return OuterOptimizer::nesterov(Lr, Momentum); }
};

//! Compile-time user outer optimizer: a default-constructible `outer_step` F with `State` values
//! of state per parameter.
template <outer_step F, std::size_t State = 0>
struct CustomOuter {
  [[nodiscard]] static OuterOptimizer runtime() {
    return OuterOptimizer::custom(F{}, State, "custom");
  }
};

//! Compile-time wire format of a level: `Wire<WireFormat::bf16>`.
template <WireFormat F>
struct Wire {
  static constexpr WireFormat format = F;
};

namespace detail {

template <class T>
struct is_outer_policy : std::false_type {};
template <double L, double M>
struct is_outer_policy<NesterovOuter<L, M>> : std::true_type {};
template <class F, std::size_t S>
struct is_outer_policy<CustomOuter<F, S>> : std::true_type {};

template <class T>
struct is_wire_policy : std::false_type {};
template <WireFormat F>
struct is_wire_policy<Wire<F>> : std::true_type {};

}  // namespace detail

//! A level with policies: `LevelWith<Level<8, 64>, NesterovOuter<0.7, 0.9>, Wire<WireFormat::int8>>`
//! is a `level_type` (so `Hierarchy` checks it as any level) that also carries an outer
//! optimizer and a wire format, at most one of each, in any order. The averagers built on a
//! compile-time hierarchy read them (`level_policy<L>()`).
//!
//! \code
//! using Top = strata::LevelWith<strata::Level<8, 64>, strata::NesterovOuter<0.7, 0.9>>;
//! static_assert(Top::period == 8 && Top::group_size == 64);
//! assert(strata::level_policy<Top>().outer->momentum() == 0.9);
//! assert(!(strata::level_policy<strata::Level<2, 8>>().keeps_anchor()));
//! \endcode
template <level_type L, class... Policies>
struct LevelWith {
  static_assert(((detail::is_outer_policy<Policies>::value ||
                  detail::is_wire_policy<Policies>::value) &&
                 ...),
                "LevelWith: a policy must be an outer optimizer (NesterovOuter, CustomOuter) or "
                "a wire format (Wire<...>)");
  static_assert((0 + ... + int(detail::is_outer_policy<Policies>::value)) <= 1,
                "LevelWith: at most one outer optimizer per level");
  static_assert((0 + ... + int(detail::is_wire_policy<Policies>::value)) <= 1,
                "LevelWith: at most one wire format per level");
  static constexpr std::size_t period = L::period;
  static constexpr std::size_t group_size = L::group_size;
  static constexpr LevelSpec spec{L::period, L::group_size};
  using policies = boost::mp11::mp_list<Policies...>;
};

//! The run-time policy of a level type: `LevelWith`'s, or plain averaging with the native wire.
template <class L>
[[nodiscard]] LevelPolicy level_policy() {
  LevelPolicy p;
  if constexpr (requires { typename L::policies; }) {
    boost::mp11::mp_for_each<typename L::policies>([&](auto policy) {
      using P = decltype(policy);
      if constexpr (detail::is_outer_policy<P>::value) p.outer = P::runtime();
      if constexpr (detail::is_wire_policy<P>::value) p.wire = P::format;
    });
  }
  return p;
}

namespace detail {

template <class L>
constexpr bool level_has_policies() {
  if constexpr (requires { typename L::policies; }) {
    return boost::mp11::mp_size<typename L::policies>::value != 0;
  } else {
    return false;
  }
}

// Whether a compile-time schedule's hierarchy carries `LevelWith` policies.
template <class S>
struct schedule_has_policies : std::false_type {};
template <class H, class P>
struct schedule_has_policies<Schedule<H, P>> {
  static constexpr bool value = []<class... Ls>(boost::mp11::mp_list<Ls...>) {
    return (level_has_policies<Ls>() || ...);
  }(typename H::level_list{});
};

}  // namespace detail

//! The policies of every level of a compile-time hierarchy, smallest group first.
template <class H>
[[nodiscard]] std::vector<LevelPolicy> level_policies() {
  std::vector<LevelPolicy> out;
  boost::mp11::mp_for_each<boost::mp11::mp_transform<std::type_identity, typename H::level_list>>(
      [&](auto l) { out.push_back(level_policy<typename decltype(l)::type>()); });
  return out;
}

}  // namespace strata
