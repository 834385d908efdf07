// out_dir lock, resume point and the fresh-run policy (run_dir.h).
#include "train/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "core/error.h"
#include "train/checkpoint_dir.h"
#include "train/train_state.h"

namespace deltatron::train {

namespace fs = std::filesystem;

namespace {

// p made absolute with symlinks in its existing part resolved ("" stays "").
fs::path resolved(const std::string& p) {
  if (p.empty()) return {};
  std::error_code ec;
  fs::path r = fs::weakly_canonical(p, ec);
  return ec ? fs::absolute(p).lexically_normal() : r;
}

// The first component of `p` below `dir`, or "" when p is not inside dir.
std::string child_of(const fs::path& dir, const fs::path& p) {
  const fs::path rel = p.lexically_relative(dir);
  if (rel.empty() || *rel.begin() == "..") return "";
  return rel.begin()->string();
}

bool run_managed_name(const std::string& name) {
  for (const char* pre :
       {"checkpoint-", ".tmp-checkpoint-", ".old-checkpoint-", ".deleting-checkpoint-"})
    if (name.rfind(pre, 0) == 0) return true;
  return false;
}

void check_not_inside_checkpoints(const TrainConfig& cfg) {
  const fs::path out = resolved(cfg.out_dir);
  for (const auto& [key, path] : {std::pair<const char*, std::string>{"model.path", cfg.model_path},
                                  {"data.tokenizer", cfg.tokenizer}}) {
    if (path.empty()) continue;
    const std::string child = child_of(out, resolved(path));
    if (!child.empty() && run_managed_name(child))
      core::fail(cfg.source, ": ", key, " ", path, " lies inside ", (out / child).string(),
                 ", a checkpoint directory of training.out_dir, which this run replaces and "
                 "prunes; copy it out of ",
                 cfg.out_dir, " or choose another training.out_dir");
  }
}

}  // namespace

OutDirLock::OutDirLock(const std::string& out_dir) {
  const std::string path = (fs::path(out_dir) / kLockFileName).string();
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) core::fail(out_dir, ": cannot create output directory: ", ec.message());
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) core::fail(path, ": cannot open lock file: ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    char buf[32] = {0};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    std::string holder(buf, n > 0 ? size_t(n) : 0);
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    if (e == EWOULDBLOCK)
      core::fail(out_dir, ": training.out_dir is in use by another deltatron run (pid ",
                 holder.empty() ? "unknown" : holder, ", holding ", path,
                 "); wait for it to finish or choose another training.out_dir");
    core::fail(path, ": cannot lock: ", std::strerror(e));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0)
    std::fprintf(stderr, "warning: %s: cannot record this process's pid\n", path.c_str());
}

OutDirLock::~OutDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

RunStart plan_run_start(const TrainConfig& cfg, bool resume, bool overwrite) {
  check_not_inside_checkpoints(cfg);
  RunStart start;
  const std::vector<CheckpointEntry> found = complete_checkpoints(cfg.out_dir);
  if (resume) {
    if (found.empty()) {
      std::fprintf(stderr, "train: --resume: no complete checkpoint in %s, starting fresh\n",
                   cfg.out_dir.c_str());
      return start;
    }
    start.resume_dir = found.back().path;
    start.resume_step = found.back().step;
    return start;
  }
  if (found.empty()) return start;
  if (!overwrite)
    core::fail(cfg.out_dir, ": training.out_dir holds ", found.size(),
               " checkpoint(s) of an earlier run (newest ", found.back().path,
               "); pass --resume to continue it, choose another training.out_dir, or pass "
               "--overwrite to replace them once this run has saved its first checkpoint");
  for (const CheckpointEntry& e : found) start.earlier.push_back(e.path);
  std::fprintf(stderr,
               "train: --overwrite: the %zu checkpoint(s) of an earlier run in %s are removed "
               "once this run has saved its first checkpoint\n",
               found.size(), cfg.out_dir.c_str());
  return start;
}

void check_resumed_step(const RunStart& start, int64_t state_step) {
  if (start.resume_dir.empty() || state_step == start.resume_step) return;
  core::fail((fs::path(start.resume_dir) / "training_state" / kTrainerStateFileName).string(),
             ": step ", state_step, " does not match its checkpoint directory (step ",
             start.resume_step, "); the checkpoint is inconsistent, resume from another one");
}

void remove_earlier_checkpoints(RunStart& start, const std::string& keep) {
  size_t n = 0;
  std::error_code ec;
  for (const std::string& p : start.earlier) {
    if (fs::path(p).lexically_normal() == fs::path(keep).lexically_normal()) continue;
    // Renamed first (as prune_checkpoints does), so a crash never leaves a marked checkpoint
    // with files missing; the stale-temporary cleanup of a later run finishes the job.
    const fs::path doomed =
        fs::path(p).parent_path() /
        (".deleting-" + fs::path(p).filename().string() + "-" + std::to_string(::getpid()));
    fs::rename(p, doomed, ec);
    if (!ec) fs::remove_all(doomed, ec);
    if (ec) core::fail(p, ": cannot remove the earlier run's checkpoint: ", ec.message());
    ++n;
  }
  if (n > 0) std::fprintf(stderr, "\ntrain: removed %zu checkpoint(s) of the earlier run\n", n);
  start.earlier.clear();
}

}  // namespace deltatron::train
