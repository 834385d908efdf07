// Output directories of `init`, `convert` and save_checkpoint: never take over a directory
// holding someone else's files, and replace only the files a command writes.
#pragma once

#include <string>
#include <vector>

namespace deltatron::io {

// Written last into every `init` / `convert` output: {"format": "deltatron-output",
// "command", "files": [names written]}. Its presence makes the directory "a deltatron output",
// which a later command may write into again without --overwrite.
inline constexpr const char* kOutputMarker = ".deltatron-output.json";

// Checks, before any work, that dir may receive a command's output: it does not exist, is an
// empty directory, or holds kOutputMarker. Otherwise throws a one-line core::Error naming dir,
// a few of its entries and --overwrite; with overwrite only a path that exists and is not a
// directory is an error.
void check_output_dir(const std::string& dir, bool overwrite);

// Throws a one-line core::Error when out is the same directory as in (same file identity,
// symlinks and different spellings included): writing there would replace the input's files.
void check_not_same_dir(const std::string& in, const std::string& out, const std::string& in_flag,
                        const std::string& out_flag);

// A staging directory beside dir, "<parent>/.<name>.tmp-<pid>", created empty (parents of dir
// included). Files are written into path(), then install() moves them into dir. Destroyed
// without install() (an exception on the way), it is removed with its contents: dir is as before.
class StagedOutput {
 public:
  explicit StagedOutput(const std::string& dir);
  ~StagedOutput();
  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;

  const std::string& path() const { return staging_; }

  // Moves the staged files (regular files only) into dir, with a kOutputMarker naming command
  // unless command is empty:
  //  - dir does not exist or is an empty directory: the staging directory is renamed onto it
  //    (atomic: dir appears complete or not at all);
  //  - otherwise each staged file replaces its namesake, and the files an earlier output left
  //    that this one does not write are removed: those listed in dir's marker, and checkpoint
  //    weight files (model.safetensors, model.safetensors.index.json,
  //    model-*-of-*.safetensors) that would no longer belong to config.json. Every other file
  //    is kept, and so is any directory (a directory where a staged file must go is an error).
  //    The files replaced or removed are first moved aside and are put back if a later step
  //    fails; the marker is installed last.
  void install(const std::string& command);

 private:
  std::string dir_, staging_;
  bool installed_ = false;
};

// Removes the staging and moved-aside directories of dir (".<name>.tmp-<pid>",
// ".<name>.old-<pid>") whose process is no longer alive, as a SIGKILL leaves them. Returns the
// paths removed.
std::vector<std::string> remove_stale_staging(const std::string& dir);

// True for the weight-file names of an HF checkpoint: model.safetensors,
// model.safetensors.index.json and model-<i>-of-<n>.safetensors.
bool is_checkpoint_weight_file(const std::string& name);

}  // namespace deltatron::io
