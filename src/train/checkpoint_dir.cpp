// Atomic checkpoint directories: temp dir, fsync, COMPLETE marker, rename; lookup and pruning.
#include "train/checkpoint_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "core/error.h"
#include "io/file_util.h"

namespace deltatron::train {

namespace fs = std::filesystem;

namespace {

const std::string kPrefix = "checkpoint-";
const std::string kTmpPrefix = ".tmp-checkpoint-";
const std::string kOldPrefix = ".old-checkpoint-";
const std::string kDeletingPrefix = ".deleting-checkpoint-";

void fs_check(const std::error_code& ec, const std::string& what) {
  if (ec) core::fail(what, ": ", ec.message());
}

std::string pid_str() { return std::to_string(::getpid()); }

// Parses a non-negative decimal integer that is the whole of s.
std::optional<int64_t> parse_digits(const std::string& s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

void fsync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) core::fail(path, ": cannot open to sync: ", std::strerror(errno));
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0) core::fail(path, ": fsync failed: ", std::strerror(e));
}

// fsyncs every regular file and directory below dir (symlinks are not followed), then dir.
void fsync_tree(const fs::path& dir) {
  std::error_code ec;
  std::vector<fs::path> dirs;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::file_status st = it->symlink_status(ec);
    fs_check(ec, it->path().string() + ": cannot stat");
    if (fs::is_regular_file(st))
      fsync_file(it->path().string());
    else if (fs::is_directory(st))
      dirs.push_back(it->path());
  }
  fs_check(ec, dir.string() + ": cannot list directory");
  // Deepest first, so each directory is synced after the entries created inside it.
  std::reverse(dirs.begin(), dirs.end());
  for (const fs::path& d : dirs) io::fsync_dir(d.string());
  io::fsync_dir(dir.string());
}

fs::path out_path(const std::string& out_dir) {
  return out_dir.empty() ? fs::path(".") : fs::path(out_dir);
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  DT_CHECK(step >= 0, "checkpoint step must be >= 0, got ", step);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%08lld", static_cast<long long>(step));
  return kPrefix + buf;
}

std::string save_training_checkpoint(
    const std::string& out_dir, int64_t step,
    const std::function<void(const std::string& tmp_dir)>& write_contents) {
  const fs::path out = out_path(out_dir);
  const std::string name = checkpoint_dir_name(step);
  const std::string suffix = std::to_string(step) + "-" + pid_str();
  const fs::path target = out / name;
  const fs::path tmp = out / (kTmpPrefix + suffix);
  const fs::path old = out / (kOldPrefix + suffix);

  std::error_code ec;
  fs::create_directories(out, ec);
  fs_check(ec, out.string() + ": cannot create output directory");
  fs::remove_all(tmp, ec);
  fs_check(ec, tmp.string() + ": cannot remove stale temporary directory");
  fs::create_directory(tmp, ec);
  fs_check(ec, tmp.string() + ": cannot create temporary checkpoint directory");

  bool moved_old = false;
  try {
    write_contents(tmp.string());
    fsync_tree(tmp);
    {
      io::OutFile marker((tmp / kCompleteMarker).string());
      const std::string text = std::to_string(step) + "\n";
      marker.write(text.data(), text.size());
      marker.sync_close();
    }
    io::fsync_dir(tmp.string());
    if (fs::exists(fs::symlink_status(target))) {
      fs::remove_all(old, ec);
      fs_check(ec, old.string() + ": cannot remove stale directory");
      fs::rename(target, old, ec);
      fs_check(ec, target.string() + ": cannot move the existing checkpoint aside");
      moved_old = true;
    }
    fs::rename(tmp, target, ec);
    fs_check(ec, target.string() + ": cannot rename " + tmp.string() + " into place");
    io::fsync_dir(out.string());
  } catch (...) {
    std::error_code ignore;
    if (moved_old && !fs::exists(target, ignore)) fs::rename(old, target, ignore);
    fs::remove_all(tmp, ignore);
    throw;
  }
  if (moved_old) {
    fs::remove_all(old, ec);
    fs_check(ec, old.string() + ": cannot remove the replaced checkpoint");
  }
  return target.string();
}

