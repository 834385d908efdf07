// Output directories: refuse foreign non-empty ones, stage beside, install file by file.
#include "io/output_dir.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

#include "core/error.h"
#include "io/file_util.h"

namespace deltatron::io {

namespace fs = std::filesystem;

namespace {

constexpr const char* kMarkerFormat = "deltatron-output";

void fs_check(const std::error_code& ec, const std::string& what) {
  if (ec) core::fail(what, ": ", ec.message());
}

// dir without a trailing slash or "." parts; its parent ("." when none) and base name.
struct Split {
  fs::path target, parent;
  std::string base;
};

Split split(const std::string& dir) {
  Split s;
  s.target = fs::path(dir).lexically_normal();
  if (s.target.filename().empty()) s.target = s.target.parent_path();  // "a/b/" -> "a/b"
  DT_CHECK(
      !s.target.filename().empty() && s.target.filename() != "." && s.target.filename() != "..",
      dir, ": not a usable output directory name");
  s.parent = s.target.parent_path().empty() ? fs::path(".") : s.target.parent_path();
  s.base = s.target.filename().string();
  return s;
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    out.push_back(it->path().filename().string());
  fs_check(ec, dir.string() + ": cannot list directory");
  std::sort(out.begin(), out.end());
  return out;
}

// The files an earlier output listed in its marker (empty when there is none or it is unreadable).
std::set<std::string> marker_files(const fs::path& dir) {
  std::set<std::string> out;
  std::ifstream in(dir / kOutputMarker);
  if (!in) return out;
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_object() || !j.contains("files") || !j["files"].is_array()) return out;
  for (const auto& f : j["files"])
    if (f.is_string() && fs::path(f.get<std::string>()).filename() == f.get<std::string>())
      out.insert(f.get<std::string>());  // plain names only, never a path elsewhere
  return out;
}

bool process_alive(const std::string& pid_text) {
  int64_t pid = 0;
  const auto [end, ec] = std::from_chars(pid_text.data(), pid_text.data() + pid_text.size(), pid);
  if (ec != std::errc() || end != pid_text.data() + pid_text.size() || pid <= 0) return true;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH;
}

}  // namespace

