// hsgd_demo: why hierarchical SGD exists, in one run. Trains a small MLP on synthetic data with N
// ranks as threads, injects random stragglers, and compares synchronous SGD, local SGD,
// hierarchical SGD, DiLoCo (local SGD with an outer Nesterov step) and streaming DiLoCo on the
// same data, the same initial model and the same straggler events.
//
//   hsgd_demo [--world N] [--hierarchy P:G,...] [--local-period P] [--warmup W] [--steps S]
//             [--straggler-rate p] [--straggler-delay-ms D] [--step-ms T] [--lr X] [--seed S]
//             [--methods sync,local,hier,diloco,streaming] [--outer-lr X] [--outer-momentum M]
//             [--fragments F] [--fragment-delay TAU] [--mix A] [--intra-node]
//             [--ranks-per-node R] [--batch B] [--json] [--quiet] [--backend local|mpi]
//   mpirun -np N hsgd_demo --backend mpi   (one process per rank; rank 0 prints)
//
// Bad arguments print one line on stderr and exit with status 2.
#include <strata/averaging/averager.hpp>
#include <strata/averaging/outer.hpp>
#include <strata/averaging/post_local_sgd.hpp>
#include <strata/averaging/streaming.hpp>
#include <strata/comm/local.hpp>
#ifdef STRATA_EXAMPLES_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif
#include <strata/strata.hpp>

#include "cli.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// Command line

using cli::usage_error;

enum class Method { sync, local, hier, diloco, streaming };
constexpr std::array all_methods{Method::sync, Method::local, Method::hier, Method::diloco,
                                 Method::streaming};

constexpr std::string_view method_key(Method m) {
  switch (m) {
    case Method::sync: return "sync";
    case Method::local: return "local";
    case Method::hier: return "hier";
    case Method::diloco: return "diloco";
    case Method::streaming: return "streaming";
  }
  return "?";
}

struct Options {
  std::size_t world = 16;
  std::optional<std::string> hierarchy;  // derived from the world size when not given
  std::size_t local_period = 8;
  std::size_t warmup = 0;
  std::size_t steps = 300;
  std::size_t batch = 32;
  double straggler_rate = 0.05;
  double straggler_delay_ms = 40.0;
  double step_ms = 4.0;
  double lr = 0.5;
  std::uint64_t seed = 1;
  std::vector<Method> methods{all_methods.begin(), all_methods.end()};
  double outer_lr = 0.7;  // DiLoCo's outer Nesterov step, for diloco and streaming
  double outer_momentum = 0.9;
  std::optional<std::size_t> fragments;       // default: see streaming_options
  std::optional<std::size_t> fragment_delay;  // default: 1 where P/F allows it, else 0
  double mix = 1.0;
  bool intra_node = false;
  std::optional<std::size_t> ranks_per_node;  // default: the hierarchy's smallest group
  bool json = false;
  bool quiet = false;
};

void print_help() {
  std::printf(
      "usage: hsgd_demo [options]\n"
      "\n"
      "Trains an MLP (32-64-4, tanh) on synthetic clustered data with N ranks as threads, each\n"
      "rank on its own shard, with random stragglers, and compares synchronous SGD, local SGD,\n"
      "hierarchical SGD, DiLoCo and streaming DiLoCo on the same data, initial model and\n"
      "straggler events.\n"
      "\n"
      "  --world N               ranks (1..256, default 16)\n"
      "  --hierarchy P:G,...     hierarchical SGD levels, smallest group first, ending at N\n"
      "                          (default 2:4,4:8,8:16; derived from N if only --world is set)\n"
      "  --local-period P        local SGD and DiLoCo meet the whole world every P steps\n"
      "                          (default 8)\n"
      "  --warmup W              synchronous SGD steps before the other methods (default 0)\n"
      "  --steps S               optimizer steps (1..100000, default 300)\n"
      "  --batch B               minibatch per rank (1..4096, default 32)\n"
      "  --straggler-rate p      chance that a rank is delayed at a step (0..1, default 0.05)\n"
      "  --straggler-delay-ms D  length of that delay (0..10000, default 40)\n"
      "  --step-ms T             simulated compute in ms per step (0..10000, default 4)\n"
      "  --lr X                  learning rate (0..10, default 0.5)\n"
      "  --seed S                seed of the data, the model and the stragglers (default 1)\n"
      "  --methods LIST          comma-separated subset of sync,local,hier,diloco,streaming\n"
      "                          (default all five)\n"
      "  --outer-lr X            DiLoCo's outer Nesterov learning rate (0..10, default 0.7)\n"
      "  --outer-momentum M      its momentum (0 <= M < 1, default 0.9)\n"
      "  --fragments F           streaming: fragments, dividing P (default 4, or the largest\n"
      "                          divisor of P below 4)\n"
      "  --fragment-delay TAU    streaming: steps before a fragment's result is mixed in,\n"
      "                          below P/F (default 1, or 0 when P/F is 1)\n"
      "  --mix A                 streaming: weight of that result, 0 < A <= 1 (default 1)\n"
      "  --intra-node            after warm-up, average gradients inside each node every step\n"
      "                          (all methods but synchronous SGD)\n"
      "  --ranks-per-node R      node size for --intra-node (default: smallest hierarchy group)\n"
      "  --json                  print the results as one JSON object instead of a table\n"
      "  --quiet                 no progress on stderr\n"
      "  --backend local|mpi     local: ranks as threads (default); mpi: one process per rank\n"
      "                          under mpirun, the world size taken from MPI\n"
      "  --help                  this text\n");
}

using cli::parse_size;

