// TensorBoard event files written by hand: TFRecord framing and the few protobuf fields needed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace deltatron::io {

// CRC-32C (Castagnoli; reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF).
// crc32c("123456789") = 0xE3069283.
uint32_t crc32c(const void* data, size_t n);

// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8 with crc = crc32c(data).
uint32_t crc32c_masked(const void* data, size_t n);

// One TFRecord: uint64 length (little-endian), masked CRC of those 8 bytes (uint32 LE), the data,
// masked CRC of the data (uint32 LE).
std::string tfrecord_frame(std::string_view data);

struct ScalarValue {
  std::string tag;
  float value = 0;
};

// Serialized tensorflow.Event messages (event.proto), only the fields written here:
//   Event { double wall_time = 1; int64 step = 2; oneof { string file_version = 3;
//           Summary summary = 5; SessionLog session_log = 7; } }
//   Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
//   SessionLog { SessionStatus status = 1; }   (START = 1)
// wall_time is in seconds since the Unix epoch.
std::string event_file_version(double wall_time);  // file_version = "brain.Event:2", step 0
std::string event_session_start(double wall_time, int64_t step);
std::string event_scalars(double wall_time, int64_t step, const std::vector<ScalarValue>& values);

// A path in dir for a new event file, named as TensorBoard expects
// (`events.out.tfevents.<unix seconds>.<hostname>.<pid>.<counter>`, counter counting the files
// this process has named), that does not exist yet. TensorBoard reads a folder's event files in
// name order, which is creation order for files from different seconds.
std::string new_event_file_path(const std::string& dir);

// An event file opened for appending (created if missing). The constructor writes the
// file_version record, which must come first. Every record goes to the operating system with one
// write(2) loop as it is written (no user-space buffer), so a running TensorBoard sees each step
// as soon as it is logged. Every failure throws core::Error naming the file.
class EventFileWriter {
 public:
  explicit EventFileWriter(const std::string& path);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  // A SessionLog START at step: TensorBoard's loaders then drop the data they read earlier (older
  // files of the same folder) at steps >= step, as after a restarted TensorFlow job.
  void write_session_start(int64_t step);
  // One Event with one summary value per scalar.
  void write_scalars(int64_t step, const std::vector<ScalarValue>& values);

  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);

  std::string path_;
  int fd_ = -1;
};

}  // namespace deltatron::io
