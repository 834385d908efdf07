// The world from each launcher's environment (torchrun, Slurm, OpenMPI, none), which launcher
// wins when several left variables, and the errors naming the variable at fault.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <string>

#include "core/error.h"
#include "dist/comm.h"
#include "test_util.h"

using namespace deltatron;
using dt_test::expect_error;

namespace {

// Clears every variable world_from_env() reads, and restores them afterwards.
class Env : public ::testing::Test {
 protected:
  static constexpr const char* kVars[] = {"RANK",
                                          "WORLD_SIZE",
                                          "LOCAL_RANK",
                                          "LOCAL_WORLD_SIZE",
                                          "MASTER_ADDR",
                                          "MASTER_PORT",
                                          "SLURM_PROCID",
                                          "SLURM_NTASKS",
                                          "SLURM_STEP_NUM_TASKS",
                                          "SLURM_LOCALID",
                                          "SLURM_NTASKS_PER_NODE",
                                          "SLURM_STEP_TASKS_PER_NODE",
                                          "SLURM_NODEID",
                                          "SLURM_STEP_NODELIST",
                                          "SLURM_NODELIST",
                                          "SLURM_JOB_ID",
                                          "SLURM_STEP_ID",
                                          "SLURM_STEPID",
                                          "OMPI_COMM_WORLD_RANK",
                                          "OMPI_COMM_WORLD_SIZE",
                                          "OMPI_COMM_WORLD_LOCAL_RANK",
                                          "OMPI_COMM_WORLD_LOCAL_SIZE",
                                          "TORCHELASTIC_USE_AGENT_STORE"};
  std::map<std::string, std::string> saved_;