std::vector<Method> parse_methods(std::string_view text) {
  std::vector<Method> chosen;
  std::size_t begin = 0;
  while (true) {
    const std::size_t comma = text.find(',', begin);
    const std::string_view name = text.substr(
        begin, comma == std::string_view::npos ? std::string_view::npos : comma - begin);
    const auto it = std::find_if(all_methods.begin(), all_methods.end(),
                                 [&](Method m) { return method_key(m) == name; });
    if (it == all_methods.end()) {
      throw usage_error("--methods: unknown method \"" + std::string(name) +
                        "\"; choose from sync,local,hier,diloco,streaming");
    }
    if (std::find(chosen.begin(), chosen.end(), *it) != chosen.end()) {
      throw usage_error("--methods: \"" + std::string(name) + "\" is listed twice");
    }
    chosen.push_back(*it);
    if (comma == std::string_view::npos) break;
    begin = comma + 1;
  }
  // Always run in the same order, so that the table reads the same whatever the list's order.
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

// Streaming DiLoCo's settings for the period. The defaults follow the period so that any
// --local-period runs: 4 fragments where 4 divides it, else the largest divisor below 4; a delay
// of one step where a fragment's turn comes round less often than every step. Values given on
// the command line are checked as they are.
strata::StreamingOptions streaming_options(const Options& o) {
  const std::size_t p = o.local_period;
  std::size_t f = 4;
  while (p % f != 0) --f;
  f = o.fragments.value_or(f);
  if (p % f != 0) {
    throw usage_error("--fragments " + std::to_string(f) + " does not divide --local-period " +
                      std::to_string(p));
  }
  const std::size_t delay = o.fragment_delay.value_or(p / f > 1 ? 1 : 0);
  if (delay >= p / f) {
    throw usage_error("--fragment-delay " + std::to_string(delay) +
                      " must be below --local-period / --fragments = " + std::to_string(p / f));
  }
  // Periods count from the end of warm-up, as the DiLoCo row's PeriodicAverager counts them, so
  // that one fragment without delay runs exactly that row.
  const strata::StreamingOptions s{
      .fragments = f, .delay = delay, .mix = o.mix, .from_warmup = true};
  s.check(p);
  return s;
}

// `mpi_world`: the number of MPI processes, when running over MPI; it is the world size.
Options parse_args(int argc, char** argv, std::optional<std::size_t> mpi_world = std::nullopt) {
  Options o;
  bool world_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--world") {
      o.world = parse_size(arg, value(), 1, 256);
      world_given = true;
    } else if (arg == "--backend") {
      const std::string_view b = value();
      if (b != "local" && b != "mpi") {
        throw usage_error("--backend must be local or mpi, got \"" + std::string(b) + "\"");
      }
#ifndef STRATA_EXAMPLES_HAVE_MPI
      if (b == "mpi") throw usage_error("--backend mpi: this build has no MPI");
#endif
    } else if (arg == "--hierarchy") {
      o.hierarchy = std::string(value());
    } else if (arg == "--local-period") {
      o.local_period = parse_size(arg, value(), 1, 1'000'000);
    } else if (arg == "--warmup") {
      o.warmup = parse_size(arg, value(), 0, 1'000'000);
    } else if (arg == "--steps") {
      o.steps = parse_size(arg, value(), 1, 100'000);
    } else if (arg == "--batch") {
      o.batch = parse_size(arg, value(), 1, 4096);
    } else if (arg == "--straggler-rate") {
      o.straggler_rate = cli::parse_real(arg, value(), 0.0, 1.0);
    } else if (arg == "--straggler-delay-ms") {
      o.straggler_delay_ms = cli::parse_real(arg, value(), 0.0, 10'000.0);
    } else if (arg == "--step-ms") {
      o.step_ms = cli::parse_real(arg, value(), 0.0, 10'000.0);
    } else if (arg == "--lr") {
      o.lr = cli::parse_real(arg, value(), 0.0, 10.0, /*lo_open=*/true);
    } else if (arg == "--seed") {
      o.seed = cli::parse_integer(arg, value());
    } else if (arg == "--methods") {
      o.methods = parse_methods(value());
    } else if (arg == "--outer-lr") {
      o.outer_lr = cli::parse_real(arg, value(), 0.0, 10.0, /*lo_open=*/true);
    } else if (arg == "--outer-momentum") {
      const std::string_view text = value();
      o.outer_momentum = cli::parse_real(arg, text, 0.0, 1.0);
      if (o.outer_momentum >= 1.0) {
        throw usage_error("--outer-momentum needs a number in [0, 1), got \"" + std::string(text) +
                          "\"");
      }
    } else if (arg == "--fragments") {
      o.fragments = parse_size(arg, value(), 1, 1'000'000);
    } else if (arg == "--fragment-delay") {
      o.fragment_delay = parse_size(arg, value(), 0, 1'000'000);
    } else if (arg == "--mix") {
      o.mix = cli::parse_real(arg, value(), 0.0, 1.0, /*lo_open=*/true);
    } else if (arg == "--intra-node") {
      o.intra_node = true;
    } else if (arg == "--ranks-per-node") {
      o.ranks_per_node = parse_size(arg, value(), 1, 256);
    } else if (arg == "--json") {
      o.json = true;
    } else if (arg == "--quiet") {
      o.quiet = true;
    } else {
      throw usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
    }
  }
  if (mpi_world) {
    if (world_given && o.world != *mpi_world) {
      throw usage_error("--world " + std::to_string(o.world) + " but MPI runs " +
                        std::to_string(*mpi_world) + " processes");
    }
    o.world = *mpi_world;
  }
  if (o.warmup > o.steps) {
    throw usage_error("--warmup " + std::to_string(o.warmup) + " is longer than --steps " +
                      std::to_string(o.steps));
  }
  if (o.ranks_per_node && (*o.ranks_per_node > o.world || o.world % *o.ranks_per_node != 0)) {
    throw usage_error("--ranks-per-node " + std::to_string(*o.ranks_per_node) +
                      " does not divide --world " + std::to_string(o.world));
  }
  streaming_options(o);  // rejects fragments or a delay that do not fit the period
  return o;
}

// A hierarchy for a world size the default does not fit: up to three nested levels, each group
// the largest proper divisor of the next (16 -> 4,8,16; 12 -> 3,6,12), averaging every 2, 4 and
// 8 steps, with the world always last at period 8 so that it meets as often as in local SGD.
std::string default_hierarchy(std::size_t world) {
  const auto largest_proper_divisor = [](std::size_t n) -> std::size_t {
    for (std::size_t d = n / 2; d > 1; --d) {
      if (n % d == 0) return d;
    }
    return 1;
  };
  std::vector<std::size_t> groups{world};
  while (groups.size() < 3) {
    const std::size_t d = largest_proper_divisor(groups.front());
    if (d <= 1) break;
    groups.insert(groups.begin(), d);
  }
  std::string text;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const std::size_t period = i + 1 == groups.size() ? 8 : std::size_t{2} << i;
    if (!text.empty()) text += ',';
    text += std::to_string(period) + ':' + std::to_string(groups[i]);
  }
  return text;
}

strata::RuntimeHierarchy resolve_hierarchy(const Options& o) {
  const std::string text = o.hierarchy.value_or(default_hierarchy(o.world));
  std::optional<strata::RuntimeHierarchy> h;
  try {
    h.emplace(strata::RuntimeHierarchy::parse(text));
  } catch (const std::invalid_argument& e) {
    throw usage_error(std::string("--hierarchy: ") + e.what());
  }
  try {
    h->check_world_size(o.world);
  } catch (const std::invalid_argument& e) {
    throw usage_error("--hierarchy \"" + text + "\" does not fit --world " +
                      std::to_string(o.world) + ": " + e.what());
  }
  return *h;
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness. Every draw is a pure function of (seed, purpose, a, b), so the three
// methods see the same data, batches and stragglers however their threads interleave, and the
// results do not depend on the standard library's distributions (which differ between vendors).

constexpr std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

enum class Purpose : std::uint64_t { data, test, init, batch, straggler };

class Stream {
 public:
  Stream(std::uint64_t seed, Purpose p, std::uint64_t a = 0, std::uint64_t b = 0)
      : state_(mix(seed ^ mix(static_cast<std::uint64_t>(p) ^ mix(a ^ mix(b))))) {}

  std::uint64_t next() { return mix(state_++); }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Box-Muller; 1 - u keeps the logarithm's argument away from zero.
  double normal() {
    const double u = 1.0 - uniform();
    const double v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }

 private:
  std::uint64_t state_;
};

bool straggles(const Options& o, std::size_t rank, std::size_t step) {
  return Stream(o.seed, Purpose::straggler, rank, step).uniform() < o.straggler_rate;
}

// ---------------------------------------------------------------------------------------------
// The problem: four classes, each a mixture of two Gaussian clusters in 32 dimensions, so that a
// linear model cannot separate them and the hidden layer has something to learn.

constexpr std::size_t inputs = 32;
constexpr std::size_t hidden = 64;
constexpr std::size_t classes = 4;
constexpr std::size_t clusters_per_class = 2;
constexpr double cluster_spread = 0.6;  // tuned so that the best accuracy is about 93%
constexpr std::size_t shard_size = 2048;
constexpr std::size_t test_size = 4096;

struct Dataset {
  std::vector<float> x;  // size() rows of `inputs` features
  std::vector<int> y;
  [[nodiscard]] std::size_t size() const noexcept { return y.size(); }
  [[nodiscard]] const float* row(std::size_t i) const noexcept { return x.data() + i * inputs; }
};

struct Problem {
  std::vector<Dataset> shards;  // one per rank
  Dataset test;
};

Dataset sample(const std::vector<float>& centers, Stream rng, std::size_t n) {
  Dataset d;
  d.x.resize(n * inputs);
  d.y.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t label = rng.below(classes);
    const std::size_t cluster = label * clusters_per_class + rng.below(clusters_per_class);
    for (std::size_t k = 0; k < inputs; ++k) {
      d.x[i * inputs + k] = centers[cluster * inputs + k] + static_cast<float>(rng.normal());
    }
    d.y[i] = static_cast<int>(label);
  }
  return d;
}

Problem make_problem(const Options& o) {
  Stream center_rng(o.seed, Purpose::data, ~std::uint64_t{0});
  std::vector<float> centers(classes * clusters_per_class * inputs);
  for (float& c : centers) c = static_cast<float>(cluster_spread * center_rng.normal());
  Problem p;
  for (std::size_t r = 0; r < o.world; ++r) {
    p.shards.push_back(sample(centers, Stream(o.seed, Purpose::data, r), shard_size));
  }
  p.test = sample(centers, Stream(o.seed, Purpose::test), test_size);
  return p;
}

// ---------------------------------------------------------------------------------------------
// The model: inputs -> hidden (tanh) -> classes, softmax cross-entropy. Weights are row-major,
// input-major (w1[k * hidden + j] connects input k to hidden unit j).

constexpr std::size_t w1_size = inputs * hidden;
constexpr std::size_t w2_size = hidden * classes;
constexpr std::size_t param_count = w1_size + hidden + w2_size + classes;

// Separate tensors, as a framework would hold them: the averagers pack them into one buffer.
struct Params {
  std::vector<float> w1, b1, w2, b2;

  std::vector<std::span<float>> tensors() { return {w1, b1, w2, b2}; }
};

// One flat buffer: synchronous SGD all-reduces it in one call, with no packing.
struct Grads {
  std::vector<float> flat = std::vector<float>(param_count);
  std::span<float> w1{flat.data(), w1_size};
  std::span<float> b1{w1.data() + w1_size, hidden};
  std::span<float> w2{b1.data() + hidden, w2_size};
  std::span<float> b2{w2.data() + w2_size, classes};

  Grads() = default;
  Grads(const Grads&) = delete;  // the spans point into this object's own buffer
  Grads& operator=(const Grads&) = delete;

  std::vector<std::span<float>> tensors() { return {w1, b1, w2, b2}; }
};

// Every rank, and every method, starts from the same model, as data-parallel training does.
Params init_params(std::uint64_t seed) {
  Stream rng(seed, Purpose::init);
  Params p{std::vector<float>(w1_size), std::vector<float>(hidden), std::vector<float>(w2_size),
           std::vector<float>(classes)};
  const double s1 = 1.0 / std::sqrt(static_cast<double>(inputs));
  const double s2 = 1.0 / std::sqrt(static_cast<double>(hidden));
  for (float& w : p.w1) w = static_cast<float>(s1 * rng.normal());
  for (float& w : p.w2) w = static_cast<float>(s2 * rng.normal());
  return p;
}

// The hidden layer and the class log-probabilities of one sample; returns its loss.
float forward(const Params& p, const float* x, int label, std::array<float, hidden>& h,
              std::array<float, classes>& logp) {
  std::copy(p.b1.begin(), p.b1.end(), h.begin());
  for (std::size_t k = 0; k < inputs; ++k) {
    const float xk = x[k];
    const float* row = p.w1.data() + k * hidden;
    for (std::size_t j = 0; j < hidden; ++j) h[j] += xk * row[j];
  }
  for (float& v : h) v = std::tanh(v);
  std::copy(p.b2.begin(), p.b2.end(), logp.begin());
  for (std::size_t j = 0; j < hidden; ++j) {
    const float* row = p.w2.data() + j * classes;
    for (std::size_t c = 0; c < classes; ++c) logp[c] += h[j] * row[c];
  }
  // Log-softmax around the largest logit, so that exp cannot overflow.
  const float top = *std::max_element(logp.begin(), logp.end());
  float sum = 0;
  for (float v : logp) sum += std::exp(v - top);
  const float log_sum = top + std::log(sum);
  for (float& v : logp) v -= log_sum;
  return -logp[static_cast<std::size_t>(label)];
}

// Mean loss over the batch; `g` receives the gradient of that mean.
float loss_and_gradient(const Params& p, const Dataset& data, std::span<const std::size_t> batch,
                        Grads& g) {
  std::fill(g.flat.begin(), g.flat.end(), 0.0f);
  std::array<float, hidden> h{};
  std::array<float, hidden> dh{};
  std::array<float, classes> logp{};
  std::array<float, classes> dlogit{};
  const float inv_batch = 1.0f / static_cast<float>(batch.size());
  float loss = 0;
  for (const std::size_t i : batch) {
    const float* x = data.row(i);
    loss += forward(p, x, data.y[i], h, logp);
    for (std::size_t c = 0; c < classes; ++c) {
      const float target = static_cast<int>(c) == data.y[i] ? 1.0f : 0.0f;
      dlogit[c] = (std::exp(logp[c]) - target) * inv_batch;
      g.b2[c] += dlogit[c];
    }
    for (std::size_t j = 0; j < hidden; ++j) {
      const float* w2_row = p.w2.data() + j * classes;
      float* g2_row = g.w2.data() + j * classes;
      float back = 0;
      for (std::size_t c = 0; c < classes; ++c) {
        g2_row[c] += h[j] * dlogit[c];
        back += w2_row[c] * dlogit[c];
      }
      dh[j] = back * (1.0f - h[j] * h[j]);
      g.b1[j] += dh[j];
    }
    for (std::size_t k = 0; k < inputs; ++k) {
      const float xk = x[k];
      float* g1_row = g.w1.data() + k * hidden;
      for (std::size_t j = 0; j < hidden; ++j) g1_row[j] += xk * dh[j];
    }
  }
  return loss * inv_batch;
}

void sgd_update(Params& p, Grads& g, float lr) {
  const auto step = [lr](std::vector<float>& w, std::span<const float> dw) {
    for (std::size_t i = 0; i < w.size(); ++i) w[i] -= lr * dw[i];
  };
  step(p.w1, g.w1);
  step(p.b1, g.b1);
  step(p.w2, g.w2);
  step(p.b2, g.b2);
}

// Sums of loss, correct predictions and samples over rows [begin, end) of `data`.
std::array<double, 3> evaluate(const Params& p, const Dataset& data, std::size_t begin,
                               std::size_t end) {
  std::array<float, hidden> h{};
  std::array<float, classes> logp{};
  double loss = 0;
  double correct = 0;
  for (std::size_t i = begin; i < end; ++i) {
    loss += forward(p, data.row(i), data.y[i], h, logp);
    const auto best = std::max_element(logp.begin(), logp.end()) - logp.begin();
    correct += best == data.y[i] ? 1.0 : 0.0;
  }
  return {loss, correct, static_cast<double>(end - begin)};
}

// ---------------------------------------------------------------------------------------------
// Progress, from rank 0 only: its own smoothed minibatch loss, which costs no communication.

class Progress {
 public:
  Progress(std::string_view tag, std::size_t steps, bool enabled)
      : tag_(tag), steps_(steps), enabled_(enabled), tty_(isatty(fileno(stderr)) != 0) {}

  void step(std::size_t done, float minibatch_loss) {
    smoothed_ = done == 1 ? minibatch_loss : 0.95f * smoothed_ + 0.05f * minibatch_loss;
    if (!enabled_) return;
    if (tty_) {
      // Redraws are throttled: the terminal is slower than a 4 ms step.
      const auto now = std::chrono::steady_clock::now().time_since_epoch();
      if (done != steps_ && now - last_ < std::chrono::milliseconds(100)) return;
      last_ = now;
      std::fprintf(stderr, "\r[%s] step %zu/%zu loss %.3f   ", tag_.c_str(), done, steps_,
                   static_cast<double>(smoothed_));
    } else {
      const std::size_t every = std::max<std::size_t>(1, steps_ / 5);
      if (done % every != 0 && done != steps_) return;
      std::fprintf(stderr, "[%s] step %zu/%zu loss %.3f\n", tag_.c_str(), done, steps_,
                   static_cast<double>(smoothed_));
    }
    std::fflush(stderr);
  }

  void finish(double seconds) {
    if (!enabled_) return;
    if (tty_) {
      std::fprintf(stderr, "\r[%s] step %zu/%zu loss %.3f  done in %.1f s\n", tag_.c_str(), steps_,
                   steps_, static_cast<double>(smoothed_), seconds);
    } else {
      std::fprintf(stderr, "[%s] done in %.1f s\n", tag_.c_str(), seconds);
    }
    std::fflush(stderr);
  }

 private:
  std::string tag_;
  std::size_t steps_;
  bool enabled_;
  bool tty_;
  float smoothed_ = 0;
  std::chrono::steady_clock::duration last_{};  // since the clock's epoch
};

// ---------------------------------------------------------------------------------------------
// Training

struct Result {
  Method method = Method::sync;
  double wall_s = 0;
  std::size_t world_syncs = 0;  // steps at which all ranks had to meet
  double bytes_sent = 0;        // by each rank, for gradient syncs and averaging
  double train_loss = 0;
  double test_accuracy = 0;
  // Consensus distance C(s) = (1/n) sum_i ||x_i(s) - xbar(s)||^2 over all parameters, taken at
  // the end of every step: how far the ranks' models have drifted apart.
  double consensus_mean = 0;
  double consensus_max = 0;
};

// Bytes one rank sends in a ring all-reduce of `elements` floats over a group of `group` ranks:
// a reduce-scatter and an all-gather, each passing on (g - 1)/g of the buffer. What the demo's
// communicators actually do on the wire may differ; the count is the textbook one, the same for
// every method, so that the methods compare.
double ring_bytes(std::size_t group, std::size_t elements) {
  if (group <= 1) return 0;
  const double g = static_cast<double>(group);
  return 2.0 * (g - 1.0) / g * static_cast<double>(elements * sizeof(float));
}

// How a method communicates around the local update. Each counts the bytes it sends.
template <class Comm>
struct SyncSgd {
  Comm* world;
  double bytes_sent = 0;

  void begin(Params&) {}
  // Returns true when the whole world met.
  bool sync_gradients(Grads& g) {
    world->all_reduce(std::span<float>(g.flat), strata::ReduceOp::average);
    bytes_sent += ring_bytes(static_cast<std::size_t>(world->size()), param_count);
    return true;
  }
  bool average_params(Params&) { return false; }
};

// The gradient sync of post-local SGD (warm-up over the world, then optionally inside nodes),
// with its bytes counted.
template <class Averager, class Comm>
struct CountedGradientSync {
  strata::PostLocalGradientSync<Averager> sync;
  std::size_t world_size;
  std::size_t ranks_per_node;

  CountedGradientSync(const Averager& a, Comm& world, std::size_t rpn, bool intra_node)
      : sync(a, world, static_cast<int>(rpn), intra_node),
        world_size(static_cast<std::size_t>(world.size())),
        ranks_per_node(rpn) {}

  // Returns true when the whole world met.
  bool run(Grads& g, double& bytes_sent) {
    const strata::GradientSync where = sync.sync(g.tensors());
    if (where == strata::GradientSync::world) bytes_sent += ring_bytes(world_size, param_count);
    if (where == strata::GradientSync::node) bytes_sent += ring_bytes(ranks_per_node, param_count);
    return where == strata::GradientSync::world;
  }
};

// Local, hierarchical SGD and DiLoCo: a BasicAverager after the local update.
template <class Averager, class Comm>
struct AveragedSgd {
  Averager averager;
  CountedGradientSync<Averager, Comm> gradient_sync;
  std::size_t world_level;
  double bytes_sent = 0;

  AveragedSgd(Comm& world, Averager a, std::size_t ranks_per_node, bool intra_node)
      : averager(std::move(a)),
        gradient_sync(averager, world, ranks_per_node, intra_node),
        world_level(averager.schedule().levels().size() - 1) {}
  AveragedSgd(const AveragedSgd&) = delete;  // the gradient sync points at the averager
  AveragedSgd& operator=(const AveragedSgd&) = delete;

  // The anchors of DiLoCo's outer step start at the initial model; plain levels keep none.
  void begin(Params& p) { averager.begin(p.tensors()); }
  bool sync_gradients(Grads& g) { return gradient_sync.run(g, bytes_sent); }
  bool average_params(Params& p) {
    const std::optional<std::size_t> level = averager.average(p.tensors());
    if (!level) return false;
    // An outer step averages the pseudo-gradient, as many values as the parameters.
    bytes_sent += ring_bytes(averager.schedule().levels()[*level].group_size, param_count);
    return *level == world_level;
  }
};

// What PostLocalGradientSync reads of an averager (its step and warm-up), for the streaming
// averager, which has no multi-level schedule.
template <class Comm>
struct StreamingClock {
  using comm_type = Comm;
  const strata::StreamingAverager<Comm>* averager;
  std::size_t warmup_steps;

  [[nodiscard]] std::size_t step() const noexcept { return averager->step(); }
  [[nodiscard]] const StreamingClock& schedule() const noexcept { return *this; }
  [[nodiscard]] std::size_t warmup() const noexcept { return warmup_steps; }
};

// Streaming DiLoCo over the world: one fragment of the parameters meets every P/F steps.
template <class Comm>
struct StreamingSgd {
  strata::StreamingAverager<Comm> averager;
  StreamingClock<Comm> clock;
  CountedGradientSync<StreamingClock<Comm>, Comm> gradient_sync;
  std::size_t world_size;
  double bytes_sent = 0;

  StreamingSgd(Comm& world, const Options& o, std::size_t ranks_per_node)
      : averager(world, o.local_period, streaming_options(o), o.warmup,
                 strata::OuterOptimizer::nesterov(o.outer_lr, o.outer_momentum)),
        clock{&averager, o.warmup},
        gradient_sync(clock, world, ranks_per_node, o.intra_node),
        world_size(static_cast<std::size_t>(world.size())) {}
  StreamingSgd(const StreamingSgd&) = delete;  // the clock and the sync point into this object
  StreamingSgd& operator=(const StreamingSgd&) = delete;

  void begin(Params& p) {
    const auto t = p.tensors();
    averager.begin(std::span<const std::span<float>>(t));
  }
  bool sync_gradients(Grads& g) { return gradient_sync.run(g, bytes_sent); }
  // A fragment's sync is a meeting of the whole world, whenever its result is mixed in.
  bool average_params(Params& p) {
    const auto t = p.tensors();
    const std::optional<std::size_t> f = averager.average(std::span<const std::span<float>>(t));
    if (!f) return false;
    const std::size_t fragments = averager.streaming().fragments;
    bytes_sent += ring_bytes(world_size, strata::fragment_begin(param_count, fragments, *f + 1) -
                                             strata::fragment_begin(param_count, fragments, *f));
    return true;
  }
};

// The consensus distance of every step, measured without perturbing training: inside the timed
// loop a rank only copies its parameters into its own trajectory buffer, and the ranks reduce
// the recorded steps together afterwards. Two passes (the mean first, then each rank's squared
// distance to it) rather than sum(x^2) - n * xbar^2 in one, which cancels catastrophically when
// the ranks nearly agree: the distances are tiny next to the parameters themselves.
template <class Comm>
class ConsensusMeter {
 public:
  // Steps per reduction: bounds the double buffers (64 * param_count doubles, about 1.2 MiB).
  static constexpr std::size_t block_steps = 64;
  // Bytes of trajectory per process: the local backend's ranks are threads of one process and
  // share it; an MPI rank has its own.
  static constexpr std::size_t process_bytes = std::size_t{256} << 20;

  // Steps per trajectory window, at least one reduction block.
  static std::size_t window_steps(std::size_t steps, std::size_t ranks_in_process) {
    const std::size_t fit = process_bytes / ranks_in_process / (param_count * sizeof(float));
    return std::min(steps, std::max(fit, block_steps));
  }

  ConsensusMeter(Comm& comm, std::size_t steps)
      : comm_(&comm),
        window_steps_(window_steps(steps, std::is_same_v<Comm, strata::LocalComm>
                                              ? static_cast<std::size_t>(comm.size())
                                              : 1)),
        trajectory_(window_steps_ * param_count),
        mean_(std::min(window_steps_, block_steps) * param_count),
        distance_(std::min(window_steps_, block_steps)) {}

  void record(Params& p) {
    float* row = trajectory_.data() + recorded_ * param_count;
    for (std::span<float> t : p.tensors()) row = std::copy(t.begin(), t.end(), row);
    ++recorded_;
  }

  [[nodiscard]] bool window_full() const noexcept { return recorded_ == window_steps_; }

  // Collective: every rank calls it after recording the same steps.
  void reduce() {
    const double n = static_cast<double>(comm_->size());
    for (std::size_t first = 0; first < recorded_; first += block_steps) {
      const std::size_t count = std::min(block_steps, recorded_ - first);
      const float* rows = trajectory_.data() + first * param_count;
      const std::span<double> mean(mean_.data(), count * param_count);
      std::copy(rows, rows + mean.size(), mean.begin());
      comm_->all_reduce(mean, strata::ReduceOp::sum);
      for (double& v : mean) v /= n;
      const std::span<double> distance(distance_.data(), count);
      for (std::size_t s = 0; s < count; ++s) {
        double sum = 0;
        for (std::size_t k = 0; k < param_count; ++k) {
          const double d =
              static_cast<double>(rows[s * param_count + k]) - mean[s * param_count + k];
          sum += d * d;
        }
        distance[s] = sum;
      }
      comm_->all_reduce(distance, strata::ReduceOp::sum);
      for (const double d : distance) {
        const double c = d / n;
        total_ += c;
        max_ = std::max(max_, c);
        ++measured_;
      }
    }
    recorded_ = 0;
  }

  [[nodiscard]] double mean() const noexcept {
    return measured_ == 0 ? 0.0 : total_ / static_cast<double>(measured_);
  }
  [[nodiscard]] double max() const noexcept { return max_; }

 private:
  Comm* comm_;
  std::size_t window_steps_;
  std::vector<float> trajectory_;  // window_steps_ rows of param_count
  std::vector<double> mean_;
  std::vector<double> distance_;
  std::size_t recorded_ = 0;
  double total_ = 0;
  double max_ = 0;
  std::size_t measured_ = 0;
};

struct RunContext {
  const Options* options;
  const Problem* problem;
  const strata::RuntimeHierarchy* hierarchy;
  std::size_t ranks_per_node;
};

// One rank's training run. Wall time is taken on rank 0 between two barriers, so it covers the
// slowest rank; the consensus distance, the final consensus averaging and the evaluation are not
// part of it.
template <class Comm, class Strategy>
void train(Comm& comm, const RunContext& ctx, Strategy& strategy, Result& result,
           Progress& progress) {
  const Options& o = *ctx.options;
  const auto rank = static_cast<std::size_t>(comm.rank());
  const Dataset& shard = ctx.problem->shards[rank];
  Params params = init_params(o.seed);
  Grads grads;
  std::vector<std::size_t> batch(o.batch);
  std::size_t world_syncs = 0;
  ConsensusMeter<Comm> consensus(comm, o.steps);
  std::chrono::steady_clock::duration unmeasured{};
  strategy.begin(params);

  comm.barrier();
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t step = 0; step < o.steps; ++step) {
    Stream pick(o.seed, Purpose::batch, rank, step);
    for (std::size_t& i : batch) i = pick.below(shard.size());
    const float loss = loss_and_gradient(params, shard, batch, grads);

    // The rest of the step's compute, simulated; a straggler (a slow GPU, a noisy neighbour,
    // a garbage-collection pause) takes longer.
    double busy_ms = o.step_ms;
    if (straggles(o, rank, step)) busy_ms += o.straggler_delay_ms;
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(busy_ms));

    bool world_met = strategy.sync_gradients(grads);
    sgd_update(params, grads, static_cast<float>(o.lr));
    world_met = strategy.average_params(params) || world_met;
    world_syncs += world_met ? 1 : 0;
    consensus.record(params);
    if (consensus.window_full() && step + 1 < o.steps) {
      // Only when the trajectory outgrows its memory bound (256 MiB of floats per process;
      // never at the default sizes). The reduction then synchronises the ranks once per
      // window, which local and hierarchical SGD would not do; its own duration is left out of
      // the wall time, measured from a barrier so that the wait for the slowest rank stays in.
      comm.barrier();
      const auto paused = std::chrono::steady_clock::now();
      consensus.reduce();
      unmeasured += std::chrono::steady_clock::now() - paused;
    }
    if (rank == 0) progress.step(step + 1, loss);
  }
  comm.barrier();
  const double wall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start - unmeasured).count();
  consensus.reduce();

  // Evaluate one consensus model for every method: the mean of all ranks' parameters.
  for (std::span<float> t : params.tensors()) comm.all_reduce(t, strata::ReduceOp::average);
  const std::size_t world = static_cast<std::size_t>(comm.size());
  const std::size_t test_n = ctx.problem->test.size();
  const auto train_eval = evaluate(params, shard, 0, shard.size());
  const auto test_eval =
      evaluate(params, ctx.problem->test, test_n * rank / world, test_n * (rank + 1) / world);
  std::array<double, 4> sums{train_eval[0], train_eval[2], test_eval[1], test_eval[2]};
  comm.all_reduce(std::span<double>(sums), strata::ReduceOp::sum);

  if (rank == 0) {
    result.wall_s = wall_s;
    result.world_syncs = world_syncs;
    result.bytes_sent = strategy.bytes_sent;
    result.train_loss = sums[0] / sums[1];
    result.test_accuracy = sums[2] / sums[3];
    result.consensus_mean = consensus.mean();
    result.consensus_max = consensus.max();
    progress.finish(wall_s);
  }
}

