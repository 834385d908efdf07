// Durable file writing: checked write(2) loops, fsync, atomic rename (see file_util.h).
#include "io/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace deltatron::io {

OutFile::OutFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) core::fail(path, ": cannot open for writing: ", std::strerror(errno));
}

OutFile::~OutFile() {
  if (fd_ >= 0) ::close(fd_);
}

void OutFile::write(const void* data, size_t n) {
  DT_CHECK(fd_ >= 0, path_, ": write after close");
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      core::fail(path_, ": write failed: ", std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void OutFile::sync_close() {
  DT_CHECK(fd_ >= 0, path_, ": sync after close");
  int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    core::fail(path_, ": fsync failed: ", std::strerror(e));
  }
  if (::close(fd) != 0) core::fail(path_, ": close failed: ", std::strerror(errno));
}

std::string tmp_path_for(const std::string& path) {
  return path + ".tmp-" + std::to_string(::getpid());
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) core::fail(dir, ": cannot open directory to sync: ", std::strerror(errno));
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0) core::fail(dir, ": fsync of directory failed: ", std::strerror(e));
}

void write_file_atomic(const std::string& path, const std::function<void(OutFile&)>& fill) {
  const std::string tmp = tmp_path_for(path);
  try {
    OutFile f(tmp);
    fill(f);
    f.sync_close();
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      core::fail(path, ": cannot rename ", tmp, " into place: ", std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_dir(std::filesystem::path(path).parent_path().string());
}

void write_file_atomic(const std::string& path, const std::string& content) {
  write_file_atomic(path, [&](OutFile& f) { f.write(content.data(), content.size()); });
}

}  // namespace deltatron::io
