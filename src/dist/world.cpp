// world_from_env(): the process's rank, world and rendezvous address from the variables that
// torchrun / deltatron launch, Slurm's srun or OpenMPI's mpirun set (comm.h).
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/comm.h"

namespace deltatron::dist {

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

// The integer value `v` of variable `name`; core::Error naming it when it is not a decimal number
// (of at most `max`).
int64_t env_int(const char* name, const char* v, int64_t max = INT32_MAX) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  DT_CHECK(end != v && *end == '\0' && errno == 0 && x >= -max - 1 && x <= max, name, "='", v,
           "' is not an integer");
  return x;
}
int env_int(const char* name) {
  const char* v = env(name);
  DT_CHECK(v, name, " is not set");
  return int(env_int(name, v));
}

// Slurm's compressed per-node counts, "2(x3),1" = 2,2,2,1: the entry of node `node`.
int tasks_on_node(const char* name, const char* v, int node) {
  const std::string s = v;
  int index = 0;
  size_t pos = 0;
  while (pos <= s.size()) {
    const size_t comma = s.find(',', pos);
    const std::string item = s.substr(pos, comma == std::string::npos ? comma : comma - pos);
    const size_t paren = item.find("(x");
    const std::string count = item.substr(0, paren);
    int repeat = 1;
    if (paren != std::string::npos) {
      DT_CHECK(item.back() == ')', name, "='", v, "' is not a Slurm task count list");
      repeat = int(env_int(name, item.substr(paren + 2, item.size() - paren - 3).c_str()));
    }
    const int n = int(env_int(name, count.c_str()));
    if (node < index + repeat) return n;
    index += repeat;
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  core::fail(name, "='", v, "' has no entry for node ", node, " (SLURM_NODEID)");
}

// The first host of a Slurm host list: "gpu[03-05,9],cpu1" -> "gpu03", "a[1-2]-b[3-4]" -> "a1-b3".
std::string first_host(const char* name, const char* v) {
  const std::string s = v;
  std::string host;
  size_t i = 0;
  while (i < s.size() && s[i] != ',') {
    if (s[i] != '[') {
      host += s[i++];
      continue;
    }
    const size_t close = s.find(']', i);
    DT_CHECK(close != std::string::npos, name, "='", v, "' has an unclosed '['");
    const std::string range = s.substr(i + 1, close - i - 1);
    const size_t end = range.find_first_of(",-");
    host += range.substr(0, end);
    i = close + 1;
  }
  DT_CHECK(!host.empty(), name, "='", v, "' names no host");
  return host;
}

void check_world(const World& w, const char* rank_var, const char* size_var,
                 const char* local_rank_var, const char* local_size_var) {
  DT_CHECK(w.size >= 1, size_var, "=", w.size, " is not a positive number of ranks");
  DT_CHECK(w.rank >= 0 && w.rank < w.size, rank_var, "=", w.rank, " is not a rank of ", size_var,
           "=", w.size);
  DT_CHECK(w.local_size >= 1 && w.local_size <= w.size, local_size_var, "=", w.local_size,
           " is not in 1..", size_var, " (", w.size, ")");
  DT_CHECK(w.local_rank >= 0 && w.local_rank < w.local_size, local_rank_var, "=", w.local_rank,
           " is not a rank of ", local_size_var, "=", w.local_size);
  DT_CHECK(w.master_port > 0 && w.master_port < 65536, "MASTER_PORT=", w.master_port,
           " is not a port (1..65535)");
  DT_CHECK(!w.master_addr.empty(), "MASTER_ADDR is empty");
}

void master_from_env(World& w) {
  if (const char* a = env("MASTER_ADDR")) w.master_addr = a;
  if (const char* p = env("MASTER_PORT")) w.master_port = int(env_int("MASTER_PORT", p));
}

World torchrun_world() {
  World w;
  w.launcher = "torchrun";
  DT_CHECK(env("RANK"), "WORLD_SIZE is set but RANK is not (torchrun sets both)");
  DT_CHECK(env("WORLD_SIZE"), "RANK is set but WORLD_SIZE is not (torchrun sets both)");
  w.rank = env_int("RANK");
  w.size = env_int("WORLD_SIZE");
  // Set by torchrun and deltatron launch; a hand-made single-host environment may omit them.
  w.local_rank = env("LOCAL_RANK") ? env_int("LOCAL_RANK") : w.rank;
  w.local_size = env("LOCAL_WORLD_SIZE") ? env_int("LOCAL_WORLD_SIZE") : w.size;
  master_from_env(w);
  // torchrun's agent serves its own store (PyTorch's protocol) at MASTER_PORT when it tells its
  // workers to use it: ours goes one port up.
  if (const char* a = env("TORCHELASTIC_USE_AGENT_STORE"); a && std::string(a) == "True") {
    DT_CHECK(w.master_port < 65535, "MASTER_PORT=", w.master_port,
             ": under torchrun the rendezvous uses MASTER_PORT + 1, which is not a port");
    w.master_port += 1;
  }
  check_world(w, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE");
  return w;
}

World mpirun_world() {
  World w;
  w.launcher = "mpirun";
  w.rank = env_int("OMPI_COMM_WORLD_RANK");
  w.size = env_int("OMPI_COMM_WORLD_SIZE");
  w.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK");
  w.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE");
  master_from_env(w);
  check_world(w, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
              "OMPI_COMM_WORLD_LOCAL_SIZE");
  return w;
}

World slurm_world() {
  World w;
  w.launcher = "slurm";
  w.rank = env_int("SLURM_PROCID");
  const char* size_var = env("SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS";
  w.size = env_int(size_var);
  w.local_rank = env_int("SLURM_LOCALID");
  const char* local_size_var = nullptr;
  if (const char* v = env("SLURM_NTASKS_PER_NODE")) {
    local_size_var = "SLURM_NTASKS_PER_NODE";
    w.local_size = int(env_int(local_size_var, v));
  } else if (const char* t = env("SLURM_STEP_TASKS_PER_NODE")) {
    local_size_var = "SLURM_STEP_TASKS_PER_NODE";
    const int node = env("SLURM_NODEID") ? env_int("SLURM_NODEID") : 0;
    w.local_size = tasks_on_node(local_size_var, t, node);
  } else {
    core::fail("SLURM_PROCID is set but neither SLURM_NTASKS_PER_NODE nor ",
               "SLURM_STEP_TASKS_PER_NODE is (run the ranks with srun)");
  }
  if (const char* a = env("MASTER_ADDR")) {
    w.master_addr = a;
  } else {
    const char* list_var = env("SLURM_STEP_NODELIST") ? "SLURM_STEP_NODELIST" : "SLURM_NODELIST";
    const char* list = env(list_var);
    DT_CHECK(list, "under Slurm without MASTER_ADDR, SLURM_STEP_NODELIST or SLURM_NODELIST must ",
             "name the hosts");
    w.master_addr = first_host(list_var, list);
  }
  if (const char* p = env("MASTER_PORT")) {
    w.master_port = int(env_int("MASTER_PORT", p));
  } else {
    const char* job = env("SLURM_JOB_ID");
    DT_CHECK(job,
             "under Slurm without MASTER_PORT, SLURM_JOB_ID must be set (the port is "
             "derived from it)");
    w.master_port = kSlurmPortBase + int(env_int("SLURM_JOB_ID", job, INT64_MAX) % kSlurmPortSpan);
  }
  check_world(w, "SLURM_PROCID", size_var, "SLURM_LOCALID", local_size_var);
  return w;
}

}  // namespace

World world_from_env() {
  if (env("RANK") || env("WORLD_SIZE")) return torchrun_world();
  if (env("OMPI_COMM_WORLD_RANK") || env("OMPI_COMM_WORLD_SIZE")) return mpirun_world();
  // Only inside a job step: a batch script's own environment has SLURM_PROCID=0 and the
  // allocation's SLURM_NTASKS too, and is one process, not a rank of N.
  const char* step = env("SLURM_STEP_ID") ? env("SLURM_STEP_ID") : env("SLURM_STEPID");
  const std::string s = step ? step : "";
  const bool in_step = step && s != "batch" && s != "extern" && s != "4294967294" &&
                       s != "4294967295";  // the batch and extern steps' ids
  if (env("SLURM_PROCID") && in_step) return slurm_world();
  return World{};
}

}  // namespace deltatron::dist