// One rank's run of method `m`; every rank of `comm` calls it.
template <class Comm>
void run_method_on(Comm& comm, Method m, const RunContext& ctx, Result& result,
                   Progress& progress) {
  const Options& o = *ctx.options;
  // Building the averagers is collective (it splits the level communicators), so it happens on
  // every rank before the clock starts.
  switch (m) {
    case Method::sync: {
      SyncSgd<Comm> s{&comm};
      train(comm, ctx, s, result, progress);
      break;
    }
    case Method::local: {
      using Avg = strata::PeriodicAverager<Comm>;
      AveragedSgd<Avg, Comm> s(comm, Avg(comm, o.local_period, o.warmup), ctx.ranks_per_node,
                               o.intra_node);
      train(comm, ctx, s, result, progress);
      break;
    }
    case Method::hier: {
      using Avg = strata::RuntimeHierarchicalAverager<Comm>;
      AveragedSgd<Avg, Comm> s(comm, Avg(comm, *ctx.hierarchy, o.warmup), ctx.ranks_per_node,
                               o.intra_node);
      train(comm, ctx, s, result, progress);
      break;
    }
    case Method::diloco: {
      // Local SGD's schedule (periods counted from the end of warm-up) with DiLoCo's outer step
      // at its one level, the world.
      using Avg = strata::PeriodicAverager<Comm>;
      strata::AveragerOptions options;
      options.levels = {strata::LevelPolicy{
          .outer = strata::OuterOptimizer::nesterov(o.outer_lr, o.outer_momentum)}};
      AveragedSgd<Avg, Comm> s(comm, Avg(comm, o.local_period, o.warmup, std::move(options)),
                               ctx.ranks_per_node, o.intra_node);
      train(comm, ctx, s, result, progress);
      break;
    }
    case Method::streaming: {
      StreamingSgd<Comm> s(comm, o, ctx.ranks_per_node);
      train(comm, ctx, s, result, progress);
      break;
    }
  }
}