bool is_checkpoint_weight_file(const std::string& name) {
  if (name == "model.safetensors" || name == "model.safetensors.index.json") return true;
  // model-00001-of-00003.safetensors
  const std::string pre = "model-", suf = ".safetensors";
  if (name.size() <= pre.size() + suf.size() || name.rfind(pre, 0) != 0 ||
      name.compare(name.size() - suf.size(), suf.size(), suf) != 0)
    return false;
  const std::string mid = name.substr(pre.size(), name.size() - pre.size() - suf.size());
  const auto of = mid.find("-of-");
  auto digits = [](const std::string& s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  return of != std::string::npos && digits(mid.substr(0, of)) && digits(mid.substr(of + 4));
}

void check_output_dir(const std::string& dir, bool overwrite) {
  const Split s = split(dir);
  std::error_code ec;
  const fs::file_status st = fs::status(s.target, ec);
  if (!fs::exists(st)) return;
  DT_CHECK(fs::is_directory(st), dir, ": output path exists and is not a directory");
  if (overwrite) return;
  const std::vector<std::string> names = entries(s.target);
  if (names.empty() || fs::exists(s.target / kOutputMarker)) return;
  std::string shown;
  for (size_t i = 0; i < names.size() && i < 3; ++i) shown += (i ? ", " : "") + names[i];
  if (names.size() > 3) shown += ", ... (" + std::to_string(names.size()) + " entries)";
  core::fail(dir, ": output directory is not empty and was not written by deltatron (it holds ",
             shown,
             "); choose a new or empty directory, or pass --overwrite to replace its "
             "checkpoint files (config.json, model*.safetensors) and keep every other file");
}

void check_not_same_dir(const std::string& in, const std::string& out, const std::string& in_flag,
                        const std::string& out_flag) {
  std::error_code ec;
  const bool same = fs::exists(out, ec) && fs::equivalent(in, out, ec) && !ec;
  if (same || fs::path(in).lexically_normal() == fs::path(out).lexically_normal())
    core::fail(out_flag, " ", out, " is the same directory as ", in_flag, " ", in,
               ": writing there would replace the input's files; choose another directory");
}

StagedOutput::StagedOutput(const std::string& dir) : dir_(dir) {
  const Split s = split(dir);
  staging_ = (s.parent / ("." + s.base + ".tmp-" + std::to_string(::getpid()))).string();
  std::error_code ec;
  fs::create_directories(s.parent, ec);
  fs_check(ec, s.parent.string() + ": cannot create directory");
  fs::remove_all(staging_, ec);
  fs_check(ec, staging_ + ": cannot remove stale staging directory");
  fs::create_directory(staging_, ec);
  fs_check(ec, staging_ + ": cannot create staging directory");
}

StagedOutput::~StagedOutput() {
  if (installed_) return;
  std::error_code ignore;
  fs::remove_all(staging_, ignore);
}

void StagedOutput::install(const std::string& command) {
  DT_CHECK(!installed_, staging_, ": already installed");
  const Split s = split(dir_);
  const fs::path staging(staging_);
  std::vector<std::string> files;
  for (const std::string& name : entries(staging)) {
    DT_CHECK(fs::is_regular_file(fs::symlink_status(staging / name)), staging_, "/", name,
             ": only regular files can be installed");
    if (name != kOutputMarker) files.push_back(name);
  }
  if (!command.empty()) {
    const nlohmann::json marker = {
        {"format", kMarkerFormat}, {"command", command}, {"files", files}};
    write_file_atomic((staging / kOutputMarker).string(), marker.dump(2) + "\n");
    files.push_back(kOutputMarker);  // last: the output is marked once it is complete
  }
  fsync_dir(staging_);

  std::error_code ec;
  const fs::file_status st = fs::symlink_status(s.target, ec);
  if (!fs::exists(st) || (fs::is_directory(st) && fs::is_empty(s.target, ec))) {
    fs::rename(staging, s.target, ec);  // onto an empty directory too (rename(2) replaces it)
    fs_check(ec, dir_ + ": cannot rename " + staging_ + " into place");
    fsync_dir(s.parent.string());
    installed_ = true;
    return;
  }
  DT_CHECK(fs::is_directory(fs::status(s.target, ec)), dir_,
           ": output path exists and is not a directory");

  // File by file: the displaced files go aside, to be restored if anything fails.
  std::set<std::string> stale = marker_files(s.target);
  for (const std::string& name : entries(s.target))
    if (is_checkpoint_weight_file(name) && !fs::is_directory(fs::symlink_status(s.target / name)))
      stale.insert(name);
  for (const std::string& f : files) stale.erase(f);
  stale.erase(kOutputMarker);
  const fs::path aside = s.parent / ("." + s.base + ".old-" + std::to_string(::getpid()));
  fs::remove_all(aside, ec);
  fs_check(ec, aside.string() + ": cannot remove stale directory");
  fs::create_directory(aside, ec);
  fs_check(ec, aside.string() + ": cannot create directory");
  std::vector<std::string> moved_aside, placed;
  try {
    // Files only: a directory of the same name is never the command's to remove.
    auto move_aside = [&](const std::string& name) {
      const fs::file_status old = fs::symlink_status(s.target / name);
      if (!fs::exists(old)) return;
      if (fs::is_directory(old))
        core::fail((s.target / name).string(), ": is a directory; cannot replace it with a file");
      std::error_code e;
      fs::rename(s.target / name, aside / name, e);
      fs_check(e, (s.target / name).string() + ": cannot move aside");
      moved_aside.push_back(name);
    };
    for (const std::string& name : stale)
      if (!fs::is_directory(fs::symlink_status(s.target / name))) move_aside(name);
    for (const std::string& name : files) {
      move_aside(name);
      std::error_code e;
      fs::rename(staging / name, s.target / name, e);
      fs_check(e, (s.target / name).string() + ": cannot rename the new file into place");
      placed.push_back(name);
    }
    fsync_dir(s.target.string());
  } catch (...) {
    std::error_code ignore;
    for (const std::string& name : placed) fs::rename(s.target / name, staging / name, ignore);
    for (const std::string& name : moved_aside) fs::rename(aside / name, s.target / name, ignore);
    fs::remove_all(aside, ignore);
    throw;
  }
  installed_ = true;
  fs::remove_all(aside, ec);
  fs_check(ec, aside.string() + ": cannot remove the replaced files");
  fs::remove_all(staging, ec);
  fs_check(ec, staging_ + ": cannot remove the staging directory");
}

std::vector<std::string> remove_stale_staging(const std::string& dir) {
  const Split s = split(dir);
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(s.parent, ec)) return removed;
  for (const char* kind : {".tmp-", ".old-"}) {
    const std::string prefix = "." + s.base + std::string(kind);
    for (const std::string& name : entries(s.parent)) {
      if (name.rfind(prefix, 0) != 0 || process_alive(name.substr(prefix.size()))) continue;
      fs::remove_all(s.parent / name, ec);
      fs_check(ec, (s.parent / name).string() + ": cannot remove stale staging directory");
      removed.push_back((s.parent / name).string());
    }
  }
  return removed;
}

}  // namespace deltatron::io
