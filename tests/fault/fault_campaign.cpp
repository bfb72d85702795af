// fault_campaign: a randomised campaign of faults against the communicators and averagers.
//
//   fault_campaign [--scenarios N] [--seed S] [--timeout-ms T] [--backend local|mpi|nccl|all]
//                  [--verbose]
//
// Scenario i uses seed S+i, which picks a backend among those asked for, and then (from the seed
// and the backend alone) a world, a hierarchy, a parameter layout and one fault (scenario.hpp
// says what each rank must then report). Every scenario runs in a child process, so that a hang
// can be killed and counted and the campaign goes on: the local backend and the NCCL host double
// in one process (ranks as threads), MPI as `mpirun -n WORLD fault_campaign --worker ...` (one
// process per rank). Each rank writes its outcome to a file; the parent judges them and prints
// one JSON line with the counts; the exit status is 1 when any scenario hung, reported a wrong
// error, or corrupted parameters.
#include <strata/comm/local.hpp>

#include "cli.hpp"
#include "rank.hpp"
#include "scenario.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using cli::usage_error;
using fault::Backend;
using fault::Outcome;
using fault::Scenario;
using fault::Verdict;
using clock_type = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;

constexpr const char* program = "fault_campaign";

std::vector<Backend> built_backends() {
  std::vector<Backend> b{Backend::local};
#ifdef STRATA_FAULT_HAVE_MPI
  b.push_back(Backend::mpi);
#endif
#ifdef STRATA_FAULT_HAVE_NCCL
  b.push_back(Backend::nccl);
#endif
  return b;
}

struct Options {
  std::size_t scenarios = 100;
  std::uint64_t seed = 1;
  ms timeout{250};
  std::vector<Backend> backends = built_backends();
  std::string backend_flag = "all";
  bool verbose = false;
  std::string worker_dir;  // set in a worker: run one scenario, write outcomes there
};

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw usage_error(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--scenarios") {
      o.scenarios = cli::parse_size(arg, value(), 1, 1000000);
    } else if (arg == "--seed") {
      o.seed = cli::parse_integer(arg, value());
    } else if (arg == "--timeout-ms") {
      o.timeout = ms(cli::parse_integer(arg, value(), 50, 60000));
    } else if (arg == "--backend") {
      const std::string_view b = value();
      o.backend_flag = std::string(b);
      if (b == "all") {
        o.backends = built_backends();
        continue;
      }
      o.backends.clear();
      for (Backend k : built_backends()) {
        if (fault::to_string(k) == b) o.backends.push_back(k);
      }
      if (o.backends.empty()) {
        if (b == "mpi" || b == "nccl") {
          throw usage_error("--backend " + std::string(b) + ": this build has no " +
                            (b == "mpi" ? "MPI" : "NCCL"));
        }
        throw usage_error("--backend must be local, mpi, nccl or all, got \"" + std::string(b) +
                          "\"");
      }
    } else if (arg == "--verbose") {
      o.verbose = true;
    } else if (arg == "--worker") {
      o.worker_dir = std::string(value());
    } else {
      throw usage_error("unknown argument \"" + std::string(arg) + "\" (try --help)");
    }
  }
  if (!o.worker_dir.empty() && o.backends.size() != 1) {
    throw usage_error("--worker needs one --backend");
  }
  return o;
}

// The backend of scenario `seed`: a function of the seed and the backends asked for, so that
// `--seed S --scenarios 1 --backend B` replays scenario S of any campaign that drew B for it.
Backend backend_of(std::uint64_t seed, const std::vector<Backend>& allowed) {
  if (allowed.size() == 1) return allowed.front();
  return allowed[fault::mix(seed ^ 0x5eed) % allowed.size()];
}

// How long a rank or a worker may take in all, set-up included, before it counts as hung.
ms worker_cap(const Scenario& s) {
  const ms stall = s.fault.kind == fault::Kind::stalls ? s.fault.stall : ms(0);
  return stall + 3 * s.timeout + (s.backend == Backend::mpi ? ms(12000) : ms(6000));
}
ms kill_limit(const Scenario& s) { return worker_cap(s) + ms(8000); }

// --- worker side ----------------------------------------------------------------------------

// The outcomes of the ranks of one process, and a watchdog that reports the missing ones and
// ends the process when the cap passes (threads stuck in a collective cannot be stopped).
class Reports {
 public:
  Reports(int first, int count, std::string dir)
      : first_(first), done_(static_cast<std::size_t>(count), false), dir_(std::move(dir)) {}