// The local backend: the ranks are threads of this process.
Result run_method(Method m, const RunContext& ctx) {
  const Options& o = *ctx.options;
  Result result;
  result.method = m;
  Progress progress(method_key(m), o.steps, !o.quiet);
  strata::LocalWorld world(static_cast<int>(o.world));
  world.run([&](strata::LocalComm& comm) { run_method_on(comm, m, ctx, result, progress); });
  return result;
}

// ---------------------------------------------------------------------------------------------
// Output

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string method_label(Method m, const Options& o, const strata::RuntimeHierarchy& h) {
  switch (m) {
    case Method::sync: return "synchronous SGD";
    case Method::local: return "local SGD (period " + std::to_string(o.local_period) + ")";
    case Method::hier: return "hierarchical SGD (" + h.to_string() + ")";
    case Method::diloco: return "DiLoCo (period " + std::to_string(o.local_period) + ")";
    case Method::streaming: {
      const strata::StreamingOptions s = streaming_options(o);
      std::string label = "streaming DiLoCo (" + std::to_string(s.fragments) +
                          (s.fragments == 1 ? " fragment" : " fragments") + ", delay " +
                          std::to_string(s.delay);
      if (s.mix != 1.0) label += ", mix " + json_number(s.mix);
      return label + ")";
    }
  }
  return "?";
}

