// hsgd_trace: a deterministic hierarchical-SGD workload that other implementations can run too,
// for cross-checking to the last bits.
//
//   hsgd_trace --world N --hierarchy "P:G,..." [--warmup W] --steps S --dim D [--seed K]
//              [--lr LR] [--out FILE]
//   mpirun -np N hsgd_trace --backend mpi --hierarchy ... (world size and rank from MPI; rank 0
//              gathers every rank's vector and writes the file)
//
// In float64 on every rank: p[i] = cos(0.01*(i+1)*(K+1)); at each step t = 0..S-1:
// g[i] = sin(0.001*(i+1)*(rank+1)*(t+1)), p[i] -= lr*g[i], then one hierarchical averaging call
// (AbsolutePhase, PyTorch's HierarchicalModelAverager). Writes
// {"ranks":[{"rank":0,"final":[...D numbers...]},...]} with 17 significant digits.
// Built with -ffp-contract=off, so that no fused multiply-add changes the last bits.
#include <strata/averaging/averager.hpp>
#include <strata/comm/local.hpp>
#ifdef STRATA_EXAMPLES_HAVE_MPI
#include <strata/comm/mpi.hpp>
#endif

#include "cli.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using cli::usage_error;

struct Options {
  int world = 0;
  bool mpi = false;
  std::string hierarchy;
  std::size_t warmup = 0;
  std::size_t steps = 0;
  std::size_t dim = 0;
  std::size_t seed = 0;
  double lr = 0.05;
  std::string out = "-";
};

Options parse_args(int argc, char** argv) {
  Options o;
  bool have[4] = {false, false, false, false};  // world, hierarchy, steps, dim
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--backend") {
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
    } else if (arg == "--world") {
      o.world = static_cast<int>(cli::parse_integer(arg, value(), 1, 1024));
      have[0] = true;
    } else if (arg == "--hierarchy") {
      o.hierarchy = value();
      have[1] = true;
    } else if (arg == "--warmup") {
      o.warmup = cli::parse_integer(arg, value());
    } else if (arg == "--steps") {
      o.steps = cli::parse_integer(arg, value(), 0, 10'000'000);
      have[2] = true;
    } else if (arg == "--dim") {
      o.dim = cli::parse_integer(arg, value(), 0, 100'000'000);
      have[3] = true;
    } else if (arg == "--seed") {
      o.seed = cli::parse_integer(arg, value());
    } else if (arg == "--lr") {
      o.lr = cli::parse_real(arg, value(), -1e6, 1e6);
    } else if (arg == "--out") {
      o.out = value();
    } else {
      throw usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
    }
  }
  const char* names[4] = {"--world", "--hierarchy", "--steps", "--dim"};
  for (int k = o.mpi ? 1 : 0; k < 4; ++k) {  // under MPI the world size comes from MPI
    if (!have[k]) throw usage_error(std::string(names[k]) + " is required");
  }
  return o;
}

// One rank's run of the workload; returns its final parameters.
template <strata::communicator Comm>
std::vector<double> run_rank(Comm& comm, const Options& o, const strata::RuntimeHierarchy& h) {
  strata::RuntimeHierarchicalAverager<Comm> averager(comm, h, o.warmup);
  const double rank = comm.rank();
  std::vector<double> p(o.dim);
  for (std::size_t i = 0; i < o.dim; ++i) {
    p[i] = std::cos(0.01 * static_cast<double>(i + 1) * static_cast<double>(o.seed + 1));
  }
  for (std::size_t t = 0; t < o.steps; ++t) {
    for (std::size_t i = 0; i < o.dim; ++i) {
      const double g =
          std::sin(0.001 * static_cast<double>(i + 1) * (rank + 1) * static_cast<double>(t + 1));
      p[i] = p[i] - o.lr * g;
    }
    averager.average(std::span<double>(p));
  }
  return p;
}

void write_json(std::FILE* f, const std::vector<std::vector<double>>& finals) {
  std::fputs("{\"ranks\":[", f);
  for (std::size_t r = 0; r < finals.size(); ++r) {
    std::fprintf(f, "%s{\"rank\":%zu,\"final\":[", r == 0 ? "" : ",", r);
    for (std::size_t i = 0; i < finals[r].size(); ++i) {
      std::fprintf(f, "%s%.17g", i == 0 ? "" : ",", finals[r][i]);
    }
    std::fputs("]}", f);
  }
  std::fputs("]}\n", f);
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    std::printf(
        "usage: hsgd_trace --world N --hierarchy P:G[,P:G...] --steps S --dim D\n"
        "                  [--warmup W] [--seed K] [--lr LR] [--out FILE] [--backend local|mpi]\n"
        "With --backend mpi (under mpirun) the world size and ranks come from MPI.\n"
        "Runs the deterministic hierarchical-SGD trace on N in-process ranks and writes\n"
        "{\"ranks\":[{\"rank\":0,\"final\":[...]},...]} to FILE (default: standard output).\n");
    return 0;
  }
  return cli::run("hsgd_trace", [&] {
    Options o = parse_args(argc, argv);
    const auto h = strata::RuntimeHierarchy::parse(o.hierarchy);
    std::vector<std::vector<double>> finals;
    if (o.mpi) {
#ifdef STRATA_EXAMPLES_HAVE_MPI
      strata::MpiEnvironment env(argc, argv);
      auto comm = strata::MpiComm::world();
      if (o.world != 0 && o.world != comm.size()) {
        throw usage_error("--world " + std::to_string(o.world) + " but MPI runs " +
                          std::to_string(comm.size()) + " processes");
      }
      o.world = comm.size();
      h.check_world_size(static_cast<std::size_t>(o.world));
      const std::vector<double> mine = run_rank(comm, o, h);
      std::vector<double> all(mine.size() * static_cast<std::size_t>(o.world));
      comm.all_gather(std::span<const double>(mine), std::span<double>(all));
      if (comm.rank() != 0) return 0;
      for (int r = 0; r < o.world; ++r) {
        const auto first =
            all.begin() + static_cast<std::ptrdiff_t>(mine.size() * static_cast<std::size_t>(r));
        finals.emplace_back(first, first + static_cast<std::ptrdiff_t>(mine.size()));
      }
#endif
    } else {
      h.check_world_size(static_cast<std::size_t>(o.world));
      finals.resize(static_cast<std::size_t>(o.world));
      strata::LocalWorld(o.world).run([&](strata::LocalComm& comm) {
        finals[static_cast<std::size_t>(comm.rank())] = run_rank(comm, o, h);
      });
    }
    std::FILE* f = o.out == "-" ? stdout : std::fopen(o.out.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "hsgd_trace: cannot write %s: %s\n", o.out.c_str(),
                   std::strerror(errno));
      return 1;
    }
    write_json(f, finals);
    if (f != stdout && std::fclose(f) != 0) {
      std::fprintf(stderr, "hsgd_trace: cannot write %s\n", o.out.c_str());
      return 1;
    }
    return 0;
  });
}
