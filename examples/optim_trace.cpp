// optim_trace: a fixed training problem run through the sharded optimizer, for cross-checking
// every update, schedule and backend against serial references (torch.optim.Adam, a plain LAMB).
//
//   optim_trace --world N --tensors 100,37,1000 --steps T --optimizer sgd|adam|lamb --lr LR
//               [--beta1 B1 --beta2 B2 --eps E --weight-decay WD --clip-norm C]
//               [--node-size G --schedule flat|hierarchical] [--backend local|mpi] --out FILE
//   mpirun -np N optim_trace --backend mpi ... (world size and ranks from MPI)
//
// All arithmetic in double. The parameters are the tensors concatenated, p[i] = cos(0.01(i+1)) on
// every rank; at step t rank r's gradient is g_r[i] = sin(0.001(i+1)(r+1)(t+1)) + 0.01 p[i]; the
// update uses their mean over the world (clipped if asked). Rank 0 writes
// {"params":[final p],"grad_norms":[‖mean gradient‖ before clipping, per step]} after checking
// that every rank holds the same parameters.

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <strata/comm/local.hpp>
#include <strata/optim/adam.hpp>
#include <strata/optim/lamb.hpp>
#include <strata/optim/sgd.hpp>
#include <strata/optim/sharded_optimizer.hpp>
#ifdef STRATA_EXAMPLES_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif

#include "cli.hpp"

namespace {

using cli::usage_error;
using strata::optim::ShardSchedule;

struct Options {
  int world = 0;
  std::vector<std::size_t> tensors;
  std::size_t steps = 0;
  std::string optimizer;
  double lr = 0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  std::optional<double> clip_norm;
  std::size_t node_size = 0;
  ShardSchedule schedule = ShardSchedule::flat;
  bool schedule_given = false;
  bool mpi = false;
  std::string out;
};

std::vector<std::size_t> parse_tensors(std::string_view text) {
  std::vector<std::size_t> sizes;
  std::size_t at = 0;
  while (true) {
    const std::size_t comma = text.find(',', at);
    const std::string_view item =
        text.substr(at, comma == std::string_view::npos ? std::string_view::npos : comma - at);
    sizes.push_back(cli::parse_size("--tensors", item, 1, std::size_t{1} << 28));
    if (comma == std::string_view::npos) break;
    at = comma + 1;
  }
  return sizes;
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool have_tensors = false, have_steps = false, have_lr = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--world") {
      o.world = static_cast<int>(cli::parse_integer(arg, value(), 1, 4096));
    } else if (arg == "--tensors") {
      o.tensors = parse_tensors(value());
      have_tensors = true;
    } else if (arg == "--steps") {
      o.steps = cli::parse_size(arg, value(), 0, 1000000);
      have_steps = true;
    } else if (arg == "--optimizer") {
      o.optimizer = value();
      if (o.optimizer != "sgd" && o.optimizer != "adam" && o.optimizer != "lamb") {
        throw usage_error("--optimizer must be sgd, adam or lamb, got \"" + o.optimizer + "\"");
      }
    } else if (arg == "--lr") {
      o.lr = cli::parse_real(arg, value(), 0, 1e6, true);
      have_lr = true;
    } else if (arg == "--beta1") {
      o.beta1 = cli::parse_real(arg, value(), 0, 1);
      if (o.beta1 >= 1) throw usage_error("--beta1 must be below 1");
    } else if (arg == "--beta2") {
      o.beta2 = cli::parse_real(arg, value(), 0, 1);
      if (o.beta2 >= 1) throw usage_error("--beta2 must be below 1");
    } else if (arg == "--eps") {
      o.eps = cli::parse_real(arg, value(), 0, 1, true);
    } else if (arg == "--weight-decay") {
      o.weight_decay = cli::parse_real(arg, value(), 0, 1e6);
    } else if (arg == "--clip-norm") {
      o.clip_norm = cli::parse_real(arg, value(), 0, 1e300, true);
    } else if (arg == "--node-size") {
      o.node_size = cli::parse_size(arg, value(), 1, 4096);
    } else if (arg == "--schedule") {
      const std::string_view s = value();
      if (s == "flat") o.schedule = ShardSchedule::flat;
      else if (s == "hierarchical") o.schedule = ShardSchedule::hierarchical;
      else
        throw usage_error("--schedule must be flat or hierarchical, got \"" + std::string(s) +
                          "\"");
      o.schedule_given = true;
    } else if (arg == "--backend") {
      const std::string_view b = value();
      if (b == "mpi") {
#ifdef STRATA_EXAMPLES_HAVE_MPI
        o.mpi = true;
#else
        throw usage_error("--backend mpi: this build has no MPI");
#endif
      } else if (b != "local") {
        throw usage_error("--backend must be local or mpi, got \"" + std::string(b) + "\"");
      }
    } else if (arg == "--out") {
      o.out = value();
    } else {
      throw usage_error("unknown argument \"" + std::string(arg) + "\" (see --help)");
    }
  }
  if (!o.mpi && o.world == 0) throw usage_error("--world is required");
  if (!have_tensors) throw usage_error("--tensors is required");
  if (!have_steps) throw usage_error("--steps is required");
  if (o.optimizer.empty()) throw usage_error("--optimizer is required");
  if (!have_lr) throw usage_error("--lr is required");
  if (o.out.empty()) throw usage_error("--out is required");
  if (o.schedule == ShardSchedule::hierarchical && o.node_size == 0) {
    throw usage_error("--schedule hierarchical needs --node-size");
  }
  return o;
}