std::optional<double> speedup(const std::vector<Result>& results, const Result& r) {
  for (const Result& s : results) {
    if (s.method == Method::sync && r.wall_s > 0) return s.wall_s / r.wall_s;
  }
  return std::nullopt;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

void print_json(const Options& o, const strata::RuntimeHierarchy& h, std::size_t ranks_per_node,
                std::size_t stragglers, const std::vector<Result>& results) {
  std::string s = "{";
  s += "\"world\":" + std::to_string(o.world);
  s += ",\"hierarchy\":" + json_string(h.to_string());
  s += ",\"local_period\":" + std::to_string(o.local_period);
  s += ",\"warmup\":" + std::to_string(o.warmup);
  s += ",\"steps\":" + std::to_string(o.steps);
  s += ",\"batch\":" + std::to_string(o.batch);
  s += ",\"straggler_rate\":" + json_number(o.straggler_rate);
  s += ",\"straggler_delay_ms\":" + json_number(o.straggler_delay_ms);
  s += ",\"step_ms\":" + json_number(o.step_ms);
  s += ",\"lr\":" + json_number(o.lr);
  s += ",\"seed\":" + std::to_string(o.seed);
  s += ",\"outer_lr\":" + json_number(o.outer_lr);
  s += ",\"outer_momentum\":" + json_number(o.outer_momentum);
  const strata::StreamingOptions streaming = streaming_options(o);
  s += ",\"fragments\":" + std::to_string(streaming.fragments);
  s += ",\"fragment_delay\":" + std::to_string(streaming.delay);
  s += ",\"mix\":" + json_number(streaming.mix);
  s += ",\"intra_node\":" + std::string(o.intra_node ? "true" : "false");
  s += ",\"ranks_per_node\":" + std::to_string(ranks_per_node);
  s += ",\"straggler_events\":" + std::to_string(stragglers);
  s += ",\"results\":[";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    const auto up = speedup(results, r);
    if (i != 0) s += ',';
    s += "{\"method\":" + json_string(method_key(r.method));
    s += ",\"wall_s\":" + json_number(r.wall_s);
    s += ",\"speedup\":" + (up ? json_number(*up) : std::string("null"));
    s += ",\"world_syncs\":" + std::to_string(r.world_syncs);
    s += ",\"bytes_sent\":" + json_number(r.bytes_sent);
    s += ",\"train_loss\":" + json_number(r.train_loss);
    s += ",\"test_accuracy\":" + json_number(r.test_accuracy);
    s += ",\"consensus_mean\":" + json_number(r.consensus_mean);
    s += ",\"consensus_max\":" + json_number(r.consensus_max);
    s += '}';
  }
  s += "]}";
  std::printf("%s\n", s.c_str());
}