  void SetUp() override {
    for (const char* v : kVars) {
      if (const char* x = std::getenv(v)) saved_[v] = x;
      ::unsetenv(v);
    }
  }
  void TearDown() override {
    for (const char* v : kVars) ::unsetenv(v);
    for (const auto& [k, x] : saved_) ::setenv(k.c_str(), x.c_str(), 1);
  }
  static void set(const std::map<std::string, std::string>& vars) {
    for (const auto& [k, x] : vars) ::setenv(k.c_str(), x.c_str(), 1);
  }
  static void expect_world(const dist::World& w, const char* launcher, int rank, int size,
                           int local_rank, int local_size, const std::string& addr, int port) {
    EXPECT_EQ(w.launcher, launcher);
    EXPECT_EQ(w.rank, rank);
    EXPECT_EQ(w.size, size);
    EXPECT_EQ(w.local_rank, local_rank);
    EXPECT_EQ(w.local_size, local_size);
    EXPECT_EQ(w.master_addr, addr);
    EXPECT_EQ(w.master_port, port);
  }
};

TEST_F(Env, NoLauncherIsOneRank) {
  expect_world(dist::world_from_env(), "single", 0, 1, 0, 1, "127.0.0.1", 29500);
}

TEST_F(Env, Torchrun) {
  set({{"RANK", "5"},
       {"WORLD_SIZE", "8"},
       {"LOCAL_RANK", "1"},
       {"LOCAL_WORLD_SIZE", "4"},
       {"MASTER_ADDR", "node7"},
       {"MASTER_PORT", "1234"}});
  expect_world(dist::world_from_env(), "torchrun", 5, 8, 1, 4, "node7", 1234);
}

TEST_F(Env, TorchrunsAgentStoreKeepsMasterPort) {
  // torchrun's agent listens on MASTER_PORT itself when it sets TORCHELASTIC_USE_AGENT_STORE.
  set({{"RANK", "1"},
       {"WORLD_SIZE", "2"},
       {"MASTER_PORT", "29500"},
       {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  expect_world(dist::world_from_env(), "torchrun", 1, 2, 1, 2, "127.0.0.1", 29501);
  set({{"TORCHELASTIC_USE_AGENT_STORE", "False"}});
  EXPECT_EQ(dist::world_from_env().master_port, 29500);
  set({{"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"MASTER_PORT", "65535"}});
  expect_error([] { dist::world_from_env(); }, {"MASTER_PORT=65535", "MASTER_PORT + 1"});
}

TEST_F(Env, TorchrunWithoutLocalVariablesIsOneHost) {
  set({{"RANK", "2"}, {"WORLD_SIZE", "3"}});
  expect_world(dist::world_from_env(), "torchrun", 2, 3, 2, 3, "127.0.0.1", 29500);
}

TEST_F(Env, TorchrunErrorsNameTheVariable) {
  set({{"RANK", "2"}, {"WORLD_SIZE", "2"}});
  expect_error([] { dist::world_from_env(); }, {"RANK=2", "WORLD_SIZE=2"});
  set({{"RANK", "0"}, {"WORLD_SIZE", "two"}});
  expect_error([] { dist::world_from_env(); }, {"WORLD_SIZE='two'", "not an integer"});
  set({{"WORLD_SIZE", "2"}, {"RANK", "-1"}});
  expect_error([] { dist::world_from_env(); }, {"RANK=-1"});
  set({{"RANK", "1"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "2"}});
  expect_error([] { dist::world_from_env(); }, {"LOCAL_RANK=3", "LOCAL_WORLD_SIZE=2"});
  set({{"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "4"}});
  expect_error([] { dist::world_from_env(); }, {"LOCAL_WORLD_SIZE=4"});
  set({{"LOCAL_WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}});
  expect_error([] { dist::world_from_env(); }, {"MASTER_PORT=70000"});
  set({{"MASTER_PORT", "12x"}});
  expect_error([] { dist::world_from_env(); }, {"MASTER_PORT='12x'"});
}

TEST_F(Env, TorchrunSizeWithoutRankOrRankWithoutSize) {
  set({{"WORLD_SIZE", "4"}});
  expect_error([] { dist::world_from_env(); }, {"WORLD_SIZE is set but RANK is not"});
  ::unsetenv("WORLD_SIZE");
  set({{"RANK", "1"}});
  expect_error([] { dist::world_from_env(); }, {"RANK is set but WORLD_SIZE is not"});
}

const std::map<std::string, std::string> kSlurmStep = {{"SLURM_PROCID", "3"},
                                                       {"SLURM_NTASKS", "8"},
                                                       {"SLURM_LOCALID", "1"},
                                                       {"SLURM_STEP_TASKS_PER_NODE", "2(x4)"},
                                                       {"SLURM_NODEID", "1"},
                                                       {"SLURM_STEP_NODELIST", "gpu[03-05,9],cpu1"},
                                                       {"SLURM_NODELIST", "other[1-9]"},
                                                       {"SLURM_JOB_ID", "123456"},
                                                       {"SLURM_STEP_ID", "0"}};

TEST_F(Env, SlurmStep) {
  set(kSlurmStep);
  expect_world(dist::world_from_env(), "slurm", 3, 8, 1, 2, "gpu03",
               dist::kSlurmPortBase + 123456 % dist::kSlurmPortSpan);
}

TEST_F(Env, SlurmVariants) {
  set(kSlurmStep);
  // Uneven tasks per node: this node's entry; the step's task count; MASTER_* override.
  set({{"SLURM_STEP_TASKS_PER_NODE", "4,1(x2),3"},
       {"SLURM_NODEID", "3"},
       {"SLURM_LOCALID", "2"},
       {"SLURM_STEP_NUM_TASKS", "9"},
       {"MASTER_ADDR", "head"},
       {"MASTER_PORT", "4242"}});
  expect_world(dist::world_from_env(), "slurm", 3, 9, 2, 3, "head", 4242);
  set({{"SLURM_NTASKS_PER_NODE", "4"}});
  ::unsetenv("MASTER_ADDR");
  ::unsetenv("SLURM_STEP_NODELIST");
  set({{"SLURM_NODELIST", "a[1-2]-b[3-4]"}});
  expect_world(dist::world_from_env(), "slurm", 3, 9, 2, 4, "a1-b3", 4242);
}

TEST_F(Env, SlurmBatchScriptIsNotAStep) {
  set(kSlurmStep);
  ::unsetenv("SLURM_STEP_ID");
  expect_world(dist::world_from_env(), "single", 0, 1, 0, 1, "127.0.0.1", 29500);
  set({{"SLURM_STEP_ID", "4294967294"}});  // the batch step's id
  EXPECT_EQ(dist::world_from_env().launcher, "single");
  set({{"SLURM_STEPID", "2"}});
  ::unsetenv("SLURM_STEP_ID");
  EXPECT_EQ(dist::world_from_env().launcher, "slurm");
}

TEST_F(Env, SlurmErrorsNameTheVariable) {
  set(kSlurmStep);
  set({{"SLURM_PROCID", "8"}});
  expect_error([] { dist::world_from_env(); }, {"SLURM_PROCID=8", "SLURM_NTASKS=8"});
  set({{"SLURM_PROCID", "3"}, {"SLURM_LOCALID", "x"}});
  expect_error([] { dist::world_from_env(); }, {"SLURM_LOCALID='x'"});
  set({{"SLURM_LOCALID", "1"}, {"SLURM_STEP_TASKS_PER_NODE", "2(x1)"}});
  expect_error([] { dist::world_from_env(); }, {"SLURM_STEP_TASKS_PER_NODE", "node 1"});
  ::unsetenv("SLURM_STEP_TASKS_PER_NODE");
  expect_error([] { dist::world_from_env(); }, {"SLURM_NTASKS_PER_NODE"});
  set({{"SLURM_STEP_TASKS_PER_NODE", "2(x4)"}, {"SLURM_STEP_NODELIST", "gpu[03-05"}});
  expect_error([] { dist::world_from_env(); }, {"SLURM_STEP_NODELIST", "unclosed"});
  set({{"SLURM_STEP_NODELIST", "gpu1"}});
  ::unsetenv("SLURM_JOB_ID");
  expect_error([] { dist::world_from_env(); }, {"SLURM_JOB_ID"});
}

TEST_F(Env, OpenMpi) {
  set({{"OMPI_COMM_WORLD_RANK", "2"},
       {"OMPI_COMM_WORLD_SIZE", "4"},
       {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  expect_world(dist::world_from_env(), "mpirun", 2, 4, 0, 2, "127.0.0.1", 29500);
  set({{"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "3000"}});
  expect_world(dist::world_from_env(), "mpirun", 2, 4, 0, 2, "10.0.0.1", 3000);
  ::unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  expect_error([] { dist::world_from_env(); }, {"OMPI_COMM_WORLD_LOCAL_RANK is not set"});
  set({{"OMPI_COMM_WORLD_LOCAL_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "1"}});
  expect_error([] { dist::world_from_env(); }, {"OMPI_COMM_WORLD_RANK=2"});
}

TEST_F(Env, TheMostSpecificLauncherWins) {
  set(kSlurmStep);
  set({{"OMPI_COMM_WORLD_RANK", "1"},
       {"OMPI_COMM_WORLD_SIZE", "2"},
       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_EQ(dist::world_from_env().launcher, "mpirun");  // mpirun inside a Slurm job
  set({{"RANK", "0"}, {"WORLD_SIZE", "1"}});
  EXPECT_EQ(dist::world_from_env().launcher, "torchrun");  // torchrun inside either
}

}  // namespace
