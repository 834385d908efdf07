// A training run's out_dir: one run at a time (a lock), the checkpoint a run resumes from, and
// what a fresh run may replace. Nothing here deletes a checkpoint the user did not ask to lose.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/train_config.h"

namespace deltatron::train {

inline constexpr const char* kLockFileName = ".lock";

// An exclusive flock(2) on out_dir/.lock, which holds the owner's pid, for the object's lifetime
// (the kernel releases it when the process dies, so a SIGKILLed run never leaves it taken).
// Creates out_dir if needed. Throws a one-line core::Error naming out_dir and the holder's pid
// when another process holds it.
class OutDirLock {
 public:
  explicit OutDirLock(const std::string& out_dir);
  ~OutDirLock();
  OutDirLock(const OutDirLock&) = delete;
  OutDirLock& operator=(const OutDirLock&) = delete;

 private:
  int fd_ = -1;
};

struct RunStart {
  std::string resume_dir;   // the checkpoint a resumed run continues from; "" for a fresh run
  int64_t resume_step = 0;  // the step its directory name carries
  // Complete checkpoints of an earlier run that a fresh run with overwrite replaces: removed by
  // remove_earlier_checkpoints once the new run has saved its first checkpoint.
  std::vector<std::string> earlier;
};

// How a run starts in cfg.out_dir (call with the OutDirLock held):
//  - model.path or data.tokenizer inside a checkpoint-* or temporary directory of out_dir is an
//    error (the run replaces and prunes those directories);
//  - resume: the newest complete checkpoint, or a fresh start (with a note) when there is none;
//  - fresh, and out_dir holds complete checkpoints: an error suggesting --resume, another
//    out_dir or --overwrite; with overwrite they are listed in `earlier` and kept for now.
RunStart plan_run_start(const TrainConfig& cfg, bool resume, bool overwrite);

// After load_train_state: the step in trainer_state.json must be the one the checkpoint's
// directory is named for; otherwise a one-line error naming the file and both steps.
void check_resumed_step(const RunStart& start, int64_t state_step);

// Removes the checkpoints of start.earlier except `keep` (the one just written, when an earlier
// run had one of the same name), then clears the list; prints one line when it removed any.
void remove_earlier_checkpoints(RunStart& start, const std::string& keep);

}  // namespace deltatron::train