void print_table(const Options& o, const strata::RuntimeHierarchy& h, std::size_t ranks_per_node,
                 std::size_t stragglers, const std::vector<Result>& results) {
  std::printf(
      "%zu ranks, MLP %zu-%zu-%zu (%zu parameters), %zu steps of batch %zu per rank, lr %g\n"
      "stragglers: p=%g per rank and step, +%g ms each (%zu events); compute %g ms per step\n",
      o.world, inputs, hidden, classes, param_count, o.steps, o.batch, o.lr, o.straggler_rate,
      o.straggler_delay_ms, stragglers, o.step_ms);
  if (o.warmup != 0 || o.intra_node) {
    std::printf("warm-up: %zu steps of synchronous SGD", o.warmup);
    if (o.intra_node) {
      std::printf("; then gradients averaged every step inside nodes of %zu ranks", ranks_per_node);
    }
    std::printf("\n");
  }
  const bool outer = std::any_of(results.begin(), results.end(), [](const Result& r) {
    return r.method == Method::diloco || r.method == Method::streaming;
  });
  if (outer) {
    std::printf("DiLoCo's outer step: Nesterov, lr %g, momentum %g\n", o.outer_lr,
                o.outer_momentum);
  }
  std::printf("\n");

  std::size_t width = std::string_view("method").size();
  for (const Result& r : results) width = std::max(width, method_label(r.method, o, h).size());
  std::printf("%-*s  %8s  %8s  %11s  %7s  %10s  %8s  %9s\n", static_cast<int>(width), "method",
              "wall (s)", "speed-up", "world syncs", "MB sent", "train loss", "test acc",
              "consensus");
  for (const Result& r : results) {
    const auto up = speedup(results, r);
    char up_text[16] = "-";
    if (up) std::snprintf(up_text, sizeof up_text, "%.2fx", *up);
    std::printf("%-*s  %8.2f  %8s  %11zu  %7.2f  %10.4f  %7.1f%%  %9.3g\n", static_cast<int>(width),
                method_label(r.method, o, h).c_str(), r.wall_s, up_text, r.world_syncs,
                r.bytes_sent / 1e6, r.train_loss, 100.0 * r.test_accuracy, r.consensus_mean);
  }
}

