#pragma once
// The per-element arithmetic of the provided updates, written once for the host updates and the
// device kernels (STRATA_HOST_DEVICE), so that both round alike.

#include <cmath>

#include "strata/detail/host_device.hpp"

namespace strata::optim::detail {

// Hyper-parameters of one step, in the parameters' type, computed once per step on the host.
template <class T>
struct AdamStep {
  T beta1, beta2, one_minus_beta1, one_minus_beta2;
  T eps, weight_decay;
  T step_size;         // Adam: lr / (1 - beta1^t)
  T bias_correction1;  // 1 - beta1^t
  T bias_correction2;  // 1 - beta2^t
  T bias_correction2_sqrt;
};

template <class T>
AdamStep<T> adam_step(double lr, double beta1, double beta2, double eps, double weight_decay,
                      unsigned long long t) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  return {static_cast<T>(beta1),         static_cast<T>(beta2), static_cast<T>(1.0 - beta1),
          static_cast<T>(1.0 - beta2),   static_cast<T>(eps),   static_cast<T>(weight_decay),
          static_cast<T>(lr / bc1),      static_cast<T>(bc1),   static_cast<T>(bc2),
          static_cast<T>(std::sqrt(bc2))};
}

// torch.optim.Adam (single-tensor form): L2 decay added to the gradient, moments, then
// p += -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps), in that order of operations.
template <class T>
STRATA_HOST_DEVICE inline void adam_element(const AdamStep<T>& s, T& p, T g, T& m, T& v) {
  if (s.weight_decay != T(0)) g = g + s.weight_decay * p;
  m = m * s.beta1 + s.one_minus_beta1 * g;
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  using std::sqrt;
  const T denom = sqrt(v) / s.bias_correction2_sqrt + s.eps;
  p = p + (-s.step_size) * m / denom;
}

// LAMB's direction: moments as Adam's without decay, bias-corrected, plus decoupled decay.
template <class T>
STRATA_HOST_DEVICE inline T lamb_direction(const AdamStep<T>& s, T p, T g, T& m, T& v) {
  m = m * s.beta1 + s.one_minus_beta1 * g;
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  using std::sqrt;
  const T m_hat = m / s.bias_correction1;
  const T v_hat = v / s.bias_correction2;
  return m_hat / (sqrt(v_hat) + s.eps) + s.weight_decay * p;
}

// The trust ratio from the tensor's squared norms: ||p|| / ||u||, 1 where either is 0.
STRATA_HOST_DEVICE inline double trust_ratio(double p_squared, double u_squared) {
  using std::sqrt;
  return p_squared > 0.0 && u_squared > 0.0 ? sqrt(p_squared) / sqrt(u_squared) : 1.0;
}

}  // namespace strata::optim::detail
