// deltatron launch: start N ranks of a command on this host with torchrun's environment, and
// stop them all when one fails.
#pragma once

#include <string>
#include <vector>

namespace deltatron::dist {

struct LaunchOptions {
  int nproc = 1;                          // ranks to start (WORLD_SIZE = LOCAL_WORLD_SIZE)
  std::string master_addr = "127.0.0.1";  // MASTER_ADDR
  int master_port = 0;                    // MASTER_PORT; 0: a free port (bind to port 0)
  double grace_s = 5;                     // SIGTERM -> SIGKILL delay when stopping ranks
  std::vector<std::string> command;       // the program (found on PATH) and its arguments
};

// Starts opt.nproc processes of opt.command, rank r with RANK=r, WORLD_SIZE, LOCAL_RANK=r,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and OMP_NUM_THREADS = cores / nproc, at least 1,
// unless set), each in its own process group (signals reach the whole rank, shells' children
// included) and with SIGTERM as its parent-death signal. Then waits:
//   - SIGINT / SIGTERM / SIGHUP to the launcher is forwarded to every rank;
//   - a rank that exits non-zero or by a signal: "launch: rank R exited with status S" (or "was
//     killed by signal N (name)") "; stopping the other ranks" on stderr, SIGTERM to the others,
//     SIGKILL to what is left after opt.grace_s seconds.
// Returns the launcher's exit status once every rank has ended: 0 when all exited 0, else the
// first failed rank's status (128 + N for signal N). Bad options are a core::Error.
int run_launch(const LaunchOptions& opt);

// A TCP port free on this host now (bound to port 0, then released).
int free_port();

}  // namespace deltatron::dist