  // Writes a rank's outcome at once: should the process die later (a fault that corrupts
  // memory), what was reported stays on disk.
  void set(int rank, const Outcome& o) {
    std::lock_guard lk(m_);
    fault::write_outcome(dir_, rank, o);
    done_[static_cast<std::size_t>(rank - first_)] = true;
  }

  void start_watchdog(ms cap) {
    std::thread([this, cap] {
      std::unique_lock lk(m_);
      if (cv_.wait_for(lk, cap, [&] { return finished_; })) return;
      std::string missing = "no outcome within " + std::to_string(cap.count()) + " ms:";
      for (std::size_t i = 0; i < done_.size(); ++i) {
        if (!done_[i]) missing += " " + std::to_string(first_ + static_cast<int>(i));
      }
      fault::write_hang_marker(dir_ + "/hang." + std::to_string(first_), missing);
      std::_Exit(3);
    }).detach();
  }

  void finish() {
    {
      std::lock_guard lk(m_);
      finished_ = true;
    }
    cv_.notify_all();
  }

 private:
  int first_;
  std::vector<bool> done_;
  std::string dir_;
  std::mutex m_;
  std::condition_variable cv_;
  bool finished_ = false;
};

Outcome setup_failure(const std::exception& e) {
  Outcome o;
  o.status = "error";
  o.phase = "setup";
  o.type = dynamic_cast<const strata::error*>(&e) != nullptr
               ? fault::error_type(static_cast<const strata::error&>(e))
               : "std";
  o.message = fault::one_line(e.what());
  return o;
}

static_assert(strata::communicator<fault::FaultyComm<strata::LocalComm>>);
static_assert(strata::all_or_nothing_v<fault::FaultyComm<strata::LocalComm>>);

void run_local(const Scenario& s, Reports& reports) {
  strata::LocalOptions opts;
  opts.timeout = s.timeout;
  try {
    strata::LocalWorld(s.world, opts).run([&](strata::LocalComm& comm) {
      fault::FaultyComm<strata::LocalComm> world(comm, fault::faults_of(s, comm.rank()));
      std::exception_ptr injected;
      reports.set(comm.rank(), fault::run_rank(world, s, injected));
      // A rank whose code throws leaves its function with that exception.
      if (injected) std::rethrow_exception(injected);
    });
  } catch (...) {
    // The root cause, rethrown by run(): every rank has reported already.
  }
}

#ifdef STRATA_FAULT_HAVE_NCCL
using FakeNccl = strata::BasicNcclComm<fake::Runtime>;
static_assert(strata::device_communicator<fault::FaultyComm<FakeNccl>>);

void run_nccl(const Scenario& s, Reports& reports) {
  strata::NcclOptions opts;
  opts.timeout = s.timeout;
  opts.blocking = s.blocking;
  fault::verify_arguments(opts);
  const ncclUniqueId id = FakeNccl::unique_id();
  std::latch together(s.world);
  std::vector<std::thread> threads;
  for (int r = 0; r < s.world; ++r) {
    threads.emplace_back([&, r] {
      together.arrive_and_wait();
      try {
        // One device per rank, as NCCL requires.
        strata::NcclOptions mine = opts;
        mine.device = r % fake::device_count;
        fault::FaultyComm<FakeNccl> world(FakeNccl::from_unique_id(id, r, s.world, mine),
                                          fault::faults_of(s, r));
        std::exception_ptr injected;
        reports.set(r, fault::run_rank(world, s, injected));
      } catch (const std::exception& e) {
        reports.set(r, setup_failure(e));
      }
    });
  }
  for (auto& t : threads) t.join();
}
#endif

int thread_worker(const Scenario& s, const std::string& dir) {
  Reports reports(0, s.world, dir);
  reports.start_watchdog(worker_cap(s));
  if (s.backend == Backend::local) {
    run_local(s, reports);
  } else {
#ifdef STRATA_FAULT_HAVE_NCCL
    run_nccl(s, reports);
#endif
  }
  reports.finish();
  std::fflush(nullptr);
  // Skips static destructors: nothing of this process is needed any more.
  std::_Exit(0);
}