// Everything after argument parsing; `run` trains one method and returns its result (complete
// on the rank that prints).
template <class Run>
int demo(const Options& o, bool prints, Run&& run) {
  const strata::RuntimeHierarchy h = resolve_hierarchy(o);
  const std::size_t ranks_per_node = o.ranks_per_node.value_or(h.level(0).group_size);

  std::size_t stragglers = 0;
  for (std::size_t r = 0; r < o.world; ++r) {
    for (std::size_t s = 0; s < o.steps; ++s) stragglers += straggles(o, r, s) ? 1 : 0;
  }
  const Problem problem = make_problem(o);
  const RunContext ctx{&o, &problem, &h, ranks_per_node};
  std::vector<Result> results;
  for (Method m : o.methods) results.push_back(run(m, ctx));

  if (!prints) return 0;
  if (o.json) {
    print_json(o, h, ranks_per_node, stragglers, results);
  } else {
    print_table(o, h, ranks_per_node, stragglers, results);
  }
  return 0;
}

// True when the command line asks for `--backend mpi`: MPI must be initialised before the rest of
// the arguments can be checked against its world size.
bool wants_mpi(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--backend") == 0 && std::strcmp(argv[i + 1], "mpi") == 0) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    print_help();
    return 0;
  }
  return cli::run("hsgd_demo", [&] {
#ifdef STRATA_EXAMPLES_HAVE_MPI
    if (wants_mpi(argc, argv)) {
      // One process per rank: the same training, with the communication over MPI.
      strata::MpiEnvironment env(argc, argv);
      auto comm = strata::MpiComm::world();
      const Options o = parse_args(argc, argv, static_cast<std::size_t>(comm.size()));
      const bool prints = comm.rank() == 0;
      return demo(o, prints, [&](Method m, const RunContext& ctx) {
        Result result;
        result.method = m;
        Progress progress(method_key(m), o.steps, !o.quiet && prints);
        run_method_on(comm, m, ctx, result, progress);
        return result;
      });
    }
#endif
    const Options o = parse_args(argc, argv);
    return demo(o, true, run_method);
  });
}