void check_world(const Options& o) {
  if (o.node_size != 0 && static_cast<std::size_t>(o.world) % o.node_size != 0) {
    throw usage_error("--node-size " + std::to_string(o.node_size) +
                      " does not divide the world of " + std::to_string(o.world) + " ranks");
  }
}

struct Result {
  std::vector<double> params;
  std::vector<double> grad_norms;
};

template <class Comm, class Update>
void train(Comm& comm, const Options& o, Update update, Result& result) {
  std::size_t total = 0;
  for (std::size_t s : o.tensors) total += s;
  std::vector<double> flat(total);
  for (std::size_t i = 0; i < total; ++i) flat[i] = std::cos(0.01 * static_cast<double>(i + 1));
  std::vector<std::span<double>> params;
  std::vector<std::span<const double>> grads;
  std::vector<double> grad_flat(total);
  for (std::size_t at = 0, t = 0; t < o.tensors.size(); at += o.tensors[t], ++t) {
    params.emplace_back(flat.data() + at, o.tensors[t]);
    grads.emplace_back(grad_flat.data() + at, o.tensors[t]);
  }
  strata::optim::ShardedOptions options{
      .schedule = o.schedule,
      .ranks_per_node = o.node_size,
      .clip_norm = o.clip_norm,
      .track_grad_norm = true,
  };
  strata::optim::ShardedOptimizer opt(comm, params, std::move(update), std::move(options));
  const double r1 = comm.rank() + 1;
  std::vector<double> norms;
  for (std::size_t t = 0; t < o.steps; ++t) {
    const double t1 = static_cast<double>(t + 1);
    for (std::size_t i = 0; i < total; ++i) {
      grad_flat[i] = std::sin(0.001 * static_cast<double>(i + 1) * r1 * t1) + 0.01 * flat[i];
    }
    norms.push_back(opt.step(grads).grad_norm);
  }
  // Every rank must end with rank 0's parameters, bit for bit.
  std::vector<double> mine = flat, lowest = flat;
  comm.all_reduce(std::span<double>(lowest), strata::ReduceOp::min);
  comm.all_reduce(std::span<double>(mine), strata::ReduceOp::max);
  if (std::memcmp(mine.data(), lowest.data(), total * sizeof(double)) != 0) {
    throw strata::error("optim_trace", comm.rank(), "the ranks hold different parameters");
  }
  if (comm.rank() == 0) {
    result.params = flat;
    result.grad_norms = norms;
  }
}

template <class Comm>
void run_rank(Comm& comm, const Options& o, Result& result) {
  if (o.optimizer == "sgd") {
    train(comm, o, strata::optim::Sgd{.lr = o.lr, .weight_decay = o.weight_decay}, result);
  } else if (o.optimizer == "adam") {
    train(comm, o,
          strata::optim::Adam{.lr = o.lr,
                              .beta1 = o.beta1,
                              .beta2 = o.beta2,
                              .eps = o.eps,
                              .weight_decay = o.weight_decay},
          result);
  } else {
    train(comm, o,
          strata::optim::Lamb{.lr = o.lr,
                              .beta1 = o.beta1,
                              .beta2 = o.beta2,
                              .eps = o.eps,
                              .weight_decay = o.weight_decay},
          result);
  }
}

void write_list(std::FILE* f, const std::vector<double>& v) {
  std::fputc('[', f);
  for (std::size_t i = 0; i < v.size(); ++i) std::fprintf(f, "%s%.17g", i == 0 ? "" : ",", v[i]);
  std::fputc(']', f);
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    std::printf(
        "usage: optim_trace --world N --tensors S[,S...] --steps T --optimizer sgd|adam|lamb\n"
        "                   --lr LR [--beta1 B1 --beta2 B2 --eps E --weight-decay WD\n"
        "                   --clip-norm C] [--node-size G --schedule flat|hierarchical]\n"
        "                   [--backend local|mpi] --out FILE\n"
        "Runs the sharded optimizer on a fixed problem (parameters cos(0.01(i+1)), rank r's\n"
        "gradient at step t sin(0.001(i+1)(r+1)(t+1)) + 0.01 p) and writes, from rank 0,\n"
        "{\"params\":[...],\"grad_norms\":[...]} to FILE (- for standard output). With --backend\n"
        "mpi (under mpirun) the world size and ranks come from MPI.\n");
    return 0;
  }
  return cli::run("optim_trace", [&] {
    Options o = parse_args(argc, argv);
    Result result;
    if (o.mpi) {
#ifdef STRATA_EXAMPLES_HAVE_MPI
      strata::MpiEnvironment env(argc, argv);
      auto comm = strata::MpiComm::world();
      if (o.world != 0 && o.world != comm.size()) {
        throw usage_error("--world " + std::to_string(o.world) + " but MPI runs " +
                          std::to_string(comm.size()) + " processes");
      }
      o.world = comm.size();
      check_world(o);
      run_rank(comm, o, result);
      if (comm.rank() != 0) return 0;
#endif
    } else {
      check_world(o);
      strata::LocalWorld(o.world).run([&](strata::LocalComm& comm) { run_rank(comm, o, result); });
    }
    std::FILE* f = o.out == "-" ? stdout : std::fopen(o.out.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "optim_trace: cannot write %s: %s\n", o.out.c_str(),
                   std::strerror(errno));
      return 1;
    }
    std::fputs("{\"params\":", f);
    write_list(f, result.params);
    std::fputs(",\"grad_norms\":", f);
    write_list(f, result.grad_norms);
    std::fputs("}\n", f);
    if (f != stdout && std::fclose(f) != 0) {
      std::fprintf(stderr, "optim_trace: cannot write %s\n", o.out.c_str());
      return 1;
    }
    return 0;
  });
}