#ifdef STRATA_FAULT_HAVE_MPI
int mpi_worker(int argc, char** argv, const Scenario& s, const std::string& dir) {
  strata::MpiEnvironment env(argc, argv);
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != s.world) {
    throw usage_error("the worker of seed " + std::to_string(s.seed) + " needs " +
                      std::to_string(s.world) + " processes, MPI runs " + std::to_string(size));
  }
  Reports reports(rank, 1, dir);
  reports.start_watchdog(worker_cap(s));
  MPI_Barrier(MPI_COMM_WORLD);  // the deadlines of set-up count from a common start
  try {
    strata::MpiOptions opts;
    opts.timeout = s.timeout;
    fault::verify_arguments(opts);
    fault::FaultyComm<strata::MpiComm> world(strata::MpiComm::world(opts),
                                             fault::faults_of(s, rank));
    std::exception_ptr injected;
    reports.set(rank, fault::run_rank(world, s, injected));
  } catch (const std::exception& e) {
    reports.set(rank, setup_failure(e));
  }
  reports.finish();
  // After a timeout MPI cannot cancel the pending request and the communicator is unusable:
  // this process does not go on. It waits until every rank has reported (a rank that ends makes
  // mpirun end the others), then leaves without MPI_Finalize.
  const auto until = clock_type::now() + worker_cap(s);
  for (bool all = false; !all && clock_type::now() < until;) {
    all = true;
    for (int r = 0; r < size && all; ++r) {
      all = std::filesystem::exists(dir + "/rank." + std::to_string(r));
    }
    if (!all) std::this_thread::sleep_for(ms(5));
  }
  std::fflush(nullptr);
  std::_Exit(0);
}
#endif

// --- parent side ----------------------------------------------------------------------------

std::string self_path() {
  std::error_code ec;
  const auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw std::runtime_error("cannot find this program's path: " + ec.message());
  return p.string();
}

// Starts `args` in a process group of its own, stdin from /dev/null, stdout and stderr to `log`.
pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&files, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&files, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, argv[0], &files, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&files);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw std::runtime_error("cannot start " + args[0] + ": " + std::strerror(rc));
  return pid;
}

// Waits for `pid` at most `limit`; past it, ends its process group. True when it ended alone;
// `status` is its wait status.
bool wait_within(pid_t pid, ms limit, int& status) {
  const auto deadline = clock_type::now() + limit;
  while (clock_type::now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(ms(2));
  }
  kill(-pid, SIGTERM);  // mpirun passes it on to its ranks
  const auto grace = clock_type::now() + ms(2000);
  while (clock_type::now() < grace) {
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    std::this_thread::sleep_for(ms(10));
  }
  kill(-pid, SIGKILL);
  waitpid(pid, &status, 0);
  return false;
}

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> words;
  std::string w;
  for (char c : text) {
    if (c == ' ' || c == ';') {
      if (!w.empty()) words.push_back(std::exchange(w, {}));
    } else {
      w += c;
    }
  }
  if (!w.empty()) words.push_back(w);
  return words;
}

std::string last_line(const std::string& path) {
  std::ifstream f(path);
  std::string line, last;
  while (std::getline(f, line)) {
    if (!line.empty()) last = line;
  }
  return last;
}

// Runs scenario `s` in a child process and judges what its ranks report.
Verdict run_scenario(const Scenario& s, const std::string& dir, const std::string& self) {
  std::filesystem::create_directories(dir);
  std::vector<std::string> args;
  if (s.backend == Backend::mpi) {
#ifdef STRATA_FAULT_MPIEXEC
    args.push_back(STRATA_FAULT_MPIEXEC);
    args.push_back(STRATA_FAULT_MPIEXEC_NUMPROC_FLAG);
    args.push_back(std::to_string(s.world));
    for (std::string& w : split_words(STRATA_FAULT_MPIEXEC_PREFLAGS)) args.push_back(w);
#endif
  }
  args.push_back(self);
  if (s.backend == Backend::mpi) {
#ifdef STRATA_FAULT_MPIEXEC
    for (std::string& w : split_words(STRATA_FAULT_MPIEXEC_POSTFLAGS)) args.push_back(w);
#endif
  }
  for (std::string a : {std::string("--worker"), dir, std::string("--seed"), std::to_string(s.seed),
                        std::string("--backend"), std::string(fault::to_string(s.backend)),
                        std::string("--timeout-ms"), std::to_string(s.timeout.count())}) {
    args.push_back(std::move(a));
  }
  const std::string log = dir + "/log";
  const pid_t pid = spawn(args, log);
  int status = 0;
  const bool ended = wait_within(pid, kill_limit(s), status);

  std::map<int, Outcome> outcomes;
  std::string hung_note;
  for (int r = 0; r < s.world; ++r) {
    if (auto o = fault::read_outcome(dir, r)) outcomes[r] = std::move(*o);
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().filename().string().starts_with("hang.")) {
      hung_note = last_line(entry.path().string());
    }
  }
  const bool hung = !ended || !hung_note.empty();
  if (s.watchdog_ends_it() && ended) {
    std::ifstream f(log);
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    Verdict v = fault::judge_watchdog(s, WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, text,
                                      outcomes);
    if (!hung_note.empty()) v.hangs.push_back("watchdog: " + hung_note);
    v.hang = !hung_note.empty();
    return v;
  }
  if (hung) {
    for (int r = 0; r < s.world; ++r) {
      if (!outcomes.contains(r)) outcomes[r].status = "hung";
    }
  }
  Verdict v = fault::judge(s, outcomes);
  if (!ended) {
    v.hang = true;
    v.killed = true;
    v.hangs.push_back("killed after " + std::to_string(kill_limit(s).count()) + " ms");
  }
  if (!hung_note.empty()) v.hangs.push_back("watchdog: " + hung_note);
  if (!hung && outcomes.size() < static_cast<std::size_t>(s.world)) {
    // Say how the worker ended, first: the rest of the list may be cut short.
    std::string how = WIFSIGNALED(status)
                          ? "the worker died of signal " + std::to_string(WTERMSIG(status)) + " (" +
                                strsignal(WTERMSIG(status)) + ")"
                          : "the worker exited with status " + std::to_string(WEXITSTATUS(status));
    const std::string tail = last_line(log);
    if (!tail.empty()) how += ", its log ends \"" + tail + "\"";
    v.wrong.insert(v.wrong.begin(), how);
  }
  return v;
}

