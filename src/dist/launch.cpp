// deltatron launch (launch.h): fork/exec of the ranks, then one loop that waits for signals
// (SIGCHLD, SIGINT, SIGTERM, SIGHUP blocked and taken with sigtimedwait, so no handler runs
// asynchronously) and reaps, forwards and escalates.
#include "dist/launch.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

extern char** environ;

namespace deltatron::dist {

namespace {

using Clock = std::chrono::steady_clock;

struct Rank {
  pid_t pid = -1;  // also its process group
  bool running = false;
  int status = 0;  // waitpid's, once ended
};

// The environment of rank r: the launcher's, without the variables launch sets, plus them.
std::vector<std::string> rank_env(const LaunchOptions& opt, int port, int r) {
  // (TORCHELASTIC_USE_AGENT_STORE, from a torchrun around us, would move the port: see comm.h.)
  static const char* kOwn[] = {"RANK=",
                               "WORLD_SIZE=",
                               "LOCAL_RANK=",
                               "LOCAL_WORLD_SIZE=",
                               "MASTER_ADDR=",
                               "MASTER_PORT=",
                               "TORCHELASTIC_USE_AGENT_STORE="};
  std::vector<std::string> env;
  bool omp = false;
  for (char** e = environ; *e; ++e) {
    bool own = false;
    for (const char* k : kOwn) own = own || std::strncmp(*e, k, std::strlen(k)) == 0;
    if (!own) env.emplace_back(*e);
    omp = omp || std::strncmp(*e, "OMP_NUM_THREADS=", 16) == 0;
  }
  const std::string n = std::to_string(opt.nproc);
  env.push_back("RANK=" + std::to_string(r));
  env.push_back("WORLD_SIZE=" + n);
  env.push_back("LOCAL_RANK=" + std::to_string(r));
  env.push_back("LOCAL_WORLD_SIZE=" + n);
  env.push_back("MASTER_ADDR=" + opt.master_addr);
  env.push_back("MASTER_PORT=" + std::to_string(port));
  if (!omp) {
    const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
    env.push_back("OMP_NUM_THREADS=" + std::to_string(std::max(1, cores / opt.nproc)));
  }
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> p;
  for (std::string& s : v) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

// "exited with status S" or "was killed by signal N (name)", and the launcher's status for it.
std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  const int sig = WTERMSIG(status);
  const char* name = strsignal(sig);
  return "was killed by signal " + std::to_string(sig) + " (" + (name ? name : "?") + ")";
}
int exit_code(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
bool failed(int status) { return !WIFEXITED(status) || WEXITSTATUS(status) != 0; }

void signal_ranks(const std::vector<Rank>& ranks, int sig) {
  for (const Rank& r : ranks)
    if (r.pid > 0) ::kill(-r.pid, sig);  // the rank's group: its own children too
}

}  // namespace

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  DT_CHECK(fd >= 0, "launch: cannot open a socket: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int err = errno;
  ::close(fd);
  DT_CHECK(ok, "launch: cannot find a free port: ", std::strerror(err));
  return ntohs(a.sin_port);
}

int run_launch(const LaunchOptions& opt) {
  DT_CHECK(opt.nproc >= 1, "launch: --nproc ", opt.nproc, " is not a positive number of ranks");
  DT_CHECK(!opt.command.empty(), "launch: no command to run (give it after --)");
  DT_CHECK(opt.master_port >= 0 && opt.master_port < 65536, "launch: --master-port ",
           opt.master_port, " is not a port");
  DT_CHECK(opt.grace_s >= 0, "launch: --grace ", opt.grace_s, " is negative");
  const int port = opt.master_port ? opt.master_port : free_port();

  sigset_t wanted, old_mask;
  sigemptyset(&wanted);
  for (const int s : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaddset(&wanted, s);
  ::sigprocmask(SIG_BLOCK, &wanted, &old_mask);

  std::vector<std::string> args = opt.command;
  std::vector<char*> argv = c_strings(args);
  std::vector<Rank> ranks(size_t(opt.nproc));
  const pid_t launcher = ::getpid();
  std::fflush(nullptr);
  for (int r = 0; r < opt.nproc; ++r) {
    std::vector<std::string> env = rank_env(opt, port, r);
    std::vector<char*> envp = c_strings(env);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != launcher) ::_exit(1);  // the launcher died before prctl
      ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
      ::execvpe(argv[0], argv.data(), envp.data());
      const std::string msg = "launch: rank " + std::to_string(r) + ": cannot run '" + args[0] +
                              "': " + std::strerror(errno) + "\n";
      [[maybe_unused]] ssize_t w = ::write(2, msg.data(), msg.size());
      ::_exit(127);
    }
    if (pid < 0) {
      const int err = errno;
      signal_ranks(ranks, SIGKILL);
      for (Rank& k : ranks)
        if (k.pid > 0) ::waitpid(k.pid, nullptr, 0);
      ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
      core::fail("launch: cannot start rank ", r, ": ", std::strerror(err));
    }
    ::setpgid(pid, pid);  // also here: no window where a signal to the group misses it
    ranks[size_t(r)] = {pid, true, 0};
  }

  int running = opt.nproc, result = 0;
  bool stopping = false, killed = false;
  Clock::time_point kill_at{};
  auto stop = [&](int sig) {
    if (!stopping) kill_at = Clock::now() + std::chrono::milliseconds(int64_t(opt.grace_s * 1000));
    stopping = true;
    signal_ranks(ranks, sig);
  };
  while (running > 0) {
    timespec wait{0, 100 * 1000 * 1000};
    siginfo_t info;
    const int sig = ::sigtimedwait(&wanted, &info, &wait);
    if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
      const char* name = sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP";
      std::fprintf(stderr, "launch: got %s; passing it on to the ranks\n", name);
      stop(sig);
    }
    for (;;) {  // reap every rank that ended
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      for (int r = 0; r < opt.nproc; ++r) {
        Rank& k = ranks[size_t(r)];
        if (k.pid != pid || !k.running) continue;
        k.running = false;
        k.status = status;
        --running;
        if (failed(status) && result == 0) result = exit_code(status);
        if (failed(status) && !stopping) {
          std::fprintf(stderr, "launch: rank %d %s%s\n", r, describe(status).c_str(),
                       running > 0 ? "; stopping the other ranks" : "");
          stop(SIGTERM);
        }
      }
    }
    if (stopping && !killed && running > 0 && Clock::now() >= kill_at) {
      std::fprintf(stderr, "launch: %d rank(s) still running %.3g s after SIGTERM; killing them\n",
                   running, opt.grace_s);
      signal_ranks(ranks, SIGKILL);
      killed = true;
    }
  }
  // What the ranks left behind in their groups (a shell's background jobs) goes too.
  if (stopping) signal_ranks(ranks, SIGKILL);
  ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  return result;
}

}  // namespace deltatron::dist
