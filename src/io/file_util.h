// Durable file writing: a write-only file with checked writes and fsync, atomic replace, dir sync.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

namespace deltatron::io {

// A file opened for writing (created or truncated). Every failure throws core::Error naming the
// path. The destructor closes without syncing; call sync_close() to make the bytes durable.
class OutFile {
 public:
  explicit OutFile(const std::string& path);
  ~OutFile();
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;

  void write(const void* data, size_t n);
  void sync_close();  // fsync, then close; throws on either failure
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// "<path>.tmp-<pid>": the name a file is built under before it is renamed into place.
std::string tmp_path_for(const std::string& path);

// fsync a directory so that renames and creations inside it are durable.
void fsync_dir(const std::string& dir);

// Lets fill write tmp_path_for(path), fsyncs, renames onto path, fsyncs the directory. On any
// failure (fill's exceptions included) the temporary file is removed and path is left as it was.
void write_file_atomic(const std::string& path, const std::function<void(OutFile&)>& fill);

// The same with content as the whole file.
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace deltatron::io