constexpr fault::Kind all_kinds[] = {fault::Kind::throws, fault::Kind::stalls,
                                     fault::Kind::returns_early, fault::Kind::mismatch};
constexpr fault::Mismatch all_mismatches[] = {
    fault::Mismatch::count,       fault::Mismatch::io_size, fault::Mismatch::op,
    fault::Mismatch::type,        fault::Mismatch::kind,    fault::Mismatch::root,
    fault::Mismatch::root_invalid};

struct Count {
  std::size_t scenarios = 0;
  std::size_t failing = 0;
};

struct Tally {
  std::size_t scenarios = 0, hangs = 0, killed = 0, wrong = 0, corrupted = 0, untrusted = 0,
              late = 0, blocking = 0, ended_by_watchdog = 0;
  long max_ms = 0;
  double seconds = 0;
  std::map<std::string, Count> kinds, mismatches;

  void add(const Scenario& s, const Verdict& v, double secs) {
    ++scenarios;
    hangs += v.hang;
    killed += v.killed;
    wrong += !v.wrong.empty();
    corrupted += !v.corrupted.empty();
    untrusted += v.untrusted_changed;
    late += v.late_completion;
    blocking += s.blocking;
    ended_by_watchdog += s.watchdog_ends_it();
    max_ms = std::max(max_ms, v.max_ms);
    seconds += secs;
    Count& k = kinds[std::string(fault::to_string(s.fault.kind))];
    ++k.scenarios;
    k.failing += v.failed();
    if (s.fault.kind == fault::Kind::mismatch) {
      Count& m = mismatches[std::string(fault::to_string(s.fault.mismatch))];
      ++m.scenarios;
      m.failing += v.failed();
    }
  }
};

std::string counts_json(const std::map<std::string, Count>& counts, auto&& names) {
  std::string s = "{";
  for (const auto& n : names) {
    const std::string key(fault::to_string(n));
    const auto it = counts.find(key);
    const Count c = it == counts.end() ? Count{} : it->second;
    if (s.size() > 1) s += ',';
    s += "\"" + key + "\":{\"scenarios\":" + std::to_string(c.scenarios) +
         ",\"failing\":" + std::to_string(c.failing) + "}";
  }
  return s + "}";
}

std::string tally_json(const Tally& t) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", t.seconds);
  return "{\"scenarios\":" + std::to_string(t.scenarios) + ",\"hangs\":" + std::to_string(t.hangs) +
         ",\"wrong_errors\":" + std::to_string(t.wrong) +
         ",\"corrupted\":" + std::to_string(t.corrupted) +
         ",\"killed\":" + std::to_string(t.killed) +
         ",\"untrusted_changed\":" + std::to_string(t.untrusted) +
         ",\"late_completions\":" + std::to_string(t.late) +
         ",\"blocking_mode\":" + std::to_string(t.blocking) +
         ",\"ended_by_watchdog\":" + std::to_string(t.ended_by_watchdog) +
         ",\"max_fault_ms\":" + std::to_string(t.max_ms) + ",\"seconds\":" + secs +
         ",\"faults\":" + counts_json(t.kinds, all_kinds) +
         ",\"mismatches\":" + counts_json(t.mismatches, all_mismatches) + "}";
}