std::vector<CheckpointEntry> complete_checkpoints(const std::string& out_dir) {
  const fs::path out = out_path(out_dir);
  std::vector<CheckpointEntry> found;
  std::error_code ec;
  if (!fs::is_directory(out, ec)) return found;
  for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string fname = it->path().filename().string();
    if (fname.rfind(kPrefix, 0) != 0) continue;
    const std::optional<int64_t> step = parse_digits(fname.substr(kPrefix.size()));
    if (!step) continue;
    std::error_code e2;
    if (!fs::is_directory(fs::symlink_status(it->path(), e2))) continue;
    if (!fs::is_regular_file(fs::symlink_status(it->path() / kCompleteMarker, e2))) continue;
    found.push_back({*step, it->path().string()});
  }
  fs_check(ec, out.string() + ": cannot list directory");
  std::sort(found.begin(), found.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) {
    return a.step != b.step ? a.step < b.step : a.path < b.path;
  });
  return found;
}

std::optional<std::string> latest_complete_checkpoint(const std::string& out_dir) {
  const std::vector<CheckpointEntry> all = complete_checkpoints(out_dir);
  if (all.empty()) return std::nullopt;
  return all.back().path;
}

std::vector<std::string> prune_checkpoints(const std::string& out_dir, int64_t keep_last) {
  std::vector<std::string> removed;
  if (keep_last <= 0) return removed;
  const std::vector<CheckpointEntry> all = complete_checkpoints(out_dir);
  if (static_cast<int64_t>(all.size()) <= keep_last) return removed;
  const fs::path out = out_path(out_dir);
  const size_t n_remove = all.size() - static_cast<size_t>(keep_last);
  for (size_t i = 0; i < n_remove; ++i) {
    const fs::path doomed = out / (kDeletingPrefix + std::to_string(all[i].step) + "-" + pid_str());
    std::error_code ec;
    fs::remove_all(doomed, ec);
    fs_check(ec, doomed.string() + ": cannot remove stale directory");
    fs::rename(all[i].path, doomed, ec);
    fs_check(ec, all[i].path + ": cannot rename for deletion");
    io::fsync_dir(out.string());
    fs::remove_all(doomed, ec);
    fs_check(ec, doomed.string() + ": cannot delete pruned checkpoint");
    removed.push_back(all[i].path);
  }
  return removed;
}

std::vector<std::string> remove_stale_checkpoint_temps(const std::string& out_dir) {
  const fs::path out = out_path(out_dir);
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(out, ec)) return removed;
  const std::string own = "-" + pid_str();
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string fname = it->path().filename().string();
    // "." + kTmpPrefix: the staging directory io::save_checkpoint made beside a checkpoint's
    // temporary directory when the trainer still saved through it (a SIGKILL leaked it).
    const bool ours_kind = fname.rfind(kTmpPrefix, 0) == 0 || fname.rfind(kOldPrefix, 0) == 0 ||
                           fname.rfind(kDeletingPrefix, 0) == 0 ||
                           fname.rfind("." + kTmpPrefix, 0) == 0;
    const bool this_pid = fname.size() >= own.size() &&
                          fname.compare(fname.size() - own.size(), own.size(), own) == 0;
    if (ours_kind && !this_pid) stale.push_back(it->path());
  }
  fs_check(ec, out.string() + ": cannot list directory");
  std::sort(stale.begin(), stale.end());
  for (const fs::path& p : stale) {
    fs::remove_all(p, ec);
    fs_check(ec, p.string() + ": cannot remove stale checkpoint temporary");
    removed.push_back(p.string());
  }
  return removed;
}

void check_output_dir_writable(const std::string& out_dir) {
  const fs::path out = out_path(out_dir);
  std::error_code ec;
  const fs::file_status st = fs::status(out, ec);
  if (fs::exists(st) && !fs::is_directory(st))
    core::fail(out.string(), ": output directory path exists and is not a directory");
  if (!fs::exists(st)) {
    fs::create_directories(out, ec);
    if (ec) core::fail(out.string(), ": cannot create output directory: ", ec.message());
  }
  const std::string probe = (out / (".write-test-" + pid_str())).string();
  try {
    io::OutFile f(probe);
    f.write("ok\n", 3);
    f.sync_close();
  } catch (const core::Error& e) {
    ::unlink(probe.c_str());
    core::fail(out.string(), ": output directory is not writable (", e.what(), ")");
  }
  if (::unlink(probe.c_str()) != 0)
    core::fail(out.string(), ": output directory: cannot remove probe file ", probe, ": ",
               std::strerror(errno));
}

}  // namespace deltatron::train
