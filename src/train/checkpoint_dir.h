// Training output directory: atomic checkpoint-<step> directories, latest lookup, pruning.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace deltatron::train {

inline constexpr const char* kCompleteMarker = "COMPLETE";

// "checkpoint-00000042": the step zero-padded to 8 digits (more digits past 99,999,999).
std::string checkpoint_dir_name(int64_t step);

// Builds out_dir/checkpoint-<step> atomically and returns its path:
//  1. creates the empty out_dir/.tmp-checkpoint-<step>-<pid> (a stale one of the same name is
//     removed first);
//  2. calls write_contents(tmp_dir) to fill it (files and subdirectories of any kind);
//  3. fsyncs every file and directory inside it, writes the COMPLETE marker (the step as text)
//     last, fsyncs it and the temporary directory;
//  4. renames it to out_dir/checkpoint-<step> (an existing directory of that name is first moved
//     aside to .old-checkpoint-<step>-<pid> and deleted after the rename succeeded) and fsyncs
//     out_dir.
// On any exception the temporary directory is removed (and a moved-aside one put back) and the
// exception is rethrown: earlier checkpoints are untouched and no checkpoint-<step> appears.
std::string save_training_checkpoint(
    const std::string& out_dir, int64_t step,
    const std::function<void(const std::string& tmp_dir)>& write_contents);

// A complete checkpoint of out_dir: a directory named checkpoint-<digits> holding the regular
// file COMPLETE. Temporary (".tmp-*"), moved-aside and deleting (".old-*", ".deleting-*")
// directories, other names and directories without the marker are not checkpoints.
struct CheckpointEntry {
  int64_t step;
  std::string path;
};

// Complete checkpoints by increasing step; empty when out_dir does not exist.
std::vector<CheckpointEntry> complete_checkpoints(const std::string& out_dir);

// Path of the complete checkpoint with the highest step, if any.
std::optional<std::string> latest_complete_checkpoint(const std::string& out_dir);

// Deletes all but the keep_last newest complete checkpoints (keep_last <= 0: deletes nothing).
// Each one is first renamed to .deleting-checkpoint-<step>-<pid>, so a crash part-way through
// a deletion never leaves a checkpoint-<step> with a marker but missing files. Returns the paths
// removed.
std::vector<std::string> prune_checkpoints(const std::string& out_dir, int64_t keep_last);

// Removes what interrupted saves and prunes of earlier processes left in out_dir: directories
// named .tmp-checkpoint-*, .old-checkpoint-*, .deleting-checkpoint-* (and ..tmp-checkpoint-*,
// the staging an older trainer nested inside a save) not carrying this process's pid. The
// checkpoint's contents must be written straight into the temporary directory that
// save_training_checkpoint passes, never staged beside it. Call once at start-up, only while
// holding out_dir's lock (run_dir.h: no live run is writing them). Returns the paths removed.
std::vector<std::string> remove_stale_checkpoint_temps(const std::string& out_dir);

// Creates out_dir (and parents) if missing, then creates, syncs and removes a probe file in it.
// Throws a one-line core::Error naming out_dir and the reason (exists but is not a directory,
// cannot be created, not writable), so a run fails before any training work.
void check_output_dir_writable(const std::string& out_dir);

}  // namespace deltatron::train