// The first few items of a list, and how many more there are.
std::string some(const std::vector<std::string>& items) {
  std::string s;
  constexpr std::size_t shown = 4;
  for (std::size_t i = 0; i < items.size() && i < shown; ++i) {
    if (i != 0) s += "; ";
    s += items[i];
  }
  if (items.size() > shown) s += "; and " + std::to_string(items.size() - shown) + " more";
  return s;
}

int campaign(const Options& o) {
  // Children under mpirun: root is allowed (CI runs as root) and more processes than cores.
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 0);
  const std::string self = self_path();
  std::string base = (std::filesystem::temp_directory_path() / "fault_campaign.XXXXXX").string();
  if (mkdtemp(base.data()) == nullptr) {
    throw std::runtime_error("cannot make a directory under " +
                             std::filesystem::temp_directory_path().string());
  }
  std::map<Backend, Tally> tallies;
  for (Backend b : o.backends) tallies[b];
  for (std::size_t i = 0; i < o.scenarios; ++i) {
    const std::uint64_t seed = o.seed + i;
    const Scenario s = fault::make_scenario(seed, backend_of(seed, o.backends), o.timeout);
    const std::string dir = base + "/" + std::to_string(i);
    const auto start = clock_type::now();
    const Verdict v = run_scenario(s, dir, self);
    const double secs = std::chrono::duration<double>(clock_type::now() - start).count();
    tallies[s.backend].add(s, v, secs);
    if (o.verbose && v.failed()) {
      std::string line = std::string(program) + ": FAIL " + s.describe() + ":";
      if (v.hang) line += " hang: " + some(v.hangs) + ".";
      if (!v.wrong.empty()) line += " wrong_errors: " + some(v.wrong) + ".";
      if (!v.corrupted.empty()) line += " corrupted: " + some(v.corrupted) + ".";
      line += " Replay: fault_campaign --seed " + std::to_string(seed) +
              " --scenarios 1 --backend " + std::string(fault::to_string(s.backend)) +
              " --timeout-ms " + std::to_string(o.timeout.count()) + " --verbose";
      std::fprintf(stderr, "%s\n", cli::one_line(line).c_str());
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::error_code ec;
  std::filesystem::remove_all(base, ec);

  Tally total;
  std::string by;
  for (const auto& [b, t] : tallies) {
    total.scenarios += t.scenarios;
    total.hangs += t.hangs;
    total.wrong += t.wrong;
    total.corrupted += t.corrupted;
    if (!by.empty()) by += ',';
    by += "\"" + std::string(fault::to_string(b)) + "\":" + tally_json(t);
  }
  std::printf(
      "{\"scenarios\":%zu,\"hangs\":%zu,\"wrong_errors\":%zu,\"corrupted\":%zu,"
      "\"by_backend\":{%s}}\n",
      total.scenarios, total.hangs, total.wrong, total.corrupted, by.c_str());
  return total.hangs + total.wrong + total.corrupted == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (cli::asks_for_help(argc, argv)) {
    std::printf(
        "usage: fault_campaign [--scenarios N] [--seed S] [--timeout-ms T]\n"
        "                      [--backend local|mpi|nccl|all] [--verbose]\n"
        "Runs N scenarios (default 100), scenario i with seed S+i (default S=1): on a backend\n"
        "drawn from those asked for (default all that this build has), a world, a hierarchy and\n"
        "one fault -- a rank throws, stalls past the deadline T ms (default 250), returns early,\n"
        "or passes mismatched arguments -- at one collective of one averaging step. Prints one\n"
        "JSON line of counts; exits 1 when a scenario hung, gave a wrong error or corrupted\n"
        "parameters. --verbose prints each failing scenario on stderr, with the command that\n"
        "replays it. (--worker DIR runs one scenario's ranks; the campaign starts it.)\n");
    return 0;
  }
  return cli::run(program, [&] {
    const Options o = parse_args(argc, argv);
    if (o.worker_dir.empty()) return campaign(o);
    const Scenario s = fault::make_scenario(o.seed, o.backends.front(), o.timeout);
    if (s.backend == Backend::mpi) {
#ifdef STRATA_FAULT_HAVE_MPI
      return mpi_worker(argc, argv, s, o.worker_dir);
#endif
    }
    return thread_worker(s, o.worker_dir);
  });
}
