// `deltatron launch`: each rank's environment, the exit status, stopping every rank when one
// fails (SIGTERM, then SIGKILL after the grace period), passing SIGTERM on, and bad usage.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <thread>

#include "dist/launch.h"
#include "test_util.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct LaunchRun {
  int code = -1;  // exit status of deltatron launch (-1: not exited normally)
  std::string out, err;
  double seconds = 0;
};

class Launch : public ::testing::Test {
 protected:
  const dt_test::TempDir tmp_{"launch"};

  // deltatron <args>, stdout and stderr to files.
  LaunchRun launch(const std::string& args) {
    const std::string cmd =
        std::string(DT_BINARY) + " " + args + " > " + tmp_ / "out.txt" + " 2> " + tmp_ / "err.txt";
    const auto t0 = Clock::now();
    const int rc = std::system(cmd.c_str());
    LaunchRun r;
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    r.out = dt_test::read_file(tmp_ / "out.txt");
    r.err = dt_test::read_file(tmp_ / "err.txt");
    return r;
  }
  static std::vector<std::string> sorted_lines(const std::string& s) {
    std::vector<std::string> lines;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    std::sort(lines.begin(), lines.end());
    return lines;
  }
};

TEST_F(Launch, EveryRankGetsTorchrunsVariables) {
  const LaunchRun r = launch(
      "launch --nproc 3 -- sh -c "
      "'echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT'");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<std::string> lines = sorted_lines(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  const std::string port = lines[0].substr(lines[0].rfind(' ') + 1);
  EXPECT_GT(std::stoi(port), 0);
  for (int k = 0; k < 3; ++k)
    EXPECT_EQ(lines[size_t(k)],
              std::to_string(k) + " 3 " + std::to_string(k) + " 3 127.0.0.1 " + port);
  EXPECT_EQ(r.err, "");
}

TEST_F(Launch, AddressPortAndArgumentsAsGiven) {
  const LaunchRun r = launch(
      "launch --nproc 2 --master-addr localhost --master-port 23456 -- sh -c "
      "'echo $RANK $MASTER_ADDR:$MASTER_PORT \"$0\" \"$1\"' 'first arg' --second");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(sorted_lines(r.out),
            (std::vector<std::string>{"0 localhost:23456 first arg --second",
                                      "1 localhost:23456 first arg --second"}));
}

TEST_F(Launch, AFailingRankStopsTheOthers) {
  const LaunchRun r =
      launch("launch --nproc 3 -- sh -c 'if [ $RANK = 1 ]; then exit 3; fi; sleep 30'");
  EXPECT_EQ(r.code, 3);
  EXPECT_LT(r.seconds, 4.0);
  EXPECT_NE(r.err.find("launch: rank 1 exited with status 3; stopping the other ranks"),
            std::string::npos)
      << r.err;
}

TEST_F(Launch, ARankKilledByASignalStopsTheOthers) {
  const LaunchRun r =
      launch("launch --nproc 2 -- sh -c 'if [ $RANK = 0 ]; then kill -9 $$; fi; sleep 30'");
  EXPECT_EQ(r.code, 128 + 9);
  EXPECT_LT(r.seconds, 4.0);
  EXPECT_NE(r.err.find("launch: rank 0 was killed by signal 9"), std::string::npos) << r.err;
}

TEST_F(Launch, ARankIgnoringSigtermIsKilledAfterTheGracePeriod) {
  // Rank 0 ignores SIGTERM (its sleep inherits that); rank 1 fails once it does.
  const std::string ready = tmp_ / "ready";
  const LaunchRun r = launch(
      "launch --nproc 2 --grace 1 -- sh -c "
      "'if [ $RANK = 1 ]; then while [ ! -e $0 ]; do sleep 0.02; done; exit 5; fi; "
      "trap \"\" TERM; touch $0; sleep 30' " +
      ready);
  EXPECT_EQ(r.code, 5);
  EXPECT_GT(r.seconds, 0.9);
  EXPECT_LT(r.seconds, 4.0);
  EXPECT_NE(r.err.find("still running 1 s after SIGTERM; killing them"), std::string::npos)
      << r.err;
}

TEST_F(Launch, SigtermToTheLauncherReachesEveryRank) {
  const std::string out = tmp_ / "out.txt", err = tmp_ / "err.txt";
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const std::string script =
        "trap 'echo term $RANK; exit 7' TERM; echo up $RANK; while :; do sleep 0.05; done";
    if (!std::freopen(out.c_str(), "w", stdout) || !std::freopen(err.c_str(), "w", stderr))
      ::_exit(126);
    ::execl(DT_BINARY, DT_BINARY, "launch", "--nproc", "2", "--", "sh", "-c", script.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait until both ranks run (their traps are set), then SIGTERM the launcher alone.
  const auto t0 = Clock::now();
  for (std::string s; std::count(s.begin(), s.end(), '\n') < 2 && Clock::now() - t0 < 10s;
       s = dt_test::read_file(out))
    std::this_thread::sleep_for(20ms);
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 7);
  const std::vector<std::string> lines = sorted_lines(dt_test::read_file(out));
  EXPECT_EQ(lines, (std::vector<std::string>{"term 0", "term 1", "up 0", "up 1"}));
  EXPECT_NE(dt_test::read_file(err).find("launch: got SIGTERM; passing it on to the ranks"),
            std::string::npos)
      << dt_test::read_file(err);
}

TEST_F(Launch, BadUsage) {
  LaunchRun r = launch("launch --nproc 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("command"), std::string::npos) << r.err;
  r = launch("launch --nproc 0 -- true");
  EXPECT_NE(r.code, 0);
  r = launch("launch --nproc 2 -- /no/such/program");
  EXPECT_EQ(r.code, 127);
  EXPECT_NE(r.err.find("cannot run '/no/such/program'"), std::string::npos) << r.err;
}

TEST(FreePort, IsAPort) {
  const int p = deltatron::dist::free_port();
  EXPECT_GT(p, 0);
  EXPECT_LT(p, 65536);
}

}  // namespace
